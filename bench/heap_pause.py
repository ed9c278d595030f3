"""Benchmark: the pause of a code-only update against the size of the heap.

    bench/heap_pause.sh     # = python3 bench/heap_pause.py --pyreload target/release/pyreload

A program under `pyreload run` holds N live objects the collector tracks
(small lists), for N = 10k, 100k, 1M and 10M, and a module `hot` with a few
functions. A code-only update of `hot` (two sources, applied alternately)
is applied 30 times at each size. A commit that walked the heap would grow
with N; pyreload's should not. Printed: pause and commit p50/p99 per size,
and each size's median pause as a ratio of the smallest's.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

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


def pct(values, p):
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-heap-"))
    (work / "hot.py").write_text(HOT.format(n=1))
    (work / "hot_a.py").write_text(HOT.format(n=2))
    (work / "hot_b.py").write_text(HOT.format(n=3))
    (work / "prog.py").write_text(PROGRAM)
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        prog = subprocess.Popen([pyreload, "run", str(work / "prog.py"), str(n)], cwd=work, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert prog.stdout.readline().strip() == "ready"
            pauses, commits = [], []
            for i in range(args.rounds):
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
            rows.append((n, pauses, commits))
        finally:
            prog.stdin.close()
            prog.wait(timeout=120)
    base = statistics.median(rows[0][1])
    print(f"code-only update of one module, {args.rounds} updates per heap size, {os.cpu_count()} CPUs")
    print()
    print("| live objects | pause p50 ms | pause p99 ms | commit p50 ms | commit p99 ms | median pause / smallest heap |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, pauses, commits in rows:
        print(f"| {n:,} | {pct(pauses, 50):.3f} | {pct(pauses, 99):.3f} | {pct(commits, 50):.3f} | "
              f"{pct(commits, 99):.3f} | {statistics.median(pauses) / base:.2f}x |")


if __name__ == "__main__":
    main()
