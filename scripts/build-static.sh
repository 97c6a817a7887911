#!/usr/bin/env bash
# A static `weavster` for x86_64-unknown-linux-musl: no libc, no OpenSSL
# (rustls everywhere), librdkafka, zlib and zstd built in. It runs from an
# otherwise empty root (docker/Dockerfile.runtime copies it into `scratch`).
#
#   scripts/build-static.sh [OUT]     # default: target/dist/weavster
#
# Installs what it needs (Debian's musl-tools, the Rust musl target),
# idempotently (`--deps-only`: only that). Prints the binary's size and how
# it is linked.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
target=x86_64-unknown-linux-musl
deps_only=""
if [ "${1:-}" = "--deps-only" ]; then deps_only=1; shift; fi
out="${1:-$CARGO_TARGET_DIR/dist/weavster}"
say() { printf '==> %s\n' "$*" >&2; }

if ! command -v musl-gcc >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing Debian's musl-tools (musl-gcc for the C dependencies)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  say "adding the $target target"
  rustup target add "$target"
fi

[ -n "$deps_only" ] && exit 0
# The C dependencies (librdkafka, zlib, zstd, ring) compile with musl-gcc.
export CC_x86_64_unknown_linux_musl=musl-gcc
export AR_x86_64_unknown_linux_musl=ar
start=$(date +%s)
say "building weavster for $target (profile dist: release, thin LTO, stripped)"
cargo build --locked --profile dist --target "$target" -p weavster-cli
mkdir -p "$(dirname "$out")"
cp "$CARGO_TARGET_DIR/$target/dist/weavster" "$out"
linked=$(file -b "$out")
case "$linked" in
  *"static-pie linked"*|*"statically linked"*) ;;
  *) say "not a static binary: $linked"; exit 1 ;;
esac
size=$(stat -c %s "$out")
say "built $out in $(( $(date +%s) - start )) s: $(( size / 1024 / 1024 )) MiB ($size bytes), $linked"
