#include <gtest/gtest.h>

#include "runtime/driver/view_codec.h"

namespace mycel::runtime {
namespace {

TEST(ViewCodec, RoundTrip) {
  std::vector<Descriptor> v = {{"ucx://127.0.0.1:4000", 3}, {"inproc://a", 0}, {"ucx://[::1]:9", 77}};
  auto b = serialize_view(v);
  auto p = parse_view(b);
  ASSERT_TRUE(p.is_ok()) << p.status().to_string();
  EXPECT_EQ(*p, v);
  auto e = parse_view(serialize_view({}));
  ASSERT_TRUE(e.is_ok());
  EXPECT_TRUE(e->empty());
}

TEST(ViewCodec, EveryTruncationIsAnErrorNeverACrash) {
  auto b = serialize_view({{"ucx://host:1", 1}, {"ucx://host:2", 2}});
  for (size_t len = 0; len < b.size(); ++len) {
    auto p = parse_view(std::span<const uint8_t>(b.data(), len));
    EXPECT_FALSE(p.is_ok()) << "length " << len;
  }
  b.push_back(0);
  EXPECT_FALSE(parse_view(b).is_ok());  // trailing byte
}

TEST(ViewCodec, HostileCountsAndAddresses) {
  std::vector<uint8_t> huge = {0xff, 0xff, 0xff, 0xff};
  auto p = parse_view(huge);
  ASSERT_FALSE(p.is_ok());
  EXPECT_EQ(p.status().code(), Code::kOutOfRange);
  auto b = serialize_view({{"ucx://h:1", 1}});
  b[8] = 0;  // address length 0
  b[9] = 0;
  EXPECT_FALSE(parse_view(b).is_ok());
  auto c = serialize_view({{"ucx://h:1", 1}});
  c[10] = '\n';  // not printable
  EXPECT_FALSE(parse_view(c).is_ok());
}

}  // namespace
}  // namespace mycel::runtime
