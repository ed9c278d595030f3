"""The in-memory key-value store."""

import threading


class Store:
    def __init__(self):
        self._lock = threading.Lock()
        self._data = {}

    def get(self, key):
        with self._lock:
            return self._data.get(key)

    def set(self, key, value):
        with self._lock:
            self._data[key] = value

    def delete(self, key):
        with self._lock:
            return self._data.pop(key, None) is not None

    def size(self):
        with self._lock:
            return len(self._data)


STORE = Store()
