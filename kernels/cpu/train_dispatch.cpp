// The public training ops of kernels/train_ops.h: check arguments at the boundary, then call
// the table of the device's kind. Backend-independent; it lives under cpu/ because the CPU
// backend is always built (the CUDA table comes from cuda_train_kernels(), nullptr without it).
#include <cmath>
#include <limits>
#include <string>

#include "kernels/train_ops.h"

namespace mycel {
namespace {

Result<const TrainKernelTable*> table_for(Device& dev) {
  if (dev.kind() == DeviceKind::kCpu) return &cpu_train_kernels();
  const TrainKernelTable* t = cuda_train_kernels();
  if (!t) return Error(Code::kUnavailable, "training ops: this build has no cuda backend");
  return t;
}

Status bad(const char* op, const std::string& what) {
  return Error(Code::kInvalidArgument, std::string(op) + ": " + what);
}

bool fits_int(size_t v) { return v <= size_t(std::numeric_limits<int32_t>::max()); }

Status check_conv(const char* op, const ConvShape& c) {
  if (c.batch <= 0 || c.height <= 0 || c.width <= 0 || c.channels <= 0)
    return bad(op, "batch, height, width and channels must be positive");
  if (c.kernel <= 0 || c.stride <= 0 || c.pad < 0) return bad(op, "bad kernel, stride or pad");
  if (c.pad >= c.kernel) return bad(op, "pad must be smaller than the kernel");
  if (c.height + 2 * c.pad < c.kernel || c.width + 2 * c.pad < c.kernel)
    return bad(op, "kernel larger than the padded image");
  if (!fits_int(c.col_rows()) || !fits_int(c.col_cols()) ||
      !fits_int(c.col_rows() * c.col_cols()) ||
      !fits_int(size_t(c.batch) * c.height * c.width * c.channels))
    return bad(op, "sizes exceed 2^31 elements");
  return Ok();
}

Status check_pool(const char* op, const PoolShape& p) {
  if (p.batch <= 0 || p.height <= 0 || p.width <= 0 || p.channels <= 0)
    return bad(op, "batch, height, width and channels must be positive");
  if (p.window <= 0 || p.window > p.height || p.window > p.width)
    return bad(op, "window must be in [1, min(height, width)]");
  if (!fits_int(p.in_size())) return bad(op, "input exceeds 2^31 elements");
  return Ok();
}

}  // namespace

namespace nn {

Status gemm(Device& dev, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
            const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc,
            Stream* s) {
  if (m <= 0 || n <= 0 || k <= 0) return bad("gemm", "m, n, k must be positive");
  if (!a || !b || !c) return bad("gemm", "null matrix");
  // Stored shapes: A is m x k (k x m when transposed), B is k x n (n x k), C is m x n.
  if (lda < (trans_a ? m : k) || ldb < (trans_b ? k : n) || ldc < n)
    return bad("gemm", "leading dimension smaller than the row length");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->gemm(dev, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, s);
}

Status bias_act(Device& dev, float* y, const float* bias, size_t rows, size_t cols, Activation act,
                Stream* s) {
  if (rows == 0 || cols == 0) return Ok();
  if (!y) return bad("bias_act", "null output");
  if (act != Activation::kNone && act != Activation::kRelu)
    return bad("bias_act", "bad activation");
  if (!bias && act == Activation::kNone) return Ok();
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->bias_act(dev, y, bias, rows, cols, act, s);
}

Status relu_backward(Device& dev, float* dy, const float* y, size_t n, Stream* s) {
  if (n == 0) return Ok();
  if (!dy || !y) return bad("relu_backward", "null pointer");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->relu_backward(dev, dy, y, n, s);
}

Status bias_grad(Device& dev, float* db, const float* dy, size_t rows, size_t cols, float beta,
                 Stream* s) {
  if (cols == 0) return Ok();
  if (!db || (rows > 0 && !dy)) return bad("bias_grad", "null pointer");
  if (!std::isfinite(beta)) return bad("bias_grad", "beta must be finite");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->bias_grad(dev, db, dy, rows, cols, beta, s);
}

Status softmax_xent(Device& dev, const float* logits, const int32_t* labels, size_t rows,
                    int classes, float* dlogits, float grad_scale, float* acc, Stream* s) {
  if (rows == 0) return Ok();
  if (classes <= 0) return bad("softmax_xent", "classes must be positive");
  if (!logits || !labels) return bad("softmax_xent", "null logits or labels");
  if (!std::isfinite(grad_scale)) return bad("softmax_xent", "grad_scale must be finite");
  if (!fits_int(rows * size_t(classes))) return bad("softmax_xent", "sizes exceed 2^31");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->softmax_xent(dev, logits, labels, rows, classes, dlogits, grad_scale, acc, s);
}

Status sgd_update(Device& dev, float* p, const float* g, float* v, size_t n, const SgdParams& opt,
                  Stream* s) {
  if (n == 0) return Ok();
  if (!p || !g) return bad("sgd_update", "null parameters or gradients");
  if (!std::isfinite(opt.lr) || opt.lr < 0 || !std::isfinite(opt.momentum) || opt.momentum < 0 ||
      !std::isfinite(opt.weight_decay) || opt.weight_decay < 0)
    return bad("sgd_update", "lr, momentum and weight_decay must be finite and >= 0");
  if (opt.momentum != 0 && !v) return bad("sgd_update", "momentum needs a velocity buffer");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->sgd_update(dev, p, g, v, n, opt, s);
}

Status maxpool_forward(Device& dev, const float* x, float* y, int32_t* argmax,
                       const PoolShape& shape, Stream* s) {
  MYCEL_CHECK(check_pool("maxpool_forward", shape));
  if (!x || !y || !argmax) return bad("maxpool_forward", "null pointer");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->maxpool_forward(dev, x, y, argmax, shape, s);
}

Status maxpool_backward(Device& dev, const float* dy, const int32_t* argmax, float* dx,
                        const PoolShape& shape, Stream* s) {
  MYCEL_CHECK(check_pool("maxpool_backward", shape));
  if (!dy || !argmax || !dx) return bad("maxpool_backward", "null pointer");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->maxpool_backward(dev, dy, argmax, dx, shape, s);
}

Status im2col(Device& dev, const float* x, float* col, const ConvShape& shape, Stream* s) {
  MYCEL_CHECK(check_conv("im2col", shape));
  if (!x || !col) return bad("im2col", "null pointer");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->im2col(dev, x, col, shape, s);
}

Status col2im(Device& dev, const float* col, float* dx, const ConvShape& shape, Stream* s) {
  MYCEL_CHECK(check_conv("col2im", shape));
  if (!col || !dx) return bad("col2im", "null pointer");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->col2im(dev, col, dx, shape, s);
}

Status gather_rows(Device& dev, const float* src_x, const int32_t* src_y, size_t src_rows,
                   size_t dim, const int32_t* idx, size_t count, float* dst_x, int32_t* dst_y,
                   Stream* s) {
  if (count == 0) return Ok();
  if (dim == 0 || src_rows == 0) return bad("gather_rows", "empty source");
  if (!src_x || !idx || !dst_x) return bad("gather_rows", "null pointer");
  if ((src_y == nullptr) != (dst_y == nullptr))
    return bad("gather_rows", "labels need both a source and a destination");
  if (!fits_int(src_rows)) return bad("gather_rows", "more than 2^31 source rows");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->gather_rows(dev, src_x, src_y, src_rows, dim, idx, count, dst_x, dst_y, s);
}

Status nchw_to_nhwc(Device& dev, const float* x, float* y, int batch, int channels, int height,
                    int width, Stream* s) {
  if (batch <= 0 || channels <= 0 || height <= 0 || width <= 0)
    return bad("nchw_to_nhwc", "sizes must be positive");
  if (!x || !y) return bad("nchw_to_nhwc", "null pointer");
  if (x == y) return bad("nchw_to_nhwc", "output must not alias the input");
  MYCEL_ASSIGN_OR_RETURN(auto* t, table_for(dev));
  return t->nchw_to_nhwc(dev, x, y, batch, channels, height, width, s);
}

}  // namespace nn
}  // namespace mycel
