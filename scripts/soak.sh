#!/usr/bin/env bash
# Soak test: runs one room with churn for [minutes] (default 30) against a `stoa serve` it
# starts itself, then checks that memory, descriptors, threads, tasks and connection counts
# came back to the baseline. Not part of CI (CI runs a one-minute version: tests/tests/soak.rs).
#
#   scripts/soak.sh [minutes] [extra stoa-soak arguments…]
#
# Writes target/soak/soak-<time>.txt (the text report) and .json (every sample); exits non-zero
# when a metric did not come back. See docs/reliability.md#soak-a-long-room-with-churn.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-30}"
shift || true

cargo build --release -p stoa --bin stoa -p stoa-tests --bin stoa-soak

mkdir -p target/soak
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="target/soak/soak-$stamp"
echo "soak: $minutes min of churn; report in $out.txt and $out.json"
set +e
target/release/stoa-soak --minutes "$minutes" --server-bin target/release/stoa \
  --json "$out.json" "$@" | tee "$out.txt"
status="${PIPESTATUS[0]}"
set -e
exit "$status"
