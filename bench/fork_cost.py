"""Benchmark: what a fork costs a program under `pyreload run`.

    python3 bench/fork_cost.py --pyreload target/release/pyreload [--rounds 12] [--forks 200]

Under `pyreload run`, a forked child becomes a member of the program's
tree: CPython's `after_in_child` hook (src/host/fork.rs) closes the
inherited control sockets, builds the child's own process state, binds
`<runtime>/tree-<rootpid>/<pid>.sock` and starts a control thread. This
measures that against plain `python3`.

One small program forks FORKS times: `os.fork()`, the child calls
`os._exit(0)` at once (as `multiprocessing` children end), the parent
`os.waitpid`s it. Each round trip is timed in the parent with
`time.perf_counter_ns`, so it includes the child's hook (the child runs it
before `_exit`) but not the interpreter's start. The child also reports
when `os.fork()` returned in it ("birth": the fork itself, CPython's
after-fork work and every `after_in_child` hook, ours included; the
monotonic clock is the same in both processes). The program runs ROUNDS
times under each host, alternately (python3, pyreload run, python3, ...),
so both see the same load. Reported: p50, p90 and p99 of every round trip
of each host, and the ratio pyreload / python3 of each.

Times on a shared 2-core machine move with the load, so two figures that
do not are counted too, where the tools are on PATH. Instructions the
child executes, from entering CPython's `PyOS_AfterFork_Child` (which runs
every `after_in_child` hook) to `_exit` (callgrind with
`--zero-before=PyOS_AfterFork_Child`, 20 forks, median over the children;
user space only). And the system calls each fork adds to the whole
program, parent and child (`strace -f -c`, 50 forks against 0, per fork).

Each child leaves its member socket behind (`os._exit` runs no exit hook);
the root prunes them when it lists members or exits. The runtime directory
is a fresh temporary one.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from benchlib import pct

PROGRAM = r"""
import os, sys, time
n = int(sys.argv[1])
r, w = os.pipe()
trips, births = [], []
for _ in range(n):
    t = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os.write(w, (time.perf_counter_ns() - t).to_bytes(8, "little"))
        os._exit(0)
    os.waitpid(pid, 0)
    trips.append(time.perf_counter_ns() - t)
    births.append(int.from_bytes(os.read(r, 8), "little"))
print(" ".join(map(str, trips)))
print(" ".join(map(str, births)))
"""


def run(cmd, forks, env):
    done = subprocess.run(cmd + [str(forks)], env=env, capture_output=True, text=True, check=True)
    trips, births = done.stdout.splitlines()
    return [int(x) / 1000.0 for x in trips.split()], [int(x) / 1000.0 for x in births.split()]


SIMPLE = r"""
import os, sys
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


def child_instructions(cmd, tmp, env):
    """Median instructions of the children of a 20-fork run, from PyOS_AfterFork_Child on."""
    out = tempfile.mkdtemp(dir=tmp)
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--zero-before=PyOS_AfterFork_Child",
         f"--callgrind-out-file={out}/cg.%p"] + cmd + ["20"],
        env=dict(env, PYTHONHASHSEED="0"), capture_output=True, check=True,
    )
    totals = []
    for path in glob.glob(f"{out}/cg.*"):
        with open(path) as f:
            for line in f:
                if line.startswith("totals:"):
                    totals.append(int(line.split()[1]))
    # The parent's file counts the whole program; the children's are small.
    totals.sort()
    return statistics.median(totals[:-1])


def syscalls_per_fork(cmd, tmp, env):
    """System calls per fork, parent and children together, with the count of each."""
    def count(n):
        out = os.path.join(tmp, f"strace-{n}-{len(os.listdir(tmp))}")
        subprocess.run(["strace", "-f", "-c", "-o", out] + cmd + [str(n)], env=env, capture_output=True, check=True)
        calls = {}
        with open(out) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                    calls[fields[-1]] = int(fields[3])
        return calls
    none, some = count(0), count(50)
    per = {k: (some.get(k, 0) - none.get(k, 0)) / 50 for k in set(none) | set(some)}
    return {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.5}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyreload", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--forks", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="fork-cost-") as tmp:
        script = os.path.join(tmp, "forks.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        env = dict(os.environ, PYRELOAD_RUNTIME_DIR=os.path.join(tmp, "run"))
        hosts = {
            "python3": [args.python, script],
            "pyreload run": [args.pyreload, "run", script],
        }
        samples = {(name, what): [] for name in hosts for what in ("trip", "birth")}
        for _ in range(args.rounds):
            for name, cmd in hosts.items():
                trips, births = run(cmd, args.forks, env)
                samples[(name, "trip")].extend(trips)
                samples[(name, "birth")].extend(births)
        counted = {}
        simple = os.path.join(tmp, "simple.py")
        with open(simple, "w") as f:
            f.write(SIMPLE)
        counts = {"python3": [args.python, simple], "pyreload run": [args.pyreload, "run", simple]}
        if shutil.which("valgrind"):
            counted["instructions"] = {name: child_instructions(cmd, tmp, env) for name, cmd in counts.items()}
        if shutil.which("strace"):
            counted["syscalls"] = {name: syscalls_per_fork(cmd, tmp, env) for name, cmd in counts.items()}


    print(f"{args.forks} forks per run, {args.rounds} runs per host, alternating; µs")
    print()
    print("| figure | host | p50 | p90 | p99 |")
    print("|---|---|---:|---:|---:|")
    rows = {}
    for what, label in (("trip", "fork + _exit + waitpid"), ("birth", "fork until it returns in the child")):
        for name in hosts:
            r = rows[(name, what)] = {p: pct(samples[(name, what)], p) for p in (50, 90, 99)}
            print(f"| {label} | {name} | {r[50]:.1f} | {r[90]:.1f} | {r[99]:.1f} |")
        base, ours = rows[("python3", what)], rows[("pyreload run", what)]
        print(f"| {label} | ratio | " + " | ".join(f"{ours[p] / base[p]:.2f}x" for p in (50, 90, 99)) + " |")
    print()
    for what in ("trip", "birth"):
        d = rows[("pyreload run", what)][50] - rows[("python3", what)][50]
        print(f"{what}: pyreload run - python3, p50: {d:+.1f} µs per fork")
    if "instructions" in counted:
        i = counted["instructions"]
        print()
        print("| instructions in the child (callgrind), median of 20 | python3 | pyreload run | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| PyOS_AfterFork_Child to _exit | {i['python3']:,.0f} | {i['pyreload run']:,.0f} | {i['pyreload run'] / i['python3']:.3f} |")
        print()
        print(f"the member hook adds {i['pyreload run'] - i['python3']:,.0f} instructions per fork")
    if "syscalls" in counted:
        print()
        for name, per in counted["syscalls"].items():
            total = sum(per.values())
            listed = ", ".join(f"{k} {v:g}" for k, v in per.items())
            print(f"system calls per fork, {name}: {total:.1f} ({listed})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "forks": args.forks,
                    "rounds": args.rounds,
                    "percentiles": {f"{n} {w}": r for (n, w), r in rows.items()},
                    **counted,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
