// runtime::device_memory_ops: the transport's staging of device memory, driven by a real
// kernels Device. On the CPU device the ops are exercised as they are (copies finish at once);
// with a GPU, frames in cudaMalloc'd memory go through a UCX transport and arrive intact.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/device.h"
#include "runtime/driver/device_ops.h"
#include "transport/frame.h"
#include "transport/transport.h"

namespace mycel::runtime {
namespace {

namespace tp = mycel::transport;

std::vector<uint8_t> frame_of(uint64_t seq, size_t payload) {
  auto buf = tp::make_frame_buffer(payload);
  for (size_t i = 0; i < payload; ++i) buf[tp::kFrameHeaderBytes + i] = uint8_t(i * 7 + seq);
  tp::FrameHeader h;
  h.type = tp::MessageType::kModel;
  h.seq = seq;
  EXPECT_TRUE(tp::seal_frame(h, buf).is_ok());
  return buf;
}

TEST(DeviceOps, CpuDeviceCopiesAndReportsDone) {
  auto dev = make_device("cpu", 1);
  ASSERT_TRUE(dev.is_ok());
  auto ops = device_memory_ops(*dev);
  ASSERT_TRUE(ops.is_ok()) << ops.status().to_string();
  auto pinned = (*ops)->alloc_pinned(1000);
  ASSERT_TRUE(pinned.is_ok());
  std::vector<uint8_t> src(1000);
  std::iota(src.begin(), src.end(), 0);
  auto t = (*ops)->copy_to_host(*pinned, src.data(), src.size());
  ASSERT_TRUE(t.is_ok());
  auto done = (*ops)->copy_done(*t);
  ASSERT_TRUE(done.is_ok());
  EXPECT_TRUE(*done);
  EXPECT_EQ(std::memcmp(*pinned, src.data(), src.size()), 0);
  EXPECT_FALSE((*ops)->copy_done(*t + 1000).is_ok()) << "a ticket never given out";
  (*ops)->free_pinned(*pinned);
  EXPECT_FALSE(device_memory_ops(nullptr).is_ok());
}

// Frames written to GPU memory, sent as a kCuda region: staged through pinned memory on
// Debian's UCX (no CUDA support), read directly where UCX has CUDA support.
TEST(DeviceOps, FramesInGpuMemoryArriveIntactOverUcx) {
  std::string why;
  if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why;
  auto dev = make_device("cuda");
  ASSERT_TRUE(dev.is_ok()) << dev.status().to_string();
  auto ops = device_memory_ops(*dev);
  ASSERT_TRUE(ops.is_ok());
  tp::Options opt;
  opt.device_ops = *ops;
  auto a = tp::make_transport("ucx://127.0.0.1:0", opt);
  if (!a.is_ok() && a.status().code() == Code::kUnavailable &&
      a.status().message().find("no UCX") != std::string::npos) {
    GTEST_SKIP() << a.status().to_string();
  }
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  auto b = tp::make_transport("ucx://127.0.0.1:0");
  ASSERT_TRUE(b.is_ok());
  const std::vector<size_t> payloads = {0, 4096, size_t(1) << 20, size_t(32) << 20};
  std::vector<std::vector<uint8_t>> frames;
  size_t total = 0;
  for (size_t i = 0; i < payloads.size(); ++i) {
    frames.push_back(frame_of(i, payloads[i]));
    total += frames.back().size();
  }
  auto mem = (*dev)->alloc(total);
  ASSERT_TRUE(mem.is_ok());
  std::vector<size_t> offs;
  size_t off = 0;
  for (auto& f : frames) {
    ASSERT_TRUE((*dev)->copy(static_cast<uint8_t*>(*mem) + off, f.data(), f.size(),
                             CopyKind::kHostToDevice)
                    .is_ok());
    offs.push_back(off);
    off += f.size();
  }
  ASSERT_TRUE((*dev)->sync().is_ok());
  auto reg = (*a)->register_memory(*mem, total, tp::MemoryType::kCuda);
  ASSERT_TRUE(reg.is_ok()) << reg.status().to_string();
  for (size_t i = 0; i < frames.size(); ++i) {
    ASSERT_TRUE((*a)->send_region((*b)->local_address(), *reg, offs[i], frames[i].size(), nullptr)
                    .is_ok());
  }
  std::vector<std::vector<uint8_t>> got;
  size_t completed = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while ((got.size() < frames.size() || completed < frames.size()) &&
         std::chrono::steady_clock::now() < end) {
    for (auto& e : (*a)->poll(0.001)) {
      completed += e.kind == tp::EventKind::kSendComplete;
      EXPECT_NE(e.kind, tp::EventKind::kSendFailed) << e.status.to_string();
    }
    for (auto& e : (*b)->poll(0.001)) {
      if (e.kind == tp::EventKind::kFrame) got.push_back(std::move(e.frame.bytes));
    }
  }
  ASSERT_EQ(got.size(), frames.size());
  EXPECT_EQ(completed, frames.size());
  for (size_t i = 0; i < frames.size(); ++i) EXPECT_EQ(got[i], frames[i]) << "frame " << i;
  EXPECT_TRUE((*a)->deregister_memory(*reg).is_ok());
  (*dev)->free(*mem);
}

}  // namespace
}  // namespace mycel::runtime
