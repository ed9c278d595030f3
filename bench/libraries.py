"""Benchmark: real library upgrades from PyPI, in place, under a live client.

    python3 bench/libraries.py --pyreload target/release/pyreload [--json out.json]

A small web service runs under `pyreload run` in a venv (target/lib-venv):
werkzeug's threaded development server (`serve_forever` on the main
thread, a thread per request) answers a WSGI app that renders a Jinja2
template on every request. A client thread sends requests all the time
and checks each answer. Then, for each library in turn, pip upgrades it
in place in the venv (and downgrades it again, alternately), `pyreload new
--running` drafts the spec from the files that changed under the running
program, the draft's version TODOs are filled in, and `pyreload apply`
applies it. Every answer names the versions the program runs, so the
client sees the new version arrive; failed requests are counted.

Reported per library: modules reloaded, functions and classes compared,
pause, commit, stage and prepare p50/p99, and the client's failures.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import pct, wait_port_file

REPO = pathlib.Path(__file__).resolve().parent.parent
VENV = REPO / "target" / "lib-venv"

# (library, the version it starts at, the version it is upgraded to).
UPGRADES = [("werkzeug", "3.0.3", "3.0.6"), ("jinja2", "3.1.2", "3.1.4")]
BASE = {"werkzeug": "3.0.3", "jinja2": "3.1.2", "markupsafe": "3.0.2"}

APP = '''
import sys
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response
from jinja2 import Environment

ENV = Environment(autoescape=True)
PAGE = ENV.from_string(
    "<ul>{% for k, v in items %}<li>{{ k }}={{ v|e }}</li>{% endfor %}</ul>"
    "{{ versions }} {{ n|default(0) }}"
)

def versions():
    # What the code in memory is, not what pip has on disk: werkzeug 3.0.6's
    # request log escapes "%" (3.0.3's does not), and jinja2's __version__
    # is a literal in its __init__.py.
    import jinja2, werkzeug.serving
    w = "3.0.6" if "%%" in werkzeug.serving.WSGIRequestHandler.log.__code__.co_consts else "3.0.3"
    return f"werkzeug={w} jinja2={jinja2.__version__}"

@Request.application
def app(request):
    body = PAGE.render(items=sorted(request.args.items()), n=len(request.args), versions=versions())
    return Response(body, mimetype="text/html")

server = make_server("127.0.0.1", 0, app, threaded=True)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_port))
server.serve_forever()
'''


def pip(*args):
    subprocess.run([str(VENV / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", *args],
                   check=True, capture_output=True)


def installed(name):
    out = subprocess.run([str(VENV / "bin/python"), "-c",
                          f"from importlib.metadata import version; print(version({name!r}))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def client(port, stop, tally):
    """Requests in a loop; each answer must name the versions."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/?k{i % 7}=v&x={i}", timeout=10) as r:
                body = r.read().decode()
            m = re.search(r"werkzeug=(\S+) jinja2=(\S+)", body)
            if r.status != 200 or not m:
                tally["failed"] += 1
            else:
                tally["seen"] = m.group(0)
            tally["requests"] += 1
        except Exception as e:  # noqa: BLE001 - a failed request is what we count
            tally["failed"] += 1
            tally["errors"].append(repr(e))
        time.sleep(0.002)


def fill_draft(draft, name, frm, to):  # noqa: D401
    """The draft's version TODOs, decided: the draft lists the modules and
    the functions; only the names of the versions are left to us."""
    text = draft.read_text()
    text = text.replace('name = "TODO: name this update"', f'name = "{name}"')
    text = text.replace('from = "TODO: the version the program runs now"', f'from = "{frm}"')
    text = text.replace('to = "TODO: the version this update brings"', f'to = "{to}"')
    left = [l for l in text.splitlines() if "TODO" in l and not l.lstrip().startswith("#")]
    if left:
        sys.exit(f"the draft {draft} has TODOs this benchmark cannot decide: {left}")
    draft.write_text(text)


def prune_draft(draft):
    """Leaves out the draft's `new = true` tables: `new --running` also
    lists modules that the changed modules import only inside functions
    (werkzeug's serving imports its debugger and reloader when asked to),
    which the program never loaded and this update need not add. A new
    module a changed module imports at the top is staged and added by the
    update anyway (src/engine/imports.rs). Returns how many modules are left."""
    tables = draft.read_text().split("\n[[reload]]\n")
    tables = [tables[0]] + [t for t in tables[1:] if "\nnew = true" not in t]
    draft.write_text("\n[[reload]]\n".join(tables))
    return len(tables) - 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--rounds", type=int, default=6, help="updates per library (upgrade, downgrade, ...)")
    parser.add_argument("--json")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    if not (VENV / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip(*(f"{n}=={v}" for n, v in BASE.items()))
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-libs-"))
    (work / "app.py").write_text(APP)
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"), VIRTUAL_ENV=str(VENV),
               PATH=f"{VENV / 'bin'}:{os.environ['PATH']}")
    prog = subprocess.Popen([pyreload, "run", "--name", "libapp", "--version", "v0", str(work / "app.py"),
                             str(work / "port")], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "app.log", "w"))
    results = []
    stop = threading.Event()
    tally = {"requests": 0, "failed": 0, "errors": [], "seen": ""}
    t = None
    try:
        port = wait_port_file(work / "port", prog)
        t = threading.Thread(target=client, args=(port, stop, tally), daemon=True)
        t.start()
        time.sleep(0.5)
        version = 0
        for lib, old, new in UPGRADES:
            rows = []
            for r in range(args.rounds):
                target = new if r % 2 == 0 else old
                pip(f"{lib}=={target}")
                draft = work / f"{lib}-{r}.toml"
                subprocess.run([pyreload, "new", "--running", "--pid", str(prog.pid), "--output", str(draft)],
                               env=env, check=True, capture_output=True)
                fill_draft(draft, f"{lib}-{target}", f"v{version}", f"v{version + 1}")
                modules = prune_draft(draft)
                before = tally["requests"], tally["failed"]
                w = time.perf_counter()
                out = subprocess.run([pyreload, "apply", "--json", "--pid", str(prog.pid), str(draft)],
                                     env=env, capture_output=True, text=True)
                wall = (time.perf_counter() - w) * 1000
                try:
                    report = json.loads(out.stdout)
                except json.JSONDecodeError:
                    sys.exit(f"{lib} {target}: apply printed no report:\n{out.stdout}\n{out.stderr}")
                if report["outcome"] != "committed":
                    sys.exit(f"{lib} {target}: the update did not commit:\n{out.stdout}\n{out.stderr}")
                version += 1
                deadline = time.time() + 10
                while f"{lib}={target}" not in tally["seen"] and time.time() < deadline:
                    time.sleep(0.01)
                if f"{lib}={target}" not in tally["seen"]:
                    sys.exit(f"{lib} {target}: the client never saw the new version ({tally['seen']})")
                tm = report["timings"]
                compared = sum(len(m[k]["changed"]) + len(m[k]["added"]) + len(m[k]["removed"]) + m[k]["unchanged"]
                               for m in report["modules"] for k in ("functions", "classes"))
                changed = sum(len(m[k]["changed"]) + len(m[k]["added"]) + len(m[k]["removed"])
                              for m in report["modules"] for k in ("functions", "classes"))
                rows.append({"to": target, "modules": modules, "compared": compared, "changed": changed,
                             "pause": tm["pause_ms"], "commit": tm["commit_ms"], "stage": tm["stage_ms"],
                             "prepare": tm["prepare_ms"], "apply": wall, "stop": tm["stop_ms"],
                             "resume": tm["resume_ms"], "check": tm["check_ms"], "safe_point": tm.get("safe_point_ms", 0.0),
                             # Work moved out of the pause: functions that
                             # only moved lines take them after it.
                             "moved_code": tm.get("moved_code_ms", 0.0), "moved": report.get("moved_after_pause", 0),
                             "ahead": (report.get("merge_ahead") or {}).get("reused"),
                             "planned": (report.get("merge_ahead") or {}).get("planned"),
                             "requests": tally["requests"] - before[0], "failed": tally["failed"] - before[1]})
                print(f"  {lib} -> {target}: pause {tm['pause_ms']:.2f} ms, {modules} modules", file=sys.stderr,
                      flush=True)
            results.append({"library": lib, "from": old, "to": new, "rows": rows})
    finally:
        # The client finishes its request before the server goes: one cut
        # off by the terminate would count as failed.
        stop.set()
        if t is not None:
            t.join(timeout=15)
        prog.terminate()
        prog.wait(timeout=30)
        pip(*(f"{n}=={v}" for n, v in BASE.items()))
    summary = {"results": results, "requests": tally["requests"], "failed": tally["failed"],
               "errors": tally["errors"][:5]}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"werkzeug's threaded server + a Jinja2 template per request, one client looping; "
          f"{args.rounds} updates per library (upgrade, downgrade, ...), pip in place, spec from `pyreload new --running`")
    print()
    print("| library | versions | modules reloaded | functions and classes compared / changed | pause p50 / p99 ms "
          "| commit p50 / p99 ms | stage p50 / p99 ms | prepare p50 / p99 ms | apply wall p50 ms | requests / failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rows = r["rows"]
        col = lambda k: [x[k] for x in rows]  # noqa: E731
        print(f"| {r['library']} | {r['from']} <-> {r['to']} | {max(col('modules'))} "
              f"| {max(col('compared')):,} / {max(col('changed')):,} "
              f"| {pct(col('pause'), 50):.2f} / {pct(col('pause'), 99):.2f} "
              f"| {pct(col('commit'), 50):.2f} / {pct(col('commit'), 99):.2f} "
              f"| {pct(col('stage'), 50):.1f} / {pct(col('stage'), 99):.1f} "
              f"| {pct(col('prepare'), 50):.1f} / {pct(col('prepare'), 99):.1f} | {pct(col('apply'), 50):.0f} "
              f"| {sum(col('requests')):,} / {sum(col('failed'))} |")
    print()
    for r in results:
        col = lambda k: [x[k] for x in r["rows"]]  # noqa: E731
        print(f"- {r['library']}: {max(col('moved'))} functions took their moved lines after the pause, in "
              f"{pct(col('moved_code'), 50):.2f} / {pct(col('moved_code'), 99):.2f} ms (p50 / p99)")
    print()
    print(f"client: {tally['requests']:,} requests, {tally['failed']} failed during the whole run")
    return 1 if tally["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
