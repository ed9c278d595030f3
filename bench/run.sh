#!/usr/bin/env bash
# Regenerate BENCHMARKS.md and bench/plots/ from scratch: one command.
# Sets up bench/.venv with IPython, jurigged and matplotlib from PyPI, and the
# web stack bench/tree.py serves (the pins of tests/common/pypi.rs)
# (pinned, so a rerun compares against the same alternatives),
# builds pyreload (release), and runs every benchmark side by side (bench/libraries.py
# makes its own venv, target/lib-venv, and pip-upgrades werkzeug and jinja2 in it); then
# the headline figures again on every CPython pyenv has (3.10 to 3.13,
# bench/versions.py: a release build per version in target/pyX.Y).
# --versions '' skips that part.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/pip install --quiet --disable-pip-version-check \
  ipython==9.18.1 jurigged==0.6.1 matplotlib==3.11.2 \
  gunicorn==27.0.1 flask==3.1.3 werkzeug==3.1.9 jinja2==3.1.6 markupsafe==3.0.4 \
  itsdangerous==2.2.0 click==8.5.1 blinker==1.9.0
cargo build --release --locked --quiet
exec python3 bench/run.py --pyreload target/release/pyreload --venv bench/.venv "$@"
