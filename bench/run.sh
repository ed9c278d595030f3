#!/usr/bin/env bash
# Regenerate BENCHMARKS.md and bench/plots/ from scratch: one command.
# Sets up bench/.venv with IPython, jurigged and matplotlib from PyPI
# (pinned, so a rerun compares against the same alternatives),
# builds pyreload (release), and runs every benchmark side by side; then
# the headline figures again on every CPython pyenv has (3.10 to 3.13,
# bench/versions.py: a release build per version in target/pyX.Y).
# --versions '' skips that part.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/pip install --quiet --disable-pip-version-check \
  ipython==9.18.1 jurigged==0.6.1 matplotlib==3.11.2
cargo build --release --locked --quiet
exec python3 bench/run.py --pyreload target/release/pyreload --venv bench/.venv "$@"
