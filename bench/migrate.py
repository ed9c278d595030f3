"""Benchmark: eager migration cost per instance against the bare floor.

    bench/migrate.sh          # = python3 bench/migrate.py --pyreload target/release/pyreload

For 10k, 100k and 1M live instances, a program under `pyreload run`
(bench/migrate_prog.py) holds N fresh instances. Each round, side by side
in that one process:

1. the floor: a plain Python loop doing `obj.__class__ = New; f(obj)` over
   N other fresh instances, timed in the program;
2. `pyreload apply` of a class transform with the same f over its N live
   instances. The report times finding them (one walk of the collector's
   objects) apart from converting them (the loop in src/engine/eager.rs,
   which also journals each instance's state so a failure can be undone).

Then the instances are replaced by fresh ones for the next round. Printed
per size: medians over the rounds, and the conversion as a ratio of the
floor (median of the per-round ratios, with the lowest and highest).

Time on a shared 2-core machine moves from run to run, so where valgrind
is on PATH the same comparison is also counted in instructions, which do
not move: one program under callgrind collects only inside the floor loop
and inside the conversion loop (`--toggle-collect`), with a dump after each.

The same update with `mode = "lazy"` runs last, on a fresh program of each
size: its pause (a sample of 32 converted in the commit) against the eager
pause, and the sweep that converts the rest after the pause. The sweep, like
the eager transform, starts with a walk that finds the instances; its report
times that walk apart (`sweep_find_ms`), so the sweep is compared with the
eager migration both ways: whole (walk and conversion on both sides) and
conversion only (neither side's walk).
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
CONVERT_SYMBOL = "pyreload::engine::eager::convert_all*"
SWEEP_SYMBOL = "pyreload::engine::sweep::Sweep::batch*"

SPEC = """
[update]
name = "items-{to}"
to = "{to}"

[[transform]]
class = "__main__.Item"
function = "__main__.to_v2"
mode = "{mode}"

[safe_point]
timeout_ms = 60000
"""


class Program:
    """bench/migrate_prog.py under `pyreload run` (or under valgrind)."""

    def __init__(self, pyreload, n, work, prefix=()):
        self.pyreload = pyreload
        self.work = work
        self.env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"), PYTHONHASHSEED="0")
        self.proc = subprocess.Popen([*prefix, pyreload, "run", str(REPO / "bench/migrate_prog.py"), str(n)],
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.expect("ready")
        self.updates = 0

    def expect(self, word):
        line = self.proc.stdout.readline().split()
        if not line or line[0] != word:
            sys.exit(f"migrate_prog.py said {line!r}, expected {word!r}")
        return line

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def floor(self):
        self.ask("floor")
        return float(self.expect("floor")[1])

    def renew(self):
        self.ask("renew")
        self.expect("renewed")

    def apply(self, mode):
        self.updates += 1
        spec = self.work / "spec.toml"
        spec.write_text(SPEC.replace("{mode}", mode).replace("{to}", f"r{self.updates}"))
        out = subprocess.run([self.pyreload, "apply", "--json", "--pid", str(self.proc.pid), str(spec)],
                             env=self.env, capture_output=True, text=True)
        report = json.loads(out.stdout)
        if report["outcome"] != "committed":
            sys.exit(f"the update did not commit: {out.stdout}{out.stderr}")
        return report

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=300)


def eager_rounds(pyreload, n, rounds, work):
    """Per round: (floor ns, find ns, convert ns, pause ms), per instance where ns."""
    prog = Program(pyreload, n, work)
    out = []
    try:
        for r in range(rounds):
            if r:
                prog.renew()
            floor = prog.floor()
            report = prog.apply("eager")
            t = report["transforms"][0]
            assert t["instances"] == n, f"converted {t['instances']} instances, expected {n}"
            out.append((floor, t["find_ms"] * 1e6 / n, t["convert_ms"] * 1e6 / n, report["timings"]["pause_ms"]))
    finally:
        prog.close()
    return out


def lazy(pyreload, n, work):
    prog = Program(pyreload, n, work)
    try:
        report = prog.apply("lazy")
    finally:
        prog.close()
    t = report["transforms"][0]
    assert t["instances"] == n, f"lazy converted {t['instances']} instances, expected {n}"
    return report["timings"]["pause_ms"], t["lazy"]["sweep_ms"], t["lazy"].get("sweep_find_ms", 0.0)


def counted(pyreload, n, work):
    """Instructions per instance of the floor loop, of the eager conversion
    loop and of the lazy sweep's batches (neither counts its walk), under
    callgrind, or None without valgrind. Only those functions are collected;
    a dump after each (`callgrind_control --dump`) separates them. The sweep
    converts the same instances again, after the eager update."""
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        return None
    out = work / "callgrind"
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
              "--toggle-collect=sys_call_tracing", f"--toggle-collect={CONVERT_SYMBOL}",
              f"--toggle-collect={SWEEP_SYMBOL}"]
    prog = Program(pyreload, n, work, prefix)
    try:
        prog.floor()
        dump(prog.proc.pid)
        prog.apply("eager")
        dump(prog.proc.pid)
        swept = prog.apply("lazy")["transforms"][0]["lazy"]["converted_by_sweep"]
        dump(prog.proc.pid)
    finally:
        prog.close()
    totals = []
    for part, count in ((1, n), (2, n), (3, swept)):
        text = pathlib.Path(f"{out}.{prog.proc.pid}.{part}").read_text()
        totals.append(next(int(line.split()[1]) for line in text.splitlines() if line.startswith("summary:")) / count)
    return {"instances": n, "floor": totals[0], "convert": totals[1], "ratio": totals[1] / totals[0],
            "sweep": totals[2], "sweep_ratio": totals[2] / totals[1]}


def dump(pid):
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(REPO / "target/release/pyreload"))
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=5, help="eager rounds per size (3 at 1M and above)")
    parser.add_argument("--callgrind-size", type=int, default=100_000,
                        help="instances in the callgrind count (0: skip it)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-migrate-"))
    rows = []
    print("| instances | rounds | floor ns/inst | eager: find ns/inst | eager: convert ns/inst "
          "| convert / floor (lowest-highest) | eager pause ms | lazy pause ms | lazy / eager pause | lazy sweep ms "
          "| sweep: find ns/inst | sweep: convert ns/inst | sweep / eager, whole | sweep / eager, conversion |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in [int(s) for s in args.sizes.split(",")]:
        rounds = eager_rounds(pyreload, n, args.rounds if n < 1_000_000 else min(args.rounds, 3), work)
        ratios = sorted(convert / floor for floor, _, convert, _ in rounds)
        floor, find, convert, pause = (statistics.median(column) for column in zip(*rounds))
        lazy_pause, sweep, sweep_find = lazy(pyreload, n, work)
        sweep_find_ns = sweep_find * 1e6 / n
        sweep_convert_ns = (sweep - sweep_find) * 1e6 / n
        row = {"instances": n, "rounds": len(rounds), "floor_ns": floor, "find_ns": find, "convert_ns": convert,
               "ratio": statistics.median(ratios), "ratio_low": ratios[0], "ratio_high": ratios[-1],
               "eager_pause_ms": pause, "lazy_pause_ms": lazy_pause, "sweep_ms": sweep,
               "sweep_find_ns": sweep_find_ns, "sweep_convert_ns": sweep_convert_ns,
               "sweep_ratio_whole": sweep * 1e6 / n / (find + convert),
               "sweep_ratio_convert": sweep_convert_ns / convert}
        rows.append(row)
        print(f"| {n:,} | {len(rounds)} | {floor:.0f} | {find:.0f} | {convert:.0f} "
              f"| {row['ratio']:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | {pause:.1f} "
              f"| {lazy_pause:.2f} | {lazy_pause / pause:.3f} | {sweep:.0f} | {sweep_find_ns:.0f} "
              f"| {sweep_convert_ns:.0f} | {row['sweep_ratio_whole']:.2f}x | {row['sweep_ratio_convert']:.2f}x |",
              flush=True)
    count = counted(pyreload, args.callgrind_size, work) if args.callgrind_size else None
    if count:
        print()
        print(f"| instructions per instance (callgrind, {count['instances']:,} instances) | floor | convert "
              "| convert / floor | lazy sweep | sweep / convert |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| counted | {count['floor']:.0f} | {count['convert']:.0f} | {count['ratio']:.2f}x "
              f"| {count['sweep']:.0f} | {count['sweep_ratio']:.2f}x |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"sizes": rows, "callgrind": count}, indent=1))


if __name__ == "__main__":
    main()
