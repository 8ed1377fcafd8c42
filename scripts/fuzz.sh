#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a set time (default 300 s each), prints executions and
# results, and fails if any target found a crash. Usage:
#   scripts/fuzz.sh [seconds] [target...]   run (all targets when none is named)
#   scripts/fuzz.sh --seeds                 regenerate the seed corpora in fuzz/corpus/
#   scripts/fuzz.sh --build                 only build the targets (.ci/run does it early)
#
# Works on the stable toolchain: targets are built with `--sanitizer none` (AddressSanitizer
# needs `-Zsanitizer`, i.e. nightly; our code and `rtc` are safe Rust, where ASan adds little
# and halves the speed). Panics, aborts, timeouts and out-of-memory are still found.
# The seed corpora in fuzz/corpus/ are read only; what the fuzzer adds goes to
# fuzz/target/corpus/, crashes to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

TARGETS=(signal_decode room_commands rest_bodies sdp_offer media_datagram)
# One codegen unit (cargo-fuzz's default) runs ~faster but builds far slower on two cores.
CGU="${STOA_FUZZ_CODEGEN_UNITS:-16}"
BUILD=(--sanitizer none --codegen-units "$CGU")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [[ "${1:-}" == "--seeds" ]]; then
  # A test of the server crate writes them, so the main release build is reused.
  cargo test --release -p stoa --lib fuzzing::tests::write_seed_corpus -- --ignored
  du -sh fuzz/corpus
  exit 0
fi

if [[ "${1:-}" == "--build" ]]; then
  cargo fuzz build "${BUILD[@]}"
  exit 0
fi

seconds="${1:-300}"
shift || true
if (($#)); then TARGETS=("$@"); fi

# libFuzzer options per target: inputs a little past the server's own size bounds.
max_len() {
  case "$1" in
    signal_decode) echo 70000 ;;  # 64 KiB messages are decoded, larger ones refused
    sdp_offer) echo 17000 ;;      # 16 KiB offers are parsed, larger ones refused
    rest_bodies) echo 17000 ;;    # 16 KiB bodies
    media_datagram) echo 6000 ;;  # a few datagrams of up to 1500 bytes
    *) echo 4096 ;;
  esac
}

echo "== building ${TARGETS[*]} (cargo fuzz build ${BUILD[*]})"
build_start=$SECONDS
cargo fuzz build "${BUILD[@]}"
echo "built in $((SECONDS - build_start)) s"

failed=()
summary=()
for target in "${TARGETS[@]}"; do
  work="fuzz/target/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  mkdir -p "$work" "$artifacts" "fuzz/corpus/$target"
  log="fuzz/target/fuzz-$target.log"
  echo "== $target for ${seconds}s"
  status=0
  cargo fuzz run "${BUILD[@]}" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=20 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    >"$log" 2>&1 || status=$?
  runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  rate=$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  cov=$(grep -oE '(DONE|pulse|NEW|REDUCE|INITED) +cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  corpus=$(find "$work" -type f | wc -l)
  if ((status == 0)); then
    result="ok"
  else
    result="FAILED (exit $status)"
    failed+=("$target")
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to" "$log" | head -5 || true
    echo "full log: $log"
  fi
  summary+=("$(printf '%-15s %8s runs %6s/s  cov %6s  corpus %5s  %s' \
    "$target" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$result")")
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "crashes in: ${failed[*]} (reproducers under fuzz/artifacts/)"
  exit 1
fi
