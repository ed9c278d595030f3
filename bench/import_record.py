"""Benchmark: what recording each module's source at import costs.

    python3 bench/import_record.py --pyreload target/release/pyreload [--runs 15] [--json out.json]

`pyreload run` keeps, for every module the program imports, the source it
was loaded from (src/host/loaded.rs), so that `pyreload diff` and `pyreload
new --running` can compare what runs with a file changed in place. This is
its price. A program imports 500 generated modules (about 90 lines and 3 KB
each: a docstring, imports, a table, functions and a class) and exits. It
runs under `python3` and under `pyreload run`, alternately, RUNS times each,
in two states:

- warm: `__pycache__` holds valid .pyc files, as on every start after the
  first. CPython reads only the .pyc; the recorder also reads the source.
- cold: no `__pycache__` and PYTHONDONTWRITEBYTECODE=1: every module is
  compiled. The recorder keeps the bytes the compiler reads.

Per run: wall time from spawn to exit; CPU time (user + system, from
wait4); the time the 500 imports took, measured inside the program around
them; RSS (VmRSS) before and after them; and the peak (VmHWM). The import
time and the RSS growth over the imports isolate the recorder: it is the
only pyreload code that runs while a module is imported (the control
thread sleeps in `accept`). Whole-process figures also include what
hosting costs anyway (the binary, the control socket, the control thread).
Reported: p50 and p90 of each, and the ratio pyreload / python3 of the
medians.

Times on a shared 2-core machine move with the load. Where valgrind is on
PATH, the figure that does not is counted too: the instructions each host
executes (callgrind, whole process, PYTHONHASHSEED=0), for the program
with the 500 imports and for the same program importing nothing. The
difference is what the 500 imports cost under each host.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import pct

MODULES = 500

MODULE = '''"""Generated module {i}: orders, prices and a small report."""

import collections
import functools
import os

from . import {prev}

RATES = {{"standard": 1.0, "express": 1.{i}, "overnight": 2.5, "pickup": 0.0}}
NAMES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def price_{i}(quantity, unit, rate="standard"):
    """Price of `quantity` items of `unit` at `rate`."""
    if quantity < 0:
        raise ValueError("quantity must not be negative")
    total = quantity * unit * RATES[rate]
    if quantity > 100:
        total *= 0.9
    return round(total, 2)


def tally_{i}(orders):
    """Counts orders per customer."""
    counts = collections.Counter()
    for customer, _item in orders:
        counts[customer] += 1
    return dict(counts)


@functools.lru_cache(maxsize=128)
def label_{i}(n):
    return f"{{NAMES[n % len(NAMES)]}}-{i}-{{n}}"


def path_{i}(root, *parts):
    return os.path.join(root, *parts)


def previous_{i}():
    return {prev}.__name__


class Order{i}:
    """One order line."""

    __slots__ = ("customer", "item", "quantity", "unit")

    def __init__(self, customer, item, quantity, unit):
        self.customer = customer
        self.item = item
        self.quantity = quantity
        self.unit = unit

    def total(self, rate="standard"):
        return price_{i}(self.quantity, self.unit, rate)

    def describe(self):
        return f"{{self.customer}}: {{self.quantity}} x {{self.item}} at {{self.unit}}"

    def __repr__(self):
        return f"Order{i}({{self.customer!r}}, {{self.item!r}}, {{self.quantity}}, {{self.unit}})"


def report_{i}(orders):
    lines = []
    for order in orders:
        lines.append(order.describe())
        lines.append(f"  total {{order.total()}}")
    return "\\n".join(lines)
'''

MAIN = '''import importlib, json, resource, sys, time

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

before = status("VmRSS")
t = time.perf_counter()
for i in range({n}):
    importlib.import_module(f"gen.m{{i:03d}}")
elapsed = time.perf_counter() - t
print(json.dumps({{"import_s": elapsed, "rss_before_kib": before, "rss_after_kib": status("VmRSS"),
                  "hwm_kib": status("VmHWM")}}))
'''


def generate(root):
    gen = root / "gen"
    gen.mkdir()
    (gen / "__init__.py").write_text('"""500 generated modules."""\n')
    for i in range(MODULES):
        prev = f"m{i - 1:03d}" if i else "m000"
        text = MODULE.format(i=i, prev=prev) if i else MODULE.format(i=i, prev="m000").replace(
            "from . import m000\n", "").replace("return m000.__name__", "return __name__")
        (gen / f"m{i:03d}.py").write_text(text)
    (root / "main.py").write_text(MAIN.format(n=MODULES))
    return sum(p.stat().st_size for p in gen.glob("*.py"))


def one(cmd, cwd, env):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd} failed ({proc.returncode}):\n{err.decode()}")
    figures = json.loads(out.decode().strip().splitlines()[-1])
    figures["wall_s"] = wall
    figures["cpu_s"] = usage.ru_utime + usage.ru_stime
    figures["rss_growth_kib"] = figures["rss_after_kib"] - figures["rss_before_kib"]
    return figures


def instructions(cmd, cwd, env, out):
    """Instructions `cmd` executes, counted by callgrind (whole process)."""
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd, cwd=cwd,
                   env=dict(env, PYTHONHASHSEED="0"), check=True, capture_output=True)
    for line in pathlib.Path(out).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    sys.exit(f"no instruction total in {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pyreload", required=True)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json")
    parser.add_argument("--no-callgrind", action="store_true", help="skip counting instructions")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    python = shutil.which("python3")
    hosts = {"python3": [python, "main.py"], "pyreload run": [pyreload, "run", "main.py"]}
    results = {}
    counted = {}
    with tempfile.TemporaryDirectory(prefix="pyreload-import-record-") as tmp:
        root = pathlib.Path(tmp)
        source_bytes = generate(root)
        base = dict(os.environ)
        base.pop("VIRTUAL_ENV", None)
        base.pop("PYTHONDONTWRITEBYTECODE", None)  # set by some CI images; warm needs the .pyc files
        base["PYRELOAD_RUNTIME_DIR"] = str(root / "run")
        for state in ("warm", "cold"):
            env = dict(base)
            if state == "cold":
                shutil.rmtree(root / "gen" / "__pycache__", ignore_errors=True)
                env["PYTHONDONTWRITEBYTECODE"] = "1"
            else:
                one(hosts["python3"], root, env)  # writes the .pyc files
                if len(list((root / "gen" / "__pycache__").glob("*.pyc"))) != MODULES + 1:
                    sys.exit("the warm run wrote no .pyc files")
            runs = {h: [] for h in hosts}
            for r in range(args.runs):
                order = list(hosts) if r % 2 == 0 else list(reversed(hosts))
                for h in order:
                    runs[h].append(one(hosts[h], root, env))
            results[state] = runs
            if shutil.which("valgrind") and not args.no_callgrind:
                (root / "empty.py").write_text(MAIN.format(n=0))
                for h, cmd in hosts.items():
                    full = instructions(cmd, root, env, root / f"cg-{state}-{h}-full")
                    empty = instructions(cmd[:-1] + ["empty.py"], root, env, root / f"cg-{state}-{h}-empty")
                    counted[(state, h)] = (full, empty)

    print(f"{MODULES} modules, {source_bytes / 1024:.0f} KiB of source, {args.runs} runs per host and state\n")
    metrics = [
        ("imports (ms)", "import_s", 1000),
        ("wall, spawn to exit (ms)", "wall_s", 1000),
        ("CPU, user + system (ms)", "cpu_s", 1000),
        ("RSS growth over the imports (KiB)", "rss_growth_kib", 1),
        ("peak RSS (KiB)", "hwm_kib", 1),
    ]
    print("| state | figure | python3 p50 | python3 p90 | pyreload run p50 | pyreload run p90 | ratio of p50s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    summary = {}
    for state, runs in results.items():
        for label, key, scale in metrics:
            p = [x[key] * scale for x in runs["python3"]]
            q = [x[key] * scale for x in runs["pyreload run"]]
            ratio = pct(q, 50) / pct(p, 50)
            summary[f"{state} {key}"] = ratio
            fmt = "{:.1f}" if scale != 1 else "{:.0f}"
            print(f"| {state} | {label} | {fmt.format(pct(p, 50))} | {fmt.format(pct(p, 90))} | "
                  f"{fmt.format(pct(q, 50))} | {fmt.format(pct(q, 90))} | {ratio:.3f} |")
    for state, runs in results.items():
        extra = pct([x["rss_growth_kib"] for x in runs["pyreload run"]], 50) - pct(
            [x["rss_growth_kib"] for x in runs["python3"]], 50)
        per = (pct([x["import_s"] for x in runs["pyreload run"]], 50) - pct(
            [x["import_s"] for x in runs["python3"]], 50)) / MODULES * 1e6
        print(f"\n{state}: pyreload run - python3, medians: {per:+.1f} µs per module imported, "
              f"{extra:+.0f} KiB RSS over the imports ({source_bytes / 1024:.0f} KiB of source kept)")
    if counted:
        print("\n| instructions (callgrind) | python3 | pyreload run | ratio |")
        print("|---|---:|---:|---:|")
        for state in results:
            (pf, pe), (qf, qe) = counted[(state, "python3")], counted[(state, "pyreload run")]
            print(f"| {state}: whole process, 500 imports | {pf:,} | {qf:,} | {qf / pf:.3f} |")
            print(f"| {state}: whole process, no imports | {pe:,} | {qe:,} | {qe / pe:.3f} |")
            print(f"| {state}: the 500 imports (difference) | {pf - pe:,} | {qf - qe:,} | "
                  f"{(qf - qe) / (pf - pe):.3f} |")
            summary[f"{state} instructions per import, added"] = ((qf - qe) - (pf - pe)) / MODULES
        for state in results:
            print(f"\n{state}: the recorder adds {summary[f'{state} instructions per import, added']:,.0f} "
                  "instructions per module imported")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"source_bytes": source_bytes, "runs": results,
                                                       "ratios": summary}, indent=1))


if __name__ == "__main__":
    main()
