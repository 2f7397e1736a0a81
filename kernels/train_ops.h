// Training ops: the kernels a model's forward and backward passes and its optimizer are built
// from. A model never calls BLAS or CUDA itself: it calls these functions with the Device its
// buffers live on, and they dispatch by dev.kind() through a TrainKernelTable (the same habit as
// kernels/backend.h). The CPU table (kernels/cpu/train_*.cpp, OpenBLAS) is always built and is
// the reference; the CUDA table (kernels/cuda/, cuBLAS + fused kernels) is its twin.
//
// Conventions, shared by both backends:
// - Every matrix is row-major. Activations are batch-first: [rows, features].
// - Images are NHWC ([batch, height, width, channels]), not NCHW: a convolution is then ONE
//   GEMM over the whole batch (im2col rows are output pixels of every sample, [B*OH*OW, K*K*C])
//   and its output [B*OH*OW, OC] is already the next layer's NHWC input, so bias, ReLU and the
//   bias gradient are the same row-wise ops as for a fully connected layer, and the GPU runs a
//   few large launches per layer instead of one per sample. With one channel (MNIST, Fashion-
//   MNIST) NCHW and NHWC are the same bytes; nchw_to_nhwc converts multi-channel input.
// - Pointers are device pointers (host pointers for the CPU device). The public functions below
//   check their arguments (null pointers, non-positive or inconsistent sizes) and return
//   kInvalidArgument; table entries may assume valid arguments.
// - Every op is asynchronous on CUDA (enqueued on `s`, default stream when null) and never
//   synchronises the host. Scalars that a step produces (loss, correct count) are accumulated
//   in device memory and read by the caller when it wants them (Buffer::download syncs).
// - Outputs are fully overwritten unless a beta/accumulate rule says otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/device.h"

namespace mycel {

// Convolution geometry (NHWC input, square kernel, same stride and padding on both axes).
struct ConvShape {
  int batch = 0;
  int height = 0, width = 0, channels = 0;  // input
  int kernel = 0, stride = 1, pad = 0;
  int out_h() const { return (height + 2 * pad - kernel) / stride + 1; }
  int out_w() const { return (width + 2 * pad - kernel) / stride + 1; }
  // im2col matrix: one row per output pixel of every sample, columns ordered (kh, kw, c).
  size_t col_rows() const { return size_t(batch) * out_h() * out_w(); }
  size_t col_cols() const { return size_t(kernel) * kernel * channels; }
};

// Max pooling geometry: window x window, stride = window, no padding (NHWC). The output is
// floor(height / window) x floor(width / window); trailing rows/columns are dropped, as in
// PyTorch's MaxPool2d(window).
struct PoolShape {
  int batch = 0;
  int height = 0, width = 0, channels = 0;  // input
  int window = 2;
  int out_h() const { return height / window; }
  int out_w() const { return width / window; }
  size_t in_size() const { return size_t(batch) * height * width * channels; }
  size_t out_size() const { return size_t(batch) * out_h() * out_w() * channels; }
};

// SGD with momentum and weight decay, PyTorch's torch.optim.SGD rule (dampening 0, no Nesterov):
//   g = grad + weight_decay * p
//   v = momentum * v + g          (skipped when momentum == 0; v may then be null)
//   p = p - lr * v                (p - lr * g when momentum == 0)
// With v starting at zero the first step gives v = g, as PyTorch's first step does.
struct SgdParams {
  float lr = 0.01f;
  float momentum = 0.f;
  float weight_decay = 0.f;
};

enum class Activation : uint8_t { kNone = 0, kRelu = 1 };

// The table each backend fills. Arguments are already validated by the functions in nn::.
struct TrainKernelTable {
  Status (*gemm)(Device&, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc,
                 Stream*);
  Status (*bias_act)(Device&, float* y, const float* bias, size_t rows, size_t cols, Activation act,
                     Stream*);
  Status (*relu_backward)(Device&, float* dy, const float* y, size_t n, Stream*);
  Status (*bias_grad)(Device&, float* db, const float* dy, size_t rows, size_t cols, float beta,
                      Stream*);
  Status (*softmax_xent)(Device&, const float* logits, const int32_t* labels, size_t rows,
                         int classes, float* dlogits, float grad_scale, float* acc, Stream*);
  Status (*sgd_update)(Device&, float* p, const float* g, float* v, size_t n, const SgdParams& opt,
                       Stream*);
  Status (*maxpool_forward)(Device&, const float* x, float* y, int32_t* argmax,
                            const PoolShape& shape, Stream*);
  Status (*maxpool_backward)(Device&, const float* dy, const int32_t* argmax, float* dx,
                             const PoolShape& shape, Stream*);
  Status (*im2col)(Device&, const float* x, float* col, const ConvShape& shape, Stream*);
  Status (*col2im)(Device&, const float* col, float* dx, const ConvShape& shape, Stream*);
  Status (*gather_rows)(Device&, const float* src_x, const int32_t* src_y, size_t src_rows,
                        size_t dim, const int32_t* idx, size_t count, float* dst_x, int32_t* dst_y,
                        Stream*);
  Status (*nchw_to_nhwc)(Device&, const float* x, float* y, int batch, int channels, int height,
                         int width, Stream*);
};

const TrainKernelTable& cpu_train_kernels();
// nullptr in a build without CUDA (kernels/cuda_stub.cpp).
const TrainKernelTable* cuda_train_kernels();

namespace nn {

// C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C, row-major (cblas_sgemm with
// CblasRowMajor; cuBLAS computes the transposed product in column-major). op(X) is X or X^T.
// lda/ldb/ldc are the row strides of A, B, C as stored (A is m x k, or k x m when trans_a).
// beta == 0 ignores C's previous contents (NaN included).
Status gemm(Device& dev, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
            const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc,
            Stream* s = nullptr);

// y[r, c] = act(y[r, c] + bias[c]) in place, y is [rows, cols]. bias may be null (no bias).
Status bias_act(Device& dev, float* y, const float* bias, size_t rows, size_t cols, Activation act,
                Stream* s = nullptr);

// ReLU backward in place: dy[i] = y[i] > 0 ? dy[i] : 0, where y is the ReLU's OUTPUT.
Status relu_backward(Device& dev, float* dy, const float* y, size_t n, Stream* s = nullptr);

// Bias gradient (column sums): db[c] = beta * db[c] + sum_r dy[r, c]; beta == 0 ignores db.
Status bias_grad(Device& dev, float* db, const float* dy, size_t rows, size_t cols,
                 float beta = 0.f, Stream* s = nullptr);

// Softmax cross-entropy, forward and backward fused, over logits [rows, classes] and int32
// labels in [0, classes):
//   p = softmax(logits[r]) (max-subtracted), loss_r = logsumexp(logits[r]) - logits[r, y_r]
//   dlogits[r, j] = grad_scale * (p_j - [j == y_r])      (skipped when dlogits is null)
//   acc[0] += sum_r loss_r ; acc[1] += #rows whose argmax equals y_r (skipped when acc is null)
// argmax ties resolve to the lowest index. acc is two floats in device memory: counts stay
// exact below 2^24. A label outside [0, classes) is not checked on the device: it counts as
// wrong, contributes loss 0 and gradient p (no one-hot term), so nothing reads out of bounds.
// dlogits may alias logits (in place). For the mean loss of a batch pass grad_scale = 1/rows.
Status softmax_xent(Device& dev, const float* logits, const int32_t* labels, size_t rows,
                    int classes, float* dlogits, float grad_scale, float* acc, Stream* s = nullptr);

// One SGD step over a flat vector of n parameters (see SgdParams). v may be null only when
// opt.momentum == 0. lr, momentum, weight_decay must be finite and >= 0.
Status sgd_update(Device& dev, float* p, const float* g, float* v, size_t n, const SgdParams& opt,
                  Stream* s = nullptr);

// Max pooling, NHWC. argmax[o] is the index into x (flat, over the whole batch) of the input
// element each output took (the first maximum in row-major window order; NaN propagates as in
// PyTorch: a NaN input wins). argmax has shape.out_size() entries.
Status maxpool_forward(Device& dev, const float* x, float* y, int32_t* argmax,
                       const PoolShape& shape, Stream* s = nullptr);
// dx (in_size) = 0 everywhere except dx[argmax[o]] = dy[o]. Windows do not overlap, so no
// two outputs write the same input.
Status maxpool_backward(Device& dev, const float* dy, const int32_t* argmax, float* dx,
                        const PoolShape& shape, Stream* s = nullptr);

// im2col, NHWC: col[(b, oh, ow), (kh, kw, c)] = x[b, oh*stride - pad + kh, ow*stride - pad + kw,
// c], zero outside the image. col is [shape.col_rows(), shape.col_cols()].
Status im2col(Device& dev, const float* x, float* col, const ConvShape& shape, Stream* s = nullptr);
// col2im: the adjoint of im2col. dx (NHWC, fully overwritten) = the sum over every col entry
// that im2col read from that input position.
Status col2im(Device& dev, const float* col, float* dx, const ConvShape& shape,
              Stream* s = nullptr);

// Gather a batch: dst_x[i, :] = src_x[idx[i], :] (dim floats per row) and, when both label
// pointers are non-null, dst_y[i] = src_y[idx[i]]. idx holds `count` int32 indices in device
// memory, each in [0, src_rows): the CPU backend checks (kOutOfRange); the CUDA twin cannot
// report without a sync, so it writes a zero row and label -1 for an index out of range.
// The CUDA training loop keeps the whole training set on the device and gathers on the device.
Status gather_rows(Device& dev, const float* src_x, const int32_t* src_y, size_t src_rows,
                   size_t dim, const int32_t* idx, size_t count, float* dst_x, int32_t* dst_y,
                   Stream* s = nullptr);

// y[b, h, w, c] = x[b, c, h, w]. y must not alias x.
Status nchw_to_nhwc(Device& dev, const float* x, float* y, int batch, int channels, int height,
                    int width, Stream* s = nullptr);

}  // namespace nn
}  // namespace mycel
