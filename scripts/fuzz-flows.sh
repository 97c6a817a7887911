#!/usr/bin/env bash
# Soak run of the generated-flow oracles: CASES generated flows (default
# 1,000,000) through the interpreter with partial vs whole decoding, then
# NATIVE of them (default 1,000) compiled natively against the interpreter.
# A failing case is shrunk and saved to tests/flows-corpus/, which CI
# replays (also through wasm).
# Usage: scripts/fuzz-flows.sh [CASES] [NATIVE]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cases="${1:-1000000}"
native="${2:-1000}"
WEAVSTER_FLOWGEN_CASES="$cases" cargo test -p weavster-ir --test generated -- --nocapture
WEAVSTER_FLOWGEN_NATIVE="$native" cargo test -p weavster-cli --test generated_native -- --nocapture
