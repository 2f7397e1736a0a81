// libFuzzer target for the checkpoint reader (scripts/fuzz.sh ckpt runs it).
// Properties checked on every input, beyond "no crash, no leak, no UB, no huge allocation":
// - decode never reads past the input (ASan);
// - an accepted checkpoint re-encodes to exactly the same bytes (every section round-trips);
// - its arrays have the header's parameter count (velocity and residual: that or none).
// With MYCEL_FUZZ_WRITE_CORPUS=DIR set, it writes a seed corpus of valid checkpoints (with and
// without the optional sections, a few sizes) into DIR and exits instead of fuzzing.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "common/fuzz_seeds.h"
#include "runtime/engine/checkpoint.h"

namespace ck = mycel::runtime::ckpt;

namespace {

ck::Checkpoint make(size_t n, bool optional, uint64_t seed) {
  ck::Checkpoint c;
  c.header.protocol = "gossip";
  c.header.model = "logreg";
  c.header.num_params = n;
  c.header.peer_id = static_cast<int32_t>(seed % 4);
  c.header.config = {{"seed", std::to_string(seed)}, {"model", "logreg"}};
  c.header.config_hash = ck::hash_keys(c.header.config);
  c.header.sequence = seed;
  c.params.assign(n, 0.5f);
  if (optional) {
    c.velocity.assign(n, -0.25f);
    c.residual.assign(n, 0.125f);
    c.residual_codec = "int8";
    c.protocol_state = {'G', 1, 1, 0, 0, 0};
    c.counters = {{"merges", seed}};
  }
  c.trainer = {seed, 3, 7, 1};
  c.live_params = {{"codec.spec", "int8"}, {"train.lr", "0.05"}};
  return c;
}

int write_corpus(const char* dir) {
  int written = 0;
  for (size_t n : {1, 3, 17, 64}) {
    for (bool opt : {false, true}) {
      const auto bytes = ck::encode(make(n, opt, n * 2 + opt));
      const std::string path = std::string(dir) + "/seed-" + std::to_string(written++);
      FILE* f = std::fopen(path.c_str(), "wb");
      if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) return 1;
      std::fclose(f);
    }
  }
  std::fprintf(stderr, "ckpt_fuzz: wrote %d seed checkpoints to %s\n", written, dir);
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  return mycel::fuzz::initialize(write_corpus);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto c = ck::decode(std::span<const uint8_t>(data, size));
  if (!c) return 0;
  const uint64_t n = c->header.num_params;
  if (c->params.size() != n || (!c->velocity.empty() && c->velocity.size() != n) ||
      (!c->residual.empty() && c->residual.size() != n))
    __builtin_trap();
  const auto again = ck::encode(*c);
  if (again.size() != size || !std::equal(again.begin(), again.end(), data)) __builtin_trap();
  return 0;
}
