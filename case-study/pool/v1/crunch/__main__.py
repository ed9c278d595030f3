"""python -m crunch [--workers N]: jobs on stdin, one JSON line per job.

Jobs:
    map N       score jobs 0..N-1 over the pool; prints {"results": [...]}
    census      one task in every worker at once; prints {"workers": [...]},
                each with the worker's pid, code version and task count
    pids        the worker pids, as the pool knows them

It prints "crunch: N workers ready (version V)" once the pool is up, and
exits 0 at the end of stdin.
"""

import argparse
import json
import sys

from . import work, workers


def main(argv=None):
    parser = argparse.ArgumentParser(prog="crunch")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    pool = workers.start(args.workers)
    try:
        print(f"crunch: {args.workers} workers ready (version {work.VERSION})", flush=True)
        for line in sys.stdin:
            job = line.split()
            if not job:
                continue
            if job[0] == "map" and len(job) == 2:
                reply = {"results": pool.map(work.score, range(int(job[1])), chunksize=1)}
            elif job[0] == "census":
                reply = {"workers": pool.map(workers.census, range(args.workers), chunksize=1)}
            elif job[0] == "pids":
                # Pool has no public list of its processes.
                reply = {"workers": sorted(p.pid for p in pool._pool)}
            else:
                reply = {"error": f"unknown job {line.strip()!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        pool.close()
        pool.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
