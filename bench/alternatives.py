"""Benchmark: the same code change under load, four ways.

    python3 bench/alternatives.py --pyreload target/release/pyreload --venv bench/.venv

The case-study server (threaded kvserver) holds 5,000 keys and serves 32
closed-loop connections on 127.0.0.1 (bounded in time). A probe connection
sends INCR continuously, to tell which version answered. The change is
v1 -> v2 (a bug fix and the INCR command, spread over two modules):

  pyreload   `pyreload apply` 20 times, v1->v2 and back, on one server
  restart    stop the v1 process (SIGTERM), start v2: a restart deploy
  autoreload IPython's autoreload (superreload), run in-process on a timer,
             after the new files are copied over the old ones
  jurigged   jurigged watching the tree, after the same copy

For each: requests that failed (wrong reply, error, or connection lost),
requests refused while nothing listened, the latency p99 inside the update
windows against steady state, the throughput dip (worst 100 ms against the
median), whether all 5,000 keys survived, whether the new behaviour became
visible, and how many probe replies showed mixed versions (INCR dispatched
by the new protocol into the old store: "ERR internal error").

Writes a JSON summary (--json) for bench/run.py, and prints a table.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

from benchlib import pct, pyreload_kvserver, serve_kvserver, wait_port_file

REPO = pathlib.Path(__file__).resolve().parent.parent
KEYS = 5000
CLIENTS = 32

INPROC = r'''
import sys, threading, time
sys.path.insert(0, sys.argv[2])
mode = sys.argv[1]
port_file = sys.argv[3]
if mode == "jurigged":
    import jurigged
    jurigged.watch(sys.argv[2] + "/kvserver/*.py", logger=lambda *a, **k: None)
from kvserver import server
srv = server.Server("127.0.0.1", 0)
if mode == "autoreload":
    from IPython.extensions.autoreload import ModuleReloader
    reloader = ModuleReloader()
    reloader.enabled = True        # what `%autoreload 2` sets
    reloader.check_all = True
    reloader.deduper_reloader.enabled = False   # the superreload path
    reloader.check(do_reload=False)
    def poll():
        while True:
            time.sleep(0.2)
            reloader.check(do_reload=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
if mode == "autoreload":
    threading.Thread(target=poll, daemon=True).start()
with open(port_file, "w") as f:
    f.write(str(srv.port))
while True:
    time.sleep(1)
'''


class Load:
    """Closed-loop clients; each records (end time, latency, ok)."""

    def __init__(self, port_getter):
        self.port_getter = port_getter
        self.stop = threading.Event()
        self.samples = []
        self.lock = threading.Lock()
        self.refused = 0
        self.failed = 0
        self.probe = {"old": 0, "new": 0, "mixed": 0, "error": 0}

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port_getter()), timeout=5)
        return s, s.makefile("rw", encoding="utf-8", newline="\n")

    @staticmethod
    def ask(f, request):
        f.write(request + "\n")
        f.flush()
        return f.readline().rstrip("\n")

    def connected(self, step, refused=None, failed=None):
        """Runs `step(f)` on a connection until stopped, reconnecting after an
        error. A refused connection calls `refused`, any other error `failed`."""
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.connect()
                step(conn[1])
            except OSError as e:
                count = refused if isinstance(e, ConnectionRefusedError) else failed
                if count:
                    with self.lock:
                        count()
                conn = None
                time.sleep(0.01)

    def client(self, cid):
        i = 0

        def step(f):
            nonlocal i
            i += 1
            key = f"load{cid}-{i % 50}"
            for request, expected in ((f"SET {key} {i}", "OK"), (f"GET {key}", f"VALUE {i}")):
                t = time.perf_counter()
                reply = self.ask(f, request)
                if not reply:
                    raise ConnectionError("closed")
                ok = reply == expected
                with self.lock:
                    self.samples.append((time.perf_counter(), time.perf_counter() - t, ok))
                    if not ok:
                        self.failed += 1

        def refused():
            self.refused += 1

        def failed():
            self.failed += 1

        self.connected(step, refused, failed)

    def prober(self):
        def step(f):
            reply = self.ask(f, "INCR probe")
            kind = ("new" if reply.startswith("VALUE") else "old" if "unknown command" in reply
                    else "mixed" if "internal error" in reply else "error")
            self.probe[kind] += 1
            time.sleep(0.002)

        self.connected(step)

    def start(self):
        self.threads = [threading.Thread(target=self.client, args=(c,), daemon=True) for c in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self.prober, daemon=True))
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def summarize(name, load, windows, keys_kept, new_visible, extra):
    inside = [lat for (t, lat, _) in load.samples if any(a <= t <= b for a, b in windows)]
    outside = [lat for (t, lat, _) in load.samples if not any(a <= t <= b for a, b in windows)]
    start = min(t for t, _, _ in load.samples)
    end = max(t for t, _, _ in load.samples)
    buckets = [0] * (int((end - start) / 0.1) + 1)
    for t, _, _ in load.samples:
        buckets[int((t - start) / 0.1)] += 1
    steady = statistics.median(buckets)
    first_window = windows[0][0]
    return {
        "timeline_start_s": start - first_window,
        "timeline": buckets,
        "windows_s": [(a - first_window, b - first_window) for a, b in windows],
        "name": name,
        "requests": len(load.samples),
        "failed": load.failed,
        "refused": load.refused,
        "p99_window_ms": pct(inside, 99) * 1000,
        "p99_steady_ms": pct(outside, 99) * 1000,
        "dip": min(buckets[1:-1] or buckets) / steady if steady else float("nan"),
        "keys_kept": keys_kept,
        "new_visible": new_visible,
        "probe": dict(load.probe),
        **extra,
    }


def ask(port, *requests):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rw", encoding="utf-8", newline="\n")
        out = []
        for r in requests:
            f.write(r + "\n")
            f.flush()
            out.append(f.readline().rstrip("\n"))
        return out


def populate(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rw", encoding="utf-8", newline="\n")
        for k in range(KEYS):
            f.write(f"SET key{k} value{k}\n")
        f.flush()
        for _ in range(KEYS):
            f.readline()


def keys_kept(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rw", encoding="utf-8", newline="\n")
        for k in range(KEYS):
            f.write(f"GET key{k}\n")
        f.flush()
        return sum(f.readline().rstrip("\n") == f"VALUE value{k}" for k in range(KEYS))


def run_pyreload(pyreload, work):
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    proc, port = serve_kvserver(pyreload_kvserver(pyreload), env, work / "port-pyreload")
    populate(port)
    load = Load(lambda: port)
    load.start()
    time.sleep(1.0)
    windows, pauses = [], []
    specs = [REPO / "specs/v1-to-v2.toml", REPO / "bench/specs/v2-to-v1.toml"]
    for n in range(20):
        t0 = time.perf_counter()
        out = subprocess.run([pyreload, "apply", "--json", str(specs[n % 2])], env=env, capture_output=True, text=True)
        t1 = time.perf_counter()
        report = json.loads(out.stdout)
        assert report["outcome"] == "committed", out.stdout
        pauses.append(report["timings"]["pause_ms"])
        windows.append((t0, t1))
        time.sleep(0.3)
    time.sleep(0.5)
    load.finish()
    new = ask(port, "VERSION")[0]
    kept = keys_kept(port)
    proc.terminate()
    proc.wait(timeout=20)
    return summarize("pyreload", load, windows, kept, True, {
        "pause_p50_ms": pct(pauses, 50), "pause_p99_ms": pct(pauses, 99), "updates": 20, "final": new})


def run_restart(python, work):
    port = free_port()
    cmd = [python, "-m", "kvserver", "--port", str(port), "--port-file"]
    v1 = subprocess.Popen(cmd + [str(work / "port-v1")], cwd=REPO / "case-study/v1",
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port_file(work / "port-v1", v1)
    populate(port)
    load = Load(lambda: port)
    load.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    v1.send_signal(signal.SIGTERM)
    v1.wait(timeout=20)
    v2 = subprocess.Popen(cmd + [str(work / "port-v2")], cwd=REPO / "case-study/v2",
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port_file(work / "port-v2", v2)
    t1 = time.perf_counter()
    time.sleep(1.5)
    load.finish()
    ok_times = sorted(t for t, _, ok in load.samples if ok)
    gap = max((b - a for a, b in zip(ok_times, ok_times[1:]) if a >= t0 - 1 and b <= t1 + 1.5), default=0.0)
    new = ask(port, "INCR x")[0]
    kept = keys_kept(port)
    v2.terminate()
    v2.wait(timeout=20)
    return summarize("restart", load, [(t0, t1)], kept, new.startswith("VALUE"), {"downtime_ms": gap * 1000})


def run_inprocess(mode, python, work):
    tree = work / f"tree-{mode}"
    shutil.copytree(REPO / "case-study/v1", tree, ignore=shutil.ignore_patterns("__pycache__"))
    port_file = work / f"port-{mode}"
    proc = subprocess.Popen([python, "-c", INPROC, mode, str(tree), str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = wait_port_file(port_file, proc)
    populate(port)
    load = Load(lambda: port)
    load.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    # A deploy: the new files replace the old ones, the protocol first (as a
    # copy in directory order would).
    for name in ("protocol.py", "store.py"):
        shutil.copy(REPO / "case-study/v2/kvserver" / name, tree / "kvserver" / name)
        time.sleep(0.05)
    deadline = time.perf_counter() + 10
    visible = False
    while time.perf_counter() < deadline:
        if ask(port, "VERSION")[0] == "VERSION 2.0":
            visible = True
            break
        time.sleep(0.05)
    t1 = time.perf_counter()
    time.sleep(1.5)
    load.finish()
    new = ask(port, "INCR y")[0]
    kept = keys_kept(port)
    proc.kill()
    proc.wait(timeout=20)
    return summarize(mode, load, [(t0, t1)], kept, visible and new.startswith("VALUE"),
                     {"time_to_visible_ms": (t1 - t0) * 1000 if visible else None})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--venv", default=str(REPO / "bench/.venv"), help="a venv with ipython and jurigged")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    python = str(pathlib.Path(args.venv) / "bin/python")
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-alt-"))
    results = [
        run_pyreload(str(pathlib.Path(args.pyreload).resolve()), work),
        run_restart(python, work),
        run_inprocess("autoreload", python, work),
        run_inprocess("jurigged", python, work),
    ]
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    print("| way | requests | failed | refused | p99 in update window ms | p99 steady ms | worst 100 ms / median | keys kept | new version visible | probe: old / new / mixed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        p = r["probe"]
        print(f"| {r['name']} | {r['requests']} | {r['failed']} | {r['refused']} | {r['p99_window_ms']:.1f} | "
              f"{r['p99_steady_ms']:.1f} | {r['dip']:.2f} | {r['keys_kept']}/{KEYS} | {'yes' if r['new_visible'] else 'no'} | "
              f"{p['old']} / {p['new']} / {p['mixed']} |")


if __name__ == "__main__":
    main()
