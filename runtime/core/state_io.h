// Little-endian writing and bounds-checked reading of small state blobs: the protocol cores'
// save_state() / restore_state() and the checkpoint file (runtime/engine/checkpoint.h). A read
// past the end sets a sticky failure and returns zeros, so a parser checks ok() once at the end
// (or before it trusts a count) and never reads out of bounds.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace mycel::runtime {

class StateWriter {
 public:
  void u8(uint8_t v) { b_.push_back(v); }
  void u32(uint32_t v) { put(&v, 4); }
  void u64(uint64_t v) { put(&v, 8); }
  void f64(double v) { put(&v, 8); }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    put(s.data(), s.size());
  }
  void bytes(const void* p, size_t n) { put(p, n); }
  std::vector<uint8_t>& out() { return b_; }
  std::vector<uint8_t> take() { return std::move(b_); }

 private:
  void put(const void* p, size_t n) {  // little-endian hosts only (x86-64, aarch64)
    const auto* c = static_cast<const uint8_t*>(p);
    b_.insert(b_.end(), c, c + n);
  }
  std::vector<uint8_t> b_;
};

class StateReader {
 public:
  explicit StateReader(std::span<const uint8_t> b) : b_(b) {}
  uint8_t u8() { return pod<uint8_t>(); }
  uint32_t u32() { return pod<uint32_t>(); }
  uint64_t u64() { return pod<uint64_t>(); }
  double f64() { return pod<double>(); }
  // A string of at most max_len bytes (longer: failure, nothing allocated).
  std::string str(size_t max_len = 4096) {
    const uint32_t n = u32();
    if (!ok_ || n > max_len || n > left()) {
      ok_ = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  // n bytes in place (a view into the input), or an empty span and a failure.
  std::span<const uint8_t> view(uint64_t n) {
    if (!ok_ || n > left()) {
      ok_ = false;
      return {};
    }
    auto s = b_.subspan(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  size_t left() const { return b_.size() - pos_; }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == b_.size(); }
  void fail() { ok_ = false; }

 private:
  template <typename T>
  T pod() {  // little-endian hosts only, as the writer
    T v{};
    get(&v, sizeof v);
    return v;
  }
  void get(void* p, size_t n) {
    if (!ok_ || n > left()) {
      ok_ = false;
      return;
    }
    std::memcpy(p, b_.data() + pos_, n);
    pos_ += n;
  }
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace mycel::runtime
