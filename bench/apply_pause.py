"""Benchmark: pause and apply latency of the v1 <-> v2 case-study update.

    bench/apply_pause.sh            # builds release, then runs this
    python3 bench/apply_pause.py --pyreload target/release/pyreload [--rounds 30]

One kvserver runs under `pyreload run` with 10,000 keys. The v1->v2 spec and
its reverse (bench/specs/v2-to-v1.toml) are applied alternately, with 0, 1,
8 and 64 clients on persistent connections sending SET/GET as fast as they
can (each client is one more server thread the commit must stop). All
phases run in the same process, back to back, so their ratios are
meaningful even on a noisy machine.

Then, with 8 clients, it measures the throughput while an update waits for
a safe point that never comes (bench/specs/never.toml), against the
throughput just before: waiting must not slow the program down.

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

from benchlib import pct, pyreload_kvserver, serve_kvserver

REPO = pathlib.Path(__file__).resolve().parent.parent
SPECS = [REPO / "specs/v1-to-v2.toml", REPO / "bench/specs/v2-to-v1.toml"]


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    return s, s.makefile("rw", encoding="utf-8", newline="\n")


def load(port, stop, tally):
    s, f = connect(port)
    me = id(tally)  # keys of its own, so another client cannot change them between SET and GET
    i = 0
    while not stop.is_set():
        i += 1
        for req, want in ((f"SET b{me}-{i % 100} {i}", "OK"), (f"GET b{me}-{i % 100}", f"VALUE {i}")):
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
        rows.append({"pause": tm["pause_ms"], "stop": tm["stop_ms"], "commit": tm["commit_ms"], "resume": tm["resume_ms"],
                     "host": tm["total_ms"], "apply": wall,
                     "threads": report["stopped_threads"], "checks": report["safe_point_checks"]})
    return rows


def with_clients(port, n, body):
    """Runs body() while n clients load the server; returns (result, requests, failed)."""
    stop = threading.Event()
    tallies = [{"requests": 0, "failed": 0} for _ in range(n)]
    threads = [threading.Thread(target=load, args=(port, stop, t)) for t in tallies]
    for t in threads:
        t.start()
    time.sleep(0.3 if n else 0)
    result = body(tallies)
    stop.set()
    for t in threads:
        t.join()
    return result, sum(t["requests"] for t in tallies), sum(t["failed"] for t in tallies)


def throughput(tallies, seconds):
    start = sum(t["requests"] for t in tallies)
    time.sleep(seconds)
    return (sum(t["requests"] for t in tallies) - start) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--rounds", type=int, default=30, help="updates per phase (>= 30 for a p99)")
    parser.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 8, 64],
                        help="client counts, comma-separated (default 0,1,8,64)")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())

    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-bench-"))
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    server, port = serve_kvserver(pyreload_kvserver(pyreload), env, work / "port",
                                  stderr=open(work / "server.log", "w"))
    try:
        s, f = connect(port)
        for k in range(10_000):
            f.write(f"SET key{k} value{k}\n")
        f.flush()
        for _ in range(10_000):
            f.readline()

        phases = []
        done = 0
        for n in args.clients:
            rows, requests, failed = with_clients(port, n, lambda _t: apply_rounds(pyreload, env, args.rounds, done))
            done += args.rounds
            phases.append((n, rows, requests, failed))

        def waiting(tallies):
            # Three alternating pairs: 1.5 s with no update pending, then
            # 1.5 s while one waits for a safe point that never comes.
            pairs = []
            for _ in range(3):
                before = throughput(tallies, 1.5)
                pending = subprocess.Popen([pyreload, "apply", "--json", str(REPO / "bench/specs/never.toml")],
                                           env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                time.sleep(0.1)
                during = throughput(tallies, 1.5)
                report = json.loads(pending.communicate()[0])
                pairs.append((before, during, report))
            return pairs

        pairs, wait_requests, wait_failed = with_clients(port, 8, waiting)

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
    print("| clients | threads stopped | metric | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n, rows, _, _ in phases:
        threads = max(r["threads"] for r in rows)
        for metric in ("pause", "stop", "commit", "resume", "host", "apply"):
            v = [r[metric] for r in rows]
            print(f"| {n} | {threads} | {metric} | {pct(v, 50):.3f} | {pct(v, 90):.3f} | {pct(v, 99):.3f} | {max(v):.3f} |")
    print()
    base = statistics.median(r["pause"] for r in phases[0][1])
    for n, rows, requests, failed in phases:
        ratio = statistics.median(r["pause"] for r in rows) / base
        checks = statistics.median(r["checks"] for r in rows)
        print(f"- {n} clients: median pause {ratio:.2f}x the idle one, median {checks:.0f} safe-point checks, "
              f"{requests} client requests during the phase, {failed} failed")
    ratios = sorted(d / b for b, d, _ in pairs)
    checks = statistics.median(r["safe_point_checks"] for _, _, r in pairs)
    outcomes = {r["outcome"] for _, _, r in pairs}
    print(f"- while an update waited for a safe point that never came (2 s, median {checks:.0f} checks, "
          f"outcome {'/'.join(sorted(outcomes))}), 8 clients got {ratios[1]:.2f}x the throughput of the "
          f"1.5 s just before (median of 3 pairs; all: {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"{wait_requests} requests, {wait_failed} failed")
    failed = sum(p[3] for p in phases) + wait_failed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
