#!/usr/bin/env bash
# Build pyreload and run the demo: kvserver 1.0 -> 2.0 under client load.
# Needs only what the machine has: cargo and python3.
#
#   case-study/demo.sh                                   # for python3
#   case-study/demo.sh --python "$(pyenv prefix 3.13.0)/bin/python3"
#
# With --python, pyreload is built for that interpreter (PYO3_PYTHON, in
# its own target/pyX.Y) and the server runs on it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=""
if [ "${1:-}" = "--python" ]; then
    python=${2:?"--python needs the path of a python3 (CPython 3.10 or later, with a shared libpython)"}
    shift 2
fi
target=target
if [ -n "$python" ]; then
    minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    target=target/py$minor
    export PYO3_PYTHON=$python CARGO_TARGET_DIR=$target
    echo "Building pyreload for CPython $minor ($python)"
fi
cargo build --release --locked --quiet
exec python3 case-study/demo.py --pyreload "$target/release/pyreload" "$@"
