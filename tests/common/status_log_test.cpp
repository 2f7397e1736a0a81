// Status / Result / macros, and the logging wrapper (level specs, capture).
#include <gtest/gtest.h>

#include <string>

#include "common/log.h"
#include "common/status.h"

namespace mycel {
namespace {

Status fails() { return Error(Code::kCorrupt, "bad bytes"); }
Status succeeds() { return Ok(); }
Result<int> int_or(bool ok) {
  if (!ok) return Error(Code::kNotFound, "no int");
  return 7;
}

int g_after_check = 0;
Status check_chain(bool ok) {
  MYCEL_CHECK(ok ? succeeds() : fails());
  ++g_after_check;
  return Ok();
}

Result<int> assign_chain(bool ok) {
  MYCEL_ASSIGN_OR_RETURN(int v, int_or(ok));
  return v * 2;
}

TEST(StatusTest, OkAndErrors) {
  Status ok;
  EXPECT_TRUE(ok.is_ok());
  EXPECT_TRUE(static_cast<bool>(ok));
  EXPECT_EQ(ok.code(), Code::kOk);
  EXPECT_EQ(ok.to_string(), "ok");
  Status e = Error(Code::kOutOfRange, "index 9 >= 4");
  EXPECT_FALSE(e.is_ok());
  EXPECT_EQ(e.code(), Code::kOutOfRange);
  EXPECT_EQ(e.message(), "index 9 >= 4");
  EXPECT_EQ(e.to_string(), "out of range: index 9 >= 4");
  EXPECT_EQ(code_name(Code::kNonFinite), "non-finite");
  EXPECT_EQ(code_name(Code::kUnimplemented), "unimplemented");
  for (int c = 0; c <= static_cast<int>(Code::kUnimplemented); ++c)
    EXPECT_NE(code_name(static_cast<Code>(c)), "unknown") << c;
}

TEST(StatusTest, ResultHoldsValueOrStatus) {
  Result<int> r = int_or(true);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(*r, 7);
  EXPECT_TRUE(r.status().is_ok());
  Result<int> e = int_or(false);
  EXPECT_FALSE(e.is_ok());
  EXPECT_EQ(e.status().code(), Code::kNotFound);
  Result<std::string> s = std::string("abc");
  EXPECT_EQ(s->size(), 3u);
  std::string moved = std::move(s).value();
  EXPECT_EQ(moved, "abc");
}

TEST(StatusTest, MacrosPropagateAndStopEarly) {
  g_after_check = 0;
  EXPECT_TRUE(check_chain(true).is_ok());
  EXPECT_EQ(g_after_check, 1);
  Status s = check_chain(false);
  EXPECT_EQ(s.code(), Code::kCorrupt);
  EXPECT_EQ(s.message(), "bad bytes");
  EXPECT_EQ(g_after_check, 1);  // the line after the failed check did not run
  auto a = assign_chain(true);
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ(*a, 14);
  EXPECT_EQ(assign_chain(false).status().code(), Code::kNotFound);
}

class LogTest : public ::testing::Test {
 protected:
  // Per-subsystem levels persist until set again: put back every one these tests touch.
  void TearDown() override {
    ASSERT_TRUE(log::set_levels("info,transport=info,kernels=info,runtime=info"));
  }
};

TEST_F(LogTest, LevelSpecParsing) {
  EXPECT_TRUE(log::set_levels("debug"));
  EXPECT_TRUE(log::set_levels("info,transport=trace"));
  EXPECT_TRUE(log::set_levels("warn,kernels=debug,runtime=error"));
  EXPECT_TRUE(log::set_levels("off"));
  EXPECT_FALSE(log::set_levels("bogus"));
  EXPECT_FALSE(log::set_levels("info,transport=loud"));
  EXPECT_FALSE(log::set_levels("=debug"));
}

TEST_F(LogTest, CaptureSeesMessagesAtOrAboveTheLevel) {
  ASSERT_TRUE(log::set_levels("info,transport=info,kernels=info"));
  log::Capture cap;
  MYCEL_LOG_INFO("kernels", "merged {} parameters", 42);
  MYCEL_LOG_DEBUG("kernels", "hidden detail");
  EXPECT_TRUE(cap.contains("merged 42 parameters"));
  EXPECT_FALSE(cap.contains("hidden detail"));
  // A per-subsystem level overrides the default.
  ASSERT_TRUE(log::set_levels("info,kernels=debug,transport=info"));
  MYCEL_LOG_DEBUG("kernels", "now visible");
  MYCEL_LOG_DEBUG("transport", "still hidden");
  EXPECT_TRUE(cap.contains("now visible"));
  EXPECT_FALSE(cap.contains("still hidden"));
  // A malformed spec changes nothing.
  EXPECT_FALSE(log::set_levels("error,kernels=nope"));
  MYCEL_LOG_INFO("core", "after bad spec");
  EXPECT_TRUE(cap.contains("after bad spec"));
  bool tagged = false;
  for (const auto& l : cap.lines())
    if (l.find("[kernels]") != std::string::npos) tagged = true;
  EXPECT_TRUE(tagged);
}

TEST_F(LogTest, CaptureStopsWhenDestroyed) {
  auto cap = std::make_unique<log::Capture>();
  MYCEL_LOG_WARN("core", "first");
  EXPECT_TRUE(cap->contains("first"));
  cap.reset();
  log::Capture other;
  EXPECT_FALSE(other.contains("first"));
  MYCEL_LOG_WARN("core", "second");
  EXPECT_TRUE(other.contains("second"));
}

}  // namespace
}  // namespace mycel
