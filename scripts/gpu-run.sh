#!/usr/bin/env bash
# The device side of scripts/gpu-bundle.sh: on a lent GPU machine, from the repository root
# with gpu-bundle/ carried, runs every test that needs a GPU and the GPU benchmarks (ours
# against the same run's memory-bandwidth peak, and against PyTorch). Each step's output goes
# to $OUT/STEP.txt; the summary (exit status and seconds per step, gtest verdicts, benchmark
# tables) is printed last, so the tool's output tail carries it.
set -u
B=${BUNDLE:-gpu-bundle}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if [ -f "$B/bundle.tar.gz" ]; then tar -C "$B" -xzf "$B/bundle.tar.gz"; fi
export LD_LIBRARY_PATH="$PWD/$B/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export UCX_MODULE_DIR="$PWD/$B/lib/ucx"
export MYCEL_BIN="$PWD/$B/bin/mycel"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s" >> "$SUMMARY"
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step version 30 "$B/bin/mycel" --version
step test_kernels 180 "$B/bin/test_kernels" --gtest_filter='CudaTwin*'
step test_models 180 "$B/bin/test_models" --gtest_filter='CudaTrain*:*ModelCuda*'
step test_runtime 120 "$B/bin/test_runtime" --gtest_filter='DeviceOps*'
step bench_merge 120 "$B/bin/mycel" --device cuda bench merge --sizes 64M,256M
step bench_codec 120 "$B/bin/mycel" --device cuda bench codec --sizes 64M
step bench_train 120 "$B/bin/mycel" --device cuda bench train
step bench_transport 200 "$B/bin/mycel" --device cuda bench transport --tests bw,bwdev \
  --bw-sizes 1M,16M,256M --repeat 3 --perftest "$PWD/$B/bin/ucx_perftest"
step torch_merge 150 python3 bench/compare_torch.py merge --devices cuda --mycel "$MYCEL_BIN"
step torch_train 150 python3 bench/compare_torch.py train --devices cuda --mycel "$MYCEL_BIN"
{
  head -15 "$OUT/nvidia-smi.txt" | grep -E "NVIDIA|MiB" | head -3
  for t in test_kernels test_models test_runtime; do
    echo "-- $t"; grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran" "$OUT/$t.txt" | head -20
  done
  for b in bench_merge bench_codec bench_train bench_transport torch_merge torch_train; do
    echo "-- $b"; tail -25 "$OUT/$b.txt"
  done
} >> "$SUMMARY"
cat "$SUMMARY"
