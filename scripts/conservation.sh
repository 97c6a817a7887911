#!/usr/bin/env bash
# A long run of the conservation harness (crates/weavster-cli/tests/
# conservation.rs): generated bad input in every format, runs killed at
# random moments, and every record accounted for from the outputs and the
# dead letters; and input files changed under their queued range jobs,
# every range accounted for. CI runs 9 and 8 cases; this runs as many as
# asked of each.
# Usage: scripts/conservation.sh [CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cases="${1:-200}"
seed="${2:-$(date +%s)}"
echo "conservation: $cases cases, seed $seed (again: scripts/conservation.sh $cases $seed)" >&2
WEAVSTER_CONSERVATION_CASES="$cases" WEAVSTER_CHANGED_CASES="$cases" WEAVSTER_CONSERVATION_SEED="$seed" \
  cargo test -p weavster-cli --test conservation -- --nocapture
