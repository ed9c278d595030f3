"""Benchmark: a tree-wide update of gunicorn under load, against one process.

    python3 bench/tree.py --pyreload target/release/pyreload --venv bench/.venv [--updates 30]
        [--workers 1,4,8] [--clients 16] [--json FILE]

Issue #15: with 1, 4 and 8 workers, the pause per member, the total apply
time and the skew between the first and the last member's commit (goal:
p99 under 5 ms with 8 workers), and how many responses from the old
version arrive after `apply` returned (goal: 0).

The program is the notes service of case-study/web (Flask), deployed as a
fresh copy of case-study/web/v1 for each row and run as
`pyreload run --name web --version 1.0 -m gunicorn -c gunicorn.conf.py
-b 127.0.0.1:0 -w N -k gthread --threads 4 [--preload] notes.wsgi:app`
with the venv active. The rows, one server each, back to back in one run:

  single       the same app in one process (bench/tree_single.py: werkzeug's
               threaded server, one thread per connection); nothing forks,
               the report has no members. The reference pause.
  1 worker     gunicorn without --preload: the smallest tree. The master
               loads no app module (unaffected), the worker is updated.
  1/4/8 workers, --preload
               the master loads the app too, so it is a member that commits
               like the workers: 2, 5 and 9 processes.

Each row: 16 keep-alive clients (case-study/web/load.py), then UPDATES
updates back and forth (specs/web-v1-to-v2.toml, specs/web-v2-to-v1.toml),
each done as a user would: `close` (the driver stops judging), copy the
other version's notes/logic.py over the deployed one, `pyreload apply
--json` on the master's socket (timed: the CLI's wall time), `mark` the new
version the moment apply returned, then `wait` until 4 answers per client
arrived to requests sent after the mark. `stale` counts the answers by the
old version to requests sent after apply returned and answered before the
next update began (load.py's marks).

Per row, over all updates: member pause (each committed member's
`pause_ms`, all members of all updates), the report's `timings.pause_ms`
(the largest member pause), apply wall time and the report's
`timings.total_ms`, `skew_ms` (the spread of the members' commit
instants), stale answers and failed requests. Each report's members are
checked against the master and its live workers (read from /proc before
the apply): a member missing from a report is counted and shown.

A benchmark, not a test: it fails only if an update does not commit or a
server does not start.
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import pct

REPO = pathlib.Path(__file__).resolve().parent.parent
WEB = REPO / "case-study/web"
SPECS = {"2.0": REPO / "specs/web-v1-to-v2.toml", "1.0": REPO / "specs/web-v2-to-v1.toml"}
LOGIC = {"2.0": WEB / "v2/notes/logic.py", "1.0": WEB / "v1/notes/logic.py"}
# The pins the tests use (tests/common/pypi.rs), for the server's venv.
WEB_PINS = ["gunicorn==27.0.1", "flask==3.1.3", "werkzeug==3.1.9", "jinja2==3.1.6", "markupsafe==3.0.4",
            "itsdangerous==2.2.0", "click==8.5.1", "blinker==1.9.0"]
# The report's timings, each the largest over the members (a tree) or the
# process's own (a single process).
PHASES = ["prepare_ms", "wait_ms", "stage_ms", "stop_ms", "commit_ms", "check_ms", "resume_ms", "pause_ms", "total_ms"]
STARTUP = 120  # s: far more than a start takes on a loaded machine


def ensure_web_pins(venv):
    """Installs the pinned web stack into `venv` unless it is there already."""
    python = pathlib.Path(venv) / "bin/python"
    probe = ("from importlib.metadata import version as v; import sys; "
             "print(' '.join(f'{p}=={v(p)}' for p in sys.argv[1:]))")
    names = [p.split("==")[0] for p in WEB_PINS]
    got = subprocess.run([python, "-c", probe, *names], capture_output=True, text=True)
    if got.returncode != 0 or got.stdout.split() != WEB_PINS:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *WEB_PINS],
                       check=True)


def children(pid):
    """The live children of `pid` (a zombie, exited and not yet reaped, is not one)."""
    found = set()
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return {p for p in found if not zombie(p)}


def zombie(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


class Server:
    """One row's program under `pyreload run`, in a process group of its own."""

    def __init__(self, pyreload, venv, work, label, workers, preload, extra=()):
        self.label, self.workers, self.preload = label, workers, preload
        self.app = work / f"app-{label}"
        shutil.copytree(WEB / "v1", self.app, ignore=shutil.ignore_patterns("__pycache__"))
        runtime = work / f"run-{label}"
        runtime.mkdir(mode=0o700)
        env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv}/bin:{os.environ['PATH']}",
                   PYTHONUNBUFFERED="1", PYRELOAD_RUNTIME_DIR=str(runtime))
        env.pop("PYTHONPATH", None)
        cmd = [pyreload, "run", "--name", "web", "--version", "1.0"]
        if workers:
            cmd += ["-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0", "-w", str(workers),
                    "-k", "gthread", "--threads", "4"] + (["--preload"] if preload else []) + list(extra) + ["notes.wsgi:app"]
        else:
            cmd += [str(REPO / "bench/tree_single.py")]
        self.command = " ".join(cmd[1:]).replace(str(REPO) + "/", "")
        self.log_path = work / f"server-{label}.log"
        self.proc = subprocess.Popen(cmd, cwd=self.app, env=env, stdin=subprocess.DEVNULL,
                                     stdout=open(work / f"server-{label}.out", "w"),
                                     stderr=open(self.log_path, "w"), start_new_session=True)
        self.socket = runtime / f"{self.proc.pid}.sock"
        self.port = self.wait_for(self.find_port)
        if workers:
            self.wait_for(lambda: len(self.ready()) == workers or None)
        self.wait_for(lambda: self.socket.exists() or None)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def find_port(self):
        marker = "Listening at: http://127.0.0.1:"
        for line in self.log().splitlines():
            if marker in line:
                return int(line.split(marker)[1].split()[0].rstrip(")"))
        return None

    def ready(self):
        """Live workers that logged that they can serve."""
        said = set()
        for line in self.log().splitlines():
            if "notes: worker " in line and line.endswith(" ready (app loaded)"):
                said.add(int(line.split("notes: worker ")[1].split()[0]))
        return said & children(self.proc.pid)

    def wait_for(self, found):
        deadline = time.time() + STARTUP
        while True:
            value = found()
            if value is not None:
                return value
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                sys.exit(f"{self.label}: the server did not start\n{self.log()}")
            time.sleep(0.02)

    def retiring(self, pid):
        """Whether worker `pid` said it is on its way out (--max-requests)."""
        log = self.log()
        return f"Worker exiting (pid: {pid})" in log or f"[{pid}] [INFO] Autorestarting worker" in log

    def swap_logic(self, version):
        # In place, as a deploy would; v1 and v2 differ in size, so a .pyc
        # written within the same second is not mistaken for the new file.
        shutil.copyfile(LOGIC[version], self.app / "notes/logic.py")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any worker left behind
        except ProcessLookupError:
            pass
        self.proc.wait()


class Load:
    """case-study/web/load.py, driven through its stdin commands."""

    def __init__(self, port, clients, work, label):
        self.proc = subprocess.Popen(
            [sys.executable, str(WEB / "load.py"), "--port", str(port), "--clients", str(clients),
             "--duration", "900", "--wait-timeout", "60"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(work / f"load-{label}.err", "w"), text=True)
        assert "started" in self.next()

    def next(self):
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("the load driver died")
        return json.loads(line)

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.next()

    def stop(self):
        summary = self.command("stop")
        self.proc.wait(timeout=60)
        return summary


class Idle:
    """No clients: what Load answers, with nothing judged."""

    def command(self, line):
        return {"waited": True}

    def stop(self):
        return {"marks": [], "stale": 0, "stale_samples": [], "failures": 0, "failure_samples": [], "requests": 0,
                "responses": 0, "lost_state": 0, "by_pid": {}}


def commit_mode(commit):
    """("each" or "together", realtime) from a --commit entry: `together`,
    or `together-normal` for `[tree] realtime = false`."""
    mode, *flags = commit.split("-")
    return mode, "normal" not in flags


def runs_alone(commit):
    """False for a --commit entry with `-still`: `[safe_point] run_alone_us = 0`,
    the stopped world never lets a blocking thread run on alone."""
    return "still" not in commit.split("-")[1:]


def specs_for(work, commit):
    """The two specs, with `[tree] commit = MODE`, `realtime = false` and
    `run_alone_us = 0` as COMMIT asks (the defaults: each, real time where
    permitted, blocking threads run on alone)."""
    if commit == "each":
        return SPECS
    mode, realtime = commit_mode(commit)
    specs = {}
    for to, path in SPECS.items():
        copy = work / f"{commit}-{path.name}"
        text = path.read_text()
        if not runs_alone(commit):
            text = text.replace("[safe_point]\n", "[safe_point]\nrun_alone_us = 0\n", 1)
        copy.write_text(text + f'\n[tree]\ncommit = "{mode}"\n'
                        + ("" if realtime else "realtime = false\n"))
        specs[to] = copy
    return specs


def row(pyreload, venv, work, label, workers, preload, updates, clients, extra=(), commit="each"):
    """One server, UPDATES updates under CLIENTS clients (none: idle): the raw figures."""
    load_start = os.getloadavg()[0]
    specs = specs_for(work, commit)
    server = Server(pyreload, venv, work, label, workers, preload, extra)
    load = None
    try:
        load = Load(server.port, clients, work, label) if clients else Idle()
        warm = load.command(f"wait {8 * clients}")
        if not warm.get("waited"):
            sys.exit(f"{label}: the clients got no answers: {warm}\n{server.log()}")
        version = "1.0"
        out = {"label": label, "clients": clients, "workers": workers, "preload": preload, "command": server.command,
               "commit": commit,
               "member_pause_ms": [], "master_pause_ms": [], "worker_pause_ms": [], "pause_ms": [],
               "apply_wall_ms": [], "total_ms": [], "skew_ms": [], "members": [], "missing": [],
               "extra": [], "not_committed": [], "waited_short": 0,
               "cli_cpu_ms": [], "phases": {}, "refused": [], "extra_args": list(extra), "bells": {},
               "after_bell": [], "run_alone_ms": [], "boost_capped": 0}
        for i in range(updates):
            to = "2.0" if version == "1.0" else "1.0"
            load.command("close")
            expected = ({server.proc.pid} | children(server.proc.pid)) if workers else set()
            server.swap_logic(to)
            cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            done = subprocess.run([pyreload, "apply", "--json", "--socket", str(server.socket), str(specs[to])],
                                  capture_output=True, text=True)
            wall = (time.perf_counter() - t) * 1000
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            load.command(f"mark {to}")
            try:
                report = json.loads(done.stdout)
            except ValueError:
                report = {}
            if report.get("outcome") != "committed" and extra:
                # Under churn, an update that did not commit is a finding,
                # not the end of the run: the next one tries again.
                out["refused"].append({"update": i + 1, "outcome": report.get("outcome"),
                                       "problem": report.get("problem"),
                                       "members": [(m["pid"], m["outcome"]) for m in report.get("members", [])]})
                server.swap_logic(version)  # or workers born next would load the new file
                load.command(f"mark {version}")
                load.command(f"wait {4 * clients}")
                continue
            if report.get("outcome") != "committed":
                sys.exit(f"{label}: update {i + 1} ({version} -> {to}) did not commit:\n{done.stdout}\n"
                         f"{done.stderr}\n{server.log()[-4000:]}")
            version = to
            out["apply_wall_ms"].append(wall)
            out["total_ms"].append(report["timings"]["total_ms"])
            out["cli_cpu_ms"].append((after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) * 1000)
            for phase in PHASES:
                out["phases"].setdefault(phase, []).append(report["timings"][phase])
            out["pause_ms"].append(report["timings"]["pause_ms"])
            members = report.get("members", [])
            out["members"].append(len(members))
            if workers:
                listed = {m["pid"] for m in members}
                # A worker that retired during the update (--max-requests)
                # is rightly absent; one alive before and after is missed.
                missed = {p for p in expected - listed
                          if p in children(server.proc.pid) and not server.retiring(p)}
                if missed:
                    out["missing"].append({"update": i + 1, "pids": sorted(missed), "listed": sorted(listed)})
                if listed - expected:
                    out["extra"].append({"update": i + 1, "pids": sorted(listed - expected)})
                for m in members:
                    master = m["pid"] == server.proc.pid
                    if m["outcome"] == "committed":
                        out["bells"][m.get("bell", "-")] = out["bells"].get(m.get("bell", "-"), 0) + 1
                        # The GIL boost put back at its cap: a thread held the GIL in a long call.
                        out["boost_capped"] += m.get("gil_boost_capped", 0)
                        out["member_pause_ms"].append(m["pause_ms"])
                        out["master_pause_ms" if master else "worker_pause_ms"].append(m["pause_ms"])
                    elif not (master and not preload and m["outcome"] == "unaffected"):
                        out["not_committed"].append({"update": i + 1, "pid": m["pid"], "role": m["role"],
                                                     "outcome": m["outcome"]})
                if report.get("skew_ms") is not None:
                    out["skew_ms"].append(report["skew_ms"])
                # The longest any member let blocking threads run on alone.
                out["run_alone_ms"].append(report["timings"].get("run_alone_ms", 0.0))
                # Per update, each committed member's let-go after the bell,
                # its safe-point looks, and when after the bell it woke and
                # held the GIL: who the skew waited for, and on what.
                out["after_bell"].append([(m["pid"] == server.proc.pid, m.get("after_bell_ms"),
                                           m.get("safe_point_checks", 0), m.get("woke_after_bell_ms"),
                                           m.get("gil_after_bell_ms"))
                                          for m in members if m["outcome"] == "committed"])
            else:
                out["member_pause_ms"].append(report["timings"]["pause_ms"])
            seen = load.command(f"wait {4 * clients}")
            if not seen.get("waited"):
                out["waited_short"] += 1
        summary = load.stop()
        load = None
    finally:
        if load is not None and clients:
            load.proc.kill()
        server.stop()
    marks = summary["marks"]
    out.update({
        "stale": summary["stale"], "stale_samples": summary["stale_samples"][:5],
        "failures": summary["failures"], "failure_samples": summary["failure_samples"][:5],
        "requests": summary["requests"], "responses": summary["responses"], "lost_state": summary["lost_state"],
        "judged": sum(m["responses"] for m in marks),
        "pids_answering": len(summary["by_pid"]),
        "pids_after_marks_min": min((len(m["pids"]) for m in marks), default=0),
        "load_start": load_start, "load_end": os.getloadavg()[0],
    })
    return out


def cell(values, digits=2):
    if not values:
        return "-"
    return f"{pct(values, 50):.{digits}f} / {pct(values, 99):.{digits}f}"


def judged(r, key):
    """A count from the clients; "-" for a row without any."""
    return f"{r[key]:,}" if r["clients"] else "-"


LATE_MS = 2.0


def late_members(slowest):
    """Where the time of each update's slowest member went, for the updates
    where it let go more than LATE_MS after the bell: waiting for a core
    (bell to woken), for the GIL (woken to holding it), and stopping its
    threads, looking and merging (GIL to let go)."""
    late = [m for m in slowest if m[1] > LATE_MS and m[3] is not None and m[4] is not None]
    if not late:
        return []
    parts = {"waking": [m[3] for m in late], "getting the GIL": [m[4] - m[3] for m in late],
             "stopping, looking and merging": [m[1] - m[4] for m in late]}
    spent = ", ".join(f"{name} {pct(v, 50):.2f} / {max(v):.2f}" for name, v in parts.items())
    looks = sorted(m[2] for m in late)
    return [f"in the {len(late)} update(s) whose slowest member let go more than {LATE_MS:g} ms after the bell, "
            f"that member spent (ms, p50 / max) {spent}; its safe-point looks: {looks}"]


def title(r):
    if not r["workers"]:
        return "single process (werkzeug threaded, no fork)"
    return (f"gunicorn gthread, {r['workers']} worker{'s' if r['workers'] > 1 else ''}"
            + (", --preload" if r["preload"] else ", no --preload")
            + (f', `commit = "{commit_mode(r["commit"])[0]}"`' if r.get("commit", "each") != "each" else "")
            + ("" if commit_mode(r.get("commit", "each"))[1] else ", `realtime = false`")
            + ("" if runs_alone(r.get("commit", "each")) else ", `run_alone_us = 0`")
            + ("" if r["clients"] else ", idle (no clients)"))


def table(rows, updates, clients):
    lines = [f"{updates} updates per row (v1 <-> v2 of case-study/web, in place), {clients} keep-alive clients "
             f"(case-study/web/load.py), {os.cpu_count()} CPUs; times in ms, p50 / p99 over all updates "
             f"(member pause: over every committed member of every update)",
             "",
             "| program | processes updated | member pause | report pause (largest member) | apply wall time (CLI) "
             "| report `total_ms` | skew | stale answers after apply returned | failed requests | answers judged "
             "| load (1 min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        updated = (len(r["member_pause_ms"]) / updates) if r["workers"] else 1
        lines.append(
            f"| {title(r)} | {updated:.3g} | {cell(r['member_pause_ms'])} | {cell(r['pause_ms'])} "
            f"| {cell(r['apply_wall_ms'], 1)} | {cell(r['total_ms'], 1)} "
            f"| {cell(r['skew_ms']) if r['skew_ms'] else '-'} | {judged(r, 'stale')} | {judged(r, 'failures')} "
            f"| {judged(r, 'judged')} | {r['load_start']:.1f}-{r['load_end']:.1f} |")
    base = rows[0]
    lines += ["", "Against the single process (ratio of p50s; p99s in brackets):", "",
              "| program | member pause | apply wall time | report `total_ms` |", "|---|---:|---:|---:|"]
    for r in rows[1:]:
        if not r["clients"]:
            continue

        def ratio(key):
            return (f"{pct(r[key], 50) / pct(base[key], 50):.2f}x "
                    f"({pct(r[key], 99) / pct(base[key], 99):.2f}x)")
        lines.append(f"| {title(r)} | {ratio('member_pause_ms')} | {ratio('apply_wall_ms')} | {ratio('total_ms')} |")
    lines += ["", "Where the time goes, p50 of each (ms). The report's phases are the largest over the members; "
              "`stop` is freezing a member's threads, `merge` its commit, `resume` letting them go; the CLI's "
              "CPU is user + system time of the `pyreload apply` process:", "",
              "| program | prepare | stage | stop | merge | check | resume | pause | `total_ms` | apply CLI CPU "
              "| apply wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ph = r["phases"]
        if not r["apply_wall_ms"]:  # no update committed (under churn)
            lines.append(f"| {title(r)} | " + " | ".join(["-"] * 10) + " |")
            continue
        lines.append(f"| {title(r)} | " + " | ".join(
            f"{pct(ph[k], 50):.2f}" for k in ("prepare_ms", "stage_ms", "stop_ms", "commit_ms", "check_ms",
                                              "resume_ms", "pause_ms", "total_ms"))
            + f" | {pct(r['cli_cpu_ms'], 50):.1f} | {pct(r['apply_wall_ms'], 50):.1f} |")
    tree_rows = [r for r in rows if r["workers"] and r["preload"] and r["clients"]]
    if tree_rows:
        lines += ["", "The master and the workers apart (--preload rows), member pause p50 / p99:", ""]
        lines += [f"- {r['workers']} worker(s): master {cell(r['master_pause_ms'])} ms, workers "
                  f"{cell(r['worker_pause_ms'])} ms" for r in tree_rows]
    lines.append("")
    for r in rows:
        notes = []
        if r["missing"]:
            notes.append(f"members missing from {len(r['missing'])} report(s), e.g. {r['missing'][:3]}")
        if r["extra"]:
            notes.append(f"pids in {len(r['extra'])} report(s) that were not the master or its workers: {r['extra'][:3]}")
        if r["refused"]:
            notes.append(f"{len(r['refused'])} update(s) not committed: {r['refused'][:3]}")
        if r["not_committed"]:
            notes.append(f"{len(r['not_committed'])} member(s) not committed: {r['not_committed'][:3]}")
        if r["waited_short"]:
            notes.append(f"{r['waited_short']} update(s) whose wait for answers after the mark timed out")
        if r["stale"]:
            notes.append(f"stale samples: {r['stale_samples']}")
        if r["failures"]:
            notes.append(f"failure samples: {r['failure_samples']}")
        if r["lost_state"]:
            notes.append(f"{r['lost_state']} answers whose hit count went back (lost state)")
        if r.get("bells"):
            notes.append("members' bell: " + ", ".join(f"{k} {v}" for k, v in sorted(r["bells"].items())))
            if r["bells"].get("realtime"):
                notes.append(f"the GIL boost reached its cap (20 ms) {r.get('boost_capped', 0)} time(s)")
        slowest = [max(upd, key=lambda m: m[1]) for upd in r.get("after_bell", [])
                   if upd and all(m[1] is not None for m in upd)]
        if slowest:
            lets_go = [m[1] for m in slowest]
            # Two looks: one before staging, one in the commit, each held.
            looked_again = sum(1 for upd in r["after_bell"] for m in upd if m[2] > 2)
            members = sum(len(upd) for upd in r["after_bell"])
            notes.append(f"slowest member let go {pct(lets_go, 50):.2f} / {pct(lets_go, 99):.2f} ms after the bell "
                         f"(p50 / p99); {looked_again} of {members} members looked for their safe point more than "
                         "twice (before staging or after the bell)")
            notes.extend(late_members(slowest))
        alone = [a for a in r.get("run_alone_ms", []) if a > 0]
        if r.get("run_alone_ms"):
            notes.append(f"a member let blocking threads run on alone in {len(alone)} of {len(r['run_alone_ms'])} updates"
                         + (f" (longest {max(alone):.2f} ms)" if alone else ""))
        covered = (f"{r['pids_answering']} process(es) answered, at least {r['pids_after_marks_min']} "
                   f"after every mark")
        lines.append(f"- {title(r)}: `pyreload {r['command']}`; {r['requests']:,} requests; {covered}"
                     + ("; " + "; ".join(notes) if notes else "; every report listed the master and every "
                        "live worker, each committed" if r["workers"] else ""))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--venv", default=str(REPO / "bench/.venv"))
    parser.add_argument("--updates", type=int, default=30, help="updates per row (>= 30 for a p99)")
    parser.add_argument("--workers", default="1,4,8", help="gunicorn worker counts for the --preload rows")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=0,
                        help="gunicorn --max-requests N (jitter N/5) in the worker rows: workers retire and "
                             "are re-forked while updates run (default: off)")
    parser.add_argument("--no-idle", action="store_true",
                        help="skip the last row: the largest tree again, with no clients")
    parser.add_argument("--commit", default="each,together,each-normal,together-normal",
                        help="`[tree] commit` modes for the largest tree's rows (the others use each); "
                             "MODE-normal adds `realtime = false`, MODE-still `run_alone_us = 0` (both: MODE-normal-still)")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    venv = pathlib.Path(args.venv).resolve()
    if not (venv / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    ensure_web_pins(venv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-tree-"))
    started = time.time()
    counts = [int(n) for n in args.workers.split(",")]
    modes = args.commit.split(",")
    big = max(counts)
    plan = [("single", 0, False, args.clients, "each"), ("w1", 1, False, args.clients, "each")]
    plan += [(f"w{n}-preload", n, True, args.clients, "each") for n in counts if n != big or "each" in modes]
    plan += [(f"w{big}-preload-{m}", big, True, args.clients, m) for m in modes if m != "each"]
    if not args.no_idle:
        plan += [(f"w{big}-preload-idle-{m}", big, True, 0, m) for m in modes if commit_mode(m)[1]]
    rows = []
    for label, workers, preload, clients, commit in plan:
        print(f"{label}: {args.updates} updates under {clients} clients", file=sys.stderr, flush=True)
        extra = (["--max-requests", str(args.max_requests), "--max-requests-jitter", str(args.max_requests // 5)]
                 if args.max_requests and workers else [])
        rows.append(row(pyreload, venv, work, label, workers, preload, args.updates, clients, extra, commit))
    print(table(rows, args.updates, args.clients))
    print(f"({time.time() - started:.0f} s; logs in {work})", file=sys.stderr)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"updates": args.updates, "clients": args.clients,
                                                       "seconds": time.time() - started, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
