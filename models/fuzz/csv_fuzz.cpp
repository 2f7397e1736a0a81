// libFuzzer target for the csv: reader (models/data/user_data.h) and the .npy header parser
// (scripts/fuzz.sh runs it). The first input byte picks the reader options (header mode, label
// column by nothing / index / name); the rest is the file. Properties checked on every input,
// beyond "no crash, no leak, no UB":
// - an accepted table is consistent: x holds n * dim finite values, every y indexes a label;
// - assign_classes maps every label into [0, classes) with one name per class;
// - a rejected input gives an error status with a message that names the source;
// - parse_float_fast gives bit for bit what std::from_chars gives, ending at the same byte;
// - parse_npy on the same bytes never reads past them and accepts only exact sizes.
// With MYCEL_FUZZ_WRITE_CORPUS=DIR set, it writes a few seed files into DIR and exits.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "common/fuzz_seeds.h"
#include "common/log.h"
#include "models/data/user_data.h"

namespace md = mycel::data;

namespace {

int write_corpus(const char* dir) {
  using namespace std::string_view_literals;
  const std::string_view seeds[] = {
      "\x00" "1.5,-2,5\n0,3e2,1\r\n\n  7 , 8 ,2\n"sv,
      "\x01" "\"a b\",c,label\n1,2,x\n3,4,y\n"sv,
      "\x02" "1,2,0\n3,4,1\n"sv,
      "\x04" "7,1.5,2\n8,2.5,3\n"sv,
      "\x08" "x,y,z\n1,a,2\n3,b,4\n"sv,
      "\x00" "1,2,label\n0.5,1,0\n0.25,2,1\n"sv,
      "\x00" "1e39,nan,inf,+1,-0,1e-50,0x10\n"sv,
      "\x00" "\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1), }"sv,
  };
  return mycel::fuzz::write_seed_files(dir, seeds);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  return mycel::fuzz::initialize(write_corpus);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t opt = data[0];
  md::UserCsvOptions o;
  o.header = static_cast<md::HeaderMode>(opt % 3);
  switch ((opt >> 2) % 4) {
    case 0: break;
    case 1: o.label = std::to_string((opt >> 4) % 4); break;
    case 2: o.label = "y"; break;
    default: o.label = "label"; break;
  }
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  auto t = md::parse_user_csv(text, o, "fuzz.csv");
  if (!t.is_ok()) {
    if (t.status().message().find("fuzz.csv") == std::string::npos) std::abort();
  } else {
    const md::Dataset& d = t->d;
    if (d.n == 0 || d.dim == 0 || d.x.size() != d.n * d.dim || d.y.size() != d.n) std::abort();
    for (float v : d.x)
      if (!std::isfinite(v)) std::abort();
    for (int32_t y : d.y)
      if (y < 0 || static_cast<size_t>(y) >= t->labels.size()) std::abort();
    const size_t labels = t->labels.size();
    auto s = md::assign_classes(std::move(t).value(), nullptr, "fuzz.csv");
    if (s.is_ok()) {
      const md::Dataset& c = s->train;
      if (c.classes < 2 || static_cast<size_t>(c.classes) > labels ||
          c.class_names.size() != static_cast<size_t>(c.classes)) {
        std::abort();
      }
      for (int32_t y : c.y)
        if (y < 0 || y >= c.classes) std::abort();
    }
  }
  // The fast float path agrees with std::from_chars wherever it takes a number.
  {
    const char* b = reinterpret_cast<const char*>(data + 1);
    const char* e = b + std::min<size_t>(size - 1, 40);
    float fast = 0, ref = 0;
    if (const char* end = md::parse_float_fast(b, e, &fast)) {
      auto r = std::from_chars(b, e, ref);
      if (r.ec != std::errc() || r.ptr != end || std::memcmp(&fast, &ref, sizeof fast) != 0)
        std::abort();
    }
  }
  auto a = md::parse_npy(std::span<const uint8_t>(data + 1, size - 1), "fuzz.npy");
  if (a.is_ok()) {
    size_t count = 1;
    for (size_t v : a->shape) count *= v;
    if (count * a->itemsize != a->data.size()) std::abort();
    if (a->data.data() < data + 1 || a->data.data() + a->data.size() > data + size) std::abort();
  }
  return 0;
}
