"""Load for the notes service: N keep-alive HTTP clients, and a record of
which code version answered each request.

    python3 load.py --port 8000 --clients 16 --duration 120

Standard library only (http.client and threads), so it runs on any python3
without the venv the server uses. Each client is a closed loop on its own
connection: GET /hit?client=cN, read the answer, repeat. When the server
closes the connection after a response (gunicorn's sync workers send
`Connection: close` on every one), the client opens a new connection for
the next request: that is counted in `reconnects`, not as a failure. A
connection error, a timeout or a non-200 answer is a failure.

With --fresh-clients M, the first M clients instead send
`Connection: close` and open a new connection for every request, as
one-shot clients do. On a keep-alive server (gthread, uvicorn) a
connection stays with the worker that accepted it, so persistent clients
alone may never reach some workers; fresh ones are accepted again and
again, by every worker in turn.

For every response it records when the request was sent and answered
(time.monotonic()), the status, the `version` and `pid` fields of the body
(the code version and worker process that answered) and the worker's hit
count for this client, which must grow: a count that goes back means a
worker lost its state (`lost_state`).

Commands on stdin, one per line; each is answered by one JSON line on
stdout, so a script (or a test) knows when it took effect:

    mark VERSION     from now on, every request sent must be answered by
                     VERSION; answers {"mark": VERSION, "t": T}. Responses
                     to requests sent after T with another version are
                     `stale` in the summary.
    close            an update starts: responses that arrive from now on
                     are not judged against the last mark (the next mark
                     judges the requests sent after it); answers
                     {"closed": T}.
    wait N [P]       waits until N responses (and, with P, P distinct
                     worker pids) to requests sent after the last mark have
                     arrived; answers {"waited": true, ...}, or
                     {"waited": false, ...} after --wait-timeout seconds.
    stats            the summary so far.
    stop             stops the clients, prints the summary and exits.

End of stdin is `stop`. The clients also stop by themselves after
--duration seconds or --max-requests requests in all, whichever comes
first; the summary is printed then (and stdin is no longer read).

The summary (one JSON object, the last line of stdout) has: requests,
responses, failures (count) and failure_samples, reconnects (closes by
the server on persistent clients), connections, fresh_clients,
by_version, by_pid, by_status, marks (each with its version, t, responses
after it and stale ones), stale (total), stale_samples, lost_state and
duration_s. --records FILE also writes every response as a JSON line.
"""

import argparse
import http.client
import json
import sys
import threading
import time

SAMPLES = 20


class Tally:
    """What all clients saw, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.started = time.monotonic()
        self.requests = 0
        self.responses = 0
        self.failures = 0
        self.failure_samples = []
        self.reconnects = 0
        self.connections = 0
        self.fresh_clients = 0
        self.by_version = {}
        self.by_pid = {}
        self.by_status = {}
        self.marks = []  # dicts: version, t, responses, stale, pids (set)
        self.stale_samples = []
        self.lost_state = 0
        self.last_hits = {}  # (pid, client) -> hits
        self.records = []

    def response(self, client, sent, done, status, body):
        version = body.get("version")
        pid = body.get("pid")
        hits = body.get("hits")
        with self.lock:
            self.responses += 1
            self.by_version[str(version)] = self.by_version.get(str(version), 0) + 1
            self.by_pid[str(pid)] = self.by_pid.get(str(pid), 0) + 1
            self.by_status[str(status)] = self.by_status.get(str(status), 0) + 1
            key = (pid, client)
            if hits is not None:
                if key in self.last_hits and hits <= self.last_hits[key]:
                    self.lost_state += 1
                self.last_hits[key] = hits
            mark = self.marks[-1] if self.marks else None
            # Judged: sent after the mark, answered before the next update
            # began (a request still queued then may be served by it).
            if mark and sent > mark["t"] and (mark["until"] is None or done < mark["until"]):
                mark["responses"] += 1
                mark["pids"].add(pid)
                if version != mark["version"]:
                    mark["stale"] += 1
                    if len(self.stale_samples) < SAMPLES:
                        self.stale_samples.append(
                            {"client": client, "sent": sent, "done": done, "version": version,
                             "pid": pid, "expected": mark["version"], "mark_t": mark["t"]})
            self.records.append({"client": client, "sent": sent, "done": done, "status": status,
                                 "version": version, "pid": pid, "hits": hits})
            self.changed.notify_all()

    def failure(self, client, sent, what):
        with self.lock:
            self.failures += 1
            if len(self.failure_samples) < SAMPLES:
                self.failure_samples.append({"client": client, "sent": sent, "error": what})
            self.records.append({"client": client, "sent": sent, "done": time.monotonic(),
                                 "error": what})
            self.changed.notify_all()

    def mark(self, version):
        with self.lock:
            t = time.monotonic()
            self.marks.append({"version": version, "t": t, "until": None, "responses": 0,
                               "stale": 0, "pids": set()})
            return t

    def close(self):
        with self.lock:
            t = time.monotonic()
            if self.marks and self.marks[-1]["until"] is None:
                self.marks[-1]["until"] = t
            return t

    def wait(self, responses, pids, timeout):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                mark = self.marks[-1] if self.marks else None
                got = mark["responses"] if mark else self.responses
                seen = len(mark["pids"]) if mark else len(self.by_pid)
                if got >= responses and seen >= pids:
                    return {"waited": True, "responses": got, "pids": seen}
                left = deadline - time.monotonic()
                if left <= 0:
                    return {"waited": False, "responses": got, "pids": seen,
                            "failures": self.failures}
                self.changed.wait(min(left, 0.5))

    def summary(self):
        with self.lock:
            return {
                "requests": self.requests,
                "responses": self.responses,
                "failures": self.failures,
                "failure_samples": self.failure_samples,
                "reconnects": self.reconnects,
                "connections": self.connections,
                "fresh_clients": self.fresh_clients,
                "by_version": self.by_version,
                "by_pid": self.by_pid,
                "by_status": self.by_status,
                "marks": [dict(m, pids=sorted(m["pids"], key=str)) for m in self.marks],
                "stale": sum(m["stale"] for m in self.marks),
                "stale_samples": self.stale_samples,
                "lost_state": self.lost_state,
                "duration_s": round(time.monotonic() - self.started, 3),
            }


def client_loop(n, args, tally, stop, budget):
    name = f"c{n}"
    fresh = n < args.fresh_clients
    headers = {"Connection": "close"} if fresh else {}
    conn = None
    deadline = tally.started + args.duration
    while not stop.is_set() and time.monotonic() < deadline:
        with tally.lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
            tally.requests += 1
        if conn is None:
            conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
            with tally.lock:
                tally.connections += 1
        sent = time.monotonic()
        try:
            conn.request("GET", f"{args.path}?client={name}", headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            done = time.monotonic()
            closing = resp.will_close
        except (OSError, http.client.HTTPException) as e:
            tally.failure(name, sent, f"{type(e).__name__}: {e}")
            conn.close()
            conn = None
            continue
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        if resp.status != 200:
            tally.failure(name, sent, f"HTTP {resp.status}: {raw[:200]!r}")
        else:
            tally.response(name, sent, done, resp.status, body)
        if closing or fresh:
            conn.close()
            conn = None
            if not fresh:
                with tally.lock:
                    tally.reconnects += 1
    if conn is not None:
        conn.close()


def say(obj):
    print(json.dumps(obj), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--fresh-clients", type=int, default=0,
                        help="how many of the clients use a new connection per request")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="stop after this many seconds (default 60)")
    parser.add_argument("--max-requests", type=int, default=10_000_000,
                        help="stop after this many requests by all clients together")
    parser.add_argument("--path", default="/hit")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="per-request socket timeout, in seconds")
    parser.add_argument("--wait-timeout", type=float, default=60.0,
                        help="how long `wait` waits before it answers waited: false")
    parser.add_argument("--records", help="write every response here, one JSON line each")
    args = parser.parse_args(argv)

    tally = Tally()
    tally.fresh_clients = min(args.fresh_clients, args.clients)
    stop = threading.Event()
    budget = [args.max_requests]
    threads = [threading.Thread(target=client_loop, args=(n, args, tally, stop, budget),
                                name=f"client-{n}", daemon=True)
               for n in range(args.clients)]
    for t in threads:
        t.start()
    say({"started": args.clients, "port": args.port})

    def clients_done():
        for t in threads:
            t.join()
        stop.set()

    # The clients' own end (duration, budget) ends the run even while stdin
    # stays open.
    ender = threading.Thread(target=clients_done, daemon=True)
    ender.start()

    def commands():
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "mark" and len(words) == 2:
                say({"mark": words[1], "t": tally.mark(words[1])})
            elif words[0] == "close" and len(words) == 1:
                say({"closed": tally.close()})
            elif words[0] == "wait" and len(words) in (2, 3):
                pids = int(words[2]) if len(words) == 3 else 0
                say(tally.wait(int(words[1]), pids, args.wait_timeout))
            elif words[0] == "stats":
                say(tally.summary())
            elif words[0] == "stop":
                break
            else:
                say({"error": f"unknown command {line.strip()!r}"})
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    stop.wait()
    for t in threads:
        t.join()
    if args.records:
        with open(args.records, "w") as f:
            for r in tally.records:
                f.write(json.dumps(r) + "\n")
    say(tally.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
