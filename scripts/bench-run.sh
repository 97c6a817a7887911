#!/usr/bin/env bash
# End-to-end benchmark of `weavster run --once` (issue 4): first
# scripts/bench-sizes.sh (issue 17), then file → queue
# (embedded PostgreSQL) → wasm → file on generated records, beside jq doing
# the same transform, the Kafka paths (file → Kafka, Kafka → Kafka,
# Kafka → file, against the tansu broker installed by setup.sh) and the
# PostgreSQL paths (file → PostgreSQL three ways, query → PostgreSQL, CDC
# snapshot and stream → file, and the write statements side by side), in
# one run. Prints figures and ratios; asserts nothing
# (except that both produced the same number of records).
#   scripts/bench-run.sh [RECORDS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
n="${1:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
scripts/setup.sh >&2
command -v jq >/dev/null || { echo "jq is missing (apt-get install jq)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing (apt-get install time)" >&2; exit 2; }
# Throughput by record size (130 B / 230 B / 1 KiB) beside jq and jaq,
# with the per-stage breakdown: its own script, run first.
scripts/bench-sizes.sh "$n"
echo
cargo build --release --locked -q -p weavster-cli
weavster="$CARGO_TARGET_DIR/release/weavster"
export WEAVSTER_CARGO_TARGET_DIR="$CARGO_TARGET_DIR/weavster-flows"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/flows" "$dir/connectors" "$dir/data"
cat > "$dir/weavster.yaml" <<'YAML'
name: bench
runtime: { batch_size: 1000, workers: 2 }
YAML
cat > "$dir/connectors/files.yaml" <<'YAML'
input: { type: file, path: data/in.jsonl }
output: { type: file, path: out/out.jsonl }
YAML
cat > "$dir/flows/orders.yaml" <<'YAML'
input: files.input
transforms:
  - rename: { cust: customer_id }
  - set:
      customer_id: upper(trim(customer_id))
      total: round(amount * qty, 2)
  - filter: status != 'test'
outputs:
  - to: files.output
YAML
jq_program='select(.status != "test") | .customer_id = (.cust | gsub("^\\s+|\\s+$"; "") | ascii_upcase) | del(.cust) | .total = ((.amount * .qty * 100 | round) / 100)'

gen() { # RECORDS FILE
  awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) printf "{\"id\":%d,\"cust\":\" c%d \",\"amount\":%d.5,\"qty\":%d,\"status\":\"%s\",\"note\":\"lorem ipsum dolor sit amet, consectetur adipiscing\"}\n", i, i % 1000, i % 100, i % 7 + 1, (i % 10 == 0 ? "test" : "new") }' > "$2"
}

"$weavster" -q -C "$dir" compile --release >&2
"$weavster" -q -C "$dir" dlq ls >/dev/null   # creates the queue database (initdb) before timing

# One timed run: wall time, peak RSS, time to the first output record.
run_once() { # RECORDS → prints "secs rss_kb ttfr_secs"
  gen "$1" "$dir/data/in.jsonl"
  rm -rf "$dir/out"
  local start t0 ttfr=""
  start=$(date +%s.%N)
  /usr/bin/time -f '%e %M' -o "$dir/time.txt" "$weavster" -q -C "$dir" run --once --release --from-start 2>"$dir/run.log" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$ttfr" ] && [ -s "$dir/out/out.jsonl" ]; then
      ttfr=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.2f", a - b }')
    fi
    sleep 0.01
  done
  wait "$pid" || { cat "$dir/run.log" >&2; exit 1; }
  echo "$(cat "$dir/time.txt") ${ttfr:-0}"
}

small=$((n / 5))
read -r s_secs s_rss _ < <(run_once "$small")
read -r w_secs w_rss w_ttfr < <(run_once "$n")
bytes=$(stat -c %s "$dir/data/in.jsonl")
w_out=$(wc -l < "$dir/out/out.jsonl")
read -r j_secs j_rss < <( { /usr/bin/time -f '%e %M' jq -c "$jq_program" "$dir/data/in.jsonl" > "$dir/jq.jsonl"; } 2>&1 )
j_out=$(wc -l < "$dir/jq.jsonl")
if [ "$w_out" != "$j_out" ]; then
  echo "weavster wrote $w_out records, jq $j_out: not the same transform" >&2
  exit 1
fi

# The same records as one JSON array (read element by element, not whole).
json_input() { # RECORDS → prints "secs rss_kb bytes"
  awk -v n="$1" 'BEGIN { printf "[\n"; for (i = 0; i < n; i++) printf "%s{\"id\":%d,\"cust\":\" c%d \",\"amount\":%d.5,\"qty\":%d,\"status\":\"%s\",\"note\":\"lorem ipsum dolor sit amet, consectetur adipiscing\"}", (i ? ",\n" : ""), i, i % 1000, i % 100, i % 7 + 1, (i % 10 == 0 ? "test" : "new"); printf "\n]\n" }' > "$dir/data/in.json"
  rm -f "$dir/data/in.jsonl"
  sed -i 's#data/in.jsonl#data/in.json#' "$dir/connectors/files.yaml"
  rm -rf "$dir/out"
  /usr/bin/time -f '%e %M' -o "$dir/time.txt" "$weavster" -q -C "$dir" run --once --release --from-start 2>"$dir/run.log" \
    || { cat "$dir/run.log" >&2; exit 1; }
  echo "$(cat "$dir/time.txt") $(stat -c %s "$dir/data/in.json")"
}
read -r a_secs a_rss a_bytes < <(json_input "$n")
a_out=$(wc -l < "$dir/out/out.jsonl")
[ "$a_out" = "$j_out" ] || { echo "JSON array input: $a_out records out, jq $j_out" >&2; exit 1; }

# Kafka paths, on a tansu broker (memory storage) on a free port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.tools/bin/tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
tansu_pid=$!
trap 'kill $tansu_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
for t in bench-in bench-out; do
  .tools/bin/tansu topic create --broker "tcp://127.0.0.1:$port" --partitions 4 "$t" >/dev/null
done
cat > "$dir/connectors/kafka.yaml" <<YAML
topic_in: { type: kafka, brokers: "127.0.0.1:$port", topic: bench-in }
topic_in_read:
  type: kafka
  brokers: "127.0.0.1:$port"
  topic: bench-in
  options: { session.timeout.ms: "6000", heartbeat.interval.ms: "500" }
topic_out: { type: kafka, brokers: "127.0.0.1:$port", topic: bench-out }
YAML
cat > "$dir/flows/load.yaml" <<'YAML'
input: files.input
outputs:
  - to: kafka.topic_in
YAML
for f in k2k k2f; do
  out=kafka.topic_out; [ "$f" = k2f ] && out=files.output
  cat > "$dir/flows/$f.yaml" <<YAML
input: kafka.topic_in_read
transforms:
  - rename: { cust: customer_id }
  - set:
      customer_id: upper(trim(customer_id))
      total: round(amount * qty, 2)
  - filter: status != 'test'
outputs:
  - to: $out
YAML
done
sed -i 's#path: data/in.json }#path: data/in.jsonl }#' "$dir/connectors/files.yaml"
gen "$n" "$dir/data/in.jsonl"
rm -f "$dir/data/in.json"
"$weavster" -q -C "$dir" compile --release >&2
timed_run() { # FLOW [FILE] → prints "seconds first_record_seconds" (FILE: watched for the first record)
  local start ttfr="" pid
  start=$(date +%s.%N)
  /usr/bin/time -f '%e' -o "$dir/time.txt" "$weavster" -q -C "$dir" run --once --release --flow "$1" 2>"$dir/run.log" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ -n "${2:-}" ] && [ -z "$ttfr" ] && [ -s "$2" ]; then
      ttfr=$(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN { printf "%.2f", a - b }')
    fi
    sleep 0.01
  done
  wait "$pid" || { cat "$dir/run.log" >&2; exit 1; }
  echo "$(cat "$dir/time.txt") ${ttfr:-0}"
}
read -r l_secs _ < <(timed_run load)
read -r kk_secs _ < <(timed_run k2k)
rm -rf "$dir/out"
read -r kf_secs kf_ttfr < <(timed_run k2f "$dir/out/out.jsonl")
kf_out=$(wc -l < "$dir/out/out.jsonl")
[ "$kf_out" = "$j_out" ] || { echo "Kafka → file: $kf_out records out, jq $j_out" >&2; exit 1; }

# PostgreSQL paths, on a target server of their own (pg-server: Debian's
# binaries through weavster-queue-server), stopped when its stdin closes.
cargo build --release --locked -q -p weavster-bench --bin pg-server --bin pg-write-paths
psql=$(ls /usr/lib/postgresql/*/bin/psql | head -n1)
mkfifo "$dir/pg.ctl"
"$CARGO_TARGET_DIR/release/pg-server" "$dir/target-pg" < "$dir/pg.ctl" > "$dir/pg.url" 2>"$dir/pg.log" &
exec 7>"$dir/pg.ctl"
trap 'exec 7>&-; kill $tansu_pid 2>/dev/null; sleep 2; rm -rf "$dir"' EXIT
for _ in $(seq 600); do [ -s "$dir/pg.url" ] && break; sleep 0.1; done
pg_url=$(cat "$dir/pg.url")
"$psql" -q "$pg_url" -v ON_ERROR_STOP=1 -v n="$n" <<'SQL'
CREATE TABLE bench_in (id int PRIMARY KEY, cust text, amount numeric, qty int, status text, note text);
INSERT INTO bench_in SELECT i, ' c' || (i % 1000) || ' ', (i % 100) + 0.5, i % 7 + 1,
  CASE WHEN i % 10 = 0 THEN 'test' ELSE 'new' END, 'lorem ipsum dolor sit amet, consectetur adipiscing'
  FROM generate_series(0, :n - 1) i;
SQL
for t in pg_eo pg_al pg_up pg_pp; do
  "$psql" -q "$pg_url" -c "CREATE TABLE $t (id int, customer_id text, amount numeric, qty int, status text, note text, total numeric)" 
done
"$psql" -q "$pg_url" -c "ALTER TABLE pg_up ADD PRIMARY KEY (id)"
cat > "$dir/connectors/pg.yaml" <<YAML
src: { type: postgres, url: "$pg_url", query: "SELECT * FROM bench_in", cursor: id }
eo: { type: postgres, url: "$pg_url", table: pg_eo }
al: { type: postgres, url: "$pg_url", table: pg_al, exactly_once: false }
up: { type: postgres, url: "$pg_url", table: pg_up, upsert_keys: [id] }
pp: { type: postgres, url: "$pg_url", table: pg_pp }
YAML
for f in eo al up pp; do
  input=files.input; [ "$f" = pp ] && input=pg.src
  cat > "$dir/flows/f_$f.yaml" <<YAML
input: $input
transforms:
  - rename: { cust: customer_id }
  - set:
      customer_id: upper(trim(customer_id))
      total: round(amount * qty, 2)
  - filter: status != 'test'
outputs:
  - to: pg.$f
YAML
done
"$weavster" -q -C "$dir" compile --release >&2
read -r pe_secs _ < <(timed_run f_eo)
read -r pa_secs _ < <(timed_run f_al)
read -r pu_secs _ < <(timed_run f_up)
read -r pp_secs _ < <(timed_run f_pp)
for t in pg_eo pg_al pg_up pg_pp; do
  rows=$("$psql" -At "$pg_url" -c "SELECT count(*) FROM $t")
  [ "$rows" = "$j_out" ] || { echo "$t: $rows rows, jq $j_out" >&2; exit 1; }
done

# CDC: the initial snapshot of bench_in, then n updates in 100 transactions,
# each into a file (the records as they come: no transform).
"$psql" -q "$pg_url" -c "CREATE PUBLICATION bench_pub FOR TABLE bench_in"
cat >> "$dir/connectors/pg.yaml" <<YAML
cdc: { type: postgres, url: "$pg_url", mode: cdc, publication: bench_pub }
cdc_out: { type: file, path: out/cdc.jsonl }
YAML
printf 'input: pg.cdc\noutputs:\n  - to: pg.cdc_out\n' > "$dir/flows/f_cdc.yaml"
"$weavster" -q -C "$dir" compile --release >&2
rm -rf "$dir/out"
read -r cs_secs _ < <(timed_run f_cdc)
cs_out=$(wc -l < "$dir/out/cdc.jsonl")
[ "$cs_out" = "$n" ] || { echo "CDC snapshot: $cs_out records, $n rows" >&2; exit 1; }
"$psql" -q "$pg_url" -c "DO \$\$ BEGIN FOR i IN 0..99 LOOP UPDATE bench_in SET qty = qty + 1 WHERE id % 100 = i; COMMIT; END LOOP; END \$\$"
rm -rf "$dir/out"
read -r cc_secs _ < <(timed_run f_cdc)
cc_out=$(wc -l < "$dir/out/cdc.jsonl")
[ "$cc_out" = "$n" ] || { echo "CDC stream: $cc_out records, $n updates" >&2; exit 1; }
write_paths=$("$CARGO_TARGET_DIR/release/pg-write-paths" "$pg_url" 200000)

awk -v n="$n" -v small="$small" -v bytes="$bytes" -v ws="$w_secs" -v wr="$w_rss" -v wt="$w_ttfr" \
    -v ss="$s_secs" -v sr="$s_rss" -v js="$j_secs" -v jr="$j_rss" -v out="$w_out" \
    -v as="$a_secs" -v ar="$a_rss" -v ab="$a_bytes" 'BEGIN {
  printf "weavster run --once, file → queue → wasm → file, %d records (%.0f MB), %d out\n", n, bytes / 1e6, out
  printf "  weavster: %7.2f s  %9.0f records/s  %6.1f MB/s  peak RSS %4.0f MiB  first record after %.2f s\n", ws, n / ws, bytes / 1e6 / ws, wr / 1024, wt
  printf "  jq:       %7.2f s  %9.0f records/s  %6.1f MB/s  peak RSS %4.0f MiB\n", js, n / js, bytes / 1e6 / js, jr / 1024
  printf "  weavster/jq throughput: %.2fx\n", js / ws
  printf "  peak RSS at %d records: %.0f MiB; at %d: %.0f MiB (ratio %.2f)\n", small, sr / 1024, n, wr / 1024, wr / sr
  printf "  same records as one JSON array (%.0f MB): %7.2f s  %9.0f records/s  peak RSS %4.0f MiB\n", ab / 1e6, as, n / as, ar / 1024
  printf "goals: >= 100000 records/s end to end, RSS bounded, first record <= 2 s\n"
}'
awk -v n="$n" -v fs="$w_secs" -v ls="$l_secs" -v kk="$kk_secs" -v kf="$kf_secs" -v kt="$kf_ttfr" 'BEGIN {
  printf "Kafka (tansu, 4 partitions, memory storage; wall time includes connecting and joining the group):\n"
  printf "  file  → flow → file:  %7.2f s  %9.0f records/s\n", fs, n / fs
  printf "  file  → Kafka:        %7.2f s  %9.0f records/s\n", ls, n / ls
  printf "  Kafka → flow → Kafka: %7.2f s  %9.0f records/s  (%.2fx file → file)\n", kk, n / kk, fs / kk
  printf "  Kafka → flow → file:  %7.2f s  %9.0f records/s  (%.2fx file → file); first record after %.2f s (joining the group), %.0f records/s after it\n", kf, n / kf, fs / kf, kt, n / (kf - kt)
  printf "goal: Kafka paths >= 100000 records/s with the durable queue in between\n"
}'
awk -v n="$n" -v fs="$w_secs" -v pe="$pe_secs" -v pa="$pa_secs" -v pu="$pu_secs" -v pp="$pp_secs" 'BEGIN {
  printf "PostgreSQL (a target server on the same 2 cores; the queue is the embedded one):\n"
  printf "  file → flow → file:                       %7.2f s  %9.0f records/s\n", fs, n / fs
  printf "  file → flow → PostgreSQL (exactly-once):  %7.2f s  %9.0f records/s  (%.2fx file → file)\n", pe, n / pe, fs / pe
  printf "  file → flow → PostgreSQL (at-least-once): %7.2f s  %9.0f records/s\n", pa, n / pa
  printf "  file → flow → PostgreSQL (upsert on id):  %7.2f s  %9.0f records/s\n", pu, n / pu
  printf "  PostgreSQL query → flow → PostgreSQL:     %7.2f s  %9.0f records/s\n", pp, n / pp
  printf "goal: >= 50000 rows/s into PostgreSQL\n"
}'
awk -v n="$n" -v fs="$w_secs" -v cs="$cs_secs" -v cc="$cc_secs" 'BEGIN {
  printf "PostgreSQL CDC (logical slot, pgoutput) → flow → file:\n"
  printf "  initial snapshot, %d rows:            %7.2f s  %9.0f records/s  (%.2fx file → file)\n", n, cs, n / cs, fs / cs
  printf "  %d updates in 100 transactions:  %7.2f s  %9.0f records/s  (%.2fx file → file)\n", n, cc, n / cc, fs / cc
}'
echo "$write_paths"
