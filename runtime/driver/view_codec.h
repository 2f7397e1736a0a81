// The payload of a kView frame: peer-sampling entries. Little-endian:
//   u32 count (<= kMaxViewEntries), then per entry: u32 age, u16 address length (1..256),
//   address bytes (printable ASCII).
// parse_view checks every length against the bytes it has before reading them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "runtime/core/peer_sampling.h"

namespace mycel::runtime {

constexpr uint32_t kMaxViewEntries = 1024;
constexpr size_t kMaxAddressBytes = 256;

std::vector<uint8_t> serialize_view(const std::vector<Descriptor>& entries);
Result<std::vector<Descriptor>> parse_view(std::span<const uint8_t> bytes);

}  // namespace mycel::runtime
