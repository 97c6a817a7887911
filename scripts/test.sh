#!/usr/bin/env bash
# The whole test suite — what CI runs (.ci/run calls exactly this).
# Installs what is missing first (scripts/setup.sh), then: formatting,
# clippy with warnings as errors, every test of the workspace, and the
# distribution checks (scripts/test-dist.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The distribution checks (docs/distribution.md): the static musl binary and
# the wheel, built unoptimized (profile distcheck: ~4 min cold on 2 cores).
scripts/test-dist.sh --profile distcheck
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "\n%d passed, %d failed, %d skipped; distribution checks passed\n", p, f, s }' "$log"
