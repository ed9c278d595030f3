"""Benchmark: the pause of a code-only update against the size of the heap.

    bench/heap_pause.sh     # = python3 bench/heap_pause.py --pyreload target/release/pyreload

A program under `pyreload run` holds N live objects the collector tracks
(small lists), for N = 10k, 100k, 1M and 10M, and a module `hot` with a few
functions. A code-only update of `hot` (two sources, applied alternately)
is applied 30 times at each size. A commit that walked the heap would grow
with N; pyreload's should not. Printed: pause and commit p50/p99 per size,
and each size's median pause as a ratio of the smallest's.

With --ipython-python (a python with IPython installed), the same change
is also made by IPython's autoreload (superreload, driven
programmatically) in a plain process holding the same heap, and the time
of each reload is measured the same way. Autoreload does not stop other
threads: that time is how long the program runs half old, half new.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from benchlib import pct

REPO = pathlib.Path(__file__).resolve().parent.parent

HOT = '''
def handle(x):
    return x + {n}

def describe():
    return "hot {n}"

class Counter:
    def bump(self, by=1):
        return by * {n}
'''

PROGRAM = '''
import sys
import hot
N = int(sys.argv[1])
HEAP = [[i] for i in range(N)]
print("ready", flush=True)
sys.stdin.read()
'''


IPYTHON = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
import hot
from IPython.extensions.autoreload import ModuleReloader
N = int(sys.argv[1])
HEAP = [[i] for i in range(N)]
reloader = ModuleReloader()
reloader.enabled = True
reloader.check_all = True
reloader.deduper_reloader.enabled = False
reloader.check(do_reload=False)
sources = [open(os.path.join(sys.argv[2], n)).read() for n in ("hot_a.py", "hot_b.py")]
times = []
stamp = time.time()
for i in range(int(sys.argv[3])):
    path = os.path.join(sys.argv[2], "hot.py")
    with open(path, "w") as f:
        f.write(sources[i % 2])
    stamp += 2
    os.utime(path, (stamp, stamp))
    t = time.perf_counter()
    reloader.check(do_reload=True)
    times.append((time.perf_counter() - t) * 1000)
    assert hot.describe() == f"hot {2 + i % 2}", hot.describe()
print(json.dumps(times))
'''


def pyreload_pauses(pyreload, n, rounds, work):
    """(pauses ms, commits ms) of `rounds` code-only updates of `hot` in a
    program under `pyreload` holding `n` live objects; `work` is a fresh
    directory (bench/versions.py calls this once per interpreter)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "hot.py").write_text(HOT.format(n=1))
    (work / "hot_a.py").write_text(HOT.format(n=2))
    (work / "hot_b.py").write_text(HOT.format(n=3))
    (work / "prog.py").write_text(PROGRAM)
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    prog = subprocess.Popen([pyreload, "run", str(work / "prog.py"), str(n)], cwd=work, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert prog.stdout.readline().strip() == "ready"
        pauses, commits = [], []
        for i in range(rounds):
            spec = work / "spec.toml"
            spec.write_text(f'[update]\nname = "hot"\nto = "{i}"\n\n[[reload]]\nmodule = "hot"\n'
                            f'source = "{"hot_a.py" if i % 2 == 0 else "hot_b.py"}"\n')
            out = subprocess.run([pyreload, "apply", "--json", "--pid", str(prog.pid), str(spec)],
                                 env=env, capture_output=True, text=True)
            report = json.loads(out.stdout)
            if report["outcome"] != "committed":
                sys.exit(f"update did not commit: {out.stdout}{out.stderr}")
            pauses.append(report["timings"]["pause_ms"])
            commits.append(report["timings"]["commit_ms"])
    finally:
        prog.stdin.close()
        prog.wait(timeout=120)
    return pauses, commits


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--ipython-python", help="a python with IPython, to compare with its autoreload")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-heap-"))
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        pauses, commits = pyreload_pauses(pyreload, n, args.rounds, work)
        ipython = []
        if args.ipython_python:
            (work / "hot.py").write_text(HOT.format(n=1))
            out = subprocess.run([args.ipython_python, "-c", IPYTHON, str(n), str(work), str(args.rounds)],
                                 capture_output=True, text=True, cwd=work)
            if out.returncode != 0:
                sys.exit(f"the IPython autoreload run failed:\n{out.stderr}")
            ipython = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((n, pauses, commits, ipython))
    base = statistics.median(rows[0][1])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            [{"objects": n, "pauses_ms": p, "commits_ms": c, "ipython_ms": ip} for n, p, c, ip in rows], indent=2))
    print(f"code-only update of one module, {args.rounds} updates per heap size, {os.cpu_count()} CPUs")
    print()
    head = "| live objects | pause p50 ms | pause p99 ms | commit p50 ms | commit p99 ms | median pause / smallest heap |"
    rule = "|---:|---:|---:|---:|---:|---:|"
    if args.ipython_python:
        head += " IPython autoreload p50 ms | p99 ms | autoreload / pyreload (p50) |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for n, pauses, commits, ipython in rows:
        line = (f"| {n:,} | {pct(pauses, 50):.3f} | {pct(pauses, 99):.3f} | {pct(commits, 50):.3f} | "
                f"{pct(commits, 99):.3f} | {statistics.median(pauses) / base:.2f}x |")
        if ipython:
            line += f" {pct(ipython, 50):.3f} | {pct(ipython, 99):.3f} | {pct(ipython, 50) / pct(pauses, 50):.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
