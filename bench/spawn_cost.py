"""Benchmark: what starting a child with `sys.executable` costs under `pyreload run`.

    python3 bench/spawn_cost.py --pyreload target/release/pyreload [--rounds 6] [--spawns 10]

Under `pyreload run`, `sys.executable` is the tree's stand-in for python
(src/host/shim.rs). A multiprocessing spawn child started through it
embeds CPython as `pyreload run` does, asks its parent for the version and
becomes a member (socket, control thread); any other command (here
`-c pass`) goes through one more `execv`, of the real python. This
measures both against plain `python3`:

- spawn: `get_context("spawn").Process(...).start()` until the child's
  first message on a pipe, then `join()`;
- exec: `subprocess.run([sys.executable, "-c", "pass"])`;

each as wall time and as the CPU time (user + system) of the reaped
children (`RUSAGE_CHILDREN`), which moves less with the machine's load.

The program runs ROUNDS times under each host, alternately (python3,
pyreload run, python3, ...), so both see the same load. Reported: p50 and
p90 in ms of each host, and the ratio pyreload / python3.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROGRAM = r'''
import json, multiprocessing, resource, subprocess, sys, time

def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000

def child(conn):
    conn.send(1)

def main(n):
    ctx = multiprocessing.get_context("spawn")
    got = {"spawn": [], "exec": [], "spawn cpu": [], "exec cpu": []}
    # The resource tracker, started with the first spawn, is not counted.
    ctx.Process(target=child, args=(ctx.Pipe()[1],)).start()
    for _ in range(n):
        mine, theirs = ctx.Pipe()
        t, c = time.perf_counter(), cpu()
        p = ctx.Process(target=child, args=(theirs,))
        p.start()
        mine.recv()
        p.join()
        got["spawn"].append((time.perf_counter() - t) * 1000)
        got["spawn cpu"].append(cpu() - c)
        t, c = time.perf_counter(), cpu()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        got["exec"].append((time.perf_counter() - t) * 1000)
        got["exec cpu"].append(cpu() - c)
    print(json.dumps(got))

if __name__ == "__main__":
    main(int(sys.argv[1]))
'''


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pyreload", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--spawns", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prog = os.path.join(tmp, "spawner.py")
        with open(prog, "w") as f:
            f.write(PROGRAM)
        env = dict(os.environ, PYRELOAD_RUNTIME_DIR=os.path.join(tmp, "run"))
        env.pop("VIRTUAL_ENV", None)
        hosts = {"python3": [args.python], "pyreload run": [args.pyreload, "run"]}
        got = {h: {} for h in hosts}
        for _ in range(args.rounds):
            for host, cmd in hosts.items():
                out = subprocess.run(cmd + [prog, str(args.spawns)], env=env, cwd=tmp,
                                     check=True, capture_output=True, text=True).stdout
                for k, v in json.loads(out.strip().splitlines()[-1]).items():
                    got[host].setdefault(k, []).extend(v)
    print(f"{args.rounds} rounds x {args.spawns} per host, alternating; ms")
    print("| figure | host | p50 | p90 |")
    print("|---|---|---:|---:|")
    for figure in ("spawn", "spawn cpu", "exec", "exec cpu"):
        for host in hosts:
            v = got[host][figure]
            print(f"| {figure} | {host} | {statistics.median(v):.1f} | {pct(v, 0.9):.1f} |")
        a, b = got["python3"][figure], got["pyreload run"][figure]
        print(f"| {figure} | ratio | {statistics.median(b) / statistics.median(a):.2f}x "
              f"| {pct(b, 0.9) / pct(a, 0.9):.2f}x |")


if __name__ == "__main__":
    main()
