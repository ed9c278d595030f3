"""Benchmark: the headline figures on every CPython, side by side.

    python3 bench/versions.py [--versions 3.10.13,3.11.7,3.12.1,3.13.0] [--json out.json]

For each interpreter (a pyenv version, or a path to a `python`), pyreload is
built for it (`cargo build --release --locked` with PYO3_PYTHON set to it
and CARGO_TARGET_DIR=target/pyX.Y, as .ci/run and README's "Which Python"
do, so a build done there is reused) and these are measured with that
binary, by the functions the full benchmarks use:

- pause p99 of a code-only update at 1M live objects (heap_pause.py);
- eager migration time per instance / bare floor at 1M instances, median of
  the per-round ratios, and the lazy migration pause at 1M (migrate.py);
- instructions per request of the case-study server under that version's
  own `python` against `pyreload run`, counted by callgrind (overhead.py),
  where valgrind is on PATH.

Fewer rounds than the full benchmarks take, so the four versions fit in a
few minutes; the printed section says how many. Printed: the markdown
section that bench/run.py puts in BENCHMARKS.md.
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import pct
from heap_pause import pyreload_pauses
from migrate import counted as counted_migration, eager_rounds, lazy
from overhead import CALLGRIND_REQUESTS, instructions_per_request

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_VERSIONS = "3.10.13,3.11.7,3.12.1,3.13.0"
N = 1_000_000  # the goals are stated at 1M; --objects only for trying the script quickly


def interpreter(version):
    """The python executable for a pyenv version or a path, and its X.Y."""
    if os.sep in version:
        python = version
    else:
        prefix = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True)
        if prefix.returncode != 0:
            sys.exit(f"pyenv has no CPython {version} ({prefix.stderr.strip()}); "
                     f"install it with `PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install {version}` "
                     f"or leave it out of --versions")
        python = f"{prefix.stdout.strip()}/bin/python3"
    # The real executable, not a launcher script (a pyenv shim), so that
    # valgrind counts the interpreter itself.
    out = subprocess.run([python, "-c", "import sys, platform; "
                          "print(sys.executable); print('%d.%d' % sys.version_info[:2]); print(platform.python_version())"],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1], out[2]


def available(versions):
    """Those of `versions` this machine has (pyenv knows them, or the path
    exists); bench/run.py measures these and says which it left out."""
    found = []
    for v in versions:
        ok = os.path.exists(v) if os.sep in v else shutil.which("pyenv") and subprocess.run(
            ["pyenv", "prefix", v], capture_output=True).returncode == 0
        if ok:
            found.append(v)
        else:
            print(f"warning: CPython {v} not found (pyenv prefix {v}); the per-version table leaves it out",
                  file=sys.stderr)
    return found


def build(python, minor):
    """pyreload built for `python`, in target/pyX.Y, as README says."""
    env = dict(os.environ, PYO3_PYTHON=python, CARGO_TARGET_DIR=str(REPO / f"target/py{minor}"))
    cmd = ["cargo", "build", "--release", "--locked", "--quiet"]
    print(f"$ PYO3_PYTHON={python} CARGO_TARGET_DIR=target/py{minor} {' '.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return str(REPO / f"target/py{minor}/release/pyreload")


def loadavg():
    return pathlib.Path("/proc/loadavg").read_text().split()[0]


def measure(version, args, work):
    python, minor, full = interpreter(version)
    pyreload = args.pyreload_for.get(minor) or build(python, minor)
    row = {"version": full, "python": python, "pyreload": pyreload, "load_start": loadavg()}
    t = time.time()
    print(f"== CPython {full}: heap pause", file=sys.stderr, flush=True)
    pauses, commits = pyreload_pauses(pyreload, args.objects, args.heap_rounds, work / f"heap-{minor}")
    row["pause_p99_ms"], row["pause_p50_ms"], row["heap_rounds"] = pct(pauses, 99), pct(pauses, 50), len(pauses)
    slowest = max(range(len(pauses)), key=pauses.__getitem__)
    row["slowest_commit_ms"], row["commit_p50_ms"] = commits[slowest], pct(commits, 50)
    row["pause_first_ms"], row["pause_rest_max_ms"] = pauses[0], max(pauses[1:], default=float("nan"))
    print(f"== CPython {full}: eager and lazy migration", file=sys.stderr, flush=True)
    (work / f"migrate-{minor}").mkdir()
    rounds = eager_rounds(pyreload, args.objects, args.migrate_rounds, work / f"migrate-{minor}")
    ratios = sorted(convert / floor for floor, _, convert, _ in rounds)
    row.update(eager_ratio=statistics.median(ratios), eager_ratio_low=ratios[0], eager_ratio_high=ratios[-1],
               floor_ns=statistics.median(r[0] for r in rounds), convert_ns=statistics.median(r[2] for r in rounds),
               eager_pause_ms=statistics.median(r[3] for r in rounds), migrate_rounds=len(rounds))
    row["lazy_pause_ms"], row["sweep_ms"], _ = lazy(pyreload, args.objects, work / f"migrate-{minor}")
    if args.count_migration and shutil.which("valgrind") and shutil.which("callgrind_control"):
        print(f"== CPython {full}: eager migration counted (callgrind)", file=sys.stderr, flush=True)
        row["migration_counted"] = counted_migration(pyreload, args.count_migration, work / f"migrate-{minor}")
    if args.callgrind_runs and shutil.which("valgrind") and shutil.which("callgrind_control"):
        print(f"== CPython {full}: instructions per request (callgrind)", file=sys.stderr, flush=True)
        env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / f"run-{minor}"))
        counted = {"python": [], "pyreload": []}
        for run in range(args.callgrind_runs):
            for name, cmd in (("python", [python, "-m", "kvserver"]), ("pyreload", [pyreload, "run", "-m", "kvserver"])):
                counted[name].append(instructions_per_request(cmd, env, work, f"{name}{minor}", run))
        row["instructions"] = counted
        row["instructions_ratio"] = statistics.median(counted["python"]) / statistics.median(counted["pyreload"])
    row["seconds"], row["load_end"] = time.time() - t, loadavg()
    return row


# (label, target, value of a row as text, met?) for each headline goal;
# run.py's goal table has the same targets for the default python3.
GOALS = [
    ("code-only pause p99, 1M live objects", "< 1 ms",
     lambda r: f"{r['pause_p99_ms']:.2f} ms", lambda r: r["pause_p99_ms"] < 1),
    ("eager migration / floor, 1M (median of rounds)", "<= 2x",
     lambda r: f"{r['eager_ratio']:.2f}x ({r['eager_ratio_low']:.2f}-{r['eager_ratio_high']:.2f})",
     lambda r: r["eager_ratio"] <= 2),
    ("lazy migration pause, 1M", "< 1 ms",
     lambda r: f"{r['lazy_pause_ms']:.2f} ms", lambda r: r["lazy_pause_ms"] < 1),
    ("instructions per request, `python` / `pyreload run`", ">= 0.99",
     lambda r: f"{r['instructions_ratio']:.4f}" if "instructions_ratio" in r else "not counted",
     lambda r: r["instructions_ratio"] >= 0.99 if "instructions_ratio" in r else None),
]

MISSED_BY = {
    "code-only pause p99, 1M live objects": lambda r: f"{r['pause_p99_ms'] - 1:.2f} ms over",
    "eager migration / floor, 1M (median of rounds)": lambda r: f"{r['eager_ratio'] - 2:.2f}x over",
    "lazy migration pause, 1M": lambda r: f"{r['lazy_pause_ms'] - 1:.2f} ms over",
    "instructions per request, `python` / `pyreload run`": lambda r: f"{0.99 - r['instructions_ratio']:.4f} under",
}


def goal_rows(rows):
    """Rows for BENCHMARKS.md's goal table: one per goal and version."""
    out = []
    for label, target, value, met in GOALS:
        for r in rows:
            if met(r) is not None:  # not measured: no row, rather than one that says met
                out.append((f"CPython {r['version']}: {label}", target, value(r), met(r)))
    return out


def cell(r, label, value, met):
    if met(r) or met(r) is None:
        return value(r)
    return f"{value(r)}, **missed** ({MISSED_BY[label](r)})"


def section(rows, command):
    """The markdown section for BENCHMARKS.md."""
    lines = [
        "## Every CPython: the headline figures side by side",
        "",
        f"`{command}` (bench/versions.py). pyreload is built for each interpreter "
        "(`PYO3_PYTHON=<its python> CARGO_TARGET_DIR=target/pyX.Y cargo build --release --locked`) and the "
        "figures below are measured with that build, by the same functions as the sections further down: "
        f"a code-only update at 1M live objects ({rows[0]['heap_rounds']} updates; the full run takes 30), "
        f"eager migration of 1M instances against the floor ({rows[0]['migrate_rounds']} rounds; the full run "
        "takes 3 at 1M), the lazy pause at 1M, and the instructions per request of the case-study server under that "
        f"version's own `python` and under `pyreload run` (callgrind, {CALLGRIND_REQUESTS:,} requests, "
        + (f"{len(rows[0]['instructions']['python'])} run(s) each)." if "instructions" in rows[0]
           else "not counted in this run: valgrind missing or --callgrind-runs 0)."),
        "",
        "| goal | target | " + " | ".join(f"CPython {r['version']}" for r in rows) + " |",
        "|---|---|" + "---:|" * len(rows),
    ]
    for label, target, value, met in GOALS:
        lines.append(f"| {label} | {target} | " + " | ".join(cell(r, label, value, met) for r in rows) + " |")
    lines.append("| code-only pause, 1M: p50 / first update / the slowest of the rest | | " + " | ".join(
        f"{r['pause_p50_ms']:.2f} / {r['pause_first_ms']:.2f} / {r['pause_rest_max_ms']:.2f} ms" for r in rows) + " |")
    lines.append("| eager: floor / convert ns per instance | | "
                 + " | ".join(f"{r['floor_ns']:.0f} / {r['convert_ns']:.0f}" for r in rows) + " |")
    if any(r.get("migration_counted") for r in rows):
        lines.append("| eager: instructions per instance, floor / convert (callgrind, "
                     f"{rows[0]['migration_counted']['instances']:,} instances) | | " + " | ".join(
                         f"{c['floor']:.0f} / {c['convert']:.0f} ({c['ratio']:.2f}x)" if (c := r.get("migration_counted"))
                         else "" for r in rows) + " |")
    lines.append("| eager pause, 1M | | " + " | ".join(f"{r['eager_pause_ms']:.0f} ms" for r in rows) + " |")
    if any("instructions" in r for r in rows):
        lines.append("| instructions per request, `python` / `pyreload run` (median) | | " + " | ".join(
            f"{statistics.median(r['instructions']['python']):,.0f} / {statistics.median(r['instructions']['pyreload']):,.0f}"
            if "instructions" in r else "" for r in rows) + " |")
    lines.append("| load average (1 min) at start / end | | "
                 + " | ".join(f"{r['load_start']} / {r['load_end']}" for r in rows) + " |")
    lines.append("")
    lines.append(explain(rows))
    return "\n".join(lines)


def explain(rows):
    """What the table says, and why a version misses a goal, from the numbers."""
    old = [r for r in rows if tuple(map(int, r["version"].split(".")[:2])) < (3, 12)]
    new = [r for r in rows if tuple(map(int, r["version"].split(".")[:2])) >= (3, 12)]
    pauses_met = all(r["pause_p99_ms"] < 1 and r["lazy_pause_ms"] < 1 for r in rows)
    text = ("The pause goals hold on every version: a code-only commit patches the module's namespace in place, "
            "and a lazy commit converts a sample of 32, whatever the version." if pauses_met else "")
    for r in rows:
        if r["pause_p99_ms"] >= 1:
            slowest = "the first" if r["pause_first_ms"] >= r["pause_rest_max_ms"] else "not the first"
            text += (f" On {r['version']} the code-only p99 ({r['pause_p99_ms']:.2f} ms) is near the slowest of "
                     f"{r['heap_rounds']} updates, {slowest} ({max(r['pause_first_ms'], r['pause_rest_max_ms']):.2f} ms);"
                     f" the p50 is {r['pause_p50_ms']:.2f} ms.")
            if "slowest_commit_ms" in r:
                slow = max(r["pause_first_ms"], r["pause_rest_max_ms"])
                text += (f" The merge took {r['slowest_commit_ms']:.2f} ms of the slowest update's pause (p50 of "
                         f"all: {r['commit_p50_ms']:.2f} ms)" + (
                             "; the rest was outside the merge: stopping and resuming the world, the safe-point "
                             "check, the commit's bookkeeping." if r["slowest_commit_ms"] < slow / 2
                             else ": the update's own work was slow."))
        if r["lazy_pause_ms"] >= 1 and r["pause_first_ms"] >= 1:
            text += (f" On {r['version']} the lazy pause ({r['lazy_pause_ms']:.2f} ms) is a single update, the first "
                     f"in a fresh program, so it pays what a first update pays (first update of the code-only "
                     f"run: {r['pause_first_ms']:.2f} ms).")
        elif r["lazy_pause_ms"] >= 1:
            text += (f" On {r['version']} the lazy pause ({r['lazy_pause_ms']:.2f} ms) is a single update, in a fresh "
                     f"program whose first update is not slower than the rest (code-only: {r['pause_first_ms']:.2f} "
                     f"ms). Most of a lazy pause is the commit's own work, installing the hooks on the class and "
                     f"converting a sample of 32 instances, so the goal holds with a small margin on every version, "
                     f"and one slower sample misses it.")
    if not pauses_met:
        text += " The load average during each version's run is in the last row of the table."
    if old and new:
        ratio_old = statistics.median(r["eager_ratio"] for r in old)
        ratio_new = statistics.median(r["eager_ratio"] for r in new)
        per_inst = (statistics.median(r["convert_ns"] - r["floor_ns"] for r in new)
                    - statistics.median(r["convert_ns"] - r["floor_ns"] for r in old))
        text += (f" The eager ratio is {ratio_old:.2f}x (median) before 3.12 and {ratio_new:.2f}x from 3.12 on, "
                 f"where conversion costs about {per_inst:+.0f} ns per instance more above the floor. From 3.12 "
                 f"pyreload stops the other threads with a `sys.monitoring` tool of its own "
                 f"(src/engine/world/monitoring.rs), whose `PY_START` event is global while the world is "
                 f"stopped. `sys.monitoring` cannot deliver an event to some threads only, so the control "
                 f"thread's own call of the transformer, once per instance, also enters pyreload's callback, "
                 f"which sees its own thread and returns at once. The callback is a bare C function "
                 f"(`METH_FASTCALL`), so what is left is CPython's instrumented call path and event dispatch; "
                 f"turning the event off for the transformer (`DISABLE`) would turn it off for every thread, "
                 f"and a thread entering it from C would then not park. Before 3.12 the barrier is a trace "
                 f"function on the other threads only, and the control thread runs uninstrumented. Outside the "
                 f"window nothing is instrumented, as the instructions per request show.")
        c_old = [r["migration_counted"] for r in old if r.get("migration_counted")]
        c_new = [r["migration_counted"] for r in new if r.get("migration_counted")]
        if c_old and c_new:
            text += (f" Counted by callgrind, which the machine's load does not move, the conversion executes "
                     f"{statistics.median(c['convert'] for c in c_old):.0f} instructions per instance before 3.12 "
                     f"and {statistics.median(c['convert'] for c in c_new):.0f} from 3.12 on (median), against a "
                     f"floor of {statistics.median(c['floor'] for c in c_old):.0f} and "
                     f"{statistics.median(c['floor'] for c in c_new):.0f}: "
                     f"{statistics.median(c['convert'] - c['floor'] for c in c_old):+.0f} and "
                     f"{statistics.median(c['convert'] - c['floor'] for c in c_new):+.0f} per instance above it.")
    if all("instructions_ratio" in r and r["instructions_ratio"] >= 0.99 for r in rows):
        text += (" Between updates pyreload runs no code on any version: instructions per request stay within "
                 "the goal.")
    return text.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default=DEFAULT_VERSIONS,
                        help="comma-separated pyenv versions or python paths")
    parser.add_argument("--heap-rounds", type=int, default=15, help="code-only updates at 1M objects")
    parser.add_argument("--migrate-rounds", type=int, default=3, help="eager rounds at 1M instances")
    parser.add_argument("--callgrind-runs", type=int, default=1, help="callgrind runs per host (0: skip)")
    parser.add_argument("--count-migration", type=int, default=20_000,
                        help="instances in the callgrind count of the eager loops (0: skip)")
    parser.add_argument("--pyreload", action="append", default=[], metavar="X.Y=PATH",
                        help="use this build for CPython X.Y instead of building one")
    parser.add_argument("--objects", type=int, default=N, help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    args.pyreload_for = {minor: str(pathlib.Path(path).resolve())
                         for minor, path in (p.split("=", 1) for p in args.pyreload)}
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-versions-"))
    started = time.time()
    rows = [measure(v, args, work) for v in args.versions.split(",")]
    command = "python3 bench/versions.py" + "".join(
        f" --{k.replace('_', '-')} {getattr(args, k)}" for k in ("heap_rounds", "migrate_rounds", "count_migration", "callgrind_runs"))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "command": command,
                                                       "seconds": time.time() - started}, indent=1))
    print(section(rows, command))
    print(f"\n({time.time() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
