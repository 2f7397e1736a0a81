// Reductions of the training step: the bias gradient (column sums) and the fused softmax
// cross-entropy (loss, gradient, correct count in one kernel). Both are deterministic: no
// floating-point atomics. Where one block cannot cover the work, each block writes a partial
// into the stream's scratch and a second, tiny kernel adds the partials in a fixed order.
#include <cmath>
#include <mutex>

#include "kernels/cuda/train_common.cuh"

namespace mycel::cuda::train {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// ---- bias_grad --------------------------------------------------------------------------

// Up to this many rows, one thread per column sums every row in order, starting from beta * db:
// the same additions in the same order as the CPU reference, so the result is bit-identical
// (a batch-32 fully connected layer). Larger inputs (a convolution's B*OH*OW rows) split the
// rows into chunks, summed per chunk and then over chunks, both in order.
constexpr size_t kDirectRows = 256;

__device__ __forceinline__ float scaled_start(const float* db, size_t c, float beta) {
  // beta == 0 ignores db (NaN included), as the CPU does.
  return beta == 0.f ? 0.f : __fmul_rn(beta, db[c]);
}

__global__ void colsum_direct_kernel(float* __restrict__ db, const float* __restrict__ dy,
                                     size_t rows, size_t cols, float beta) {
  for (size_t c = global_tid(); c < cols; c += grid_stride()) {
    float acc = scaled_start(db, c, beta);
#pragma unroll 8
    for (size_t r = 0; r < rows; ++r) acc = __fadd_rn(acc, dy[r * cols + c]);
    db[c] = acc;
  }
}

// partial[sp, c] = sum of dy[r, c] over r in chunk sp = [sp * chunk, min(rows, (sp+1) * chunk)).
__global__ void colsum_partial_kernel(float* __restrict__ partial, const float* __restrict__ dy,
                                      size_t rows, size_t cols, size_t chunk, size_t splits) {
  const size_t n = splits * cols;
  for (size_t t = global_tid(); t < n; t += grid_stride()) {
    const size_t sp = t / cols, c = t - sp * cols;
    const size_t r0 = sp * chunk;
    const size_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
    float acc = 0.f;
#pragma unroll 8
    for (size_t r = r0; r < r1; ++r) acc = __fadd_rn(acc, dy[r * cols + c]);
    partial[t] = acc;
  }
}

__global__ void colsum_finish_kernel(float* __restrict__ db, const float* __restrict__ partial,
                                     size_t cols, size_t splits, float beta) {
  for (size_t c = global_tid(); c < cols; c += grid_stride()) {
    float acc = scaled_start(db, c, beta);
    for (size_t sp = 0; sp < splits; ++sp) acc = __fadd_rn(acc, partial[sp * cols + c]);
    db[c] = acc;
  }
}

// ---- softmax cross-entropy --------------------------------------------------------------

constexpr int kSmWarps = 16;                 // one warp per row, 16 rows at a time per block
constexpr int kSmThreads = kSmWarps * 32;
constexpr size_t kSmRowsPerBlock = 64;       // 4 rows per warp before another block is added
constexpr unsigned kSmMaxBlocks = 1024;

// One warp per row (rows strided over all warps of the grid):
//   argmax: the first maximum over the non-NaN entries, or 0 when z[0] is NaN (the CPU's
//           "z[j] > mx" scan from mx = z[0]);
//   lse = mx + log(sum_j exp(z[j] - mx)); loss = lse - z[y] for a label in range;
//   dlogits[j] = grad_scale * (exp(z[j] - mx) / sum - [j == y]).
// dlogits may alias logits: every lane reads what it needs of the row (max, sum, z[y], z[0])
// before the __syncwarp, and afterwards each lane overwrites only the entries it alone reads.
// kMode: 0 = no accumulation, 1 = add the block's totals to acc (a single block), 2 = write the
// block's totals to part_loss / part_correct (reduced by softmax_finish_kernel).
template <bool kGrad, int kMode>
__global__ void __launch_bounds__(kSmThreads)
    softmax_xent_kernel(const float* logits, const int32_t* __restrict__ labels, size_t rows,
                        int classes, float* dlogits, float grad_scale, float* __restrict__ acc,
                        double* __restrict__ part_loss, unsigned* __restrict__ part_correct) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t k = size_t(classes);
  double loss = 0.0;      // lane 0's running sum over its rows
  unsigned correct = 0;
  const size_t all_warps = size_t(gridDim.x) * kSmWarps;
  for (size_t r = size_t(blockIdx.x) * kSmWarps + size_t(warp); r < rows; r += all_warps) {
    const float* z = logits + r * k;
    float mx = -INFINITY;
    int best = -1;  // -1: this lane saw no non-NaN entry
    for (int j = lane; j < classes; j += 32) {
      const float v = z[j];
      if (!isnan(v) && (best < 0 || v > mx)) {
        mx = v;
        best = j;
      }
    }
    // Larger value wins, the lower index on ties, an empty lane never: a total order, so every
    // lane ends with the same pair.
    for (int o = 16; o > 0; o >>= 1) {
      const float omx = __shfl_xor_sync(kFull, mx, o);
      const int obest = __shfl_xor_sync(kFull, best, o);
      if (obest >= 0 && (best < 0 || omx > mx || (omx == mx && obest < best))) {
        mx = omx;
        best = obest;
      }
    }
    const float z0 = z[0];
    if (isnan(z0)) {
      mx = z0;
      best = 0;
    }
    float sum = 0.f;
    for (int j = lane; j < classes; j += 32) sum += expf(z[j] - mx);
    // Butterfly: a + b == b + a, so every lane holds the same bits.
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
    const int32_t y = labels[r];
    const bool valid = y >= 0 && y < classes;
    const float zy = valid ? z[y] : 0.f;
    if (kMode != 0 && lane == 0 && valid) {
      const float lse = mx + logf(sum);
      loss += double(lse - zy);
      if (best == y) ++correct;
    }
    if (kGrad) {
      __syncwarp(kFull);
      float* d = dlogits + r * k;
      const float inv = 1.f / sum;
      for (int j = lane; j < classes; j += 32) {
        const float p = __fmul_rn(expf(z[j] - mx), inv);
        d[j] = __fmul_rn(grad_scale, __fsub_rn(p, (valid && j == y) ? 1.f : 0.f));
      }
    }
  }
  if (kMode == 0) return;
  __shared__ double warp_loss[kSmWarps];
  __shared__ unsigned warp_correct[kSmWarps];
  if (lane == 0) {
    warp_loss[warp] = loss;
    warp_correct[warp] = correct;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double bl = 0.0;
    unsigned bc = 0;
    for (int w = 0; w < kSmWarps; ++w) {
      bl += warp_loss[w];
      bc += warp_correct[w];
    }
    if (kMode == 1) {
      acc[0] += float(bl);
      acc[1] += float(bc);
    } else {
      part_loss[blockIdx.x] = bl;
      part_correct[blockIdx.x] = bc;
    }
  }
}

// One warp adds the blocks' partials: lane l takes blocks l, l + 32, ... in order, then a fixed
// shuffle tree combines the lanes.
__global__ void softmax_finish_kernel(const double* __restrict__ part_loss,
                                      const unsigned* __restrict__ part_correct,
                                      unsigned blocks, float* __restrict__ acc) {
  const int lane = threadIdx.x & 31;
  double l = 0.0;
  unsigned long long c = 0;
  for (unsigned b = unsigned(lane); b < blocks; b += 32) {
    l += part_loss[b];
    c += part_correct[b];
  }
  for (int o = 16; o > 0; o >>= 1) {
    l += __shfl_xor_sync(kFull, l, o);
    c += __shfl_xor_sync(kFull, c, o);
  }
  if (lane == 0) {
    acc[0] += float(l);
    acc[1] += float(c);
  }
}

template <bool kGrad>
Status launch_softmax(const float* logits, const int32_t* labels, size_t rows, int classes,
                      float* dlogits, float grad_scale, float* acc, StreamContext* ctx,
                      cudaStream_t st) {
  size_t want = (rows + kSmRowsPerBlock - 1) / kSmRowsPerBlock;
  const unsigned blocks = unsigned(want < kSmMaxBlocks ? want : kSmMaxBlocks);
  if (!acc) {
    softmax_xent_kernel<kGrad, 0><<<blocks, kSmThreads, 0, st>>>(
        logits, labels, rows, classes, dlogits, grad_scale, nullptr, nullptr, nullptr);
    MYCEL_CUDA_LAUNCH_CHECK();
    return Ok();
  }
  if (blocks == 1) {
    softmax_xent_kernel<kGrad, 1><<<1, kSmThreads, 0, st>>>(
        logits, labels, rows, classes, dlogits, grad_scale, acc, nullptr, nullptr);
    MYCEL_CUDA_LAUNCH_CHECK();
    return Ok();
  }
  // Doubles first (256-byte aligned scratch), then the counts.
  MYCEL_CHECK(reserve_scratch(ctx, size_t(blocks) * (sizeof(double) + sizeof(unsigned))));
  double* part_loss = static_cast<double*>(ctx->scratch);
  unsigned* part_correct = reinterpret_cast<unsigned*>(part_loss + blocks);
  softmax_xent_kernel<kGrad, 2><<<blocks, kSmThreads, 0, st>>>(
      logits, labels, rows, classes, dlogits, grad_scale, nullptr, part_loss, part_correct);
  MYCEL_CUDA_LAUNCH_CHECK();
  softmax_finish_kernel<<<1, 32, 0, st>>>(part_loss, part_correct, blocks, acc);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

}  // namespace

Status bias_grad(Device& dev, float* db, const float* dy, size_t rows, size_t cols, float beta,
                 Stream* s) {
  if (rows <= kDirectRows) {
    MYCEL_CHECK(use_device(dev));
    colsum_direct_kernel<<<grid_for(dev, cols), kThreads, 0, MYCEL_CUDA_STREAM(dev, s)>>>(
        db, dy, rows, cols, beta);
    MYCEL_CUDA_LAUNCH_CHECK();
    return Ok();
  }
  // Chunks of about sqrt(rows) rows (at least 64): both passes then do about sqrt(rows)
  // sequential additions per column, e.g. 136 chunks of 136 rows for a 32x24x24 conv output.
  size_t chunk = size_t(std::ceil(std::sqrt(double(rows))));
  if (chunk < 64) chunk = 64;
  const size_t splits = (rows + chunk - 1) / chunk;
  MYCEL_ASSIGN_OR_RETURN(StreamContext * ctx, context_for(dev, s));
  std::lock_guard<std::mutex> lock(ctx->mu);
  MYCEL_CHECK(reserve_scratch(ctx, splits * cols * sizeof(float)));
  float* partial = static_cast<float*>(ctx->scratch);
  colsum_partial_kernel<<<grid_for(dev, splits * cols), kThreads, 0, ctx->stream>>>(
      partial, dy, rows, cols, chunk, splits);
  MYCEL_CUDA_LAUNCH_CHECK();
  colsum_finish_kernel<<<grid_for(dev, cols), kThreads, 0, ctx->stream>>>(db, partial, cols,
                                                                           splits, beta);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status softmax_xent(Device& dev, const float* logits, const int32_t* labels, size_t rows,
                    int classes, float* dlogits, float grad_scale, float* acc, Stream* s) {
  MYCEL_ASSIGN_OR_RETURN(StreamContext * ctx, context_for(dev, s));
  std::lock_guard<std::mutex> lock(ctx->mu);
  if (dlogits)
    return launch_softmax<true>(logits, labels, rows, classes, dlogits, grad_scale, acc, ctx,
                                ctx->stream);
  return launch_softmax<false>(logits, labels, rows, classes, nullptr, grad_scale, acc, ctx,
                               ctx->stream);
}

}  // namespace mycel::cuda::train
