// Convolution and pooling helpers, NHWC (kernels/train_ops.h): im2col, its adjoint col2im, and
// max pooling forward/backward. Every kernel is a gather (one thread per output element, no
// atomics), so each output is written once and sums run in a fixed order. The dispatcher caps
// every tensor at 2^31 elements, so index arithmetic is 32-bit unsigned where it is hot (the
// divisions dominate these memory-light loops) and size_t when forming addresses.
#include "kernels/cuda/train_common.cuh"

namespace mycel::cuda::train {
namespace {

struct ConvGeom {
  unsigned batch, height, width, channels, kernel, stride, pad, out_h, out_w;
};

ConvGeom geom(const ConvShape& s) {
  return ConvGeom{unsigned(s.batch),  unsigned(s.height), unsigned(s.width),
                  unsigned(s.channels), unsigned(s.kernel), unsigned(s.stride),
                  unsigned(s.pad),    unsigned(s.out_h()), unsigned(s.out_w())};
}

// col[(b, oh, ow), (kh, kw, c)] = x[b, oh*stride - pad + kh, ow*stride - pad + kw, c] or 0.
// Consecutive threads walk c then kw: contiguous reads of x and contiguous writes of col.
__global__ void im2col_kernel(const float* __restrict__ x, float* __restrict__ col, ConvGeom g,
                              unsigned n) {
  const unsigned stride = gridDim.x * blockDim.x;
  for (unsigned t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += stride) {
    unsigned q = t;
    const unsigned c = q % g.channels;
    q /= g.channels;
    const unsigned kw = q % g.kernel;
    q /= g.kernel;
    const unsigned kh = q % g.kernel;
    q /= g.kernel;  // q = the im2col row: (b * out_h + oh) * out_w + ow
    const unsigned ow = q % g.out_w;
    q /= g.out_w;
    const unsigned oh = q % g.out_h;
    const unsigned b = q / g.out_h;
    const int ih = int(oh * g.stride + kh) - int(g.pad);
    const int iw = int(ow * g.stride + kw) - int(g.pad);
    float v = 0.f;
    if (ih >= 0 && ih < int(g.height) && iw >= 0 && iw < int(g.width))
      v = x[((size_t(b) * g.height + unsigned(ih)) * g.width + unsigned(iw)) * g.channels + c];
    col[t] = v;
  }
}

// dx[b, ih, iw, c] = sum over the output pixels (oh, ow) whose window covers (ih, iw), in
// ascending (oh, ow) order, of col[(b, oh, ow), (kh, kw, c)] with kh = ih + pad - oh*stride:
// the same terms in the same order as the CPU's scatter, so the sums are bit-identical.
__global__ void col2im_kernel(const float* __restrict__ col, float* __restrict__ dx, ConvGeom g,
                              unsigned n) {
  const unsigned stride = gridDim.x * blockDim.x;
  const size_t col_cols = size_t(g.kernel) * g.kernel * g.channels;
  for (unsigned t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += stride) {
    unsigned q = t;
    const unsigned c = q % g.channels;
    q /= g.channels;
    const unsigned iw = q % g.width;
    q /= g.width;
    const unsigned ih = q % g.height;
    const unsigned b = q / g.height;
    // Output rows whose window covers ih: oh*stride <= ih + pad < oh*stride + kernel.
    const unsigned hp = ih + g.pad, wp = iw + g.pad;
    const unsigned oh_lo = hp + 1 > g.kernel ? (hp + 1 - g.kernel + g.stride - 1) / g.stride : 0;
    const unsigned ow_lo = wp + 1 > g.kernel ? (wp + 1 - g.kernel + g.stride - 1) / g.stride : 0;
    unsigned oh_hi = hp / g.stride;  // inclusive
    unsigned ow_hi = wp / g.stride;
    if (oh_hi > g.out_h - 1) oh_hi = g.out_h - 1;
    if (ow_hi > g.out_w - 1) ow_hi = g.out_w - 1;
    float acc = 0.f;
    for (unsigned oh = oh_lo; oh <= oh_hi; ++oh) {
      const unsigned kh = hp - oh * g.stride;
      for (unsigned ow = ow_lo; ow <= ow_hi; ++ow) {
        const unsigned kw = wp - ow * g.stride;
        const size_t row = (size_t(b) * g.out_h + oh) * g.out_w + ow;
        acc = __fadd_rn(acc, col[row * col_cols + (size_t(kh) * g.kernel + kw) * g.channels + c]);
      }
    }
    dx[t] = acc;
  }
}

struct PoolGeom {
  unsigned batch, height, width, channels, window, out_h, out_w;
};

PoolGeom geom(const PoolShape& s) {
  return PoolGeom{unsigned(s.batch),    unsigned(s.height), unsigned(s.width),
                  unsigned(s.channels), unsigned(s.window), unsigned(s.out_h()),
                  unsigned(s.out_w())};
}

// The CPU's rule, in the same (di, dj) order: the first maximum wins; a NaN wins over numbers
// and stays (PyTorch's).
__global__ void maxpool_forward_kernel(const float* __restrict__ x, float* __restrict__ y,
                                       int32_t* __restrict__ argmax, PoolGeom g, unsigned n) {
  const unsigned stride = gridDim.x * blockDim.x;
  for (unsigned o = blockIdx.x * blockDim.x + threadIdx.x; o < n; o += stride) {
    unsigned q = o;
    const unsigned c = q % g.channels;
    q /= g.channels;
    const unsigned ow = q % g.out_w;
    q /= g.out_w;
    const unsigned oh = q % g.out_h;
    const unsigned b = q / g.out_h;
    float best = 0.f;
    int32_t at = -1;
    for (unsigned di = 0; di < g.window; ++di) {
      const size_t h = size_t(oh) * g.window + di;
      for (unsigned dj = 0; dj < g.window; ++dj) {
        const size_t w = size_t(ow) * g.window + dj;
        const size_t idx = ((size_t(b) * g.height + h) * g.width + w) * g.channels + c;
        const float v = x[idx];
        if (at < 0 || v > best || (isnan(v) && !isnan(best))) {
          best = v;
          at = int32_t(idx);
        }
      }
    }
    y[o] = best;
    argmax[o] = at;
  }
}

// dx fully overwritten: each input element looks at the one output whose window holds it and
// takes that output's gradient if it was the chosen maximum, else 0 (trailing rows/columns that
// no window covers get 0). A gather, so argmax entries are read but never used as write
// addresses: a corrupt argmax cannot make this kernel write out of bounds.
__global__ void maxpool_backward_kernel(const float* __restrict__ dy,
                                        const int32_t* __restrict__ argmax,
                                        float* __restrict__ dx, PoolGeom g, unsigned n) {
  const unsigned stride = gridDim.x * blockDim.x;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    unsigned q = i;
    const unsigned c = q % g.channels;
    q /= g.channels;
    const unsigned w = q % g.width;
    q /= g.width;
    const unsigned h = q % g.height;
    const unsigned b = q / g.height;
    const unsigned oh = h / g.window, ow = w / g.window;
    float v = 0.f;
    if (oh < g.out_h && ow < g.out_w) {
      const size_t o = ((size_t(b) * g.out_h + oh) * g.out_w + ow) * g.channels + c;
      if (argmax[o] == int32_t(i)) v = dy[o];
    }
    dx[i] = v;
  }
}

}  // namespace

Status im2col(Device& dev, const float* x, float* col, const ConvShape& s, Stream* st) {
  MYCEL_CHECK(use_device(dev));
  const size_t n = s.col_rows() * s.col_cols();  // < 2^31, checked by the dispatcher
  im2col_kernel<<<grid_for(dev, n), kThreads, 0, MYCEL_CUDA_STREAM(dev, st)>>>(x, col, geom(s),
                                                                              unsigned(n));
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status col2im(Device& dev, const float* col, float* dx, const ConvShape& s, Stream* st) {
  MYCEL_CHECK(use_device(dev));
  const size_t n = size_t(s.batch) * s.height * s.width * s.channels;
  col2im_kernel<<<grid_for(dev, n), kThreads, 0, MYCEL_CUDA_STREAM(dev, st)>>>(col, dx, geom(s),
                                                                              unsigned(n));
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status maxpool_forward(Device& dev, const float* x, float* y, int32_t* argmax,
                       const PoolShape& s, Stream* st) {
  MYCEL_CHECK(use_device(dev));
  const size_t n = s.out_size();
  if (n == 0) return Ok();
  maxpool_forward_kernel<<<grid_for(dev, n), kThreads, 0, MYCEL_CUDA_STREAM(dev, st)>>>(
      x, y, argmax, geom(s), unsigned(n));
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status maxpool_backward(Device& dev, const float* dy, const int32_t* argmax, float* dx,
                        const PoolShape& s, Stream* st) {
  MYCEL_CHECK(use_device(dev));
  const size_t n = s.in_size();
  maxpool_backward_kernel<<<grid_for(dev, n), kThreads, 0, MYCEL_CUDA_STREAM(dev, st)>>>(
      dy, argmax, dx, geom(s), unsigned(n));
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

}  // namespace mycel::cuda::train
