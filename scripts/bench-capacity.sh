#!/usr/bin/env bash
# The capacity benchmark of docs/benchmarks.md, start to finish: builds the server and the load
# generator (release), then runs `stoa-loadgen --capacity`: the search for 1 and 3 speakers
# (the server pinned to CPU 0 with one media worker, the load generator on CPU 1), a burst of
# 500 joins, and the UDP floor; then draws the plot. Writes capacity.json, capacity.txt and
# capacity.svg into docs/bench/ (or $OUT). Extra arguments go to stoa-loadgen, e.g.
# `--seconds 10`. Needs two CPUs; about 6-10 minutes on the 2-vCPU machine of the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-docs/bench}
mkdir -p "$out"

cargo build --release -p stoa -p stoa-tests --bin stoa --bin stoa-loadgen

label="$(date -u +%F) $(git describe --always --dirty 2>/dev/null || echo unknown)"
echo "bench-capacity: $label; uptime: $(uptime)"
./target/release/stoa-loadgen --capacity \
    --stoa ./target/release/stoa \
    --speakers 1,3 \
    --burst 500 \
    --label "$label" \
    --json "$out/capacity.json" \
    "$@" | tee "$out/capacity.txt"
./target/release/stoa-loadgen --plot "$out/capacity.json" "$out/capacity.svg"
echo "bench-capacity: wrote $out/capacity.json, $out/capacity.txt, $out/capacity.svg; uptime: $(uptime)"
