"""Benchmark: the pause against the size of an update.

    python3 bench/update_size.py --pyreload target/release/pyreload [--json out.json]

A generated package `sz` of M modules holds F functions and classes in all
(module functions, classes, and their methods; one class per ten). Two
versions of every module, A and B, differ in every body (changed), and
each has names the other lacks (added, removed); one function per module
sits behind a decorator whose closure changes shape, so the merge must
replace it rather than patch it, and re-point what refers to it. The
program under `pyreload run` imports `sz`, keeps live instances of every
class, and a module `sz_users` that is never updated holds `from sz.mI
import f` copies of each module's names. A worker thread calls into the
updated code all the time, so the library's code runs during every apply.

Updates alternate A -> B -> A (every module reloaded each time). Reported
per size: the pause, commit (the merge in the stopped world), stage and
prepare, p50 and p99, from the reports pyreload returns.

Series: functions at 10 modules (10, 100, 1,000, 10,000), modules at 1,000
functions (1, 10, 100, 1,000), and the largest (1,000 modules, 10,000
functions). Then the 10-module, 1,000-function update again in a program
that also loads 2,000 modules the update does not touch and holds 10M
live objects: the pause must not depend on them.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchlib import pct

REPO = pathlib.Path(__file__).resolve().parent.parent

# (modules, functions and classes) of each configuration, in run order.
SERIES = [(10, 10), (10, 100), (10, 1000), (10, 10000), (1, 1000), (100, 1000), (1000, 1000), (1000, 10000)]
BIG = (10, 1000)

PROGRAM = '''
import sys, threading, time
sys.path.insert(0, sys.argv[1])
N_MOD, FILLER, OBJECTS = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import importlib
for i in range(FILLER):
    importlib.import_module(f"filler.f{i}")
mods = [importlib.import_module(f"sz.m{i}") for i in range(N_MOD)]
import sz_users
INSTANCES = [cls() for m in mods for cls in m.CLASSES for _ in range(3)]
HEAP = [[i] for i in range(OBJECTS)]

def work():
    # The library runs: calls into the updated modules, between updates.
    n = 0
    while True:
        for m in mods:
            m.f0(n)
        for obj in INSTANCES[:50]:
            obj.meth0(n)
        sz_users.call(n)
        n += 1
        time.sleep(0.002)

threading.Thread(target=work, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
'''


def module_source(index, per_module, version):
    """Module `sz.m{index}` at version "a" or "b", with `per_module`
    functions, classes and methods."""
    classes = per_module // 10
    functions = max(per_module - 5 * classes, 1)
    bump = 1 if version == "a" else 2
    lines = [f'"""Generated module {index}, version {version}."""', "", "def _deco_a(f):",
             "    def wrapper(*a):", "        return f(*a)", "    return wrapper", "",
             "def _deco_b(f):", "    k = 1", "    def wrapper(*a):", "        return f(*a) * k", "    return wrapper", ""]
    # Nine functions in ten are in both versions and change; of the rest,
    # version A has some (removed by A -> B) and version B others (added).
    for j in range(functions):
        kept = j % 10 != 9
        if not kept and (j // 10) % 2 != (0 if version == "a" else 1):
            continue
        name = f"f{j}" if kept else f"only_{version}_{j}"
        lines += [f"def {name}(x):", f"    return x * {j} + {bump}", ""]
    lines += [f"@_deco_{version}", "def wrapped(x):", f"    return x + {bump}", ""]
    for c in range(classes):
        lines += [f"class C{c}:", f"    LIMIT = {bump}", "    def __init__(self):", "        self.n = 0"]
        for k in range(3):
            lines += [f"    def meth{k}(self, x):", f"        return x + {k} + {bump}"]
        lines += [f"    def only_{version}(self):", f"        return {bump}", ""]
    names = ", ".join(f"C{c}" for c in range(classes))
    lines += [f"CLASSES = [{names}]", f"VERSION = {bump!r}", ""]
    if classes == 0:
        lines[-3:-1] = ["class C0:", "    def meth0(self, x):", f"        return x + {bump}", "",
                        "CLASSES = [C0]", f"VERSION = {bump!r}"]
    return "\n".join(lines) + "\n"


def users_source(modules):
    """`sz_users`: `from sz.mI import ...` copies of every module's names; never updated."""
    lines = []
    for i in range(modules):
        lines.append(f"from sz.m{i} import f0 as f0_{i}, wrapped as wrapped_{i}, C0 as C0_{i}")
    lines += ["", "def call(n):"]
    lines += [f"    f0_{i}(n); wrapped_{i}(n); C0_{i}" for i in range(min(modules, 50))]
    lines.append("    return n")
    return "\n".join(lines) + "\n"


def build_tree(work, modules, functions, filler):
    per = max(functions // modules, 1)
    pkg = work / "live" / "sz"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for v in ("a", "b"):
        (work / v).mkdir(exist_ok=True)
    for i in range(modules):
        for v in ("a", "b"):
            (work / v / f"m{i}.py").write_text(module_source(i, per, v))
        (pkg / f"m{i}.py").write_text(module_source(i, per, "a"))
    (work / "live" / "sz_users.py").write_text(users_source(modules))
    if filler:
        fill = work / "live" / "filler"
        fill.mkdir(exist_ok=True)
        (fill / "__init__.py").write_text("")
        for i in range(filler):
            (fill / f"f{i}.py").write_text(f"def g(x):\n    return x + {i}\n\nclass K:\n    pass\n\nDATA = {{}}\n")
    (work / "prog.py").write_text(PROGRAM)


def spec_text(work, modules, version, index):
    lines = [f'[update]\nname = "size-{index}"\nto = "{index}"\n', "[safe_point]\ntimeout_ms = 60000\n"]
    for i in range(modules):
        lines.append(f'[[reload]]\nmodule = "sz.m{i}"\nsource = "{work / version / f"m{i}.py"}"\n')
    return "\n".join(lines)


def measure(pyreload, modules, functions, rounds, work, filler=0, objects=0):
    """Reports' timings of `rounds` updates of `modules` modules and about
    `functions` functions and classes; a fresh program in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    build_tree(work, modules, functions, filler)
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    prog = subprocess.Popen([pyreload, "run", str(work / "prog.py"), str(work / "live"), str(modules), str(filler),
                             str(objects)], cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(work / "prog.log", "w"), text=True)
    rows = []
    try:
        if prog.stdout.readline().strip() != "ready":
            sys.exit(f"the program did not start: {(work / 'prog.log').read_text()}")
        for r in range(rounds):
            spec = work / "spec.toml"
            spec.write_text(spec_text(work, modules, "b" if r % 2 == 0 else "a", r))
            t = time.perf_counter()
            out = subprocess.run([pyreload, "apply", "--json", "--pid", str(prog.pid), str(spec)],
                                 env=env, capture_output=True, text=True)
            wall = (time.perf_counter() - t) * 1000
            report = json.loads(out.stdout)
            if report["outcome"] != "committed":
                sys.exit(f"update did not commit: {out.stdout}{out.stderr}")
            tm = report["timings"]
            counts = {"changed": 0, "added": 0, "removed": 0, "unchanged": 0, "rebound": 0}
            for m in report["modules"]:
                for kind in ("functions", "classes"):
                    for k in ("changed", "added", "removed"):
                        counts[k] += len(m[kind][k])
                    counts["unchanged"] += m[kind]["unchanged"]
                counts["rebound"] += len(m["rebound"])
            rows.append({"pause": tm["pause_ms"], "commit": tm["commit_ms"], "stage": tm["stage_ms"],
                         "prepare": tm["prepare_ms"], "stop": tm["stop_ms"], "resume": tm["resume_ms"],
                         "total": tm["total_ms"], "apply": wall, **counts})
    finally:
        prog.stdin.close()
        try:
            prog.wait(timeout=120)
        except subprocess.TimeoutExpired:
            prog.kill()
    return rows


def summary(modules, functions, rows, filler=0, objects=0):
    out = {"modules": modules, "functions": functions, "filler": filler, "objects": objects, "rounds": len(rows),
           "rows": rows}
    for metric in ("pause", "commit", "stage", "prepare", "apply"):
        v = [r[metric] for r in rows]
        out[metric] = {"p50": pct(v, 50), "p99": pct(v, 99)}
    last = rows[-1]
    out["changed"] = last["changed"]
    out["added"] = last["added"]
    out["removed"] = last["removed"]
    out["rebound"] = last["rebound"]
    return out


def table(results):
    lines = ["| modules | functions and classes | changed / added / removed (last update) | other modules loaded "
             "| live objects | updates | pause p50 / p99 ms | commit p50 / p99 ms | stage p50 / p99 ms "
             "| prepare p50 / p99 ms | apply wall p50 ms | pause p50 µs per function |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['modules']:,} | {r['functions']:,} | {r['changed']:,} / {r['added']:,} / {r['removed']:,} "
            f"| {r['filler']:,} | {r['objects']:,} | {r['rounds']} "
            f"| {r['pause']['p50']:.2f} / {r['pause']['p99']:.2f} | {r['commit']['p50']:.2f} / {r['commit']['p99']:.2f} "
            f"| {r['stage']['p50']:.1f} / {r['stage']['p99']:.1f} | {r['prepare']['p50']:.1f} / {r['prepare']['p99']:.1f} "
            f"| {r['apply']['p50']:.0f} | {r['pause']['p50'] * 1000 / r['functions']:.2f} |")
    return "\n".join(lines)


def rounds_for(modules, functions, rounds):
    # The largest updates take seconds each to prepare; fewer of them.
    return rounds if modules * 10 + functions <= 12_000 else max(rounds // 3, 4)


def first_applies(pyreload, programs, objects, work):
    """The first and the second `apply` of a small update (1 module, 10
    functions) in each of `programs` fresh programs holding `objects` live
    objects: wall time of `pyreload apply`, and the report's total."""
    out = []
    for i in range(programs):
        rows = measure(pyreload, 1, 10, 2, work / f"first-{i}", 0, objects)
        out.append({"first_wall": rows[0]["apply"], "first_total": rows[0]["total"],
                    "second_wall": rows[1]["apply"], "second_total": rows[1]["total"],
                    "first_prepare": rows[0]["prepare"], "first_pause": rows[0]["pause"]})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--series", default=",".join(f"{m}x{f}" for m, f in SERIES),
                        help="modules x functions, comma-separated")
    parser.add_argument("--big", default="2000,10000000", help="unchanged modules,live objects ('' to skip)")
    parser.add_argument("--first-programs", type=int, default=3,
                        help="fresh programs at 1M objects whose first apply is timed (0: skip)")
    parser.add_argument("--json")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-size-"))
    results = []
    for item in args.series.split(","):
        m, f = (int(x) for x in item.split("x"))
        rows = measure(pyreload, m, f, rounds_for(m, f, args.rounds), work / f"{m}x{f}")
        results.append(summary(m, f, rows))
        print(f"  {m} modules, {f} functions: pause p50 {results[-1]['pause']['p50']:.2f} ms", file=sys.stderr, flush=True)
    if args.big:
        filler, objects = (int(x) for x in args.big.split(","))
        m, f = BIG
        rows = measure(pyreload, m, f, args.rounds, work / "big", filler, objects)
        results.append(summary(m, f, rows, filler, objects))
    first = first_applies(pyreload, args.first_programs, 1_000_000, work) if args.first_programs else []
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"sizes": results, "first": first}, indent=1))
    print(f"generated updates, {args.rounds} per size (fewer for the largest), {os.cpu_count()} CPUs")
    print()
    print(table(results))
    if first:
        print()
        print("| fresh program, 1M live objects, 1 module / 10 functions | first apply wall ms | its total_ms "
              "| second apply wall ms | its total_ms |")
        print("|---|---:|---:|---:|---:|")
        for i, f in enumerate(first, 1):
            print(f"| program {i} | {f['first_wall']:.1f} | {f['first_total']:.1f} | {f['second_wall']:.1f} "
                  f"| {f['second_total']:.1f} |")


if __name__ == "__main__":
    main()
