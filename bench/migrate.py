"""Benchmark: eager migration cost per instance against the bare floor.

    bench/migrate.sh          # = python3 bench/migrate.py --pyreload target/release/pyreload

For 10k, 100k and 1M live instances, a program under `pyreload run`
(bench/migrate_prog.py) first times the floor in its own process: a plain
Python loop doing `obj.__class__ = New; f(obj)`. Then `pyreload apply`
runs a class transform with the same f over its N live instances. The
report gives the time to find the instances (one walk of the collector's
objects) and the time to convert them, apart. Printed: ns per instance for
each, and the conversion as a ratio of the floor.

The same update with `mode = "lazy"` runs next, on a fresh program of the
same size: its pause (a sample of 32 converted in the commit) against the
eager pause, and the sweep that converts the rest after the pause.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

SPEC = """
[update]
name = "items-v2"
to = "2"

[[transform]]
class = "__main__.Item"
function = "__main__.to_v2"
mode = "{mode}"

[safe_point]
timeout_ms = 60000
"""


def run(pyreload, n, work, mode):
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    prog = subprocess.Popen([pyreload, "run", str(REPO / "bench/migrate_prog.py"), str(n)],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = prog.stdout.readline().split()
        assert line[0] == "ready", line
        floor = float(line[1])
        spec = work / "spec.toml"
        spec.write_text(SPEC.replace("{mode}", mode))
        out = subprocess.run([pyreload, "apply", "--json", "--pid", str(prog.pid), str(spec)],
                             env=env, capture_output=True, text=True)
        report = json.loads(out.stdout)
        if report["outcome"] != "committed":
            sys.exit(f"the update did not commit: {out.stdout}{out.stderr}")
        t = report["transforms"][0]
        sweep = (t.get("lazy") or {}).get("sweep_ms", 0.0)
        return floor, t["instances"], t["find_ms"], t["convert_ms"], report["timings"]["pause_ms"], sweep
    finally:
        prog.stdin.close()
        prog.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-migrate-"))
    print("| instances | floor ns/inst | eager: find ns/inst | eager: convert ns/inst | convert / floor | eager pause ms | lazy pause ms | lazy / eager pause | lazy sweep ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in [int(s) for s in args.sizes.split(",")]:
        floor, found, find_ms, convert_ms, pause_ms, _ = run(pyreload, n, work, "eager")
        assert found == n, f"found {found} instances, expected {n}"
        _, lazy_found, _, _, lazy_pause_ms, sweep_ms = run(pyreload, n, work, "lazy")
        assert lazy_found == n, f"lazy converted {lazy_found} instances, expected {n}"
        find_ns = find_ms * 1e6 / n
        convert_ns = convert_ms * 1e6 / n
        print(f"| {n:,} | {floor:.0f} | {find_ns:.0f} | {convert_ns:.0f} | {convert_ns / floor:.2f}x | {pause_ms:.1f} "
              f"| {lazy_pause_ms:.2f} | {lazy_pause_ms / pause_ms:.3f} | {sweep_ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
