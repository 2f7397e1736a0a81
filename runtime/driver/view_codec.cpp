#include "runtime/driver/view_codec.h"

namespace mycel::runtime {
namespace {
void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
}  // namespace

std::vector<uint8_t> serialize_view(const std::vector<Descriptor>& entries) {
  std::vector<uint8_t> b;
  uint32_t n = 0;
  for (const auto& e : entries)
    if (!e.address.empty() && e.address.size() <= kMaxAddressBytes && n < kMaxViewEntries) ++n;
  put32(b, n);
  uint32_t written = 0;
  for (const auto& e : entries) {
    if (e.address.empty() || e.address.size() > kMaxAddressBytes || written == n) continue;
    put32(b, e.age);
    b.push_back(static_cast<uint8_t>(e.address.size()));
    b.push_back(static_cast<uint8_t>(e.address.size() >> 8));
    b.insert(b.end(), e.address.begin(), e.address.end());
    ++written;
  }
  return b;
}

Result<std::vector<Descriptor>> parse_view(std::span<const uint8_t> bytes) {
  if (bytes.size() < 4) return Error(Code::kCorrupt, "view payload shorter than its count");
  uint32_t n = get32(bytes.data());
  if (n > kMaxViewEntries)
    return Error(Code::kOutOfRange, "view payload claims " + std::to_string(n) + " entries (max " +
                                        std::to_string(kMaxViewEntries) + ")");
  std::vector<Descriptor> out;
  out.reserve(n);
  size_t pos = 4;
  for (uint32_t i = 0; i < n; ++i) {
    if (bytes.size() - pos < 6) return Error(Code::kCorrupt, "view payload truncated in entry " + std::to_string(i));
    uint32_t age = get32(bytes.data() + pos);
    size_t len = size_t(bytes[pos + 4]) | size_t(bytes[pos + 5]) << 8;
    pos += 6;
    if (len == 0 || len > kMaxAddressBytes)
      return Error(Code::kCorrupt, "view entry " + std::to_string(i) + " has an address of " +
                                       std::to_string(len) + " bytes");
    if (bytes.size() - pos < len) return Error(Code::kCorrupt, "view payload truncated in an address");
    std::string addr(reinterpret_cast<const char*>(bytes.data() + pos), len);
    for (char c : addr)
      if (c < 0x21 || c > 0x7e) return Error(Code::kCorrupt, "view entry address is not printable");
    pos += len;
    out.push_back(Descriptor{std::move(addr), age});
  }
  if (pos != bytes.size()) return Error(Code::kCorrupt, "view payload has trailing bytes");
  return out;
}

}  // namespace mycel::runtime
