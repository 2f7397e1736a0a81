#!/usr/bin/env bash
# Prepares a run on a lent GPU machine (the device tool; /work/.library/device/README.md):
# builds the cuda preset here (nvcc is here, the GPU is not) and gathers its binaries, with
# the shared libraries of Debian's packages that the device image lacks (spdlog, fmt,
# yaml-cpp, UCX and its transport modules, OpenBLAS, zstd), into gpu-bundle/ (ignored by
# git: pass it with the run's carry). The device side is scripts/gpu-run.sh:
#   scripts/gpu-bundle.sh
#   run: command "bash scripts/gpu-run.sh", carry ["gpu-bundle"], timeout_s 600
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset cuda >/dev/null
cmake --build --preset cuda
B=gpu-bundle
rm -rf "$B"
mkdir -p "$B/bin" "$B/lib/ucx"
cp build/cuda/bin/mycel build/cuda/bin/test_kernels build/cuda/bin/test_models \
  build/cuda/bin/test_runtime "$B/bin/"
cp /usr/bin/ucx_perftest "$B/bin/"  # bench transport's peer
strip "$B"/bin/*
# Everything the binaries load, except the C and C++ runtimes (the image's are newer) and
# CUDA's own libraries (the image's toolkit and driver provide them).
for b in "$B"/bin/*; do ldd "$b"; done | awk '/=> \// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libdl|libpthread|librt|ld-linux[^/]*)\.so' |
  grep -vE 'libcuda|libcublas|libcudart|libnvidia|libnccl' |
  while read -r lib; do cp -L "$lib" "$B/lib/"; done
cp -L /usr/lib/x86_64-linux-gnu/ucx/*.so.0 "$B/lib/ucx/" 2>/dev/null || true
# One compressed archive: the run's carry holds 64 MiB at most, OpenBLAS alone is 35 MiB.
tar -C "$B" -czf bundle.tar.gz bin lib
rm -rf "$B/bin" "$B/lib"
mv bundle.tar.gz "$B/"
du -sh "$B"
echo "gpu-bundle ready: run 'bash scripts/gpu-run.sh' on the device with carry [\"gpu-bundle\"]"
