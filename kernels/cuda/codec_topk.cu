// Exact top-k encode on the GPU: the same selection as the CPU (kernels/cpu/cpu_codec.cpp).
//
// Keys are the magnitude bits of v = x (+ residual): finite, so <= 0x7f7fffff, and they order
// like |v|. A radix select, 8 bits per pass from the top, histograms the keys that share the
// prefix chosen so far (shared-memory counters per block, one global add per bin per block);
// the host walks each 256-bin histogram from the top to the bin holding the k-th largest key.
// After 4 passes that gives the threshold T and `want_eq`, how many keys equal to T to take:
// the lowest indices win. Then a stable compaction over fixed tiles of 4096 parameters:
// count (> T, == T) per tile; the host turns the counts into each tile's output offset and its
// share of the keys equal to T; each tile ranks its entries with two block scans and writes
// indices (strictly increasing) and values, and the residual (0 where sent, v elsewhere).
// Scratch is O(n / 4096) and cached per device; the call synchronises its stream.
#include <string>

#include "kernels/cuda/cuda_common.cuh"

namespace mycel::cuda {
namespace {

constexpr int kItems = 16;                    // parameters per thread in the tile kernels
constexpr size_t kTile = kThreads * kItems;   // 4096 parameters per tile
constexpr int kBins = 256;

__device__ __forceinline__ float vload(const float* x, const float* r, size_t i) {
  return r ? __fadd_rn(x[i], r[i]) : x[i];
}
__device__ __forceinline__ uint32_t key_of(float v) { return __float_as_uint(v) & 0x7fffffffu; }

// hist[d] += #{i : (key_i & mask) == prefix, (key_i >> shift) & 0xff == d}
__global__ void radix_hist_kernel(const float* __restrict__ x, const float* __restrict__ r,
                                  size_t n, uint32_t prefix, uint32_t mask, int shift,
                                  unsigned long long* __restrict__ hist) {
  __shared__ uint32_t sh[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) sh[b] = 0;
  __syncthreads();
  for (size_t i = global_tid(); i < n; i += grid_stride()) {
    const uint32_t key = key_of(vload(x, r, i));
    if ((key & mask) == prefix) atomicAdd(&sh[(key >> shift) & 0xffu], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (sh[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(sh[b]));
}

// counts[t] = (#keys > thr, #keys == thr) in tile t.
__global__ void tile_count_kernel(const float* __restrict__ x, const float* __restrict__ r,
                                  size_t n, size_t tiles, uint32_t thr,
                                  uint2* __restrict__ counts) {
  for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform per block
    const size_t base = t * kTile;
    uint32_t gt = 0, eq = 0;
    for (size_t o = threadIdx.x; o < kTile; o += blockDim.x) {
      const size_t i = base + o;
      if (i >= n) break;
      const uint32_t key = key_of(vload(x, r, i));
      gt += key > thr ? 1u : 0u;
      eq += key == thr ? 1u : 0u;
    }
    gt = block_sum(gt);
    eq = block_sum(eq);
    if (threadIdx.x == 0) counts[t] = make_uint2(gt, eq);
  }
}

// plan[t] = (first output slot of tile t, keys equal to thr it takes).
__global__ void tile_write_kernel(const float* __restrict__ x, float* __restrict__ r, size_t n,
                                  size_t tiles, uint32_t thr,
                                  const ulonglong2* __restrict__ plan,
                                  uint32_t* __restrict__ idx, float* __restrict__ vals) {
  for (size_t t = blockIdx.x; t < tiles; t += gridDim.x) {  // uniform per block
    const size_t base = t * kTile + static_cast<size_t>(threadIdx.x) * kItems;
    float v[kItems];
    uint32_t my_eq = 0;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const size_t i = base + q;
      v[q] = i < n ? vload(x, r, i) : 0.f;
      my_eq += (i < n && key_of(v[q]) == thr) ? 1u : 0u;
    }
    uint32_t total;
    const uint32_t eq_before = block_exclusive_scan(my_eq, &total);
    const ulonglong2 p = plan[t];
    const unsigned long long take = p.y;
    bool sel[kItems];
    uint32_t my_sel = 0, eq_seen = eq_before;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const size_t i = base + q;
      const uint32_t key = key_of(v[q]);
      const bool is_eq = i < n && key == thr;
      sel[q] = i < n && (key > thr || (is_eq && eq_seen < take));
      eq_seen += is_eq ? 1u : 0u;
      my_sel += sel[q] ? 1u : 0u;
    }
    const uint32_t sel_before = block_exclusive_scan(my_sel, &total);
    unsigned long long pos = p.x + sel_before;
#pragma unroll
    for (int q = 0; q < kItems; ++q) {
      const size_t i = base + q;
      if (i >= n) break;
      if (sel[q]) {
        idx[pos] = static_cast<uint32_t>(i);
        vals[pos] = v[q];
        ++pos;
      }
      if (r) r[i] = sel[q] ? 0.f : v[q];
    }
  }
}

}  // namespace

Status encode_topk(Device& dev, const Header& h, const float* x, float* r, uint8_t* body,
                   Stream* s) {
  const size_t n = h.n, k = h.k;
  if (k > n) return Error(Code::kInvalidArgument, "topk encode: k > n");
  if (n > 0xffffffffull)
    return Error(Code::kInvalidArgument, "topk encode: n does not fit 32-bit indices");
  if (n == 0) return Ok();
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  const size_t tiles = (n + kTile - 1) / kTile;
  // Device scratch: histogram | per-tile counts | per-tile plan. Host: the same, page-locked.
  const size_t hist_bytes = kBins * sizeof(unsigned long long);
  const size_t counts_off = hist_bytes;
  const size_t plan_off = counts_off + ((tiles * sizeof(uint2) + 15) / 16) * 16;
  const size_t bytes = plan_off + tiles * sizeof(ulonglong2);
  std::unique_lock<std::mutex> lock;
  MYCEL_ASSIGN_OR_RETURN(Scratch * sc, Scratch::acquire(dev, bytes, bytes, &lock));
  auto* dbase = static_cast<uint8_t*>(sc->dev());
  auto* hbase = static_cast<uint8_t*>(sc->host());
  auto* d_hist = reinterpret_cast<unsigned long long*>(dbase);
  auto* h_hist = reinterpret_cast<unsigned long long*>(hbase);
  auto* d_counts = reinterpret_cast<uint2*>(dbase + counts_off);
  auto* h_counts = reinterpret_cast<uint2*>(hbase + counts_off);
  auto* d_plan = reinterpret_cast<ulonglong2*>(dbase + plan_off);
  auto* h_plan = reinterpret_cast<ulonglong2*>(hbase + plan_off);

  // ---- radix select: threshold key and how many keys equal to it to take ----
  uint32_t prefix = 0, mask = 0;
  unsigned long long above = 0;  // keys known to be larger than the current prefix
  const unsigned g = grid_for(dev, n);
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    MYCEL_CUDA_CHECK(cudaMemsetAsync(d_hist, 0, hist_bytes, st));
    radix_hist_kernel<<<g, kThreads, 0, st>>>(x, r, n, prefix, mask, shift, d_hist);
    MYCEL_CUDA_LAUNCH_CHECK();
    MYCEL_CUDA_CHECK(cudaMemcpyAsync(h_hist, d_hist, hist_bytes, cudaMemcpyDeviceToHost, st));
    MYCEL_CUDA_CHECK(cudaStreamSynchronize(st));
    int digit = -1;
    for (int b = kBins - 1; b >= 0; --b) {
      if (above + h_hist[b] >= k) {
        digit = b;
        break;
      }
      above += h_hist[b];
    }
    if (digit < 0)
      return Error(Code::kInternal, "topk radix select found fewer than k keys");
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= 0xffu << shift;
  }
  const uint32_t thr = prefix;
  const unsigned long long want_eq = k - above;

  // ---- stable compaction ----
  const size_t cap = static_cast<size_t>(dev.threads() > 0 ? dev.threads() : 1) * 8;
  const unsigned gt = static_cast<unsigned>(tiles < cap ? tiles : cap);
  tile_count_kernel<<<gt, kThreads, 0, st>>>(x, r, n, tiles, thr, d_counts);
  MYCEL_CUDA_LAUNCH_CHECK();
  MYCEL_CUDA_CHECK(cudaMemcpyAsync(h_counts, d_counts, tiles * sizeof(uint2),
                                   cudaMemcpyDeviceToHost, st));
  MYCEL_CUDA_CHECK(cudaStreamSynchronize(st));
  unsigned long long out = 0, eq_before = 0;
  for (size_t t = 0; t < tiles; ++t) {
    const unsigned long long eq = h_counts[t].y;
    unsigned long long take = 0;
    if (eq_before < want_eq) take = eq < want_eq - eq_before ? eq : want_eq - eq_before;
    h_plan[t] = make_ulonglong2(out, take);
    eq_before += eq;
    out += h_counts[t].x + take;
  }
  if (out != k)
    return Error(Code::kInternal, "topk selected " + std::to_string(out) + " entries, expected " +
                                      std::to_string(k));
  MYCEL_CUDA_CHECK(cudaMemcpyAsync(d_plan, h_plan, tiles * sizeof(ulonglong2),
                                   cudaMemcpyHostToDevice, st));
  auto* idx = reinterpret_cast<uint32_t*>(body);
  auto* vals = reinterpret_cast<float*>(body + 4 * k);
  tile_write_kernel<<<gt, kThreads, 0, st>>>(x, r, n, tiles, thr, d_plan, idx, vals);
  MYCEL_CUDA_LAUNCH_CHECK();
  // The scratch (plan) is read by the kernel above: wait before the lock lets it go.
  MYCEL_CUDA_CHECK(cudaStreamSynchronize(st));
  return Ok();
}

}  // namespace mycel::cuda
