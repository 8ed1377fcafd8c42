#!/usr/bin/env bash
# The two connection implementations side by side (docs/benchmarks.md, "The lean transport as
# the default: whole server"): for each `[media] listener_transport`, a fresh server pinned to
# CPU 0 with one media worker and the load generator pinned to CPU 1, then
#   1. memory: 1 speaker and $LISTENERS listeners (1000) joined 64 at a time, a 10 s window:
#      whole-process RSS per joined client, CPU per packet × listener, loss;
#   2. a join burst: a fresh server, 1 speaker talking, $BURST listeners (500) all started at
#      once: redeem → connected and → first audio, and when the last one heard.
# Rounds alternate the transports ($ROUNDS, 2). Prints each run's report; needs two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
listeners=${LISTENERS:-1000}
burst=${BURST:-500}
rounds=${ROUNDS:-2}

cargo build --release -p stoa -p stoa-tests --bin stoa --bin stoa-loadgen

run() { # transport, listeners, join concurrency
  local transport=$1 n=$2 concurrency=$3 dir port key pid
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  key="stoa_sk_bench_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  sed -e '/^\[media\]/,$d' tests/loadgen.toml > "$dir/stoa.toml"
  printf '[media]\nworkers = 1\nmax_connections = 100000\nlistener_transport = "%s"\n' "$transport" >> "$dir/stoa.toml"
  STOA_API_KEY=$key taskset -c 0 ./target/release/stoa serve --config "$dir/stoa.toml" \
    --data-dir "$dir/data" --bind "127.0.0.1:$port" --no-demo > "$dir/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" > /dev/null && break; sleep 0.1; done
  echo "== transport $transport, $n listeners, join concurrency $concurrency"
  taskset -c 1 ./target/release/stoa-loadgen --url "http://127.0.0.1:$port" --api-key "$key" \
    --speakers 1 --listeners "$n" --seconds 10 --server-pid "$pid" \
    --join-concurrency "$concurrency" --quiet | grep -v '^{' || true
  kill "$pid"; wait "$pid" 2> /dev/null || true
  rm -rf "$dir"
}

echo "bench-transport: $(date -u +%F) $(git describe --always --dirty); uptime: $(uptime)"
for round in $(seq "$rounds"); do
  for transport in rtc lean; do
    echo "-- round $round"
    run "$transport" "$listeners" 64
    run "$transport" "$burst" "$burst"
  done
done
