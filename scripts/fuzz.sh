#!/usr/bin/env bash
# Fuzzes the frame decoder (transport/fuzz/frame_fuzz.cpp) for a bounded time.
#   scripts/fuzz.sh [SECONDS]   (default 60)
# Builds the `fuzz` CMake preset (clang, libFuzzer, ASan + UBSan), writes a seed corpus of
# valid frames (every message type and codec), then runs the fuzzer with leak detection.
# Exits non-zero on any crash, leak, timeout or sanitizer report; the input that caused it
# is left under <build>/fuzz-work/artifacts/. The grown corpus is kept between runs.
# MYCEL_FUZZ_BUILD_DIR overrides the build folder (default build/fuzz, the preset's).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
build="${MYCEL_FUZZ_BUILD_DIR:-build/fuzz}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz.sh: clang++ not found (scripts/setup.sh installs clang and libclang-rt)" >&2
  exit 1
fi

cmake --preset fuzz -B "$build" >/dev/null
cmake --build "$build" --target frame_fuzz -j "$(nproc)"
fuzzer="$build/bin/frame_fuzz"

work="$build/fuzz-work"
seeds="$work/seeds"
corpus="$work/corpus"
artifacts="$work/artifacts"
rm -rf "$seeds" "$artifacts"
mkdir -p "$seeds" "$corpus" "$artifacts"
MYCEL_FUZZ_WRITE_CORPUS="$seeds" "$fuzzer"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
log="$work/fuzz.log"
set +e
# max_len: the 64-byte header plus the seeds' largest payload (4 KiB) with room to grow.
"$fuzzer" "$corpus" "$seeds" \
  -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$artifacts/" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

if [ "$rc" -ne 0 ]; then
  echo "fuzz.sh: the fuzzer failed (exit $rc); inputs under $artifacts" >&2
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
echo "fuzz.sh: ${seconds}s of fuzzing, no findings ($(grep -oE 'cov: [0-9]+' "$log" | tail -1))"
