#!/usr/bin/env bash
# Build pyreload and run the demo: kvserver 1.0 -> 2.0 under client load.
# Needs only what the machine has: cargo and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
exec python3 case-study/demo.py --pyreload target/release/pyreload "$@"
