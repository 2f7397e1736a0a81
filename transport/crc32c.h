// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the frame checksum.
// Hardware where the CPU has it (SSE4.2 crc32 on x86-64, the CRC extension on aarch64), picked
// at run time, with a slicing-by-8 table fallback. The hardware path runs three independent
// streams and folds them with precomputed shift tables (Mark Adler's crc32c.c), because one
// stream is bound by the crc32 instruction's 3-cycle latency, well below memory speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace mycel::transport {

// Extends crc over data: crc32c(b, crc32c(a)) == crc32c(a ++ b); crc32c("123456789") is
// 0xE3069283. The pre- and post-inversion happen inside, so 0 is the initial value.
uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc = 0);
uint32_t crc32c(const void* data, size_t len, uint32_t crc = 0);

// The two implementations, exposed for tests and benchmarks. crc32c_hw falls back to the
// software path where the CPU lacks the instructions (see crc32c_hw_available).
uint32_t crc32c_sw(const void* data, size_t len, uint32_t crc = 0);
uint32_t crc32c_hw(const void* data, size_t len, uint32_t crc = 0);
bool crc32c_hw_available();
std::string_view crc32c_impl_name();  // "sse4.2", "armv8-crc" or "table"

}  // namespace mycel::transport
