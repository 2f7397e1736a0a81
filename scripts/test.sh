#!/usr/bin/env bash
# Builds and runs the whole test suite:
#   1. Release build (CUDA compiled for the default architectures where nvcc exists), ctest;
#   2. the asan preset (ASan + UBSan, CPU), ctest;
#   3. the fuzzers (frame decoder, csv: reader, PUT /params, checkpoint and config readers) for a
#      bounded time each (when clang's libFuzzer is present).
# Options: --quick (step 1 only), --fuzz-seconds N per fuzzer (default 55: about 5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
fuzz_seconds=55
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --fuzz-seconds) fuzz_seconds="$2"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

jobs=$(nproc)
# ccache keys hold absolute paths unless told otherwise: CI builds in a fresh clone in a new
# folder each time, so relative keys (base dir = this checkout) let it reuse earlier builds.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
# Each stage prints its wall time, and the total closes the run (docs/benchmarks.md says what
# a cold CI takes here).
t_start=$SECONDS
timings=()
stage() {  # stage NAME CMD...
  local name="$1" t0=$SECONDS
  shift
  echo "== $name"
  "$@"
  timings+=("$(printf '%-28s %5d s' "$name" $((SECONDS - t0)))")
  echo "== $name: $((SECONDS - t0)) s"
}
summary() {
  echo "== stage times"
  printf '   %s\n' "${timings[@]}"
  echo "   total                        $((SECONDS - t_start)) s"
}

# The data sets the tests read (copied from Debian packages / shared data; no network).
if [ -x scripts/fetch-data.sh ]; then
  stage "data" scripts/fetch-data.sh --tests
fi

stage "release configure" cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
stage "release build" cmake --build build -j "$jobs"
stage "release tests" ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600

if [ "$quick" = 1 ]; then summary; exit 0; fi

stage "asan configure" cmake --preset asan
stage "asan build" cmake --build --preset asan -j "$jobs"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
stage "asan tests" ctest --test-dir build/asan --output-on-failure -j "$jobs" --timeout 900
unset ASAN_OPTIONS UBSAN_OPTIONS

if [ -x scripts/fuzz.sh ]; then
  stage "fuzzing, ${fuzz_seconds} s per target" scripts/fuzz.sh "$fuzz_seconds"
fi
summary
