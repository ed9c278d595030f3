"""Benchmark: what `pyreload.update_point(name)` costs when no update waits.

    bench/update_point_cost.sh      # = pyreload run bench/update_point_cost.py

Runs under `pyreload run` (the `pyreload` module exists only there) and
times, in one process, side by side: an empty loop, a call to an empty
Python function, and a call to update_point. Prints ns per iteration and
the cost of update_point over the empty function call.
"""

import timeit

import pyreload


def noop(name):
    pass


def main():
    n = 2_000_000
    rows = {}
    for label, stmt, setup in (
        ("empty loop", "pass", ""),
        ("empty Python function call", "noop('loop')", "from __main__ import noop"),
        ("pyreload.update_point('loop')", "update_point('loop')", "from pyreload import update_point"),
    ):
        best = min(timeit.repeat(stmt, setup, number=n, repeat=7)) / n * 1e9
        rows[label] = best
    print(f"{n:,} iterations, best of 7, ns per iteration")
    print()
    print("| what | ns |")
    print("|---|---:|")
    for label, ns in rows.items():
        print(f"| {label} | {ns:.1f} |")
    fn = rows["empty Python function call"]
    up = rows["pyreload.update_point('loop')"]
    print()
    print(f"update_point / empty function call: {up / fn:.2f}x")


if __name__ == "__main__":
    main()
