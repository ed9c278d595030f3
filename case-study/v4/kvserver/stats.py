"""Server-wide counters, shared by every connection thread."""

import threading


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.in_flight = 0
        self.connections = 0

    def request_started(self):
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def request_finished(self, ok):
        with self._lock:
            self.in_flight -= 1
            if not ok:
                self.errors += 1

    def connection_opened(self):
        with self._lock:
            self.connections += 1

    def connection_closed(self):
        with self._lock:
            self.connections -= 1

    def line(self):
        with self._lock:
            return (
                f"requests={self.requests} errors={self.errors} "
                f"in_flight={self.in_flight} connections={self.connections}"
            )


STATS = Stats()
