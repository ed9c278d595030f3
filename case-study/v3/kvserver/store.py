"""The in-memory key-value store.

Since 3.0 each value is held in an Entry that records how many times the key
was written (its version) and when it expires, if ever.
"""

import threading
import time


class Entry:
    def __init__(self, value, version=1, expires_at=None):
        self.value = value
        self.version = version
        self.expires_at = expires_at

    def expired(self, now):
        return self.expires_at is not None and now >= self.expires_at


class Store:
    def __init__(self):
        self._lock = threading.Lock()
        self._data = {}

    def _live(self, key):
        entry = self._data.get(key)
        if entry is not None and entry.expired(time.time()):
            del self._data[key]
            return None
        return entry

    def get(self, key):
        with self._lock:
            entry = self._live(key)
            return None if entry is None else entry.value

    def entry(self, key):
        with self._lock:
            return self._live(key)

    def set(self, key, value, ttl=None):
        with self._lock:
            old = self._live(key)
            expires_at = None if ttl is None else time.time() + ttl
            self._data[key] = Entry(value, 1 if old is None else old.version + 1, expires_at)

    def delete(self, key):
        with self._lock:
            return self._data.pop(key, None) is not None

    def incr(self, key, by=1):
        """Add `by` to an integer value, atomically; a missing key is 0."""
        with self._lock:
            old = self._live(key)
            value = int("0" if old is None else old.value) + by
            self._data[key] = Entry(str(value), 1 if old is None else old.version + 1, None if old is None else old.expires_at)
            return value

    def size(self):
        with self._lock:
            return len(self._data)


STORE = Store()
