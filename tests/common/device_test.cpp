// The device factory and the CPU device: buffers, copies, memset, errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/device.h"

namespace mycel {
namespace {

TEST(DeviceTest, CpuDevice) {
  auto d = make_device("cpu");
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  Device& dev = **d;
  EXPECT_EQ(dev.kind(), DeviceKind::kCpu);
  EXPECT_EQ(device_kind_name(dev.kind()), "cpu");
  EXPECT_GE(dev.threads(), 1);
  EXPECT_NE(dev.pool(), nullptr);
  EXPECT_NE(dev.stream(), nullptr);
  EXPECT_NE(dev.name().find("cpu"), std::string::npos);
  auto three = make_device("cpu", 3);
  ASSERT_TRUE(three.is_ok());
  EXPECT_EQ((*three)->threads(), 3);
  auto s = dev.create_stream();
  ASSERT_TRUE(s.is_ok());
  EXPECT_EQ((*s)->native(), nullptr);
  EXPECT_TRUE(dev.sync(s->get()).is_ok());
}

TEST(DeviceTest, BadSpecsAreErrors) {
  for (const char* spec : {"bogus", "gpu", "cpu0", "cuda:", "cuda:x", "cuda:-1", "cuda0"}) {
    auto d = make_device(spec);
    EXPECT_FALSE(d.is_ok()) << spec;
    if (!d.is_ok()) {
      EXPECT_EQ(d.status().code(), Code::kInvalidArgument) << spec << ": "
                                                           << d.status().to_string();
    }
  }
}

TEST(DeviceTest, CudaWithoutAGpuIsAnErrorAndAutoFallsBack) {
  std::string why;
  if (cuda_device_count(&why) > 0) GTEST_SKIP() << "a gpu is present; this checks the no-gpu path";
  EXPECT_FALSE(why.empty());
  auto d = make_device("cuda");
  ASSERT_FALSE(d.is_ok());
  EXPECT_EQ(d.status().code(), Code::kUnavailable);
  auto a = make_device("auto");
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ((*a)->kind(), DeviceKind::kCpu);
}

TEST(DeviceTest, AllocAlignedAndFreeNull) {
  auto dev = *make_device("cpu");
  for (size_t bytes : {size_t(1), size_t(63), size_t(64), size_t(1000)}) {
    auto p = dev->alloc(bytes);
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % 64, 0u);
    dev->free(*p);
  }
  auto z = dev->alloc(0);
  ASSERT_TRUE(z.is_ok());
  dev->free(*z);
  dev->free(nullptr);
  dev->free_host(nullptr);
}

TEST(DeviceTest, BufferUploadDownload) {
  auto dev = *make_device("cpu");
  for (size_t n : {size_t(1), size_t(257), size_t(3000001)}) {
    auto b = Buffer<float>::make(*dev, n);
    ASSERT_TRUE(b.is_ok());
    EXPECT_EQ(b->size(), n);
    EXPECT_EQ(b->bytes(), n * 4);
    std::vector<float> src(n), back(n, -1.f);
    std::iota(src.begin(), src.end(), 0.5f);
    ASSERT_TRUE(b->upload(src.data(), n).is_ok());
    ASSERT_TRUE(b->download(back.data(), n).is_ok());
    EXPECT_EQ(src, back);
    // Partial transfers with an offset, and past the end.
    std::vector<float> part(1, 0.f);
    ASSERT_TRUE(b->download(part.data(), 1, n - 1).is_ok());
    EXPECT_EQ(part[0], src[n - 1]);
    EXPECT_EQ(b->upload(src.data(), 2, n - 1).code(), Code::kOutOfRange);
    EXPECT_EQ(b->download(back.data(), n + 1).code(), Code::kOutOfRange);
  }
  auto empty = Buffer<float>::make(*dev, 0);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_EQ(empty->data(), nullptr);
  // Moving hands over ownership.
  Buffer<int> a = std::move(Buffer<int>::make(*dev, 10).value());
  int* p = a.data();
  Buffer<int> c = std::move(a);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(a.data(), nullptr);
}

TEST(DeviceTest, CopyAndMemset) {
  auto dev = *make_device("cpu");
  const size_t n = (size_t(3) << 20) + 5;  // large enough to be split over the pool
  std::vector<uint8_t> a(n), b(n, 0);
  for (size_t i = 0; i < n; ++i) a[i] = static_cast<uint8_t>(i * 7);
  ASSERT_TRUE(dev->copy(b.data(), a.data(), n, CopyKind::kHostToHost).is_ok());
  EXPECT_EQ(a, b);
  ASSERT_TRUE(dev->memset(b.data(), 0x5a, n).is_ok());
  for (size_t i = 0; i < n; i += 4099) ASSERT_EQ(b[i], 0x5a);
  EXPECT_EQ(b[n - 1], 0x5a);
  EXPECT_EQ(dev->copy(nullptr, a.data(), 4, CopyKind::kHostToHost).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(dev->memset(nullptr, 0, 4).code(), Code::kInvalidArgument);
  EXPECT_TRUE(dev->copy(nullptr, nullptr, 0, CopyKind::kHostToHost).is_ok());
}

}  // namespace
}  // namespace mycel
