"""Which keys are read most (new in 4.0)."""

import heapq


def top(store, n):
    """The n most read keys, as (key, hits), most read first."""
    return heapq.nlargest(n, ((key, entry.hits) for key, entry in store.items()), key=lambda kv: (kv[1], kv[0]))
