#!/usr/bin/env bash
# A Python wheel carrying the static `weavster` binary, so that
# `pip install weavster-*.whl` puts `weavster` on PATH (maturin with
# bindings = "bin": crates/weavster-cli/pyproject.toml).
#
#   scripts/build-wheel.sh [--profile P] [OUT_DIR]   # default: target/wheels
#
# The profile is `dist` (pyproject.toml), what ships; the CI checks pass
# `--profile distcheck` (the same static linking, unoptimized: Cargo.toml).
#
# The binary is built for x86_64-unknown-linux-musl (scripts/build-static.sh
# installs what that needs): it depends on no libc, so the wheel is tagged
# manylinux2014 and installs on any x86_64 Linux with Python ≥ 3.8.
# maturin is installed into .tools/maturin (a virtualenv) by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
profile=dist
if [ "${1:-}" = "--profile" ]; then profile="$2"; shift 2; fi
out="${1:-$CARGO_TARGET_DIR/wheels}"
say() { printf '==> %s\n' "$*" >&2; }

# The musl target and C compiler (no-ops when present).
scripts/build-static.sh --deps-only
# maturin (pinned) into .tools/maturin: scripts/setup.sh installs it.
[ -x .tools/maturin/bin/maturin ] || scripts/setup.sh
export CC_x86_64_unknown_linux_musl=musl-gcc
export AR_x86_64_unknown_linux_musl=ar
start=$(date +%s)
.tools/maturin/bin/maturin build --locked \
  -m crates/weavster-cli/Cargo.toml \
  --target x86_64-unknown-linux-musl \
  --profile "$profile" \
  --compatibility manylinux2014 \
  --out "$out"
wheel=$(ls -t "$out"/weavster-*.whl | head -1)
say "built $wheel (profile $profile) in $(( $(date +%s) - start )) s: $(( $(stat -c %s "$wheel") / 1024 / 1024 )) MiB"
echo "$wheel"
