"""crunch: a batch service that spreads CPU work over a multiprocessing Pool.

- `crunch.work` is the code an update changes (the scoring function).
- `crunch.workers` starts the pool (fork context) and holds what each
  worker process keeps: its task count.
- `python -m crunch` reads jobs from stdin, one per line, and prints one
  JSON line per job (see crunch/__main__.py).
"""
