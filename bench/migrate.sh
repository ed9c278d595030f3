#!/usr/bin/env bash
# Build pyreload (release) and run the eager-migration benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
exec python3 bench/migrate.py --pyreload target/release/pyreload "$@"
