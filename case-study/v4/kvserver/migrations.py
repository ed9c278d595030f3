"""State transformers between store representations, both directions.

Loaded by the v2-to-v3 update (new in 3.0), extended by v3-to-v4. Each
update's spec names the forward transformer and its reverse, which
`pyreload rollback` uses.
"""

from .store import Entry


def store_v3(store):
    """2.0 -> 3.0: plain string values become Entry objects."""
    with store._lock:
        for key, value in store._data.items():
            store._data[key] = Entry(value)


def store_v2(store):
    """3.0 -> 2.0: Entry objects become their plain values again."""
    with store._lock:
        for key, entry in list(store._data.items()):
            store._data[key] = entry.value


def entry_v4(entry):
    """3.0 -> 4.0: `version` is renamed `rev`; `hits` starts at 0 (from defaults)."""
    entry.rev = entry.__dict__.pop("version")


def entry_v3(entry):
    """4.0 -> 3.0: back to `version`, without `hits`."""
    return {"value": entry.value, "version": entry.rev, "expires_at": entry.expires_at}
