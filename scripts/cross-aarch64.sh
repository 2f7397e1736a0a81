#!/usr/bin/env bash
# Cross-builds mycel for aarch64 (a Jetson's CPU) on a Debian 12 x86_64 machine and runs the
# unit tests under qemu-user. CUDA is not built (-DMYCEL_CUDA=OFF): the GPU code is checked
# on the boards themselves (docs/grid5000.md).
#   scripts/cross-aarch64.sh              install (if missing) + build + test
#   scripts/cross-aarch64.sh --no-install build + test (the packages are there already)
#   scripts/cross-aarch64.sh --no-test    install + build
# (a) installs Debian's cross compiler (g++-aarch64-linux-gnu), qemu-user and, by multiarch
#     (dpkg --add-architecture arm64), the arm64 -dev libraries of cmake/MycelDeps.cmake;
#     nothing is installed when apt would remove a package (it stops and says which).
#     libyaml-cpp-dev is not Multi-Arch: same in Debian 12, so its arm64 package cannot sit
#     beside the amd64 one: only its runtime library is installed, and the -dev package is
#     downloaded and unpacked into build/aarch64-deps/ (apt-get download; nothing replaced).
# (b) configures with cmake/aarch64-linux-gnu.cmake into build/aarch64 and builds everything.
# (c) runs ctest: the toolchain's CMAKE_CROSSCOMPILING_EMULATOR runs every test through
#     qemu-aarch64 -L / (the multiarch arm64 C library; the toolchain file says why not the
#     cross toolchain's copy). Tests known not to work under qemu-user are
#     excluded by name below, each with its reason, printed.
# Known failures that are not qemu's (December 2026): four bit-exact CPU kernel tests
# (ErrorFeedback.SplitsTheInputBetweenPayloadAndResidual, WeightedSumTest.OutputMayAlias...,
# WeightedSumTest.LargeOutOfPlaceSums..., Dtypes/WeightedSum.../0) fail because GCC contracts
# a*b+c into FMA on aarch64 by default (-ffp-contract=fast; x86_64 has no FMA without -mfma), so
# the kernels and their scalar references round differently. Built with -ffp-contract=off they
# pass. A native build on a Jetson does the same; the fix belongs with the kernels.
# Time, measured on 2 cores shared with other builds (load 8-11): a cold build of everything
# ~30 min wall (2700 s summed over the 112 build steps), the tests ~130 s; with ccache warm the
# build is a re-link. In CI (90 min budget, ~15 min used): it fits as its own job (cold build +
# tests, ~35 min here), with ccache a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
test=1
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    --no-test) test=0 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cross-aarch64.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

say() { echo "cross-aarch64: $*"; }
err() { echo "cross-aarch64: error: $*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

BUILD=build/aarch64
DEPS=build/aarch64-deps
# Native tools, and the arm64 libraries of cmake/MycelDeps.cmake (CLI11 and nlohmann-json are
# header-only, architecture "all": the amd64 machine's copies serve both).
NATIVE_PKGS=(g++-aarch64-linux-gnu qemu-user cmake ninja-build pkg-config libcli11-dev)
ARM_PKGS=(libspdlog-dev:arm64 libfmt-dev:arm64 libzstd-dev:arm64 zlib1g-dev:arm64
          libopenblas-dev:arm64 libucx-dev:arm64 libgtest-dev:arm64 libgmock-dev:arm64
          libyaml-cpp0.7:arm64)

if [ "$install" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 architecture (dpkg --add-architecture arm64)"
    $SUDO dpkg --add-architecture arm64
    $SUDO apt-get update -qq
  fi
  missing=()
  for p in "${NATIVE_PKGS[@]}" "${ARM_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    sim="$(apt-get install -s --no-install-recommends "${missing[@]}" 2>&1)" || {
      err "apt cannot install these packages:"; echo "$sim" | grep -E '^(E:| )' | head -n 12 >&2; exit 1; }
    if echo "$sim" | grep -q '^Remv'; then
      err "apt would remove packages to install these; nothing installed. It would remove:"
      echo "$sim" | grep '^Remv' >&2
      exit 1
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "cross compiler, qemu-user and the arm64 libraries are installed"
  fi
  # yaml-cpp's arm64 headers, static library and CMake package, unpacked beside the build.
  if [ ! -f "$DEPS/usr/lib/aarch64-linux-gnu/cmake/yaml-cpp/yaml-cpp-config.cmake" ]; then
    say "unpacking libyaml-cpp-dev:arm64 into $DEPS (it cannot be co-installed with the amd64 one)"
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq libyaml-cpp-dev:arm64 2>/dev/null)
    mkdir -p "$DEPS"
    dpkg-deb -x "$tmp"/libyaml-cpp-dev_*_arm64.deb "$DEPS"
    rm -rf "$tmp"
  fi
fi
# The CMake package names the shared library next to itself; it is the installed arm64 one.
yc_lib="$(ls /usr/lib/aarch64-linux-gnu/libyaml-cpp.so.0.* 2>/dev/null | grep -E '\.so\.[0-9]+\.[0-9]+\.[0-9]+$' | head -n1 || true)"
if [ -z "$yc_lib" ] || [ ! -d "$DEPS/usr/lib/aarch64-linux-gnu" ]; then
  err "libyaml-cpp for arm64 is missing: run without --no-install"; exit 1
fi
ln -sf "$yc_lib" "$DEPS/usr/lib/aarch64-linux-gnu/$(basename "$yc_lib")"

t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMYCEL_CUDA=OFF \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" \
  -Dyaml-cpp_DIR="$PWD/$DEPS/usr/lib/aarch64-linux-gnu/cmake/yaml-cpp"
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
t1=$(date +%s)
file "$BUILD/bin/mycel" | grep -q 'ARM aarch64' || { err "$BUILD/bin/mycel is not an aarch64 binary"; exit 1; }
say "built in $((t1 - t0)) s: $(file -b "$BUILD/bin/mycel" | cut -d, -f1-2)"
[ "$test" = 1 ] || exit 0

# Tests excluded under qemu-user, by ctest name (regex), each with its reason.
EXCLUDE=(
  'Swarm\.'
  'BenchSmoke\.transport'
  'UcxFailure\.ReceiverKilledMidTransferGivesErrorsAndSenderGoesOn'
  'UcxTransport\.FramesOfEverySizeArriveIntactAndInOrder'
  'UcxTransport\.BandwidthEstimateTracksTheMeasuredThroughput'
)
EXEC_REASON="starts child aarch64 processes (mycel peers, a server, /proc/self/exe), which qemu-user runs only when binfmt_misc hands it aarch64 programs (qemu-user-binfmt, a privileged host set-up): here the exec fails (exit 127)"
REASONS=(
  "$EXEC_REASON"
  "$EXEC_REASON"
  "$EXEC_REASON"
  "sends a 256 MiB frame: under emulation the two progress loops stall past the 5 s connect timeout (it passes natively)"
  "timing: the bandwidth estimate must be within 2x of the throughput measured alongside, which a loaded host breaks (it failed once in a native ctest -j2 here and passes alone); under emulation it passed once and failed once (estimate 1.27e9 B/s, measured 4.75e8 B/s)"
)
exclude_re=""
for i in "${!EXCLUDE[@]}"; do
  say "excluded under qemu: ${EXCLUDE[$i]}: ${REASONS[$i]}"
  exclude_re="${exclude_re:+$exclude_re|}${EXCLUDE[$i]}"
done

# The CRC32C path must be the ARMv8 instructions (qemu-user emulates them, as the boards have).
crc_name="$(qemu-aarch64 -L / "$BUILD/bin/test_transport" \
  --gtest_filter='Crc32c.ImplementationIsArmv8OnAarch64' 2>&1 | grep -o 'crc32c impl: [a-z0-9.-]*' || true)"
say "${crc_name:-crc32c impl: (not reported)}"

t2=$(date +%s)
set +e
ctest --test-dir "$BUILD" --output-on-failure -j "${JOBS:-$(nproc)}" \
  ${exclude_re:+-E "$exclude_re"} 2>&1 | tee "$BUILD/ctest-qemu.log"
rc=${PIPESTATUS[0]}
set -e
t3=$(date +%s)
summary="$(grep -E 'tests passed|tests failed' "$BUILD/ctest-qemu.log" | tail -n1)"
n_excluded=$(ctest --test-dir "$BUILD" -N -R "$exclude_re" | grep -c 'Test *#' || true)
say "under qemu-aarch64: $summary; $n_excluded excluded by name (${#EXCLUDE[@]} patterns above); tests took $((t3 - t2)) s (build $((t1 - t0)) s)"
exit "$rc"
