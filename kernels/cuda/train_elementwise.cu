// Element-wise training kernels: bias + activation, ReLU backward, the SGD step over the flat
// parameter vector, the batch gather and the NCHW -> NHWC transpose. Each is one launch with a
// grid-stride loop. Arithmetic that the CPU reference does in separate roundings is written
// with __fmul_rn / __fadd_rn so nvcc cannot contract it into an FMA: the CUDA results are then
// bit-identical to the CPU's (g++ in ISO C++ mode does not contract either), which keeps long
// loss trajectories of the two backends together.
#include <limits>

#include "kernels/cuda/train_common.cuh"

namespace mycel::cuda::train {
namespace {

// The CPU's std::max(v, 0.f), which is (v < 0) ? 0 : v: a NaN stays NaN, -0 stays -0.
__device__ __forceinline__ float relu(float v) { return v < 0.f ? 0.f : v; }

// y[r, c] = act(y[r, c] + bias[c]). Index is uint32_t when rows * cols fits (division by the
// column count is the costly part of this memory-bound loop), size_t otherwise.
template <typename Index, bool kBias, bool kRelu>
__global__ void bias_act_kernel(float* __restrict__ y, const float* __restrict__ bias,
                                Index n, Index cols) {
  const Index stride = Index(gridDim.x) * blockDim.x;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v = y[i];
    if (kBias) v = __fadd_rn(v, bias[i % cols]);
    if (kRelu) v = relu(v);
    y[i] = v;
  }
}

template <typename Index>
Status launch_bias_act(const Device& dev, float* y, const float* bias, size_t rows, size_t cols,
                       bool relu_on, cudaStream_t st) {
  const size_t n = rows * cols;
  const unsigned grid = grid_for(dev, n);
  if (bias && relu_on) {
    bias_act_kernel<Index, true, true><<<grid, kThreads, 0, st>>>(y, bias, Index(n), Index(cols));
  } else if (bias) {
    bias_act_kernel<Index, true, false><<<grid, kThreads, 0, st>>>(y, bias, Index(n), Index(cols));
  } else {
    bias_act_kernel<Index, false, true><<<grid, kThreads, 0, st>>>(y, bias, Index(n), Index(cols));
  }
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

__global__ void relu_backward_kernel(float* __restrict__ dy, const float* __restrict__ y,
                                     size_t n) {
  for (size_t i = global_tid(); i < n; i += grid_stride()) dy[i] = y[i] > 0.f ? dy[i] : 0.f;
}

// torch.optim.SGD (dampening 0, no Nesterov), in the CPU reference's exact order of roundings:
//   g' = g + wd * p;  v = mom * v + g';  p = p - lr * v      (with momentum)
//   p = p - lr * (g + wd * p)                               (without)
template <bool kMomentum>
__device__ __forceinline__ void sgd_one(float& p, float g, float& v, float lr, float mom,
                                        float wd) {
  const float gi = __fadd_rn(g, __fmul_rn(wd, p));
  if (kMomentum) {
    v = __fadd_rn(__fmul_rn(mom, v), gi);
    p = __fsub_rn(p, __fmul_rn(lr, v));
  } else {
    p = __fsub_rn(p, __fmul_rn(lr, gi));
  }
}

// One pass over the flat vector: p, g, v each read once and p, v written once. float4 when all
// three are 16-byte aligned (the model's flat buffers are), with a scalar tail.
template <bool kMomentum, bool kVec4>
__global__ void sgd_kernel(float* __restrict__ p, const float* __restrict__ g,
                           float* __restrict__ v, size_t n, float lr, float mom, float wd) {
  size_t done = 0;
  if (kVec4) {
    const size_t n4 = n / 4;
    float4* p4 = reinterpret_cast<float4*>(p);
    const float4* g4 = reinterpret_cast<const float4*>(g);
    float4* v4 = kMomentum ? reinterpret_cast<float4*>(v) : nullptr;
    for (size_t i = global_tid(); i < n4; i += grid_stride()) {
      float4 pp = p4[i];
      const float4 gg = g4[i];
      float4 vv = kMomentum ? v4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
      sgd_one<kMomentum>(pp.x, gg.x, vv.x, lr, mom, wd);
      sgd_one<kMomentum>(pp.y, gg.y, vv.y, lr, mom, wd);
      sgd_one<kMomentum>(pp.z, gg.z, vv.z, lr, mom, wd);
      sgd_one<kMomentum>(pp.w, gg.w, vv.w, lr, mom, wd);
      p4[i] = pp;
      if (kMomentum) v4[i] = vv;
    }
    done = n4 * 4;
  }
  for (size_t i = done + global_tid(); i < n; i += grid_stride()) {
    float pp = p[i];
    float vv = kMomentum ? v[i] : 0.f;
    sgd_one<kMomentum>(pp, g[i], vv, lr, mom, wd);
    p[i] = pp;
    if (kMomentum) v[i] = vv;
  }
}

// dst_x[i, :] = src_x[idx[i], :], dst_y[i] = src_y[idx[i]]. An index out of range cannot be
// reported without a host sync: its row is zeros and its label -1 (counted wrong, no loss).
__global__ void gather_rows_kernel(const float* __restrict__ src_x,
                                   const int32_t* __restrict__ src_y, size_t src_rows,
                                   size_t dim, const int32_t* __restrict__ idx, size_t count,
                                   float* __restrict__ dst_x, int32_t* __restrict__ dst_y) {
  const size_t n = count * dim;
  for (size_t t = global_tid(); t < n; t += grid_stride()) {
    const size_t i = t / dim, j = t - i * dim;
    const int32_t r = idx[i];
    const bool ok = r >= 0 && size_t(r) < src_rows;
    dst_x[t] = ok ? src_x[size_t(r) * dim + j] : 0.f;
    if (dst_y && j == 0) dst_y[i] = ok ? src_y[r] : -1;
  }
}

// y[b, h, w, c] = x[b, c, h, w]: one thread per output element (coalesced writes).
__global__ void nchw_to_nhwc_kernel(const float* __restrict__ x, float* __restrict__ y,
                                    size_t n, size_t channels, size_t hw) {
  for (size_t t = global_tid(); t < n; t += grid_stride()) {
    const size_t c = t % channels;
    const size_t q = t / channels;  // b * hw + p
    const size_t p = q % hw, b = q / hw;
    y[t] = x[(b * channels + c) * hw + p];
  }
}

}  // namespace

Status bias_act(Device& dev, float* y, const float* bias, size_t rows, size_t cols,
                Activation act, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  const cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  const bool relu_on = act == Activation::kRelu;
  if (!bias && !relu_on) return Ok();  // identity
  if (rows * cols <= size_t(std::numeric_limits<uint32_t>::max()) - size_t(kThreads) * 65536u)
    return launch_bias_act<uint32_t>(dev, y, bias, rows, cols, relu_on, st);
  return launch_bias_act<size_t>(dev, y, bias, rows, cols, relu_on, st);
}

Status relu_backward(Device& dev, float* dy, const float* y, size_t n, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  relu_backward_kernel<<<grid_for(dev, n), kThreads, 0, MYCEL_CUDA_STREAM(dev, s)>>>(dy, y, n);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status sgd_update(Device& dev, float* p, const float* g, float* v, size_t n,
                  const SgdParams& opt, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  const cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  const bool mom = opt.momentum != 0.f;
  const bool vec = aligned16(p) && aligned16(g) && (!mom || aligned16(v));
  const unsigned grid = grid_for(dev, vec ? (n + 3) / 4 : n);
  if (mom && vec) {
    sgd_kernel<true, true><<<grid, kThreads, 0, st>>>(p, g, v, n, opt.lr, opt.momentum,
                                                      opt.weight_decay);
  } else if (mom) {
    sgd_kernel<true, false><<<grid, kThreads, 0, st>>>(p, g, v, n, opt.lr, opt.momentum,
                                                       opt.weight_decay);
  } else if (vec) {
    sgd_kernel<false, true><<<grid, kThreads, 0, st>>>(p, g, nullptr, n, opt.lr, 0.f,
                                                       opt.weight_decay);
  } else {
    sgd_kernel<false, false><<<grid, kThreads, 0, st>>>(p, g, nullptr, n, opt.lr, 0.f,
                                                        opt.weight_decay);
  }
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status gather_rows(Device& dev, const float* src_x, const int32_t* src_y, size_t src_rows,
                   size_t dim, const int32_t* idx, size_t count, float* dst_x, int32_t* dst_y,
                   Stream* s) {
  MYCEL_CHECK(use_device(dev));
  gather_rows_kernel<<<grid_for(dev, count * dim), kThreads, 0, MYCEL_CUDA_STREAM(dev, s)>>>(
      src_x, src_y, src_rows, dim, idx, count, dst_x, dst_y);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status nchw_to_nhwc(Device& dev, const float* x, float* y, int batch, int channels, int height,
                    int width, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  const size_t hw = size_t(height) * size_t(width);
  const size_t n = size_t(batch) * size_t(channels) * hw;
  nchw_to_nhwc_kernel<<<grid_for(dev, n), kThreads, 0, MYCEL_CUDA_STREAM(dev, s)>>>(
      x, y, n, size_t(channels), hw);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

}  // namespace mycel::cuda::train
