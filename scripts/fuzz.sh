#!/usr/bin/env bash
# Fuzzes the parsers of untrusted bytes for a bounded time each:
#   frame  the frame decoder (transport/fuzz/frame_fuzz.cpp)
#   csv    the csv: data reader and the .npy header parser (models/fuzz/csv_fuzz.cpp)
#   params the control endpoint's PUT /params body check (runtime/control/fuzz/params_fuzz.cpp)
#   ckpt   the checkpoint reader (runtime/engine/fuzz/ckpt_fuzz.cpp)
#   config the experiment config reader and --set overrides (runtime/config/fuzz/config_fuzz.cpp)
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 seconds per target, all targets)
# Builds the `fuzz` CMake preset (clang, libFuzzer, ASan + UBSan), writes each target's seed
# corpus (MYCEL_FUZZ_WRITE_CORPUS), then runs the fuzzer with leak detection.
# Exits non-zero on any crash, leak, timeout or sanitizer report; the input that caused it
# is left under <build>/fuzz-work/<target>/artifacts/. The grown corpus is kept between runs.
# MYCEL_FUZZ_BUILD_DIR overrides the build folder (default build/fuzz, the preset's).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(frame csv params ckpt config)
build="${MYCEL_FUZZ_BUILD_DIR:-build/fuzz}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz.sh: clang++ not found (scripts/setup.sh installs clang and libclang-rt)" >&2
  exit 1
fi

# max_len per target: frames are the 64-byte header plus the seeds' largest payload (4 KiB)
# with room to grow; CSV inputs stay small so that each run is quick and the corpus varied;
# PUT /params bodies are a few live keys (the endpoint's own limit, 64 KiB, is tested elsewhere).
max_len() {
  case "$1" in
    frame) echo 8192 ;;
    csv) echo 4096 ;;
    params) echo 2048 ;;
    ckpt) echo 8192 ;;
    config) echo 4096 ;;
  esac
}

bins=()
for t in "${targets[@]}"; do
  case "$t" in
    frame|csv|params|ckpt|config) bins+=("${t}_fuzz") ;;
    *) echo "fuzz.sh: unknown target '$t' (frame, csv, params, ckpt, config)" >&2; exit 2 ;;
  esac
done

cmake --preset fuzz -B "$build" >/dev/null
cmake --build "$build" --target "${bins[@]}" -j "$(nproc)"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
summary=()
for t in "${targets[@]}"; do
  fuzzer="$build/bin/${t}_fuzz"
  work="$build/fuzz-work/$t"
  seeds="$work/seeds"
  corpus="$work/corpus"
  artifacts="$work/artifacts"
  rm -rf "$seeds" "$artifacts"
  mkdir -p "$seeds" "$corpus" "$artifacts"
  MYCEL_FUZZ_WRITE_CORPUS="$seeds" "$fuzzer"

  log="$work/fuzz.log"
  set +e
  "$fuzzer" "$corpus" "$seeds" \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$artifacts/" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e

  if [ "$rc" -ne 0 ]; then
    echo "fuzz.sh: the $t fuzzer failed (exit $rc); inputs under $artifacts" >&2
    exit 1
  fi
  if grep -qE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:" "$log"; then
    echo "fuzz.sh: sanitizer report in $log" >&2
    exit 1
  fi
  if [ -n "$(ls -A "$artifacts")" ]; then
    echo "fuzz.sh: crash or leak inputs left in $artifacts" >&2
    exit 1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  summary+=("$t: ${seconds}s, ${runs:-?} runs, $(grep -oE 'cov: [0-9]+' "$log" | tail -1)")
done
for s in "${summary[@]}"; do echo "fuzz.sh: $s, no findings"; done
