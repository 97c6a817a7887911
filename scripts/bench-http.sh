#!/usr/bin/env bash
# HTTP in and out (issue "Connectors III"): `weavster run` with an http
# input → file output on the embedded queue, loaded by wrk on loopback with
# single-record requests (64 and 256 connections) and with NDJSON bodies of
# 100 records (64 connections), 10 s each, then a second project's HTTP output sending 200k
# records from a file to that webhook. Prints requests/s, records/s and the
# latency to the 2xx (p50, p99); checks that the output holds the records
# of every 2xx answer. Asserts nothing else.
#   scripts/bench-http.sh [SECONDS]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
secs="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
scripts/setup.sh >&2
cargo build --release --locked -q -p weavster-cli
weavster="$CARGO_TARGET_DIR/release/weavster"
export WEAVSTER_CARGO_TARGET_DIR="$CARGO_TARGET_DIR/weavster-flows"

dir=$(mktemp -d)
run_pid=""
trap '[ -n "$run_pid" ] && kill -9 "$run_pid" 2>/dev/null; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$dir/flows" "$dir/connectors"
printf 'name: bench_http\nruntime: { batch_size: 1000, workers: 2 }\n' > "$dir/weavster.yaml"
cat > "$dir/connectors/c.yaml" <<YAML
hook: { type: http, listen: "127.0.0.1:$port", path: /hook }
out: { type: file, path: out.jsonl }
YAML
printf 'input: c.hook\noutputs:\n  - to: c.out\n' > "$dir/flows/hook.yaml"
"$weavster" -q -C "$dir" compile --release >&2

record='{"id":1,"user":{"name":"ann","tier":"gold"},"amount":"12.50","tags":["a","b"],"note":"lorem ipsum dolor sit amet"}'
cat > "$dir/single.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$record'
LUA
cat > "$dir/batch.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.body = string.rep('$record' .. "\n", 100)
LUA

"$weavster" -C "$dir" run --release 2>"$dir/run.log" &
run_pid=$!
for _ in $(seq 600); do
  curl -s -o /dev/null "http://127.0.0.1:$port/nothing" && break
  sleep 0.1
done
load() { # SCRIPT CONNECTIONS → "requests_2xx requests_per_s p50 p99"
  wrk -t2 -c"$2" -d"${secs}s" --latency -s "$dir/$1" "http://127.0.0.1:$port/hook" > "$dir/$1.out"
  awk '
    / requests in / { total = $1 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
    END { printf "%d %s %s %s\n", total - bad, rps, p50, p99 }' "$dir/$1.out"
}
read -r s_ok s_rps s_p50 s_p99 < <(load single.lua 64)
read -r w_ok w_rps w_p50 w_p99 < <(load single.lua 256)
read -r b_ok b_rps b_p50 b_p99 < <(load batch.lua 64)
# The HTTP output: a second project sends 200k records from a file to this
# webhook (NDJSON requests of up to 1 MiB), timed end to end.
sent=200000
mkdir -p "$dir/sender/flows" "$dir/sender/connectors"
printf 'name: bench_sender\nruntime: { batch_size: 1000, workers: 2 }\n' > "$dir/sender/weavster.yaml"
cat > "$dir/sender/connectors/c.yaml" <<YAML
in: { type: file, path: in.jsonl }
api: { type: http, url: "http://127.0.0.1:$port/hook", encoding: ndjson }
YAML
printf 'input: c.in\noutputs:\n  - to: c.api\n' > "$dir/sender/flows/send.yaml"
for _ in $(seq "$sent"); do echo "$record"; done > "$dir/sender/in.jsonl"
"$weavster" -q -C "$dir/sender" compile --release >&2
before=$(wc -l < "$dir/out.jsonl")
/usr/bin/time -f '%e' -o "$dir/send.time" "$weavster" -q -C "$dir/sender" run --once --release 2>>"$dir/run.log" >/dev/null
send_secs=$(cat "$dir/send.time")
kill -INT "$run_pid"; wait "$run_pid" || true; run_pid=""
# What the stopped run had not written yet is in the queue: drain it.
"$weavster" -q -C "$dir" run --once --release 2>>"$dir/run.log" >/dev/null
got=$(wc -l < "$dir/out.jsonl")
want=$((s_ok + w_ok + 100 * b_ok + sent))
# wrk abandons the requests in flight when it stops (up to one per
# connection: 64 + 256 of 1 record, 64 of 100): stored, never
# acknowledged. Fewer is a loss.
[ "$got" -ge "$want" ] && [ "$got" -le $((want + 64 + 256 + 64 * 100)) ] ||
  { echo "webhooks: $got records out, $want acknowledged" >&2; exit 1; }
awk -v sent="$sent" -v ss="$send_secs" -v got="$got" -v want="$want" -v secs="$secs" -v so="$s_ok" -v sr="$s_rps" -v s50="$s_p50" -v s99="$s_p99" \
    -v wo="$w_ok" -v wr="$w_rps" -v w50="$w_p50" -v w99="$w_p99" \
    -v bo="$b_ok" -v br="$b_rps" -v b50="$b_p50" -v b99="$b_p99" 'BEGIN {
  printf "webhook ingest (wrk, %d s each; every 2xx durable; output checked: %d records, %d acknowledged + %d in flight when wrk stopped):\n", secs, got, want, got - want
  printf "  single-record requests, 64 connections:  %9.0f requests/s  %9.0f records/s  p50 %s  p99 %s\n", sr, so / secs, s50, s99
  printf "  single-record requests, 256 connections: %9.0f requests/s  %9.0f records/s  p50 %s  p99 %s\n", wr, wo / secs, w50, w99
  printf "  NDJSON, 100 records, 64 connections:     %9.0f requests/s  %9.0f records/s  p50 %s  p99 %s\n", br, bo * 100 / secs, b50, b99
  printf "  HTTP output, file → flow → POST NDJSON → this webhook: %d records in %.2f s, %9.0f records/s\n", sent, ss, sent / ss
  printf "goal: >= 20000 single-record requests/s, >= 100000 records/s in NDJSON batches\n"
}'
