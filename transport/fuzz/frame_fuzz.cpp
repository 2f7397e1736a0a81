// libFuzzer target for the frame decoder (scripts/fuzz.sh runs it).
// Properties checked on every input, beyond "no crash, no leak, no UB":
// - decode_frame never reads past the input (ASan) and agrees with FrameDecoder;
// - an accepted frame re-encodes to exactly the same bytes (header fields and CRC round-trip);
// - an accepted frame's payload view lies inside the input.
// With MYCEL_FUZZ_WRITE_CORPUS=DIR set, it writes a seed corpus of valid frames (every message
// type, every codec, flags, payload sizes 0..4 KiB) into DIR and exits instead of fuzzing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/fuzz_seeds.h"
#include "common/log.h"
#include "transport/frame.h"

namespace mt = mycel::transport;

namespace {

// Small limits, so that the limit checks themselves are reachable by the fuzzer.
constexpr mt::FrameLimits kLimits{.max_payload_bytes = 1 << 20, .max_params = 1 << 20};

int write_corpus(const char* dir) {
  int written = 0;
  uint64_t seed = 1;
  auto next = [&seed] {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return seed >> 33;
  };
  const size_t sizes[] = {0, 1, 7, 64, 255, 1024, 4096};
  for (uint8_t type = 1; type <= mt::kMaxMessageType; ++type) {
    for (uint8_t codec = 0; codec < mt::kCodecIdCount; ++codec) {
      size_t n = sizes[(type + codec) % (sizeof(sizes) / sizeof(sizes[0]))];
      std::vector<uint8_t> payload(n);
      for (auto& b : payload) b = uint8_t(next());
      mt::FrameHeader h;
      h.type = static_cast<mt::MessageType>(type);
      h.flags = uint8_t((type + codec) % 4) & mt::kKnownFlags;
      h.sender_id = next();
      h.seq = next();
      h.model_age = next();
      h.model_version = next();
      h.codec = codec;
      h.param_count = n / 4;
      auto frame = mt::encode_frame(h, payload);
      if (!frame.is_ok()) {
        std::fprintf(stderr, "encode failed: %s\n", frame.status().to_string().c_str());
        return 1;
      }
      std::string path = std::string(dir) + "/seed-t" + std::to_string(type) + "-c" +
                         std::to_string(codec) + "-" + std::to_string(n);
      FILE* f = std::fopen(path.c_str(), "wb");
      if (!f) {
        std::perror(path.c_str());
        return 1;
      }
      std::fwrite(frame->data(), 1, frame->size(), f);
      std::fclose(f);
      ++written;
    }
  }
  std::printf("wrote %d seed frames to %s\n", written, dir);
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  return mycel::fuzz::initialize(write_corpus);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static mt::FrameDecoder decoder(kLimits);
  std::span<const uint8_t> in(data, size);
  mt::FrameView view;
  mt::FrameError e = mt::decode_frame(in, kLimits, &view);

  mt::FrameError e2 = mt::FrameError::kOk;
  auto r = decoder.decode("fuzz", in, &e2);
  if (e2 != e || r.is_ok() != (e == mt::FrameError::kOk)) std::abort();
  if (e != mt::FrameError::kOk) {
    if (mt::frame_status(e).is_ok()) std::abort();
    return 0;
  }
  if (view.payload.data() != data + mt::kFrameHeaderBytes ||
      view.payload.size() != size - mt::kFrameHeaderBytes) {
    std::abort();
  }
  auto again = mt::encode_frame(view.header, view.payload);
  if (!again.is_ok() || again->size() != size || std::memcmp(again->data(), data, size) != 0) {
    std::abort();
  }
  return 0;
}
