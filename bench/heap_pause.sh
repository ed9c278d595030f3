#!/usr/bin/env bash
# Build pyreload (release) and measure the pause of a code-only update against heap size.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
exec python3 bench/heap_pause.py --pyreload target/release/pyreload "$@"
