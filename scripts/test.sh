#!/usr/bin/env bash
# Builds and runs the whole test suite:
#   1. Release build (CUDA compiled for the default architectures where nvcc exists), ctest;
#   2. the asan preset (ASan + UBSan, CPU), ctest;
#   3. the fuzzers (frame decoder, csv: reader) for a bounded time each (when clang's
#      libFuzzer is present).
# Options: --quick (step 1 only), --fuzz-seconds N per fuzzer (default 55: under 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
fuzz_seconds=55
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --fuzz-seconds) fuzz_seconds="$2"; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

jobs=$(nproc)
# The data sets the tests read (copied from Debian packages / shared data; no network).
if [ -x scripts/fetch-data.sh ]; then
  scripts/fetch-data.sh --tests
fi

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

if [ "$quick" = 1 ]; then exit 0; fi

echo "== asan + ubsan build and tests"
cmake --preset asan
cmake --build --preset asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j "$jobs"

if [ -x scripts/fuzz.sh ]; then
  echo "== fuzzing the frame decoder and the csv: reader for ${fuzz_seconds}s each"
  scripts/fuzz.sh "$fuzz_seconds"
fi
