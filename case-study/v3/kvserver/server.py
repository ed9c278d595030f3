"""Accepts connections and serves each on its own thread.

Each connection reads one request per line and writes one response per
line. The per-connection loop looks the dispatcher up on the protocol module
for every request, so an update to the protocol takes effect on the next
request of every connection, without dropping any.
"""

import socket
import threading

from . import protocol
from .stats import STATS


class Server:
    def __init__(self, host, port):
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._connections = set()
        self._lock = threading.Lock()

    def serve_forever(self):
        n = 0
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            n += 1
            t = threading.Thread(target=self._serve, args=(conn,), name=f"conn-{n}", daemon=True)
            t.start()

    def _serve(self, conn):
        with self._lock:
            self._connections.add(conn)
        STATS.connection_opened()
        try:
            reader = conn.makefile("rb")
            for raw in reader:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                reply = protocol.handle_line(line)
                conn.sendall(reply.encode("utf-8") + b"\n")
                if reply == "BYE":
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            STATS.connection_closed()
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def shutdown(self):
        self._stopping.set()

    def close(self):
        self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
