"""The work itself (version 1.0): count the primes below a limit.

1.0 divides by every odd number up to the square root: correct, slow.
"""

import os

VERSION = "1.0"


def primes_below(limit):
    count = 0
    for n in range(2, limit):
        if n < 4:
            count += 1
            continue
        if n % 2 == 0:
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def score(n):
    """Job n: the number of primes below 1000 * (n + 1)."""
    from . import workers

    workers.DONE[0] += 1
    return {"n": n, "value": primes_below(1000 * (n + 1)), "version": VERSION,
            "pid": os.getpid(), "done": workers.DONE[0]}


def describe():
    from . import workers

    return {"version": VERSION, "pid": os.getpid(), "done": workers.DONE[0]}
