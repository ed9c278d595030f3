"""The pool, and what each of its worker processes keeps between jobs.

The pool forks its workers (`get_context("fork")`), so each starts as a
copy of this process, with `crunch.work` already imported: a worker never
reads work.py from disk. An update of the program must reach them too.
"""

import multiprocessing

# Tasks this worker process has run (in the parent: 0). Data: an update
# must keep it.
DONE = [0]

# Set in each worker by init(): a barrier all workers meet at in census(),
# so a census runs exactly one task in every worker.
BARRIER = None


def init(barrier):
    global BARRIER
    BARRIER = barrier


def census(i):
    from . import work

    BARRIER.wait(timeout=120)
    return work.describe()


def start(processes):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    return ctx.Pool(processes, initializer=init, initargs=(barrier,))
