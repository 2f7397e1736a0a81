// CPU training ops (kernels/train_ops.h) against plain double-precision references written
// here, plus the argument checks at the boundary. The CUDA twin is compared with these CPU ops
// in tests/kernels (tcuda's tests); here everything runs on the CPU device.
#include "kernels/train_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace mycel {
namespace {

std::shared_ptr<Device> cpu() {
  auto d = make_device("cpu");
  EXPECT_TRUE(d.is_ok());
  return *d;
}

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(g);
  return v;
}

// Tolerance for float results against a double reference: atol + rtol * |ref|.
void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double atol,
                  double rtol, const char* what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << " at " << i;
    ASSERT_NEAR(got[i], ref[i], atol + rtol * std::abs(ref[i])) << what << " at " << i;
  }
}

TEST(TrainOps, GemmAllTransposesMatchReference) {
  auto dev = cpu();
  // Sizes not multiples of any vector width, plus a 1-sized edge.
  for (auto [m, n, k] : {std::tuple{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {2, 200, 31}}) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        const int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
        auto a = randn(size_t(ta ? k : m) * lda, 1);
        auto b = randn(size_t(tb ? n : k) * ldb, 2);
        auto c = randn(size_t(m) * ldc, 3);
        const float alpha = 0.75f, beta = -0.5f;
        std::vector<double> ref(c.begin(), c.end());
        for (int i = 0; i < m; ++i)
          for (int j = 0; j < n; ++j) {
            double s = 0;
            for (int p = 0; p < k; ++p) {
              double av = ta ? a[size_t(p) * lda + i] : a[size_t(i) * lda + p];
              double bv = tb ? b[size_t(j) * ldb + p] : b[size_t(p) * ldb + j];
              s += av * bv;
            }
            ref[size_t(i) * ldc + j] = alpha * s + beta * c[size_t(i) * ldc + j];
          }
        ASSERT_TRUE(nn::gemm(*dev, ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta,
                             c.data(), ldc)
                        .is_ok());
        expect_close(c, ref, 1e-4, 1e-4, "gemm");
      }
    }
  }
}

TEST(TrainOps, GemmBetaZeroIgnoresNaNInOutput) {
  auto dev = cpu();
  std::vector<float> a = {1, 2, 3, 4}, b = {1, 0, 0, 1};
  std::vector<float> c(4, std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(nn::gemm(*dev, false, false, 2, 2, 2, 1.f, a.data(), 2, b.data(), 2, 0.f, c.data(), 2)
                  .is_ok());
  EXPECT_EQ(c, a);
}

TEST(TrainOps, GemmRejectsBadArguments) {
  auto dev = cpu();
  std::vector<float> a(4), b(4), c(4);
  EXPECT_EQ(
      nn::gemm(*dev, false, false, 0, 2, 2, 1, a.data(), 2, b.data(), 2, 0, c.data(), 2).code(),
      Code::kInvalidArgument);
  EXPECT_EQ(
      nn::gemm(*dev, false, false, 2, 2, 2, 1, a.data(), 1, b.data(), 2, 0, c.data(), 2).code(),
      Code::kInvalidArgument);
  EXPECT_EQ(
      nn::gemm(*dev, false, false, 2, 2, 2, 1, nullptr, 2, b.data(), 2, 0, c.data(), 2).code(),
      Code::kInvalidArgument);
}

TEST(TrainOps, BiasActAndReluBackward) {
  auto dev = cpu();
  const size_t rows = 5, cols = 7;
  auto y = randn(rows * cols, 4), bias = randn(cols, 5);
  auto y_relu = y, y_lin = y;
  ASSERT_TRUE(
      nn::bias_act(*dev, y_relu.data(), bias.data(), rows, cols, Activation::kRelu).is_ok());
  ASSERT_TRUE(nn::bias_act(*dev, y_lin.data(), bias.data(), rows, cols, Activation::kNone).is_ok());
  int zeros = 0;
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) {
      float v = y[r * cols + c] + bias[c];
      EXPECT_EQ(y_lin[r * cols + c], v);
      EXPECT_EQ(y_relu[r * cols + c], v > 0 ? v : 0.f);
      zeros += v <= 0;
    }
  ASSERT_GT(zeros, 0);  // the test data exercises both sides of the ReLU
  auto dy = randn(rows * cols, 6), dy0 = dy;
  ASSERT_TRUE(nn::relu_backward(*dev, dy.data(), y_relu.data(), rows * cols).is_ok());
  for (size_t i = 0; i < dy.size(); ++i) EXPECT_EQ(dy[i], y_relu[i] > 0 ? dy0[i] : 0.f);
}

TEST(TrainOps, BiasGradIsColumnSumWithBeta) {
  auto dev = cpu();
  for (auto [rows, cols] : {std::pair<size_t, size_t>{1, 1}, {3, 5}, {4097, 80}}) {
    auto dy = randn(rows * cols, 7);
    auto db = randn(cols, 8), db0 = db;
    ASSERT_TRUE(nn::bias_grad(*dev, db.data(), dy.data(), rows, cols, 0.5f).is_ok());
    std::vector<double> ref(cols);
    for (size_t c = 0; c < cols; ++c) {
      double s = 0.5 * db0[c];
      for (size_t r = 0; r < rows; ++r) s += dy[r * cols + c];
      ref[c] = s;
    }
    expect_close(db, ref, 1e-3, 1e-4, "bias_grad");
  }
}

TEST(TrainOps, SoftmaxXentMatchesReferenceAndFiniteDifferences) {
  auto dev = cpu();
  const size_t rows = 6;
  const int k = 5;
  auto z = randn(rows * k, 9, 3.f);
  z[3] = 80.f;  // large logits must not overflow (max subtraction)
  std::vector<int32_t> y = {0, 4, 2, 3, 1, 4};
  std::vector<float> dz(rows * k), acc = {0.f, 0.f};
  const float scale = 1.f / rows;
  ASSERT_TRUE(
      nn::softmax_xent(*dev, z.data(), y.data(), rows, k, dz.data(), scale, acc.data()).is_ok());
  double loss = 0;
  int correct = 0;
  std::vector<double> ref(rows * k);
  for (size_t r = 0; r < rows; ++r) {
    double mx = -1e300;
    int best = 0;
    for (int j = 0; j < k; ++j)
      if (z[r * k + j] > mx) {
        mx = z[r * k + j];
        best = j;
      }
    double s = 0;
    for (int j = 0; j < k; ++j) s += std::exp(double(z[r * k + j]) - mx);
    loss += mx + std::log(s) - z[r * k + y[r]];
    correct += best == y[r];
    for (int j = 0; j < k; ++j)
      ref[r * k + j] = scale * (std::exp(double(z[r * k + j]) - mx) / s - (j == y[r]));
  }
  EXPECT_NEAR(acc[0], loss, 1e-4 * loss);
  EXPECT_EQ(acc[1], float(correct));
  expect_close(dz, ref, 1e-6, 1e-4, "dlogits");
  // The accumulator adds: a second call doubles it.
  ASSERT_TRUE(
      nn::softmax_xent(*dev, z.data(), y.data(), rows, k, nullptr, 0.f, acc.data()).is_ok());
  EXPECT_NEAR(acc[0], 2 * loss, 2e-4 * loss);
  EXPECT_EQ(acc[1], float(2 * correct));
}

TEST(TrainOps, SoftmaxXentArgmaxTiesTakeLowestIndexAndBadLabelsAreHarmless) {
  auto dev = cpu();
  std::vector<float> z = {1, 3, 3, 0, 2, 2, 2, 2};
  std::vector<int32_t> y = {1, 7};  // second label out of range
  std::vector<float> acc = {0, 0}, dz(8);
  ASSERT_TRUE(nn::softmax_xent(*dev, z.data(), y.data(), 2, 4, dz.data(), 1.f, acc.data()).is_ok());
  EXPECT_EQ(acc[1], 1.f);  // row 0: argmax 1 (first of the tie) == label
  // Row 1: invalid label: no loss, gradient p (no one-hot term).
  const double loss0 = std::log(std::exp(1.0) + 2 * std::exp(3.0) + 1.0) - 3.0;
  EXPECT_NEAR(acc[0], loss0, 1e-5);
  for (int j = 4; j < 8; ++j) EXPECT_NEAR(dz[j], 0.25f, 1e-6);
}

TEST(TrainOps, SgdMatchesScalarReference) {
  auto dev = cpu();
  const size_t n = 1000;
  for (float mom : {0.f, 0.9f}) {
    auto p = randn(n, 10), g = randn(n, 11);
    std::vector<float> v(n, 0.f);
    std::vector<double> rp(p.begin(), p.end()), rv(n, 0.0);
    SgdParams opt;
    opt.lr = 0.1f;
    opt.momentum = mom;
    opt.weight_decay = 0.01f;
    for (int step = 0; step < 3; ++step) {
      ASSERT_TRUE(
          nn::sgd_update(*dev, p.data(), g.data(), mom ? v.data() : nullptr, n, opt).is_ok());
      for (size_t i = 0; i < n; ++i) {
        // torch.optim.SGD: d_p = g + wd p; buf = mom buf + d_p (buf = d_p at step 0); p -= lr buf.
        double d = double(g[i]) + 0.01 * rp[i];
        rv[i] = step == 0 ? d : mom * rv[i] + d;
        rp[i] -= 0.1 * (mom ? rv[i] : d);
      }
    }
    expect_close(p, rp, 1e-5, 1e-5, "sgd params");
  }
  std::vector<float> p(4), g(4);
  SgdParams bad;
  bad.momentum = 0.5f;
  EXPECT_EQ(nn::sgd_update(*dev, p.data(), g.data(), nullptr, 4, bad).code(),
            Code::kInvalidArgument);
  bad.momentum = 0.f;
  bad.lr = std::numeric_limits<float>::infinity();
  EXPECT_EQ(nn::sgd_update(*dev, p.data(), g.data(), nullptr, 4, bad).code(),
            Code::kInvalidArgument);
}

TEST(TrainOps, MaxPoolForwardBackward) {
  auto dev = cpu();
  PoolShape s;
  s.batch = 2;
  s.height = 5;
  s.width = 4;
  s.channels = 3;
  s.window = 2;  // odd height: row dropped
  auto x = randn(s.in_size(), 12);
  std::vector<float> y(s.out_size());
  std::vector<int32_t> am(s.out_size());
  ASSERT_TRUE(nn::maxpool_forward(*dev, x.data(), y.data(), am.data(), s).is_ok());
  ASSERT_EQ(s.out_h(), 2);
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        for (int c = 0; c < 3; ++c) {
          float best = -1e30f;
          int at = -1;
          for (int di = 0; di < 2; ++di)
            for (int dj = 0; dj < 2; ++dj) {
              int idx = ((b * 5 + 2 * i + di) * 4 + 2 * j + dj) * 3 + c;
              if (x[idx] > best) {
                best = x[idx];
                at = idx;
              }
            }
          size_t o = ((size_t(b) * 2 + i) * 2 + j) * 3 + c;
          EXPECT_EQ(y[o], best);
          EXPECT_EQ(am[o], at);
        }
  auto dy = randn(s.out_size(), 13);
  std::vector<float> dx(s.in_size(), 7.f);
  ASSERT_TRUE(nn::maxpool_backward(*dev, dy.data(), am.data(), dx.data(), s).is_ok());
  std::vector<double> ref(s.in_size(), 0.0);
  for (size_t o = 0; o < dy.size(); ++o) ref[am[o]] = dy[o];
  expect_close(dx, ref, 0, 0, "maxpool backward");
  // NaN propagates as in PyTorch.
  x[((0 * 5 + 0) * 4 + 1) * 3 + 0] = std::numeric_limits<float>::quiet_NaN();
  ASSERT_TRUE(nn::maxpool_forward(*dev, x.data(), y.data(), am.data(), s).is_ok());
  EXPECT_TRUE(std::isnan(y[0]));
  s.window = 6;
  EXPECT_EQ(nn::maxpool_forward(*dev, x.data(), y.data(), am.data(), s).code(),
            Code::kInvalidArgument);
}

// im2col against the definition; col2im as its adjoint: <col2im(c), x> == <c, im2col(x)>.
TEST(TrainOps, Im2colMatchesDefinitionAndCol2imIsItsAdjoint) {
  auto dev = cpu();
  for (auto [h, w, c, k, stride, pad] :
       {std::tuple{5, 4, 2, 3, 1, 1}, {7, 7, 1, 5, 1, 2}, {6, 5, 3, 3, 2, 0}, {1, 1, 1, 1, 1, 0}}) {
    ConvShape s;
    s.batch = 2;
    s.height = h;
    s.width = w;
    s.channels = c;
    s.kernel = k;
    s.stride = stride;
    s.pad = pad;
    auto x = randn(size_t(2) * h * w * c, 14);
    std::vector<float> col(s.col_rows() * s.col_cols(), 99.f);
    ASSERT_TRUE(nn::im2col(*dev, x.data(), col.data(), s).is_ok());
    const int oh = s.out_h(), ow = s.out_w();
    for (int b = 0; b < 2; ++b)
      for (int i = 0; i < oh; ++i)
        for (int j = 0; j < ow; ++j)
          for (int kh = 0; kh < k; ++kh)
            for (int kw = 0; kw < k; ++kw)
              for (int ch = 0; ch < c; ++ch) {
                int ih = i * stride - pad + kh, iw = j * stride - pad + kw;
                float want = (ih < 0 || ih >= h || iw < 0 || iw >= w)
                                 ? 0.f
                                 : x[((size_t(b) * h + ih) * w + iw) * c + ch];
                size_t r = (size_t(b) * oh + i) * ow + j;
                ASSERT_EQ(col[r * s.col_cols() + (size_t(kh) * k + kw) * c + ch], want);
              }
    auto cr = randn(col.size(), 15);
    std::vector<float> dx(x.size(), 5.f);
    ASSERT_TRUE(nn::col2im(*dev, cr.data(), dx.data(), s).is_ok());
    double lhs = 0, rhs = 0;
    for (size_t i = 0; i < x.size(); ++i) lhs += double(dx[i]) * x[i];
    for (size_t i = 0; i < col.size(); ++i) rhs += double(cr[i]) * col[i];
    EXPECT_NEAR(lhs, rhs, 1e-4 * (1 + std::abs(rhs)));
  }
  ConvShape bad;
  bad.batch = 1;
  bad.height = 2;
  bad.width = 2;
  bad.channels = 1;
  bad.kernel = 5;
  bad.pad = 0;
  std::vector<float> x(4), col(100);
  EXPECT_EQ(nn::im2col(*dev, x.data(), col.data(), bad).code(), Code::kInvalidArgument);
}

TEST(TrainOps, GatherRowsAndChecksIndices) {
  auto dev = cpu();
  std::vector<float> x = {0, 1, 10, 11, 20, 21};
  std::vector<int32_t> y = {5, 6, 7}, idx = {2, 0, 2};
  std::vector<float> dx(6);
  std::vector<int32_t> dy(3);
  ASSERT_TRUE(
      nn::gather_rows(*dev, x.data(), y.data(), 3, 2, idx.data(), 3, dx.data(), dy.data()).is_ok());
  EXPECT_EQ(dx, (std::vector<float>{20, 21, 0, 1, 20, 21}));
  EXPECT_EQ(dy, (std::vector<int32_t>{7, 5, 7}));
  idx[1] = 3;
  EXPECT_EQ(
      nn::gather_rows(*dev, x.data(), y.data(), 3, 2, idx.data(), 3, dx.data(), dy.data()).code(),
      Code::kOutOfRange);
  EXPECT_EQ(
      nn::gather_rows(*dev, x.data(), y.data(), 3, 2, idx.data(), 3, dx.data(), nullptr).code(),
      Code::kInvalidArgument);
}

TEST(TrainOps, NchwToNhwc) {
  auto dev = cpu();
  std::vector<float> x(2 * 3 * 2 * 2), y(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i);
  ASSERT_TRUE(nn::nchw_to_nhwc(*dev, x.data(), y.data(), 2, 3, 2, 2).is_ok());
  for (int b = 0; b < 2; ++b)
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 4; ++p) EXPECT_EQ(y[(b * 4 + p) * 3 + c], x[(b * 3 + c) * 4 + p]);
}

}  // namespace
}  // namespace mycel
