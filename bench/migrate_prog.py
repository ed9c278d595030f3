"""The program bench/migrate.py updates: N live instances to convert.

Before it says `ready`, it measures the floor in the same process: a plain
Python loop doing `obj.__class__ = New; f(obj)` over N other instances,
with the same trivial transformer f.
"""

import gc
import sys
import time

N = int(sys.argv[1])


class Item:
    def __init__(self, value):
        self.value = value


def to_v2(item):
    item.version = 2


def floor_ns_per_instance():
    class New:
        pass

    objs = [Item(i) for i in range(N)]
    t = time.perf_counter()
    for obj in objs:
        obj.__class__ = New
        to_v2(obj)
    elapsed = time.perf_counter() - t
    del objs
    return elapsed / N * 1e9


FLOOR = min(floor_ns_per_instance() for _ in range(3))
gc.collect()
ITEMS = [Item(i) for i in range(N)]
print(f"ready {FLOOR:.1f}", flush=True)
sys.stdin.read()
