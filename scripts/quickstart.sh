#!/usr/bin/env bash
# Quick start: set everything up, build weavster, scaffold a demo project,
# compile its flow to wasm, run its fixture tests, then run the flow for real
# (`run --once`: embedded PostgreSQL queue, wasmtime, file output).
#   scripts/quickstart.sh [DIR]      (default DIR: ./demo)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
demo="${1:-$repo/demo}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

scripts/setup.sh
printf '==> building weavster\n' >&2
cargo build --release --locked -p weavster-cli
weavster="$CARGO_TARGET_DIR/release/weavster"

if [ -f "$demo/weavster.yaml" ]; then
  printf '==> %s already holds a project; using it\n' "$demo" >&2
else
  "$weavster" init "$demo"
fi
"$weavster" -C "$demo" debug
"$weavster" -C "$demo" validate
"$weavster" -C "$demo" ls
"$weavster" -C "$demo" compile
"$weavster" -C "$demo" test
"$weavster" -C "$demo" run --once

cat <<MSG

Done. The project is in $demo; the weavster binary is $weavster.
Its flow read $demo/data/orders.jsonl and wrote $demo/out/*.jsonl
(summary: $demo/.weavster/target/run_results.json). Run it again with
  $weavster -C $demo run --once      (nothing new to read: positions are stored)
  $weavster -C $demo run             (keeps following the input; Ctrl-C stops)
MSG
