// CPU training kernels: OpenBLAS sgemm for the products, plain loops (vectorised by the
// compiler, split over the device's pool when large enough to pay for the wake-up) for the rest.
// Arguments were checked by train_dispatch.cpp. These kernels are the reference the CUDA twin
// is tested against, so each one is written for clarity first.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "common/thread_pool.h"
#include "kernels/train_ops.h"

namespace mycel {
namespace {

// Element counts below which a loop stays on the calling thread: waking the pool costs some
// tens of microseconds, more than a batch-32 activation takes to stream.
constexpr size_t kParallelGrain = size_t(1) << 17;

void parallel(Device& dev, size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  ThreadPool* pool = dev.pool();
  if (!pool || pool->size() == 1 || n < grain) {
    fn(0, n);
    return;
  }
  pool->parallel_for(n, grain, 1, [&](size_t b, size_t e, int) { fn(b, e); });
}

// OpenBLAS keeps one global thread count: follow the device's (MYCEL_THREADS / --threads), and
// only call into OpenBLAS when it changes.
void set_blas_threads(int threads) {
  static std::atomic<int> current{-1};
  if (threads < 1) threads = 1;
  if (current.exchange(threads) != threads) openblas_set_num_threads(threads);
}

// Products below this many multiply-adds run on one thread: at batch 32 the MLP's GEMMs
// (32 x 784 x 200 = 5M) finish in well under a millisecond, and handing half of one to a second
// thread costs more than it saves (and much more when another process holds that core). The
// CNN's convolutions (6272 x 64 x 800 = 321M) and its first dense layer (51M) do gain.
constexpr double kGemmThreadMin = double(1 << 24);

Status cpu_gemm(Device& dev, bool ta, bool tb, int m, int n, int k, float alpha, const float* a,
                int lda, const float* b, int ldb, float beta, float* c, int ldc, Stream*) {
  set_blas_threads(double(m) * n * k >= kGemmThreadMin ? dev.threads() : 1);
  // OpenBLAS's beta kernels store zeros when beta == 0 (never 0 * C), so stale NaNs in C do
  // not survive, as the contract says (tested).
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
  return Ok();
}

Status cpu_bias_act(Device& dev, float* y, const float* bias, size_t rows, size_t cols,
                    Activation act, Stream*) {
  const bool relu = act == Activation::kRelu;
  parallel(dev, rows, std::max<size_t>(1, kParallelGrain / cols), [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      float* row = y + r * cols;
      if (bias && relu) {
        for (size_t c = 0; c < cols; ++c) row[c] = std::max(row[c] + bias[c], 0.f);
      } else if (bias) {
        for (size_t c = 0; c < cols; ++c) row[c] += bias[c];
      } else {
        for (size_t c = 0; c < cols; ++c) row[c] = std::max(row[c], 0.f);
      }
    }
  });
  return Ok();
}

Status cpu_relu_backward(Device& dev, float* dy, const float* y, size_t n, Stream*) {
  parallel(dev, n, kParallelGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) dy[i] = y[i] > 0.f ? dy[i] : 0.f;
  });
  return Ok();
}

Status cpu_bias_grad(Device& dev, float* db, const float* dy, size_t rows, size_t cols, float beta,
                     Stream*) {
  // Serial over rows (so the sum order is fixed and results are deterministic); the inner loop
  // over columns is contiguous and vectorises. Columns are split over threads when wide.
  auto run = [&](size_t c0, size_t c1) {
    if (beta == 0.f) {
      for (size_t c = c0; c < c1; ++c) db[c] = 0.f;
    } else {
      for (size_t c = c0; c < c1; ++c) db[c] *= beta;
    }
    for (size_t r = 0; r < rows; ++r) {
      const float* row = dy + r * cols;
      for (size_t c = c0; c < c1; ++c) db[c] += row[c];
    }
  };
  if (cols >= 64 && rows * cols >= kParallelGrain) {
    // Chunks of 16 columns: whole cache lines per thread.
    size_t blocks = (cols + 15) / 16;
    parallel(dev, blocks, 1, [&](size_t b, size_t e) { run(b * 16, std::min(cols, e * 16)); });
  } else {
    run(0, cols);
  }
  return Ok();
}

Status cpu_softmax_xent(Device& dev, const float* logits, const int32_t* labels, size_t rows,
                        int classes, float* dlogits, float grad_scale, float* acc, Stream*) {
  double loss = 0;
  size_t correct = 0;
  const size_t k = size_t(classes);
  for (size_t r = 0; r < rows; ++r) {
    const float* z = logits + r * k;
    const int32_t y = labels[r];
    const bool valid = y >= 0 && y < classes;
    // argmax (first maximum; NaN never compares greater, so a NaN row picks index 0) and max.
    size_t best = 0;
    float mx = z[0];
    for (size_t j = 1; j < k; ++j)
      if (z[j] > mx) {
        mx = z[j];
        best = j;
      }
    float sum = 0.f;
    for (size_t j = 0; j < k; ++j) sum += std::exp(z[j] - mx);
    const float lse = mx + std::log(sum);
    if (valid) {
      loss += double(lse - z[y]);
      if (best == size_t(y)) ++correct;
    }
    if (dlogits) {
      float* d = dlogits + r * k;
      const float inv = 1.f / sum;
      for (size_t j = 0; j < k; ++j) {
        float p = std::exp(z[j] - mx) * inv;
        d[j] = grad_scale * (p - (valid && j == size_t(y) ? 1.f : 0.f));
      }
    }
  }
  if (acc) {
    acc[0] += float(loss);
    acc[1] += float(correct);
  }
  return Ok();
}

Status cpu_sgd_update(Device& dev, float* p, const float* g, float* v, size_t n,
                      const SgdParams& opt, Stream*) {
  const float lr = opt.lr, mom = opt.momentum, wd = opt.weight_decay;
  parallel(dev, n, kParallelGrain, [&](size_t b, size_t e) {
    if (mom != 0.f) {
      for (size_t i = b; i < e; ++i) {
        float gi = g[i] + wd * p[i];
        float vi = mom * v[i] + gi;
        v[i] = vi;
        p[i] -= lr * vi;
      }
    } else {
      for (size_t i = b; i < e; ++i) p[i] -= lr * (g[i] + wd * p[i]);
    }
  });
  return Ok();
}

// One output pixel of a 2x2 pool over C channels: the four window positions in row-major order,
// the first maximum winning and a NaN winning over numbers (PyTorch's rule).
inline void pool2_pixel(const float* __restrict x0, const float* __restrict x1,
                        const float* __restrict x2, const float* __restrict x3, int32_t i0,
                        int32_t i1, int32_t i2, int32_t i3, float* __restrict y,
                        int32_t* __restrict am, int C) {
  for (int c = 0; c < C; ++c) {
    float best = x0[c];
    int32_t at = i0;
    float v = x1[c];
    bool take = v > best || (v != v && best == best);
    best = take ? v : best;
    at = take ? i1 : at;
    v = x2[c];
    take = v > best || (v != v && best == best);
    best = take ? v : best;
    at = take ? i2 : at;
    v = x3[c];
    take = v > best || (v != v && best == best);
    best = take ? v : best;
    at = take ? i3 : at;
    y[c] = best;
    am[c] = at + c;
  }
}

Status cpu_maxpool_forward(Device& dev, const float* x, float* y, int32_t* argmax,
                           const PoolShape& s, Stream*) {
  const int oh = s.out_h(), ow = s.out_w(), C = s.channels, W = s.width, H = s.height;
  const size_t pixels = size_t(s.batch) * oh * ow;
  parallel(dev, pixels, std::max<size_t>(1, kParallelGrain / (size_t(C) * s.window * s.window)),
           [&](size_t p0, size_t p1) {
             for (size_t p = p0; p < p1; ++p) {
               const size_t b = p / (size_t(oh) * ow);
               const int i = int(p / ow % oh), j = int(p % ow);
               float* yo = y + p * C;
               int32_t* ao = argmax + p * C;
               // NHWC: each window position is a contiguous run of C channels, so the loops over c
               // are branch-free selects the compiler vectorises.
               if (s.window == 2) {
                 const size_t b00 = ((b * H + size_t(2 * i)) * W + size_t(2 * j)) * C;
                 const size_t b01 = b00 + C, b10 = b00 + size_t(W) * C, b11 = b10 + C;
                 pool2_pixel(x + b00, x + b01, x + b10, x + b11, int32_t(b00), int32_t(b01),
                             int32_t(b10), int32_t(b11), yo, ao, C);
                 continue;
               }
               for (int di = 0; di < s.window; ++di) {
                 for (int dj = 0; dj < s.window; ++dj) {
                   const size_t base =
                       ((b * H + size_t(i * s.window + di)) * W + size_t(j * s.window + dj)) * C;
                   const float* xr = x + base;
                   if (di == 0 && dj == 0) {
                     for (int c = 0; c < C; ++c) {
                       yo[c] = xr[c];
                       ao[c] = int32_t(base) + c;
                     }
                     continue;
                   }
                   for (int c = 0; c < C; ++c) {
                     const float v = xr[c], cur = yo[c];
                     // The first maximum wins; a NaN wins over numbers and stays (PyTorch's rule).
                     const bool take = v > cur || (v != v && cur == cur);
                     yo[c] = take ? v : cur;
                     ao[c] = take ? int32_t(base) + c : ao[c];
                   }
                 }
               }
             }
           });
  return Ok();
}

Status cpu_maxpool_backward(Device& dev, const float* dy, const int32_t* argmax, float* dx,
                            const PoolShape& s, Stream*) {
  std::memset(dx, 0, s.in_size() * sizeof(float));
  const size_t n = s.out_size(), in = s.in_size();
  for (size_t o = 0; o < n; ++o) {
    const int32_t a = argmax[o];
    if (a >= 0 && size_t(a) < in) dx[a] = dy[o];
  }
  return Ok();
}

Status cpu_im2col(Device& dev, const float* x, float* col, const ConvShape& s, Stream*) {
  const int oh = s.out_h(), ow = s.out_w(), K = s.kernel, C = s.channels;
  const size_t cols = s.col_cols();
  const size_t kc = size_t(K) * C;
  parallel(dev, s.col_rows(), std::max<size_t>(1, kParallelGrain / cols),
           [&](size_t r0, size_t r1) {
             for (size_t r = r0; r < r1; ++r) {
               const size_t b = r / (size_t(oh) * ow);
               const int i = int(r / ow % oh), j = int(r % ow);
               float* out = col + r * cols;
               const int iw0 = j * s.stride - s.pad;
               // Columns of the kernel that fall inside the image: [kw0, kw1).
               const int kw0 = std::max(0, -iw0), kw1 = std::min(K, s.width - iw0);
               for (int kh = 0; kh < K; ++kh) {
                 float* seg = out + size_t(kh) * kc;
                 const int ih = i * s.stride - s.pad + kh;
                 if (ih < 0 || ih >= s.height || kw1 <= kw0) {
                   std::memset(seg, 0, kc * sizeof(float));
                   continue;
                 }
                 // In NHWC the K*C values of one kernel row are contiguous in x as well as in col.
                 if (kw0 > 0) std::memset(seg, 0, size_t(kw0) * C * sizeof(float));
                 const float* src = x + ((b * s.height + ih) * size_t(s.width) + (iw0 + kw0)) * C;
                 std::memcpy(seg + size_t(kw0) * C, src, size_t(kw1 - kw0) * C * sizeof(float));
                 if (kw1 < K)
                   std::memset(seg + size_t(kw1) * C, 0, size_t(K - kw1) * C * sizeof(float));
               }
             }
           });
  return Ok();
}

Status cpu_col2im(Device& dev, const float* col, float* dx, const ConvShape& s, Stream*) {
  const int oh = s.out_h(), ow = s.out_w(), K = s.kernel, C = s.channels;
  const size_t cols = s.col_cols();
  const size_t kc = size_t(K) * C;
  const size_t image = size_t(s.height) * s.width * C;
  // One sample per task: samples write disjoint parts of dx, so threads never collide, and each
  // sample's sums run in a fixed order (deterministic).
  parallel(dev, size_t(s.batch), std::max<size_t>(1, kParallelGrain / (cols * oh * ow)),
           [&](size_t b0, size_t b1) {
             for (size_t b = b0; b < b1; ++b) {
               float* img = dx + b * image;
               std::memset(img, 0, image * sizeof(float));
               for (int i = 0; i < oh; ++i) {
                 for (int j = 0; j < ow; ++j) {
                   const float* in = col + ((b * oh + i) * size_t(ow) + j) * cols;
                   const int iw0 = j * s.stride - s.pad;
                   const int kw0 = std::max(0, -iw0), kw1 = std::min(K, s.width - iw0);
                   if (kw1 <= kw0) continue;
                   for (int kh = 0; kh < K; ++kh) {
                     const int ih = i * s.stride - s.pad + kh;
                     if (ih < 0 || ih >= s.height) continue;
                     const float* seg = in + size_t(kh) * kc + size_t(kw0) * C;
                     float* dst = img + (size_t(ih) * s.width + (iw0 + kw0)) * C;
                     const size_t len = size_t(kw1 - kw0) * C;
                     for (size_t t = 0; t < len; ++t) dst[t] += seg[t];
                   }
                 }
               }
             }
           });
  return Ok();
}

Status cpu_gather_rows(Device& dev, const float* src_x, const int32_t* src_y, size_t src_rows,
                       size_t dim, const int32_t* idx, size_t count, float* dst_x, int32_t* dst_y,
                       Stream*) {
  for (size_t i = 0; i < count; ++i)
    if (idx[i] < 0 || size_t(idx[i]) >= src_rows)
      return Error(Code::kOutOfRange, "gather_rows: index " + std::to_string(idx[i]) +
                                          " outside [0, " + std::to_string(src_rows) + ")");
  parallel(dev, count, std::max<size_t>(1, kParallelGrain / dim), [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      std::memcpy(dst_x + i * dim, src_x + size_t(idx[i]) * dim, dim * sizeof(float));
      if (dst_y) dst_y[i] = src_y[idx[i]];
    }
  });
  return Ok();
}

Status cpu_nchw_to_nhwc(Device& dev, const float* x, float* y, int batch, int channels, int height,
                        int width, Stream*) {
  const size_t hw = size_t(height) * width, C = size_t(channels);
  for (size_t b = 0; b < size_t(batch); ++b)
    for (size_t c = 0; c < C; ++c)
      for (size_t p = 0; p < hw; ++p) y[(b * hw + p) * C + c] = x[(b * C + c) * hw + p];
  return Ok();
}

}  // namespace

const TrainKernelTable& cpu_train_kernels() {
  static const TrainKernelTable table = {
      cpu_gemm,         cpu_bias_act,   cpu_relu_backward,   cpu_bias_grad,
      cpu_softmax_xent, cpu_sgd_update, cpu_maxpool_forward, cpu_maxpool_backward,
      cpu_im2col,       cpu_col2im,     cpu_gather_rows,     cpu_nchw_to_nhwc,
  };
  return table;
}

}  // namespace mycel
