// The CUDA training ops (kernels/cuda/train_*.cu) against the CPU reference (kernels/cpu), and
// whole models on both devices: forward loss and the full gradient vector for one batch, and a
// 20-step SGD trajectory. Every test skips, with the reason, where there is no GPU.
//
// Tolerances (atol + rtol * |ref| unless stated):
// - copies, selections and single roundings (im2col, col2im, maxpool, bias + activation, ReLU
//   backward, gather, NCHW -> NHWC) must be bit-identical: the CUDA kernels do the same float
//   operations in the same order as the CPU (col2im sums in the CPU's order);
// - gemm: |d| <= 1e-6 + 2 (k + 2) 2^-24 (|alpha| sum_l |a_il b_lj| + |beta c_ij|), twice the
//   classical bound on each side's rounding error (cuBLAS and OpenBLAS sum in different orders);
// - bias_grad: bit-identical up to 256 rows with beta = 0 (one thread per column adds the rows in
//   the CPU's order); otherwise |d| <= 1e-6 + (rows + 2) 2^-24 sum_r |dy_rc|;
// - softmax cross-entropy: gradient 1e-5 |scale| + 1e-5 |ref| (expf vs std::exp, sums in another
//   order); loss sum 1e-5 * rows + 1e-6 |ref|; correct counts exact;
// - SGD: 1e-7 + 1e-6 |ref| (bit-identical on x86, where neither side contracts to FMA);
// - models: each parameter tensor's gradient within 2e-3 relative L2 of the CPU's (a ReLU or a
//   max-pool tie that rounding flips moves one sample's share of one unit), loss within
//   1e-4 relative; trajectories within 1e-3 relative per step for 20 steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "kernels/train_ops.h"
#include "models/model.h"
#include "models/optim.h"

#ifdef MYCEL_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace mycel {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kU = 1.0 / 16777216.0;  // 2^-24, unit roundoff of fp32

std::string skip_reason(const std::string& why) {
  // cuda_device_count's reason may already start with "no cuda device".
  const std::string prefix = "no cuda device";
  if (why.rfind(prefix, 0) == 0) return why;
  return prefix + ": " + (why.empty() ? "none visible" : why);
}

class CudaTrain : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda_device_count(&why) == 0) GTEST_SKIP() << skip_reason(why);
    auto c = make_device("cpu");
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    auto g = make_device("cuda");
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    cpu_ = *c;
    gpu_ = *g;
  }
  Device& cpu() { return *cpu_; }
  Device& gpu() { return *gpu_; }

  std::shared_ptr<Device> cpu_, gpu_;
};

std::vector<float> uniform(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Small integers: many exact ties (argmax, max pooling).
std::vector<float> ties(size_t n, uint64_t seed, int levels = 3) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> d(0, levels - 1);
  std::vector<float> v(n);
  for (auto& x : v) x = float(d(g));
  return v;
}

template <typename T>
Buffer<T> up(Device& dev, const std::vector<T>& host) {
  auto b = Buffer<T>::make(dev, host.size());
  if (!b.is_ok()) {
    ADD_FAILURE() << "alloc: " << b.status().to_string();
    return Buffer<T>();
  }
  Buffer<T> buf = std::move(b).value();
  if (!host.empty()) {
    Status s = buf.upload(host.data(), host.size());
    if (!s.is_ok()) ADD_FAILURE() << "upload: " << s.to_string();
  }
  return buf;
}

template <typename T>
std::vector<T> down(const Buffer<T>& b) {
  std::vector<T> host(b.size());
  if (b.size() == 0) return host;
  Status s = b.download(host.data(), host.size());
  if (!s.is_ok()) ADD_FAILURE() << "download: " << s.to_string();
  return host;
}

// got within tol[i] (or atol + rtol * |ref|) of ref; NaN only where ref is NaN, Inf only where
// ref has the same Inf. Reports the count and the first few misses.
::testing::AssertionResult close_to(const std::vector<float>& got, const std::vector<float>& ref,
                                    double atol, double rtol,
                                    const std::vector<double>* tol = nullptr) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
  size_t bad = 0;
  std::ostringstream os;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float g = got[i], r = ref[i];
    bool ok;
    if (std::isnan(r) || std::isnan(g)) {
      ok = std::isnan(r) && std::isnan(g);
    } else if (std::isinf(r) || std::isinf(g)) {
      ok = g == r;
    } else {
      const double t = tol ? (*tol)[i] : atol + rtol * std::abs(double(r));
      ok = std::abs(double(g) - double(r)) <= t;
    }
    if (!ok && bad++ < 5) os << " [" << i << "] got " << g << " want " << r;
  }
  if (bad) return ::testing::AssertionFailure() << bad << " of " << ref.size() << " off:" << os.str();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same(const std::vector<float>& got, const std::vector<float>& ref) {
  return close_to(got, ref, 0.0, 0.0);
}

// ---------------------------------------------------------------------------------------
// Ops

TEST_F(CudaTrain, GemmAllTransposesAndModelShapes) {
  struct Case { int m, n, k; };
  // Edge sizes, odd sizes, and the MLP's / CNN's own products at batch 32 and 33.
  const Case cases[] = {{1, 1, 1},     {7, 13, 5},    {33, 10, 200}, {32, 200, 784},
                        {200, 784, 32}, {33, 784, 200}, {1568, 32, 25}, {7, 64, 800}};
  uint64_t seed = 10;
  for (const Case& cs : cases) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        const int m = cs.m, n = cs.n, k = cs.k;
        const int lda = (ta ? m : k) + (seed % 2), ldb = (tb ? k : n) + 1, ldc = n + 2;
        const auto a = uniform(size_t(ta ? k : m) * lda, ++seed);
        const auto b = uniform(size_t(tb ? n : k) * ldb, ++seed);
        for (float beta : {0.f, 0.5f}) {
          auto c0 = uniform(size_t(m) * ldc, ++seed);
          if (beta == 0.f) std::fill(c0.begin(), c0.end(), kNaN);  // must not leak through
          const float alpha = 1.25f;
          std::vector<double> tol(c0.size(), 0.0);
          for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) {
              double s = 0;
              for (int p = 0; p < k; ++p) {
                const double av = ta ? a[size_t(p) * lda + i] : a[size_t(i) * lda + p];
                const double bv = tb ? b[size_t(j) * ldb + p] : b[size_t(p) * ldb + j];
                s += std::abs(av * bv);
              }
              const size_t o = size_t(i) * ldc + j;
              const double cterm = beta == 0.f ? 0.0 : std::abs(double(beta) * c0[o]);
              tol[o] = 1e-6 + 2.0 * (k + 2) * kU * (std::abs(alpha) * s + cterm);
            }
          // The CPU side starts from zeros where beta == 0 (the same contract), so a NaN in the
          // result can only come from the GPU reading C (OpenBLAS's small-size paths vary).
          auto ca = a, cb = b, cc = c0;
          if (beta == 0.f) std::fill(cc.begin(), cc.end(), 0.f);
          ASSERT_TRUE(nn::gemm(cpu(), ta, tb, m, n, k, alpha, ca.data(), lda, cb.data(), ldb,
                               beta, cc.data(), ldc).is_ok());
          auto ga = up(gpu(), a), gb = up(gpu(), b), gc = up(gpu(), c0);
          ASSERT_TRUE(nn::gemm(gpu(), ta, tb, m, n, k, alpha, ga.data(), lda, gb.data(), ldb,
                               beta, gc.data(), ldc).is_ok());
          auto got = down(gc);
          // Padding columns of C (j >= n) are not part of the product: each side keeps its own.
          for (int i = 0; i < m; ++i)
            for (int j = n; j < ldc; ++j) {
              tol[size_t(i) * ldc + j] = 0.0;
              cc[size_t(i) * ldc + j] = c0[size_t(i) * ldc + j];
            }
          EXPECT_TRUE(close_to(got, cc, 0, 0, &tol))
              << "m=" << m << " n=" << n << " k=" << k << " ta=" << ta << " tb=" << tb
              << " beta=" << beta;
        }
      }
    }
  }
}

TEST_F(CudaTrain, BiasActAndReluBackwardAreBitIdentical) {
  for (size_t rows : {1, 7, 32, 33, 1000}) {
    for (size_t cols : {1, 10, 33, 200}) {
      auto y = uniform(rows * cols, rows * 131 + cols);
      y[0] = kNaN;  // NaN stays NaN through ReLU (std::max(v, 0.f) semantics)
      if (y.size() > 2) { y[1] = -0.f; y[2] = 0.f; }
      const auto bias = uniform(cols, cols + 7);
      for (int mode = 0; mode < 3; ++mode) {  // bias+relu, bias only, relu only
        const bool with_bias = mode != 2;
        const Activation act = mode == 1 ? Activation::kNone : Activation::kRelu;
        auto cy = y;
        ASSERT_TRUE(nn::bias_act(cpu(), cy.data(), with_bias ? bias.data() : nullptr, rows, cols,
                                 act).is_ok());
        auto gy = up(gpu(), y);
        auto gb = up(gpu(), bias);
        ASSERT_TRUE(nn::bias_act(gpu(), gy.data(), with_bias ? gb.data() : nullptr, rows, cols,
                                 act).is_ok());
        EXPECT_TRUE(same(down(gy), cy)) << rows << "x" << cols << " mode " << mode;

        // ReLU backward masks by the activation's output.
        const auto dy = uniform(rows * cols, rows + cols * 3);
        auto cdy = dy;
        ASSERT_TRUE(nn::relu_backward(cpu(), cdy.data(), cy.data(), rows * cols).is_ok());
        auto gdy = up(gpu(), dy);
        auto gout = up(gpu(), cy);
        ASSERT_TRUE(nn::relu_backward(gpu(), gdy.data(), gout.data(), rows * cols).is_ok());
        EXPECT_TRUE(same(down(gdy), cdy)) << rows << "x" << cols;
      }
    }
  }
}

TEST_F(CudaTrain, BiasGradColumnSums) {
  // Up to 256 rows the direct kernel; above, the two-pass split (a conv's B*H*W rows).
  for (size_t rows : {0, 1, 7, 32, 33, 256, 257, 2048, 18432}) {
    for (size_t cols : {1, 32, 64, 200}) {
      if (rows * cols > 2000000) continue;
      const auto dy = uniform(rows * cols, rows * 7 + cols);
      for (float beta : {0.f, 0.5f}) {
        auto db0 = uniform(cols, cols * 11 + 1);
        if (beta == 0.f) std::fill(db0.begin(), db0.end(), kNaN);  // ignored when beta == 0
        auto cdb = db0;
        ASSERT_TRUE(nn::bias_grad(cpu(), cdb.data(), dy.data(), rows, cols, beta).is_ok());
        auto gdy = up(gpu(), dy);
        auto gdb = up(gpu(), db0);
        ASSERT_TRUE(nn::bias_grad(gpu(), gdb.data(), gdy.data(), rows, cols, beta).is_ok());
        const auto got = down(gdb);
        if (rows <= 256 && beta == 0.f) {
          EXPECT_TRUE(same(got, cdb)) << rows << "x" << cols;
        } else {
          std::vector<double> tol(cols);
          for (size_t c = 0; c < cols; ++c) {
            double s = beta == 0.f ? 0.0 : std::abs(double(beta) * db0[c]);
            for (size_t r = 0; r < rows; ++r) s += std::abs(double(dy[r * cols + c]));
            tol[c] = 1e-6 + double(rows + 2) * kU * s;
          }
          EXPECT_TRUE(close_to(got, cdb, 0, 0, &tol)) << rows << "x" << cols << " beta " << beta;
        }
      }
    }
  }
}

// Runs softmax_xent on both devices with the same inputs and compares loss sum, correct count
// and (when asked) the gradient, in place or not.
void check_softmax(Device& cpu, Device& gpu, size_t rows, int classes,
                   uint64_t seed, bool with_grad, bool in_place, float grad_scale) {
  std::vector<float> z = uniform(rows * size_t(classes), seed, -4.f, 4.f);
  // Every other row holds small integers only: exact ties for the argmax.
  const auto tz = ties(rows * size_t(classes), seed + 1);
  for (size_t r = 0; r < rows; r += 2)
    std::copy(tz.begin() + r * classes, tz.begin() + (r + 1) * classes, z.begin() + r * classes);
  std::mt19937_64 g(seed + 2);
  std::uniform_int_distribution<int> lab(0, classes - 1);
  std::vector<int32_t> y(rows);
  for (size_t r = 0; r < rows; ++r) {
    y[r] = lab(g);
    if (r % 17 == 5) y[r] = -1;          // out of range: no loss, counted wrong
    if (r % 23 == 7) y[r] = classes;     // out of range above
  }
  const std::vector<float> acc0 = {1.5f, 2.f};  // accumulation adds to what is there

  auto cz = z;
  std::vector<float> cd(with_grad && !in_place ? z.size() : 0, kNaN);
  auto cacc = acc0;
  float* cdl = !with_grad ? nullptr : (in_place ? cz.data() : cd.data());
  ASSERT_TRUE(nn::softmax_xent(cpu, cz.data(), y.data(), rows, classes, cdl, grad_scale,
                               cacc.data()).is_ok());

  auto gz = up(gpu, z);
  auto gy = up(gpu, y);
  auto gd = up(gpu, std::vector<float>(with_grad && !in_place ? z.size() : 0, kNaN));
  auto gacc = up(gpu, acc0);
  float* gdl = !with_grad ? nullptr : (in_place ? gz.data() : gd.data());
  ASSERT_TRUE(nn::softmax_xent(gpu, gz.data(), gy.data(), rows, classes, gdl, grad_scale,
                               gacc.data()).is_ok());
  const auto got_acc = down(gacc);
  const std::string what = std::to_string(rows) + "x" + std::to_string(classes) +
                           (with_grad ? (in_place ? " in place" : " grad") : " no grad");
  EXPECT_NEAR(got_acc[0], cacc[0], 1e-5 * double(rows) + 1e-6 * std::abs(cacc[0])) << what;
  EXPECT_EQ(got_acc[1], cacc[1]) << what;
  if (with_grad) {
    const auto got = in_place ? down(gz) : down(gd);
    const auto& ref = in_place ? cz : cd;
    EXPECT_TRUE(close_to(got, ref, 1e-5 * std::abs(grad_scale), 1e-5)) << what;
  } else {
    EXPECT_TRUE(same(down(gz), z)) << what << ": logits must not change";
  }
}

TEST_F(CudaTrain, SoftmaxXentLossGradCorrect) {
  uint64_t seed = 100;
  for (size_t rows : {1, 7, 32, 33, 64, 65, 1000}) {
    for (int classes : {1, 2, 10, 33, 100}) {
      const float scale = 1.f / float(rows);
      check_softmax(cpu(), gpu(), rows, classes, ++seed, true, false, scale);
      check_softmax(cpu(), gpu(), rows, classes, ++seed, true, true, 0.5f);
      check_softmax(cpu(), gpu(), rows, classes, ++seed, false, false, 0.f);
    }
  }
  // More rows than 1024 blocks of 64 cover in one pass: the grid-stride loop and the two-pass
  // deterministic total.
  check_softmax(cpu(), gpu(), 70001, 10, ++seed, true, false, 1.f / 70001.f);
}

TEST_F(CudaTrain, SoftmaxXentNonFiniteLogitsAndDeterminism) {
  const int classes = 5;
  const std::vector<float> z = {
      kNaN, 1, 2, 3, 4,            // NaN first: argmax 0, everything NaN
      0, 1, 2, kNaN, 4,            // NaN later: argmax the first max of the rest
      -kInf, -kInf, -kInf, -kInf, -kInf,
      0, 1, kInf, 3, 4,
      1, 3, 3, 2, 3,               // tie: the first 3 wins
      -1, -2, -3, -4, -5,
  };
  const std::vector<int32_t> y = {0, 4, 0, 2, 2, 0};
  const size_t rows = y.size();
  auto cd = std::vector<float>(z.size());
  std::vector<float> cacc = {0, 0};
  ASSERT_TRUE(nn::softmax_xent(cpu(), z.data(), y.data(), rows, classes, cd.data(), 1.f,
                               cacc.data()).is_ok());
  auto gz = up(gpu(), z);
  auto gy = up(gpu(), y);
  auto gd = up(gpu(), std::vector<float>(z.size(), 0.f));
  auto gacc = up(gpu(), std::vector<float>{0, 0});
  ASSERT_TRUE(nn::softmax_xent(gpu(), gz.data(), gy.data(), rows, classes, gd.data(), 1.f,
                               gacc.data()).is_ok());
  EXPECT_TRUE(close_to(down(gd), cd, 1e-6, 1e-5));
  const auto a = down(gacc);
  EXPECT_TRUE(std::isnan(a[0]) && std::isnan(cacc[0])) << a[0] << " vs " << cacc[0];
  EXPECT_EQ(a[1], cacc[1]);
  EXPECT_EQ(a[1], 5.f);  // all but row 4, whose tie goes to index 1

  // The same finite batch twice gives the same bits (no atomics in the loss sum).
  const size_t big = 5000;
  auto fz = uniform(big * 10, 7, -3.f, 3.f);
  std::vector<int32_t> fy(big);
  for (size_t i = 0; i < big; ++i) fy[i] = int32_t(i % 10);
  auto gfz = up(gpu(), fz);
  auto gfy = up(gpu(), fy);
  auto acc1 = up(gpu(), std::vector<float>{0, 0});
  auto acc2 = up(gpu(), std::vector<float>{0, 0});
  ASSERT_TRUE(nn::softmax_xent(gpu(), gfz.data(), gfy.data(), big, 10, nullptr, 0.f,
                               acc1.data()).is_ok());
  ASSERT_TRUE(nn::softmax_xent(gpu(), gfz.data(), gfy.data(), big, 10, nullptr, 0.f,
                               acc2.data()).is_ok());
  const auto r1 = down(acc1), r2 = down(acc2);
  EXPECT_EQ(std::memcmp(r1.data(), r2.data(), 2 * sizeof(float)), 0);
}

TEST_F(CudaTrain, SgdMomentumWeightDecayOverFlatVector) {
  for (size_t n : {1, 3, 4, 5, 1023, 199210}) {
    for (float mom : {0.f, 0.9f}) {
      for (float wd : {0.f, 5e-4f}) {
        for (size_t offset : {0, 1}) {  // 1: misaligned views take the scalar path
          const SgdParams opt{0.05f, mom, wd};
          auto p = uniform(n + offset, n + 1), g0 = uniform(n + offset, n + 2);
          std::vector<float> v(n + offset, 0.f);
          auto gp = up(gpu(), p), gg = up(gpu(), g0), gv = up(gpu(), v);
          for (int step = 0; step < 3; ++step) {
            // A new gradient each step, same on both sides.
            auto g = uniform(n + offset, n * 3 + step);
            ASSERT_TRUE(gg.upload(g.data(), g.size()).is_ok());
            ASSERT_TRUE(nn::sgd_update(cpu(), p.data() + offset, g.data() + offset,
                                       mom != 0.f ? v.data() + offset : nullptr, n, opt).is_ok());
            ASSERT_TRUE(nn::sgd_update(gpu(), gp.data() + offset, gg.data() + offset,
                                       mom != 0.f ? gv.data() + offset : nullptr, n, opt).is_ok());
          }
          const std::string what = "n=" + std::to_string(n) + " mom=" + std::to_string(mom) +
                                   " wd=" + std::to_string(wd) + " off=" + std::to_string(offset);
          EXPECT_TRUE(close_to(down(gp), p, 1e-7, 1e-6)) << what;
          if (mom != 0.f) {
            EXPECT_TRUE(close_to(down(gv), v, 1e-7, 1e-6)) << what;
          }
        }
      }
    }
  }
}

TEST_F(CudaTrain, MaxPoolForwardBackwardWithTiesAndNaN) {
  struct Case { int b, h, w, c, window; };
  const Case cases[] = {{1, 28, 28, 1, 2}, {7, 24, 24, 32, 2}, {32, 14, 14, 64, 2},
                        {33, 7, 9, 3, 2},  {2, 9, 7, 5, 3},    {1, 1, 1, 1, 1}};
  uint64_t seed = 500;
  for (const Case& cs : cases) {
    PoolShape s;
    s.batch = cs.b; s.height = cs.h; s.width = cs.w; s.channels = cs.c; s.window = cs.window;
    auto x = ties(s.in_size(), ++seed, 3);  // many equal maxima: the first must win
    if (x.size() > 10) { x[3] = kNaN; x[x.size() / 2] = kNaN; }
    std::vector<float> cy(s.out_size());
    std::vector<int32_t> ca(s.out_size());
    ASSERT_TRUE(nn::maxpool_forward(cpu(), x.data(), cy.data(), ca.data(), s).is_ok());
    auto gx = up(gpu(), x);
    auto gy = up(gpu(), std::vector<float>(s.out_size(), 0.f));
    auto ga = up(gpu(), std::vector<int32_t>(s.out_size(), 0));
    ASSERT_TRUE(nn::maxpool_forward(gpu(), gx.data(), gy.data(), ga.data(), s).is_ok());
    const std::string what = std::to_string(cs.b) + "x" + std::to_string(cs.h) + "x" +
                             std::to_string(cs.w) + "x" + std::to_string(cs.c) + " /" +
                             std::to_string(cs.window);
    EXPECT_TRUE(same(down(gy), cy)) << what;
    EXPECT_EQ(down(ga), ca) << what;

    const auto dy = uniform(s.out_size(), ++seed);
    std::vector<float> cdx(s.in_size(), kNaN);  // fully overwritten
    ASSERT_TRUE(nn::maxpool_backward(cpu(), dy.data(), ca.data(), cdx.data(), s).is_ok());
    auto gdy = up(gpu(), dy);
    auto gdx = up(gpu(), std::vector<float>(s.in_size(), kNaN));
    ASSERT_TRUE(nn::maxpool_backward(gpu(), gdy.data(), ga.data(), gdx.data(), s).is_ok());
    EXPECT_TRUE(same(down(gdx), cdx)) << what;
  }
}

TEST_F(CudaTrain, Im2colCol2imMatchCpuAndAreAdjoint) {
  struct Case { int b, h, w, c, k, stride, pad; };
  const Case cases[] = {{1, 28, 28, 1, 5, 1, 2},  {7, 14, 14, 32, 5, 1, 2}, {32, 28, 28, 1, 5, 1, 2},
                        {33, 9, 7, 3, 3, 2, 1},   {2, 8, 11, 4, 1, 1, 0},   {3, 6, 5, 2, 4, 3, 2},
                        {1, 5, 5, 1, 5, 1, 0}};
  uint64_t seed = 900;
  for (const Case& cs : cases) {
    ConvShape s;
    s.batch = cs.b; s.height = cs.h; s.width = cs.w; s.channels = cs.c;
    s.kernel = cs.k; s.stride = cs.stride; s.pad = cs.pad;
    const size_t in = size_t(s.batch) * s.height * s.width * s.channels;
    const size_t ncol = s.col_rows() * s.col_cols();
    const std::string what = std::to_string(cs.b) + "x" + std::to_string(cs.h) + "x" +
                             std::to_string(cs.w) + "x" + std::to_string(cs.c) + " k" +
                             std::to_string(cs.k) + " s" + std::to_string(cs.stride) + " p" +
                             std::to_string(cs.pad);
    const auto x = uniform(in, ++seed);
    std::vector<float> ccol(ncol, kNaN);
    ASSERT_TRUE(nn::im2col(cpu(), x.data(), ccol.data(), s).is_ok());
    auto gx = up(gpu(), x);
    auto gcol = up(gpu(), std::vector<float>(ncol, kNaN));
    ASSERT_TRUE(nn::im2col(gpu(), gx.data(), gcol.data(), s).is_ok());
    const auto got_col = down(gcol);
    EXPECT_TRUE(same(got_col, ccol)) << what;

    const auto col = uniform(ncol, ++seed);
    std::vector<float> cdx(in, kNaN);
    ASSERT_TRUE(nn::col2im(cpu(), col.data(), cdx.data(), s).is_ok());
    auto gc = up(gpu(), col);
    auto gdx = up(gpu(), std::vector<float>(in, kNaN));
    ASSERT_TRUE(nn::col2im(gpu(), gc.data(), gdx.data(), s).is_ok());
    const auto got_dx = down(gdx);
    EXPECT_TRUE(same(got_dx, cdx)) << what;

    // Round trip through the adjoint: <im2col(x), col> == <x, col2im(col)>.
    double lhs = 0, rhs = 0, mag = 0;
    for (size_t i = 0; i < ncol; ++i) {
      lhs += double(got_col[i]) * col[i];
      mag += std::abs(double(got_col[i]) * col[i]);
    }
    for (size_t i = 0; i < in; ++i) rhs += double(x[i]) * got_dx[i];
    EXPECT_NEAR(lhs, rhs, 1e-5 * mag + 1e-9) << what;
  }
}

TEST_F(CudaTrain, GatherRowsAndNchwToNhwc) {
  const size_t src_rows = 100, dim = 37;
  const auto sx = uniform(src_rows * dim, 31);
  std::vector<int32_t> sy(src_rows);
  for (size_t i = 0; i < src_rows; ++i) sy[i] = int32_t(i % 10);
  for (size_t count : {1, 7, 32, 33}) {
    std::vector<int32_t> idx(count);
    for (size_t i = 0; i < count; ++i) idx[i] = int32_t((i * 37 + 11) % src_rows);
    std::vector<float> cx(count * dim);
    std::vector<int32_t> cy(count);
    ASSERT_TRUE(nn::gather_rows(cpu(), sx.data(), sy.data(), src_rows, dim, idx.data(), count,
                                cx.data(), cy.data()).is_ok());
    auto gsx = up(gpu(), sx);
    auto gsy = up(gpu(), sy);
    auto gidx = up(gpu(), idx);
    auto gx = up(gpu(), std::vector<float>(count * dim, kNaN));
    auto gy = up(gpu(), std::vector<int32_t>(count, 99));
    ASSERT_TRUE(nn::gather_rows(gpu(), gsx.data(), gsy.data(), src_rows, dim, gidx.data(), count,
                                gx.data(), gy.data()).is_ok());
    EXPECT_TRUE(same(down(gx), cx)) << count;
    EXPECT_EQ(down(gy), cy) << count;
  }
  // The CUDA twin cannot report a bad index without a sync: zero row, label -1.
  {
    const std::vector<int32_t> idx = {3, -1, int32_t(src_rows), 5};
    auto gsx = up(gpu(), sx);
    auto gsy = up(gpu(), sy);
    auto gidx = up(gpu(), idx);
    auto gx = up(gpu(), std::vector<float>(idx.size() * dim, kNaN));
    auto gy = up(gpu(), std::vector<int32_t>(idx.size(), 99));
    ASSERT_TRUE(nn::gather_rows(gpu(), gsx.data(), gsy.data(), src_rows, dim, gidx.data(),
                                idx.size(), gx.data(), gy.data()).is_ok());
    const auto x = down(gx);
    const auto y = down(gy);
    EXPECT_EQ(y, (std::vector<int32_t>{3, -1, -1, 5}));
    for (size_t j = 0; j < dim; ++j) {
      EXPECT_EQ(x[j], sx[3 * dim + j]);
      EXPECT_EQ(x[dim + j], 0.f);
      EXPECT_EQ(x[2 * dim + j], 0.f);
      EXPECT_EQ(x[3 * dim + j], sx[5 * dim + j]);
    }
  }
  for (auto [b, c, h, w] : {std::tuple{1, 1, 28, 28}, {7, 3, 5, 9}, {33, 2, 4, 4}}) {
    const size_t n = size_t(b) * c * h * w;
    const auto x = uniform(n, n);
    std::vector<float> cy(n);
    ASSERT_TRUE(nn::nchw_to_nhwc(cpu(), x.data(), cy.data(), b, c, h, w).is_ok());
    auto gx = up(gpu(), x);
    auto gy = up(gpu(), std::vector<float>(n, kNaN));
    ASSERT_TRUE(nn::nchw_to_nhwc(gpu(), gx.data(), gy.data(), b, c, h, w).is_ok());
    EXPECT_TRUE(same(down(gy), cy)) << b << "x" << c << "x" << h << "x" << w;
  }
}

// ---------------------------------------------------------------------------------------
// Models

struct Problem {
  models::InputShape shape;
  std::vector<float> x;      // [n, dim], NCHW rows for images
  std::vector<int32_t> y;
  size_t n = 0;
};

// Labels from a fixed random linear teacher, so the loss has something to fall towards.
Problem make_problem(size_t n, size_t dim, int classes, int channels, int h, int w,
                     uint64_t seed) {
  Problem p;
  p.shape.dim = dim;
  p.shape.channels = channels;
  p.shape.height = h;
  p.shape.width = w;
  p.shape.classes = classes;
  p.n = n;
  p.x = uniform(n * dim, seed, 0.f, 1.f);
  const auto teacher = uniform(dim * size_t(classes), seed + 1);
  p.y.resize(n);
  for (size_t i = 0; i < n; ++i) {
    int best = 0;
    double bv = -1e300;
    for (int c = 0; c < classes; ++c) {
      double s = 0;
      for (size_t j = 0; j < dim; ++j) s += double(p.x[i * dim + j]) * teacher[j * classes + c];
      if (s > bv) { bv = s; best = c; }
    }
    p.y[i] = best;
  }
  return p;
}

// Relative L2 distance of b from a, over [off, off + count).
double rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t off, size_t count) {
  double d = 0, r = 0;
  for (size_t i = off; i < off + count; ++i) {
    const double e = double(b[i]) - double(a[i]);
    d += e * e;
    r += double(a[i]) * a[i];
  }
  return std::sqrt(d) / std::max(std::sqrt(r), 1e-30);
}

struct Pair {
  std::unique_ptr<models::Model> cpu, gpu;
};

void make_models(Device& cpu, Device& gpu, const std::string& spec, const models::InputShape& in,
               uint64_t seed, Pair* out) {
  auto c = models::make_model(cpu, spec, in, seed);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  auto g = models::make_model(gpu, spec, in, seed);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  out->cpu = std::move(c).value();
  out->gpu = std::move(g).value();
  // Same seed, same parameters, bit for bit (the init is drawn on the host).
  auto pc = out->cpu->download_params();
  auto pg = out->gpu->download_params();
  ASSERT_TRUE(pc.is_ok() && pg.is_ok());
  ASSERT_EQ(*pc, *pg) << spec;
}

// One forward/backward on batch rows [first, first + batch) on each device; compares the loss
// sum, the correct count and every parameter tensor's gradient.
void check_model_grads(Device& cpu, Device& gpu, const std::string& spec, const Problem& p,
                       int batch, uint64_t seed) {
  Pair m;
  make_models(cpu, gpu, spec, p.shape, seed, &m);
  if (::testing::Test::HasFatalFailure()) return;
  const size_t dim = p.shape.dim;
  std::vector<float> xb(p.x.begin(), p.x.begin() + size_t(batch) * dim);
  std::vector<int32_t> yb(p.y.begin(), p.y.begin() + batch);
  std::vector<float> cacc = {0, 0};
  ASSERT_TRUE(m.cpu->forward_backward(xb.data(), yb.data(), batch, cacc.data()).is_ok());
  auto gx = up(gpu, xb);
  auto gy = up(gpu, yb);
  auto gacc = up(gpu, std::vector<float>{0, 0});
  Status s = m.gpu->forward_backward(gx.data(), gy.data(), batch, gacc.data());
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  const auto a = down(gacc);
  const std::string what = spec + " batch " + std::to_string(batch);
  EXPECT_NEAR(a[0], cacc[0], 1e-4 * std::abs(cacc[0]) + 1e-6) << what << ": loss sum";
  // A near-tie of two logits may round differently: allow one sample to flip.
  EXPECT_LE(std::abs(a[1] - cacc[1]), 1.f) << what << ": correct count";

  std::vector<float> gc(m.cpu->num_params()), gg(m.gpu->num_params());
  ASSERT_TRUE(m.cpu->grads().download(gc.data(), gc.size()).is_ok());
  ASSERT_TRUE(m.gpu->grads().download(gg.data(), gg.size()).is_ok());
  size_t nonzero = 0;
  for (float v : gc) nonzero += v != 0.f;
  EXPECT_GT(nonzero, gc.size() / 4) << what << ": the CPU gradient is mostly zero";
  for (const auto& v : m.cpu->param_views()) {
    bool finite = true;
    for (size_t i = v.offset; i < v.offset + v.count; ++i) finite = finite && std::isfinite(gg[i]);
    EXPECT_TRUE(finite) << what << " " << v.name << ": non-finite gradient on cuda";
    EXPECT_LE(rel_l2(gc, gg, v.offset, v.count), 2e-3) << what << " " << v.name;
  }
  EXPECT_LE(rel_l2(gc, gg, 0, gc.size()), 1e-3) << what << ": whole gradient";
}

TEST_F(CudaTrain, ModelForwardLossAndGradientMatchCpu) {
  const Problem tab = make_problem(33, 784, 10, 0, 0, 0, 1);
  const Problem mnist = make_problem(33, 784, 10, 1, 28, 28, 2);
  const Problem rgb = make_problem(33, 3 * 12 * 10, 7, 3, 12, 10, 3);  // odd: pools drop a column
  for (int batch : {1, 7, 32, 33}) {
    check_model_grads(cpu(), gpu(), "logreg", tab, batch, 11);
    check_model_grads(cpu(), gpu(), "mlp:200,200", tab, batch, 12);
    check_model_grads(cpu(), gpu(), "cnn:8,16,32", rgb, batch, 13);
  }
  for (int batch : {1, 32}) check_model_grads(cpu(), gpu(), "cnn", mnist, batch, 14);
}

// 20 SGD steps (momentum 0.5, weight decay) on each device from the same seed and batches: the
// per-step losses and the final parameters stay together.
void check_trajectory(Device& cpu, Device& gpu, const std::string& spec, const Problem& p,
                      int batch, float lr) {
  Pair m;
  make_models(cpu, gpu, spec, p.shape, 77, &m);
  if (::testing::Test::HasFatalFailure()) return;
  models::LrSchedule sched;
  sched.base = lr;
  auto sc = models::Sgd::create(*m.cpu, 0.5f, 5e-4f, sched);
  auto sg = models::Sgd::create(*m.gpu, 0.5f, 5e-4f, sched);
  auto p0 = m.cpu->download_params();
  ASSERT_TRUE(p0.is_ok());
  ASSERT_TRUE(sc.is_ok() && sg.is_ok());
  models::Sgd opt_c = std::move(sc).value(), opt_g = std::move(sg).value();
  auto gx = up(gpu, p.x);
  auto gy = up(gpu, p.y);
  auto gacc = up(gpu, std::vector<float>{0, 0});
  const size_t dim = p.shape.dim;
  const int steps = 20;
  std::vector<float> lc, lg;
  for (int step = 0; step < steps; ++step) {
    const size_t first = (size_t(step) * batch) % (p.n - size_t(batch) + 1);
    std::vector<float> cacc = {0, 0};
    ASSERT_TRUE(m.cpu->forward_backward(p.x.data() + first * dim, p.y.data() + first, batch,
                                        cacc.data()).is_ok());
    ASSERT_TRUE(opt_c.step_lr(lr).is_ok());
    ASSERT_TRUE(gpu.memset(gacc.data(), 0, gacc.bytes()).is_ok());
    Status s = m.gpu->forward_backward(gx.data() + first * dim, gy.data() + first, batch,
                                       gacc.data());
    ASSERT_TRUE(s.is_ok()) << s.to_string();
    ASSERT_TRUE(opt_g.step_lr(lr).is_ok());
    const auto a = down(gacc);  // the only host sync of the step: reading the loss
    lc.push_back(cacc[0] / float(batch));
    lg.push_back(a[0] / float(batch));
  }
  for (int i = 0; i < steps; ++i)
    EXPECT_NEAR(lg[i], lc[i], 1e-3 * std::abs(lc[i]) + 1e-5) << spec << " step " << i;
  auto pc = m.cpu->download_params();
  auto pg = m.gpu->download_params();
  ASSERT_TRUE(pc.is_ok() && pg.is_ok());
  // Training moved the parameters (so agreeing is not trivial), and both sides moved together.
  EXPECT_GT(rel_l2(*p0, *pc, 0, pc->size()), 1e-3) << spec << ": the parameters barely moved";
  EXPECT_LE(rel_l2(*pc, *pg, 0, pc->size()), 1e-3) << spec << ": final parameters";
}

TEST_F(CudaTrain, TwentyStepLossTrajectoryMatchesCpu) {
  check_trajectory(cpu(), gpu(), "logreg", make_problem(33 * 20, 50, 5, 0, 0, 0, 21), 33, 0.1f);
  check_trajectory(cpu(), gpu(), "mlp:64,32", make_problem(32 * 20, 50, 5, 0, 0, 0, 22), 32,
                   0.05f);
  check_trajectory(cpu(), gpu(), "cnn:8,16,32", make_problem(7 * 20, 3 * 12 * 10, 4, 3, 12, 10, 23),
                   7, 0.05f);
}

#ifdef MYCEL_HAVE_CUDA
// A whole training step (forward, backward, SGD) captured into a CUDA graph: capture fails if
// any op synchronises the host or allocates, so this checks the "no host sync, no cudaMalloc in
// the step" promise, and that the graph replays the same numbers as eager launches.
TEST_F(CudaTrain, TrainingStepCapturesIntoCudaGraph) {
  const Problem p = make_problem(32, 3 * 12 * 10, 5, 3, 12, 10, 31);
  auto e = models::make_model(gpu(), "cnn:8,16,32", p.shape, 5);
  auto c = models::make_model(gpu(), "cnn:8,16,32", p.shape, 5);
  ASSERT_TRUE(e.is_ok() && c.is_ok());
  auto eager = std::move(e).value(), graphed = std::move(c).value();
  models::LrSchedule sched;
  auto se = models::Sgd::create(*eager, 0.9f, 5e-4f, sched);
  auto sc = models::Sgd::create(*graphed, 0.9f, 5e-4f, sched);
  ASSERT_TRUE(se.is_ok() && sc.is_ok());
  models::Sgd opt_e = std::move(se).value(), opt_c = std::move(sc).value();
  auto gx = up(gpu(), p.x);
  auto gy = up(gpu(), p.y);
  auto acc_e = up(gpu(), std::vector<float>{0, 0});
  auto acc_c = up(gpu(), std::vector<float>{0, 0});
  const int batch = 32;
  // Warm-up step on each: creates the stream's cuBLAS handle, workspace and scratch.
  ASSERT_TRUE(eager->forward_backward(gx.data(), gy.data(), batch, acc_e.data()).is_ok());
  ASSERT_TRUE(opt_e.step_lr(0.05f).is_ok());
  ASSERT_TRUE(graphed->forward_backward(gx.data(), gy.data(), batch, acc_c.data()).is_ok());
  ASSERT_TRUE(opt_c.step_lr(0.05f).is_ok());
  ASSERT_TRUE(gpu().sync().is_ok());

  cudaStream_t st = static_cast<cudaStream_t>(gpu().stream()->native());
  ASSERT_EQ(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal), cudaSuccess);
  Status s1 = graphed->forward_backward(gx.data(), gy.data(), batch, acc_c.data());
  Status s2 = opt_c.step_lr(0.05f);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(st, &graph);
  ASSERT_TRUE(s1.is_ok()) << "forward_backward under capture: " << s1.to_string();
  ASSERT_TRUE(s2.is_ok()) << "sgd under capture: " << s2.to_string();
  ASSERT_EQ(end, cudaSuccess) << cudaGetErrorString(end);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiateWithFlags(&exec, graph, 0), cudaSuccess);
  const int replays = 5;
  for (int i = 0; i < replays; ++i) {
    ASSERT_EQ(cudaGraphLaunch(exec, st), cudaSuccess);
    ASSERT_TRUE(eager->forward_backward(gx.data(), gy.data(), batch, acc_e.data()).is_ok());
    ASSERT_TRUE(opt_e.step_lr(0.05f).is_ok());
  }
  ASSERT_TRUE(gpu().sync().is_ok());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  auto pe = eager->download_params();
  auto pc = graphed->download_params();
  ASSERT_TRUE(pe.is_ok() && pc.is_ok());
  EXPECT_LE(rel_l2(*pe, *pc, 0, pe->size()), 1e-6);
  const auto ae = down(acc_e), ac = down(acc_c);
  EXPECT_NEAR(ae[0], ac[0], 1e-4 * std::abs(ae[0]));
  EXPECT_EQ(ae[1], ac[1]);
}
#endif

}  // namespace
}  // namespace mycel
