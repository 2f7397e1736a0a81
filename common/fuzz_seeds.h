// For libFuzzer targets (scripts/fuzz.sh): the seed corpus and the common initialisation.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.h"

namespace mycel::fuzz {

// Writes one file per input, named seed-N, into dir. Returns 0, or 1 after printing why a file
// could not be written.
template <typename Strings>
int write_seed_files(const char* dir, const Strings& seeds) {
  int i = 0;
  for (std::string_view s : seeds) {
    std::string path = std::string(dir) + "/seed-" + std::to_string(i++);
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) {
      std::perror(path.c_str());
      return 1;
    }
    bool ok = std::fwrite(s.data(), 1, s.size(), f) == s.size();
    ok = std::fclose(f) == 0 && ok;
    if (!ok) {
      std::perror(path.c_str());
      return 1;
    }
  }
  std::printf("wrote %d seed files to %s\n", i, dir);
  return 0;
}

// LLVMFuzzerInitialize's body for every target: with MYCEL_FUZZ_WRITE_CORPUS=DIR set, writes the
// target's seed corpus there and exits (scripts/fuzz.sh does this first); else silences logs.
inline int initialize(int (*write_corpus)(const char* dir)) {
  if (const char* dir = std::getenv("MYCEL_FUZZ_WRITE_CORPUS")) std::exit(write_corpus(dir));
  mycel::log::set_levels("off");
  return 0;
}

}  // namespace mycel::fuzz
