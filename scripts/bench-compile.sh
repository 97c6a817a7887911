#!/usr/bin/env bash
# Compile-time and transform benchmarks of issue 3, printed as ratios in one
# run. Asserts nothing. Usage: scripts/bench-compile.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --release --locked -q -p weavster-bench -- "${1:-20000}"
