"""Benchmark: pause and apply latency of the v1 <-> v2 case-study update.

    bench/apply_pause.sh            # builds release, then runs this
    python3 bench/apply_pause.py --pyreload target/release/pyreload [--rounds 30]

One kvserver runs under `pyreload run` with 10,000 keys. The v1->v2 spec and
its reverse (bench/specs/v2-to-v1.toml) are applied alternately, first with
the server idle, then with 8 clients on persistent connections sending
SET/GET as fast as they can. Both phases run in the same process, back to
back, so their ratio is meaningful even on a noisy machine.

Reported per phase, over all updates:
  pause    time other threads could not run Python (commit + check), from
           the report pyreload returns
  commit   the merge alone
  host     request received -> report ready, inside the program
  apply    `pyreload apply` wall time, process start to exit (what a user waits)
and, under load, requests served and failed. This is a benchmark, not a
test: it reports and never fails on a slow machine (it fails only if an
update does not commit or a client request fails).
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SPECS = [REPO / "specs/v1-to-v2.toml", REPO / "bench/specs/v2-to-v1.toml"]


def pct(values, p):
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    return s, s.makefile("rw", encoding="utf-8", newline="\n")


def load(port, stop, tally):
    s, f = connect(port)
    i = 0
    while not stop.is_set():
        i += 1
        for req, want in ((f"SET b{i % 100} {i}", "OK"), (f"GET b{i % 100}", f"VALUE {i}")):
            f.write(req + "\n")
            f.flush()
            got = f.readline().rstrip("\n")
            tally["requests"] += 1
            if got != want:
                tally["failed"] += 1
    s.close()


def apply_rounds(pyreload, env, rounds, start_index):
    rows = []
    for n in range(rounds):
        spec = SPECS[(start_index + n) % 2]
        t = time.perf_counter()
        out = subprocess.run([pyreload, "apply", "--json", str(spec)], env=env, capture_output=True, text=True)
        wall = (time.perf_counter() - t) * 1000
        report = json.loads(out.stdout)
        if report.get("outcome") != "committed":
            sys.exit(f"update {n} did not commit:\n{out.stdout}\n{out.stderr}")
        tm = report["timings"]
        rows.append({"pause": tm["pause_ms"], "commit": tm["commit_ms"], "host": tm["total_ms"], "apply": wall})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--rounds", type=int, default=30, help="updates per phase (>= 30 for a p99)")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())

    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-bench-"))
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    port_file = work / "port"
    server = subprocess.Popen(
        [pyreload, "run", "--name", "kvserver", "--version", "1.0", "-m", "kvserver", "--port", "0", "--port-file", str(port_file)],
        cwd=REPO / "case-study/v1", env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"),
    )
    try:
        deadline = time.time() + 20
        while not port_file.exists():
            if server.poll() is not None or time.time() > deadline:
                sys.exit("server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        s, f = connect(port)
        for k in range(10_000):
            f.write(f"SET key{k} value{k}\n")
        f.flush()
        for _ in range(10_000):
            f.readline()

        idle = apply_rounds(pyreload, env, args.rounds, 0)

        stop = threading.Event()
        tallies = [{"requests": 0, "failed": 0} for _ in range(args.clients)]
        threads = [threading.Thread(target=load, args=(port, stop, t)) for t in tallies]
        for t in threads:
            t.start()
        time.sleep(0.5)
        loaded = apply_rounds(pyreload, env, args.rounds, args.rounds % 2)
        stop.set()
        for t in threads:
            t.join()

        for k in range(0, 10_000, 997):
            f.write(f"GET key{k}\n")
            f.flush()
            assert f.readline().rstrip("\n") == f"VALUE value{k}", "a key was lost"
    finally:
        server.terminate()
        server.wait(timeout=20)

    print(f"kvserver v1<->v2 update, {args.rounds} updates per phase, 10,000 keys, "
          f"{os.cpu_count()} CPUs, pyreload {pyreload}")
    print()
    print("| phase | metric | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, rows in (("idle", idle), (f"{args.clients} clients", loaded)):
        for metric in ("pause", "commit", "host", "apply"):
            v = [r[metric] for r in rows]
            print(f"| {name} | {metric} | {pct(v, 50):.3f} | {pct(v, 90):.3f} | {pct(v, 99):.3f} | {max(v):.3f} |")
    print()
    for metric in ("pause", "apply"):
        ratio = statistics.median(r[metric] for r in loaded) / statistics.median(r[metric] for r in idle)
        print(f"median {metric} under load / idle: {ratio:.2f}x")
    requests = sum(t["requests"] for t in tallies)
    failed = sum(t["failed"] for t in tallies)
    print(f"client requests during the loaded phase: {requests}, failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
