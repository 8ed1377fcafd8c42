#!/usr/bin/env bash
# What recording one room costs the server: starts `stoa` (target/release by default) on a
# fresh data folder, puts one WebRTC speaker (`stoa-client --tone`) on stage, then measures the
# server's CPU (utime+stime from /proc) and RSS over SECS seconds without a recording, then
# SECS seconds while the room is recorded (its mix running and written as Ogg Opus), then SECS
# seconds recorded with speaker tracks (the speaker's packets remuxed into a file of their own).
# Usage: scripts/bench-recording.sh [SECS] [STOA_BIN] [STOA_CLIENT_BIN]. Needs curl and jq.
set -euo pipefail
secs=${1:-30}
bin=${2:-target/release/stoa}
client=${3:-target/release/stoa-client}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
key="stoa_sk_$(openssl rand -hex 24)"
b="http://127.0.0.1:$port"
STOA_API_KEY=$key "$bin" serve --data-dir "$dir" --no-demo --bind "127.0.0.1:$port" \
  >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid ${speaker:-} 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "$b/healthz" >/dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "$@"; }
room=$(api -X POST "$b/api/v1/rooms" -d '{"title":"Bench"}' | jq -r .id)
link=$(api -X POST "$b/api/v1/rooms/$room/invites" -d '{"role":"speaker"}' | jq -r .url)
"$client" "$link" --name Sam --tone 440 --seconds $((4 * secs + 40)) >/dev/null 2>&1 &
speaker=$!
sleep 5
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
hz=$(getconf CLK_TCK)
measure() {
  local t0 r0 t1 r1
  t0=$(ticks); r0=$(rss_kib)
  sleep "$secs"
  t1=$(ticks); r1=$(rss_kib)
  printf '%-22s CPU %6.2f %% of a core   RSS %6d KiB -> %6d KiB\n' "$1" \
    "$(echo "($t1 - $t0) * 100 / $hz / $secs" | bc -l)" "$r0" "$r1"
}
measure "speaker, not recorded"
api -X POST "$b/api/v1/rooms/$room/recording" >/dev/null
sleep 2
measure "speaker, recorded"
api -X DELETE "$b/api/v1/rooms/$room/recording" >/dev/null
api -X POST "$b/api/v1/rooms/$room/recording" -d '{"speaker_tracks":true}' >/dev/null
sleep 2
measure "speaker, tracks too"
api -X DELETE "$b/api/v1/rooms/$room/recording" >/dev/null
for id in $(api "$b/api/v1/rooms/$room/recordings" | jq -r '.items[].id'); do
  api "$b/api/v1/rooms/$room/recordings/$id" |
    jq -c '{duration_ms, size_bytes, tracks: [.tracks[] | {duration_ms, size_bytes}]}'
done
