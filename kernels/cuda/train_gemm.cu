// Row-major GEMM on cuBLAS (column-major). A row-major m x n matrix with row stride ld has the
// same bytes as its column-major transpose (n x m, leading dimension ld), so
//   C = op(A) op(B)   (row-major)   <=>   C^T = op(B)^T op(A)^T   (column-major),
// which is one cublasSgemm with the operands swapped, m and n swapped, and each op flag kept:
// the column-major view of a stored row-major B is B^T already, so "no transpose" of the view
// gives op(B)^T when op(B) = B, and "transpose" gives it when op(B) = B^T.
#include <mutex>

#include "kernels/cuda/train_common.cuh"

namespace mycel::cuda::train {

Status gemm(Device& dev, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
            const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc,
            Stream* s) {
  MYCEL_ASSIGN_OR_RETURN(StreamContext * ctx, context_for(dev, s));
  std::lock_guard<std::mutex> lock(ctx->mu);
  // beta == 0: cuBLAS does not read C, so stale NaNs in C do not survive (the contract).
  MYCEL_CUBLAS_CHECK(ctx->api->sgemm(ctx->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a,
                                 lda, &beta, c, ldc));
  return Ok();
}

}  // namespace mycel::cuda::train
