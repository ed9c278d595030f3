#!/usr/bin/env python3
"""Instructions the commit executes for an update of M modules and F functions (callgrind).

The program of bench/update_size.py (the generated package `sz`, a thread
calling into it every 2 ms) runs under `valgrind --tool=callgrind
--toggle-collect='pyreload::engine::commit*'`, so only the commit proper
(engine/mod.rs `commit`: the merge, the copies, the check, inside the
stopped world) is counted; `--updates` updates alternate between the two
versions as in the benchmark. Prints the instructions per update and per
changed function or class, and the functions that take the most
(inclusive), from `callgrind_annotate --inclusive=yes`.

    python3 bench/commit_instructions.py --pyreload target/release/pyreload --modules 10 --functions 1000

The machine's load does not move these counts.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import update_size  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyreload", default=str(update_size.REPO / "target/release/pyreload"))
    parser.add_argument("--modules", type=int, default=10)
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed")
    pyreload = str(pathlib.Path(args.pyreload).resolve())
    work = pathlib.Path(tempfile.mkdtemp(prefix="pyreload-commit-ir-"))
    update_size.build_tree(work, args.modules, args.functions, 0)
    env = dict(os.environ, PYRELOAD_RUNTIME_DIR=str(work / "run"))
    out = work / "callgrind.out"
    prog = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--toggle-collect=pyreload::engine::commit*",
         pyreload, "run", str(work / "prog.py"), str(work / "live"), str(args.modules), "0", "0"],
        cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(work / "prog.log", "w"),
        text=True)
    changed = []
    merge_ahead = []
    try:
        if prog.stdout.readline().strip() != "ready":
            sys.exit(f"the program did not start: {(work / 'prog.log').read_text()}")
        for r in range(args.updates):
            spec = work / "spec.toml"
            spec.write_text(update_size.spec_text(work, args.modules, "b" if r % 2 == 0 else "a", r))
            done = subprocess.run([pyreload, "apply", "--json", "--pid", str(prog.pid), str(spec)], env=env,
                                  capture_output=True, text=True)
            report = json.loads(done.stdout)
            if report["outcome"] != "committed":
                sys.exit(f"update did not commit: {done.stdout}{done.stderr}")
            n = 0
            for m in report["modules"]:
                for kind in ("functions", "classes"):
                    n += len(m[kind]["changed"]) + len(m[kind]["added"]) + len(m[kind]["removed"])
            changed.append(n)
            merge_ahead.append(report.get("merge_ahead"))
    finally:
        prog.stdin.close()
        prog.wait(timeout=600)
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)], capture_output=True,
                               text=True, check=True).stdout
    total = int(re.search(r"([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", annotated).group(1).replace(",", ""))
    per_update = total / args.updates
    per_function = per_update / (sum(changed) / len(changed))
    print(f"{args.modules} modules, {args.functions} functions and classes, {args.updates} updates: "
          f"{total:,} instructions in the commit, {per_update:,.0f} per update, "
          f"{per_function:,.0f} per changed function or class ({changed})")
    print("merge_ahead:", json.dumps(merge_ahead))
    lines = [line for line in annotated.splitlines() if re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)", line)]
    for line in lines[: args.top]:
        print(line[:160])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"modules": args.modules, "functions": args.functions, "updates": args.updates, "total": total,
             "per_update": per_update, "per_changed": per_function, "changed": changed,
             "merge_ahead": merge_ahead, "top": lines[: args.top]}, indent=1))


if __name__ == "__main__":
    main()
