#!/usr/bin/env bash
# Build pyreload (release) and run the pause / apply-latency benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
exec python3 bench/apply_pause.py --pyreload target/release/pyreload "$@"
