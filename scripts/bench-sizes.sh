#!/usr/bin/env bash
# Throughput by record size (issue 17): `weavster run --once` (file →
# embedded durable queue → wasm → file) on generated JSON lines of ~130 B,
# ~230 B and ~1 KiB — nested `user`, string `amount`, tags, a timestamp, a
# note — through the flow
#   set: { name: upper(user.name), amount: float(amount) * 1.2 }
#   filter: amount >= 10
# beside jq and jaq doing the same, in one run. Prints records/s, MB/s, the
# ratios, and where the run spent its time (the runtime's stage counters
# from run_results.json, and what the queue database wrote). Asserts
# nothing but that every tool wrote the same number of records.
#   scripts/bench-sizes.sh [RECORDS]      (default 1000000)
# Also run first by scripts/bench-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
n="${1:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
scripts/setup.sh >&2
command -v jq >/dev/null || { echo "jq is missing (apt-get install jq)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (apt-get install time)" >&2; exit 2; }
# jaq (a Rust jq clone), pinned, built once into .tools/jaq.
jaq="$repo/.tools/jaq/bin/jaq"
if [ ! -x "$jaq" ]; then
  cargo install --locked --quiet --root "$repo/.tools/jaq" jaq@3.1.2 >&2
fi
cargo build --release --locked -q -p weavster-cli
weavster="$CARGO_TARGET_DIR/release/weavster"
export WEAVSTER_CARGO_TARGET_DIR="$CARGO_TARGET_DIR/weavster-flows"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/flows" "$dir/connectors" "$dir/data"
echo "name: sizes" > "$dir/weavster.yaml"
cat > "$dir/connectors/files.yaml" <<'YAML'
input: { type: file, path: data/in.jsonl }
output: { type: file, path: out/out.jsonl }
YAML
cat > "$dir/flows/f.yaml" <<'YAML'
input: files.input
transforms:
  - set:
      name: upper(user.name)
      amount: float(amount) * 1.2
  - filter: amount >= 10
outputs:
  - to: files.output
YAML
program='.name = (.user.name | ascii_upcase) | .amount = ((.amount | tonumber) * 1.2) | select(.amount >= 10)'

gen() { # SIZE RECORDS FILE
  awk -v size="$1" -v n="$2" 'BEGIN {
    plen = size == "large" ? 790 : 40
    base = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    pad = ""; while (length(pad) < plen) pad = pad base; pad = substr(pad, 1, plen)
    for (i = 0; i < n; i++) {
      if (size == "small")
        printf "{\"id\":%d,\"user\":{\"name\":\"user %d\",\"email\":\"user%d@example.com\",\"tier\":\"%s\"},\"amount\":\"%d.%02d\",\"ts\":\"2026-11-30T12:%02d:%02dZ\"}\n", i, i % 5000, i % 5000, (i % 3 ? "gold" : "free"), i % 40, i % 100, i % 60, i % 60
      else
        printf "{\"id\":%d,\"user\":{\"name\":\"user %d\",\"email\":\"user%d@example.com\",\"tier\":\"%s\"},\"amount\":\"%d.%02d\",\"currency\":\"EUR\",\"tags\":[\"web\",\"promo\",\"t%d\"],\"ts\":\"2026-11-30T12:%02d:%02d.%03dZ\",\"note\":\"%s\"}\n", i, i % 5000, i % 5000, (i % 3 ? "gold" : "free"), i % 40, i % 100, i % 9, i % 60, i % 60, i % 1000, pad
    }
  }' > "$3"
}

"$weavster" -q -C "$dir" compile --release >&2
"$weavster" -q -C "$dir" dlq ls >/dev/null   # creates the queue database before timing

printf 'throughput by record size: %d records, file → durable queue (embedded PostgreSQL, fsync on) → wasm → file\n' "$n"
printf '%-7s %6s %9s %11s %8s %11s %11s %8s %8s\n' size bytes tool records/s MB/s "vs jq" "vs jaq" wall out
for size in small medium large; do
  gen "$size" "$n" "$dir/data/in.jsonl"
  bytes=$(stat -c %s "$dir/data/in.jsonl")
  rm -rf "$dir/out"
  /usr/bin/time -f '%e' -o "$dir/time.txt" "$weavster" -q -C "$dir" run --once --release --from-start 2>"$dir/run.log" \
    || { cat "$dir/run.log" >&2; exit 1; }
  w_secs=$(cat "$dir/time.txt")
  w_out=$(wc -l < "$dir/out/out.jsonl")
  cp "$dir/.weavster/target/run_results.json" "$dir/results-$size.json"
  /usr/bin/time -f '%e' -o "$dir/time.txt" jq -c "$program" "$dir/data/in.jsonl" > "$dir/jq.jsonl"
  j_secs=$(cat "$dir/time.txt"); j_out=$(wc -l < "$dir/jq.jsonl")
  /usr/bin/time -f '%e' -o "$dir/time.txt" "$jaq" -c "$program" "$dir/data/in.jsonl" > "$dir/jaq.jsonl"
  q_secs=$(cat "$dir/time.txt"); q_out=$(wc -l < "$dir/jaq.jsonl")
  if [ "$w_out" != "$j_out" ] || [ "$w_out" != "$q_out" ]; then
    echo "$size: weavster wrote $w_out records, jq $j_out, jaq $q_out: not the same transform" >&2
    exit 1
  fi
  awk -v s="$size" -v n="$n" -v b="$bytes" -v w="$w_secs" -v j="$j_secs" -v q="$q_secs" -v o="$w_out" 'BEGIN {
    avg = b / n
    printf "%-7s %6.0f %9s %11.0f %8.1f %10.2fx %10.2fx %7.2fs %8d\n", s, avg, "weavster", n / w, b / 1e6 / w, j / w, q / w, w, o
    printf "%-7s %6s %9s %11.0f %8.1f %11s %11s %7.2fs\n", "", "", "jq", n / j, b / 1e6 / j, "", "", j
    printf "%-7s %6s %9s %11.0f %8.1f %11s %11s %7.2fs\n", "", "", "jaq", n / q, b / 1e6 / q, "", "", q
  }'
done

# Where the time went (stage seconds are summed over the tasks doing them:
# the source task, and 2 workers; "queue" is the workers' time not in a
# stage — apalis fetching and acknowledging jobs, and waiting for work).
echo
echo "where the time went (seconds summed over tasks; 2 workers, 1 source task):"
printf '%-7s %7s %7s %7s %7s %7s %7s %7s %7s %8s %10s %10s\n' size wall read enqueue load guest write mark queue batches "job bytes" "WAL bytes"
for size in small medium large; do
  python3 - "$dir/results-$size.json" "$size" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
f = r["flows"]["f"]
s = f["stage_seconds"]
wall = r["elapsed_s"]
busy = s["load"] + s["guest"] + s["write"] + s["mark"]
queue = max(0.0, 2 * wall - busy)
print("%-7s %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %8d %10d %10d" % (
    sys.argv[2], wall, s["read"], s["enqueue"], s["load"], s["guest"], s["write"], s["mark"],
    queue, f["batches"], f["queue_bytes"], r.get("queue_wal_bytes") or 0))
PY
done
