"""The pyreload demo: update the case-study server while clients use it.

    python3 case-study/demo.py --pyreload target/release/pyreload

(`case-study/demo.sh` builds pyreload first and runs this.)

1. starts kvserver 1.0 under `pyreload run` and fills it with keys,
2. shows the two things 2.0 changes (a bug, a missing command),
3. starts 8 clients on persistent connections, each checking every reply,
4. runs `pyreload check` and `pyreload apply specs/v1-to-v2.toml` under that load,
5. applies v2-to-v3 (values become Entry objects) and rolls it back,
6. shows the new behaviour, that every key and connection survived, and
   `pyreload status`, then stops the server with SIGTERM.

Only the standard library is used. Exits non-zero if anything is off.
"""

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CLIENTS = 8
KEYS = 1000


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rw", encoding="utf-8", newline="\n")

    def ask(self, line):
        self.file.write(line + "\n")
        self.file.flush()
        reply = self.file.readline()
        if not reply:
            raise ConnectionError("server closed the connection")
        return reply.rstrip("\n")


def heading(text):
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def show(client, line):
    print(f"   {line:<28} -> {client.ask(line)}", flush=True)


def load(port, stop, tallies, index):
    tally = tallies[index]
    try:
        client = Client(port)
        i = 0
        while not stop.is_set():
            i += 1
            key = f"load-{index}-{i % 64}"
            for request, expected in ((f"SET {key} {i}", "OK"), (f"GET {key}", f"VALUE {i}")):
                reply = client.ask(request)
                tally["requests"] += 1
                if reply != expected:
                    tally["failures"].append(f"{request!r} -> {reply!r}")
    except OSError as e:
        tally["failures"].append(f"connection lost: {e}")


def run(pyreload, *args, env):
    print(f"   $ pyreload {' '.join(args)}", flush=True)
    started = time.perf_counter()
    out = subprocess.run([pyreload, *args], cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = (time.perf_counter() - started) * 1000
    for line in (out.stdout + out.stderr).splitlines():
        print(f"     {line}")
    print(f"     [exit {out.returncode}, {elapsed:.0f} ms end to end]", flush=True)
    return out.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    args = parser.parse_args()
    args.pyreload = str(pathlib.Path(args.pyreload).resolve())

    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-demo-"))
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    port_file = work / "port"
    log = open(work / "server.log", "w")
    heading("Start kvserver 1.0 under pyreload run")
    cmd = [args.pyreload, "run", "--name", "kvserver", "--version", "1.0", "-m", "kvserver", "--port", "0", "--port-file", str(port_file)]
    print(f"   $ cd case-study/v1 && pyreload run {' '.join(cmd[2:])}")
    server = subprocess.Popen(cmd, cwd=REPO / "case-study/v1", env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while not port_file.exists():
        if server.poll() is not None or time.time() > deadline:
            sys.exit(f"the server did not start; see {work / 'server.log'}")
        time.sleep(0.05)
    port = int(port_file.read_text())
    print(f"   listening on 127.0.0.1:{port} (pid {server.pid})")

    problems = []
    try:
        setup = Client(port)
        for k in range(KEYS):
            setup.ask(f"SET key{k} value{k}")
        print(f"   stored {KEYS} keys")

        heading("What 1.0 does wrong")
        show(setup, "SET greeting hello world")
        show(setup, "GET greeting")
        show(setup, "INCR visits")
        show(setup, "VERSION")

        heading(f"Start {CLIENTS} clients on persistent connections")
        stop = threading.Event()
        tallies = [{"requests": 0, "failures": []} for _ in range(CLIENTS)]
        threads = [threading.Thread(target=load, args=(port, stop, tallies, i)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        print(f"   {sum(t['requests'] for t in tallies)} requests so far, every reply checked")

        heading("Check the update against the running server (changes nothing)")
        if run(args.pyreload, "check", "specs/v1-to-v2.toml", env=env) != 0:
            problems.append("check failed")

        heading("Apply it, under load")
        before = sum(t["requests"] for t in tallies)
        if run(args.pyreload, "apply", "specs/v1-to-v2.toml", env=env) != 0:
            problems.append("apply failed")
        time.sleep(0.5)

        heading("2.0 -> 3.0 changes the data: every value becomes an Entry (a [[transform]])")
        if run(args.pyreload, "apply", "specs/v2-to-v3.toml", env=env) != 0:
            problems.append("apply v2-to-v3 failed")
        show(setup, "VER greeting")
        show(setup, "SETEX session 60 abc")
        show(setup, "TTL session")

        heading("Roll 3.0 back: the reverse transformer turns Entries back into values")
        if run(args.pyreload, "rollback", env=env) != 0:
            problems.append("rollback failed")
        show(setup, "GET session")
        show(setup, "VER greeting")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        total = sum(t["requests"] for t in tallies)
        failures = [f for t in tallies for f in t["failures"]]
        print(f"   clients: {total} requests ({total - before} after the apply started), {len(failures)} failed, "
              f"{CLIENTS - sum(1 for t in tallies if any('connection lost' in f for f in t['failures']))}/{CLIENTS} connections still open")
        problems.extend(failures)

        heading("What 2.0 does, on the same connection as at the start")
        show(setup, "GET greeting")
        show(setup, "SET greeting hello world")
        show(setup, "GET greeting")
        show(setup, "INCR visits")
        show(setup, "INCR visits")
        show(setup, "VERSION")
        lost = [k for k in range(KEYS) if setup.ask(f"GET key{k}") != f"VALUE value{k}"]
        print(f"   {KEYS - len(lost)}/{KEYS} keys written before the update read back unchanged")
        if lost:
            problems.append(f"{len(lost)} keys lost")

        heading("Status")
        run(args.pyreload, "status", env=env)
    finally:
        heading("Stop the server with SIGTERM")
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=20)
        log.close()
        print("   server log:")
        for line in (work / "server.log").read_text().splitlines():
            print(f"     {line}")
        print(f"   exit status {code}")

    if problems:
        heading("Problems")
        for p in problems:
            print(f"   {p}")
        return 1
    heading("Done: the server changed version without losing a connection, a request or a key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
