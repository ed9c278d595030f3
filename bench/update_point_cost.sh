#!/usr/bin/env bash
# Build pyreload (release) and time pyreload.update_point() with no update pending.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
PYRELOAD_RUNTIME_DIR="$(mktemp -d)" exec target/release/pyreload run bench/update_point_cost.py
