"""The program bench/migrate.py updates: N live instances to convert.

It prints `ready` once it holds N fresh instances of Item in ITEMS, then
answers commands on stdin, one per line, until EOF:

    floor   time the floor in this process, print `floor <ns per instance>`:
            a plain Python loop doing `obj.__class__ = New; f(obj)` over N
            other fresh instances, with the same trivial transformer f
    renew   replace ITEMS with N fresh instances, print `renewed`

The floor loop runs inside `sys.call_tracing`, a C function nothing else
calls, so that callgrind can count exactly its instructions
(`--toggle-collect=sys_call_tracing`); it costs one call per floor.
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


class New:
    pass


def floor_loop(objs):
    for obj in objs:
        obj.__class__ = New
        to_v2(obj)


def floor_ns_per_instance():
    objs = [Item(i) for i in range(N)]
    t = time.perf_counter()
    sys.call_tracing(floor_loop, (objs,))
    elapsed = time.perf_counter() - t
    del objs
    return elapsed / N * 1e9


def renew():
    global ITEMS
    ITEMS = None
    gc.collect()
    ITEMS = [Item(i) for i in range(N)]


renew()
print("ready", flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "floor":
        print(f"floor {floor_ns_per_instance():.1f}", flush=True)
    elif command == "renew":
        renew()
        print("renewed", flush=True)
    else:
        print(f"unknown command {command!r}", flush=True)
