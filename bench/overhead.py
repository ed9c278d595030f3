"""Benchmark: what hosting costs between updates.

    python3 bench/overhead.py --pyreload target/release/pyreload [--json out.json]

The case-study server runs under `python3 -m kvserver` and under `pyreload
run -m kvserver`, alternately, five times each, 4 seconds per run, with 8
closed-loop clients on 127.0.0.1. No update happens: this is the cost of
being updatable.

The clients share the 2 cores with the server, so throughput swings with
scheduling from run to run. The figure that does not is the server's CPU
time per request (user + system, from /proc/<pid>/stat): the ratio
python3 / pyreload of that is the overhead figure (1.0: none). Throughput
is printed beside it.

CPU time still moves by several percent from pair to pair here. Where
valgrind is on PATH, the figure that does not move is counted too: the
instructions the server executes per request, under callgrind, for 2,000
requests on one connection after a warm-up, with PYTHONHASHSEED=0 so both
hosts build the same dictionaries. Three runs each; the spread is printed.

Then, where `perf` is on PATH, one more run each way is sampled with
`perf record -e cpu-clock`, and the share of samples in each binary and
library is printed side by side: where the CPU time goes, and whether any
of it is pyreload's own code.
"""

import argparse
import json
import os
import re
import shutil
import signal
import pathlib
import socket
import statistics
import subprocess
import tempfile
import threading
import time

from benchlib import serve_kvserver

REPO = pathlib.Path(__file__).resolve().parent.parent
CLIENTS = 8
SECONDS = 3.0
CALLGRIND_REQUESTS = 2000
EXECUTABLE = "the executable itself (python3.11 / pyreload)"


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(port, pid):
    stop = threading.Event()
    counts = [0] * CLIENTS

    def client(i):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rw", encoding="utf-8", newline="\n")
            n = 0
            while not stop.is_set():
                n += 1
                # One request per round trip: two small replies in a row
                # would wait on Nagle and delayed ACKs, not on the server.
                for request in (f"SET k{i}-{n % 50} {n}\n", f"GET k{i}-{n % 50}\n"):
                    f.write(request)
                    f.flush()
                    f.readline()
                    counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start, cpu_start = sum(counts), cpu_seconds(pid)
    time.sleep(SECONDS)
    done, cpu = sum(counts) - start, cpu_seconds(pid) - cpu_start
    stop.set()
    for t in threads:
        t.join()
    return done / SECONDS, cpu / done * 1e6


def instructions_per_request(cmd, env, work, name, run):
    """Instructions the server executes per request, counted by callgrind.

    Counting starts after a warm-up (`callgrind_control --zero`) and stops
    with a dump, so interpreter start-up and shutdown are left out.
    """
    out = work / f"callgrind-{name}-{run}"
    proc, port = serve_kvserver(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"] + cmd,
                       dict(env, PYTHONHASHSEED="0"), work / f"port-callgrind-{name}-{run}", startup=180)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            f = s.makefile("rw", encoding="utf-8", newline="\n")

            def requests(n):
                for i in range(n):
                    f.write(f"SET k{i % 50} {i}\n")
                    f.flush()
                    f.readline()

            requests(200)
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
            requests(CALLGRIND_REQUESTS)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    dump = pathlib.Path(f"{out}.{proc.pid}.1").read_text()
    total = next(int(line.split()[1]) for line in dump.splitlines() if line.startswith("summary:"))
    return total / CALLGRIND_REQUESTS


def profile(cmd, env, port_file, out):
    """Where one run's CPU time goes: percent of cpu-clock samples per binary or library."""
    proc, port = serve_kvserver(cmd, env, port_file)
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "997", "-e", "cpu-clock", "-p", str(proc.pid), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        throughput(port, proc.pid)
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
        proc.terminate()
        proc.wait(timeout=20)
    report = subprocess.run(["perf", "report", "-i", str(out), "--stdio", "--sort", "dso", "-g", "none"],
                            capture_output=True, text=True).stdout
    shares = {EXECUTABLE: 0.0}
    for line in report.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if m:
            dso = m.group(2)
            # The host binary itself: python3.11 for one, pyreload for the other.
            if dso.startswith("python3") or dso == "pyreload":
                dso = EXECUTABLE
            shares[dso] = shares.get(dso, 0.0) + float(m.group(1))
    return shares


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--python", default="python3")
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-overhead-"))
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    rows = []
    for i in range(args.pairs):
        pair = {}
        ways = [("python3", [args.python, "-m", "kvserver"]), ("pyreload", [pyreload, "run", "-m", "kvserver"])]
        # Alternate which goes first, so a drift in the machine's load
        # does not favour either.
        for name, cmd in (ways if i % 2 == 0 else ways[::-1]):
            proc, port = serve_kvserver(cmd, env, work / f"port-{name}-{i}")
            try:
                pair[name], pair[name + "_cpu_us"] = throughput(port, proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
        rows.append(pair)
    ratios = sorted(r["pyreload"] / r["python3"] for r in rows)
    cpu_ratios = sorted(r["python3_cpu_us"] / r["pyreload_cpu_us"] for r in rows)
    result = {
        "pairs": rows,
        "ratio_median": statistics.median(cpu_ratios),
        "ratio_min": cpu_ratios[0],
        "ratio_max": cpu_ratios[-1],
        "throughput_ratio_median": statistics.median(ratios),
    }
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        # valgrind must start the interpreter itself, not a launcher script
        # (a pyenv shim) that would exec it out of valgrind's reach.
        python = subprocess.run([args.python, "-c", "import sys; print(sys.executable)"],
                                capture_output=True, text=True, check=True).stdout.strip()
        counted = {"python3": [], "pyreload": []}
        for run in range(3):
            for name, cmd in (("python3", [python, "-m", "kvserver"]), ("pyreload", [pyreload, "run", "-m", "kvserver"])):
                counted[name].append(instructions_per_request(cmd, env, work, name, run))
        result["instructions"] = counted
        result["instructions_ratio"] = statistics.median(counted["python3"]) / statistics.median(counted["pyreload"])
    if shutil.which("perf"):
        result["profile"] = {name: profile(cmd, env, work / f"port-profile-{name}", work / f"{name}.perf")
                             for name, cmd in ways}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
    print("| pair | python3 req/s | pyreload run req/s | python3 CPU µs/request | pyreload run CPU µs/request | CPU ratio python3 / pyreload |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['python3']:.0f} | {r['pyreload']:.0f} | {r['python3_cpu_us']:.1f} | {r['pyreload_cpu_us']:.1f} | "
              f"{r['python3_cpu_us'] / r['pyreload_cpu_us']:.3f} |")
    print()
    print(f"server CPU per request, python3 / pyreload run: median {result['ratio_median']:.3f} "
          f"(pairs from {cpu_ratios[0]:.3f} to {cpu_ratios[-1]:.3f}); "
          f"throughput pyreload / python3: median {result['throughput_ratio_median']:.3f} "
          f"(pairs from {ratios[0]:.3f} to {ratios[-1]:.3f})")
    if "instructions" in result:
        counted = result["instructions"]
        print()
        print(f"| instructions per request (callgrind, {CALLGRIND_REQUESTS:,} requests, 3 runs) | python3 | pyreload run |")
        print("|---|---:|---:|")
        for label, pick in (("median", statistics.median), ("lowest", min), ("highest", max)):
            print(f"| {label} | {pick(counted['python3']):,.0f} | {pick(counted['pyreload']):,.0f} |")
        print()
        print(f"instructions per request, python3 / pyreload run: {result['instructions_ratio']:.4f}")
    if "profile" in result:
        prof = result["profile"]
        names = sorted(set(prof["python3"]) | set(prof["pyreload"]),
                       key=lambda d: -max(prof["python3"].get(d, 0), prof["pyreload"].get(d, 0)))
        print()
        print("| where the server's CPU time went (perf, cpu-clock samples) | python3 | pyreload run |")
        print("|---|---:|---:|")
        for d in names:
            a, b = prof["python3"].get(d, 0.0), prof["pyreload"].get(d, 0.0)
            if max(a, b) >= 0.05 or d == EXECUTABLE:
                print(f"| {d} | {a:.2f}% | {b:.2f}% |")


if __name__ == "__main__":
    main()
