#include "transport/crc32c.h"

#include <array>
#include <bit>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define MYCEL_CRC32C_X86 1
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define MYCEL_CRC32C_ARM 1
#endif

namespace mycel::transport {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the word-at-a-time crc paths assume a little-endian host");

constexpr uint32_t kPoly = 0x82F63B78u;  // CRC32C, reflected

// Slicing-by-8 tables: kTable[0] is the classic byte table, kTable[k][n] advances byte n by k
// more zero bytes, so eight bytes are folded with eight independent lookups.
using Table8 = std::array<std::array<uint32_t, 256>, 8>;
constexpr Table8 make_table8() {
  Table8 t{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; ++n) {
    for (int k = 1; k < 8; ++k) t[k][n] = (t[k - 1][n] >> 8) ^ t[0][t[k - 1][n] & 0xff];
  }
  return t;
}
constexpr Table8 kTable = make_table8();

inline uint64_t load64(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

// ---- shift operators: the raw crc register after `len` zero bytes, as four byte tables ----

using Mat = std::array<uint32_t, 32>;  // column i = image of bit i
uint32_t mat_times(const Mat& m, uint32_t v) {
  uint32_t sum = 0;
  for (int i = 0; v; ++i, v >>= 1) {
    if (v & 1) sum ^= m[i];
  }
  return sum;
}
Mat mat_square(const Mat& m) {
  Mat sq{};
  for (int i = 0; i < 32; ++i) sq[i] = mat_times(m, m[i]);
  return sq;
}

using ShiftTable = std::array<std::array<uint32_t, 256>, 4>;
// len must be a power of two (bytes).
ShiftTable make_shift_table(size_t len) {
  Mat m{};
  m[0] = kPoly;  // one zero bit: bit 0 shifts out and folds in the polynomial
  for (int i = 1; i < 32; ++i) m[i] = 1u << (i - 1);
  for (int i = 0; i < 3; ++i) m = mat_square(m);  // 8 bits = 1 byte
  for (size_t n = 1; n < len; n <<= 1) m = mat_square(m);
  ShiftTable t{};
  for (uint32_t n = 0; n < 256; ++n) {
    for (int k = 0; k < 4; ++k) t[k][n] = mat_times(m, n << (8 * k));
  }
  return t;
}

[[maybe_unused]] inline uint32_t shift(const ShiftTable& t, uint32_t crc) {
  return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
}

// Stream lengths of the 3-way hardware loop: long blocks for bulk, short ones for the tail.
constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;

struct ShiftTables {
  ShiftTable long_t = make_shift_table(kLong);
  ShiftTable short_t = make_shift_table(kShort);
};
[[maybe_unused]] const ShiftTables& shift_tables() {
  static const ShiftTables t;
  return t;
}

#if MYCEL_CRC32C_X86
__attribute__((target("sse4.2"))) uint32_t hw_impl(uint32_t crc, const uint8_t* p, size_t len) {
  const ShiftTables& st = shift_tables();
  uint64_t c0 = crc ^ 0xffffffffu;
  while (len && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c0 = _mm_crc32_u8(uint32_t(c0), *p++);
    --len;
  }
  // Three independent streams hide the instruction's latency; the shift tables move a stream's
  // register past the bytes of the streams after it so that they can be xor-ed together.
  while (len >= 3 * kLong) {
    uint64_t c1 = 0, c2 = 0;
    const uint8_t* end = p + kLong;
    do {
      c0 = _mm_crc32_u64(c0, load64(p));
      c1 = _mm_crc32_u64(c1, load64(p + kLong));
      c2 = _mm_crc32_u64(c2, load64(p + 2 * kLong));
      p += 8;
    } while (p < end);
    c0 = shift(st.long_t, uint32_t(c0)) ^ c1;
    c0 = shift(st.long_t, uint32_t(c0)) ^ c2;
    p += 2 * kLong;
    len -= 3 * kLong;
  }
  while (len >= 3 * kShort) {
    uint64_t c1 = 0, c2 = 0;
    const uint8_t* end = p + kShort;
    do {
      c0 = _mm_crc32_u64(c0, load64(p));
      c1 = _mm_crc32_u64(c1, load64(p + kShort));
      c2 = _mm_crc32_u64(c2, load64(p + 2 * kShort));
      p += 8;
    } while (p < end);
    c0 = shift(st.short_t, uint32_t(c0)) ^ c1;
    c0 = shift(st.short_t, uint32_t(c0)) ^ c2;
    p += 2 * kShort;
    len -= 3 * kShort;
  }
  while (len >= 8) {
    c0 = _mm_crc32_u64(c0, load64(p));
    p += 8;
    len -= 8;
  }
  while (len) {
    c0 = _mm_crc32_u8(uint32_t(c0), *p++);
    --len;
  }
  return uint32_t(c0) ^ 0xffffffffu;
}
bool detect_hw() { return __builtin_cpu_supports("sse4.2"); }
constexpr std::string_view kHwName = "sse4.2";
#elif MYCEL_CRC32C_ARM
// clang's arm_acle.h declares the intrinsics only when the whole file is built with +crc,
// so clang gets its builtins; GCC's header enables them for functions with target("+crc").
#if defined(__clang__)
#define MYCEL_TARGET_CRC __attribute__((target("crc")))
#define MYCEL_CRC32CD(c, v) __builtin_arm_crc32cd(c, v)
#define MYCEL_CRC32CB(c, v) __builtin_arm_crc32cb(c, v)
#else
#define MYCEL_TARGET_CRC __attribute__((target("+crc")))
#define MYCEL_CRC32CD(c, v) __crc32cd(c, v)
#define MYCEL_CRC32CB(c, v) __crc32cb(c, v)
#endif
MYCEL_TARGET_CRC uint32_t hw_impl(uint32_t crc, const uint8_t* p, size_t len) {
  const ShiftTables& st = shift_tables();
  uint32_t c0 = crc ^ 0xffffffffu;
  while (len && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c0 = MYCEL_CRC32CB(c0, *p++);
    --len;
  }
  while (len >= 3 * kLong) {
    uint32_t c1 = 0, c2 = 0;
    const uint8_t* end = p + kLong;
    do {
      c0 = MYCEL_CRC32CD(c0, load64(p));
      c1 = MYCEL_CRC32CD(c1, load64(p + kLong));
      c2 = MYCEL_CRC32CD(c2, load64(p + 2 * kLong));
      p += 8;
    } while (p < end);
    c0 = shift(st.long_t, c0) ^ c1;
    c0 = shift(st.long_t, c0) ^ c2;
    p += 2 * kLong;
    len -= 3 * kLong;
  }
  while (len >= 3 * kShort) {
    uint32_t c1 = 0, c2 = 0;
    const uint8_t* end = p + kShort;
    do {
      c0 = MYCEL_CRC32CD(c0, load64(p));
      c1 = MYCEL_CRC32CD(c1, load64(p + kShort));
      c2 = MYCEL_CRC32CD(c2, load64(p + 2 * kShort));
      p += 8;
    } while (p < end);
    c0 = shift(st.short_t, c0) ^ c1;
    c0 = shift(st.short_t, c0) ^ c2;
    p += 2 * kShort;
    len -= 3 * kShort;
  }
  while (len >= 8) {
    c0 = MYCEL_CRC32CD(c0, load64(p));
    p += 8;
    len -= 8;
  }
  while (len) {
    c0 = MYCEL_CRC32CB(c0, *p++);
    --len;
  }
  return c0 ^ 0xffffffffu;
}
bool detect_hw() { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
constexpr std::string_view kHwName = "armv8-crc";
#endif

uint32_t sw_impl(uint32_t crc, const uint8_t* p, size_t len) {
  uint32_t c = crc ^ 0xffffffffu;
  while (len && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c = kTable[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    --len;
  }
  while (len >= 8) {
    uint64_t w = load64(p) ^ c;
    c = kTable[7][w & 0xff] ^ kTable[6][(w >> 8) & 0xff] ^ kTable[5][(w >> 16) & 0xff] ^
        kTable[4][(w >> 24) & 0xff] ^ kTable[3][(w >> 32) & 0xff] ^
        kTable[2][(w >> 40) & 0xff] ^ kTable[1][(w >> 48) & 0xff] ^ kTable[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len) {
    c = kTable[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    --len;
  }
  return c ^ 0xffffffffu;
}

using Impl = uint32_t (*)(uint32_t, const uint8_t*, size_t);
struct Dispatch {
  Impl fn = sw_impl;
  bool hw = false;
  Dispatch() {
#if MYCEL_CRC32C_X86 || MYCEL_CRC32C_ARM
    if (detect_hw()) {
      fn = hw_impl;
      hw = true;
      shift_tables();  // build the tables now rather than inside the first hot call
    }
#endif
  }
};
const Dispatch& dispatch() {
  static const Dispatch d;
  return d;
}

}  // namespace

uint32_t crc32c(const void* data, size_t len, uint32_t crc) {
  if (len == 0) return crc;
  return dispatch().fn(crc, static_cast<const uint8_t*>(data), len);
}

uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc) {
  return crc32c(data.data(), data.size(), crc);
}

uint32_t crc32c_sw(const void* data, size_t len, uint32_t crc) {
  if (len == 0) return crc;
  return sw_impl(crc, static_cast<const uint8_t*>(data), len);
}

uint32_t crc32c_hw(const void* data, size_t len, uint32_t crc) { return crc32c(data, len, crc); }

bool crc32c_hw_available() { return dispatch().hw; }

std::string_view crc32c_impl_name() {
#if MYCEL_CRC32C_X86 || MYCEL_CRC32C_ARM
  if (dispatch().hw) return kHwName;
#endif
  return "table";
}

}  // namespace mycel::transport
