#!/usr/bin/env bash
# Distribution checks (docs/distribution.md):
#  1. the static binary (the wheel's, built once by scripts/build-wheel.sh
#     like scripts/build-static.sh's) runs `run --once` from an otherwise
#     empty root — only the binary, CA certificates and a
#     compiled project, no libc, no toolchain, no PostgreSQL binaries —
#     against an external PostgreSQL, and `queue: embedded` there fails
#     with the message naming the fix (what the `FROM scratch` image does,
#     without a Docker engine);
#  2. the wheel (scripts/build-wheel.sh) installs into a fresh virtualenv
#     and `weavster --version`, `init` and `validate` work from it.
#
#   scripts/test-dist.sh [--profile P]
#
# The binary is built with profile `dist` (what ships) unless `--profile`
# says otherwise; scripts/test.sh (CI) passes `distcheck`, the same static
# linking unoptimized (3.6 min from a cold cache instead of 12).
# Prints what it measured; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
profile=dist
if [ "${1:-}" = "--profile" ]; then profile="$2"; shift 2; fi
say() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
pg_pid=""
cleanup() {
  # pg-server stops its PostgreSQL when its standard input closes.
  if [ -n "$pg_pid" ]; then
    exec 7>&-
    wait "$pg_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The wheel (scripts/build-wheel.sh: the static binary, built once), into a
# fresh virtualenv; its binary is also the one put in the empty root.
wheel=$(scripts/build-wheel.sh --profile "$profile" "$work/wheels" | tail -1)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
w="$work/venv/bin/weavster"
[ -x "$w" ] || fail "the wheel put no weavster in the virtualenv's bin"
"$w" --version | grep -q "^weavster " || fail "weavster --version from the wheel"
(cd "$work" && "$w" init from_pip >/dev/null) || fail "init from the wheel"
"$w" -C "$work/from_pip" validate >/dev/null || fail "validate from the wheel"
say "wheel $(basename "$wheel") ($(( $(stat -c %s "$wheel") / 1024 / 1024 )) MiB): installs; --version, init, validate work"
bin="$w"
case "$(file -b "$bin")" in
  *"static-pie linked"*|*"statically linked"*) ;;
  *) fail "the wheel's binary is not static: $(file -b "$bin")" ;;
esac

# An external PostgreSQL (Debian's binaries; as root through a user
# namespace), stopped when its standard input closes.
cargo build -q --locked -p weavster-bench --bin pg-server
mkfifo "$work/pg.in"
"$CARGO_TARGET_DIR/debug/pg-server" "$work/pg" < "$work/pg.in" > "$work/pg.url" 2> "$work/pg.log" &
pg_pid=$!
exec 7> "$work/pg.in"
for _ in $(seq 1 100); do [ -s "$work/pg.url" ] && break; sleep 0.2; done
[ -s "$work/pg.url" ] || fail "PostgreSQL did not start: $(cat "$work/pg.log")"
# Over TCP: the server's socket directory is not inside the new root.
url=$(sed -E 's#^(postgresql://[^@]+@)localhost(:[0-9]+/[^?]+).*#\1127.0.0.1\2#' "$work/pg.url")

# The new root: the binary, CA certificates, a project compiled outside
# (by the same binary: a toolchain is there, not in the root).
root="$work/root"
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
cp "$bin" "$root/weavster"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
"$bin" init "$root/project" --name dist_check >/dev/null
# (wasm dependencies shared with the test suite's flows)
WEAVSTER_CARGO_TARGET_DIR="$CARGO_TARGET_DIR/weavster-flows" "$bin" -C "$root/project" -q compile
rm -rf "$root/project/.weavster/build"
files=$(find "$root" -type f -not -path "$root/project/*" | sed "s#^$root##" | sort | tr '\n' ' ')
say "the root holds: $files+ the project"

# Resolved now: the commands below run with an empty environment.
chroot_bin=$(command -v chroot || echo /usr/sbin/chroot)
enter=("$chroot_bin" "$root")
[ "$(id -u)" -eq 0 ] || enter=("$(command -v unshare)" --user --map-root-user "$chroot_bin" "$root")
in_root() { env -i HOME=/tmp "$@"; }

version=$(in_root "${enter[@]}" /weavster --version) || fail "--version in the empty root"
say "in the empty root: $version"
set +e
embedded=$(in_root "${enter[@]}" /weavster -C /project run --once 2>&1)
code=$?
set -e
[ "$code" -eq 2 ] || fail "queue: embedded without PostgreSQL binaries should exit 2, got $code: $embedded"
grep -q 'runtime.queue' <<<"$embedded" || fail "the message does not name the fix: $embedded"
say "queue: embedded in the empty root: exit 2, names runtime.queue"
out=$(in_root WEAVSTER_PG_URL="$url" "${enter[@]}" /weavster -C /project -t prod run --once 2>&1) \
  || fail "run --once against the external PostgreSQL: $out"
delivered=$(cat "$root"/project/out/*.jsonl | wc -l)
[ "$delivered" -gt 0 ] || fail "nothing delivered: $out"
say "run --once in the empty root on an external PostgreSQL: $delivered records delivered"
printf '%s\n' "$out" | sed 's/^/    /' >&2

estimate="$(( $(stat -c %s "$bin") / 1024 / 1024 )) MiB binary + $(( $(stat -c %s /etc/ssl/certs/ca-certificates.crt) / 1024 )) KiB CA certificates (FROM scratch adds nothing)"
if [ "$profile" = dist ]; then
  say "image estimate: $estimate"
else
  say "profile $profile (unoptimized, not what ships): $estimate; the image's dist binary is smaller (docs/distribution.md)"
fi
say "distribution checks passed"
