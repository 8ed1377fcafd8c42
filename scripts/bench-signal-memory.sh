#!/usr/bin/env bash
# Memory per signaling socket: starts each given `stoa` binary in turn (tests/loadgen.toml,
# loopback, a fresh data folder), joins N listeners' signaling sockets to one room (no media)
# and prints the server's RSS growth per socket. Give the previous build first as the
# baseline: scripts/bench-signal-memory.sh 400 /tmp/stoa-before target/release/stoa
# Needs python3 with `websockets` (pip install websockets) and openssl.
set -euo pipefail
n=${1:?usage: $0 N BIN [BIN...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
for bin in "$@"; do
  dir=$(mktemp -d)
  port=$((20000 + RANDOM % 20000))
  key="stoa_sk_$(openssl rand -hex 24)"
  STOA_API_KEY=$key "$bin" serve --config "$here/../tests/loadgen.toml" --data-dir "$dir" \
    --no-demo --bind "127.0.0.1:$port" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  printf '%s: ' "$bin"
  python3 "$here/signal-memory.py" "http://127.0.0.1:$port" "$key" "$pid" "$n"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
done
