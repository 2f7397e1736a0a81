// Data sets in memory: features as one row-major float matrix (already standardised or scaled
// to [0, 1]), labels as int32 class indices. Images keep their shape for the CNN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mycel::data {

struct Dataset {
  std::string name;
  size_t n = 0;             // samples
  size_t dim = 0;           // features per sample (channels * height * width for images)
  int channels = 0;         // images: 1; tabular: 0
  int height = 0, width = 0;
  int classes = 0;
  std::vector<float> x;     // n * dim
  std::vector<int32_t> y;   // n, each in [0, classes)

  const float* row(size_t i) const { return x.data() + i * dim; }
};

struct Split {
  Dataset train;
  Dataset test;
};

struct LoadOptions {
  std::string dir;            // data folder; empty: $MYCEL_DATA or "data"
  uint64_t seed = 1;          // for data sets without a fixed test split (spambase: 80/20)
  double test_fraction = 0.2;
  size_t max_train = 0;       // 0: all (tests and benches may take a prefix)
  size_t max_test = 0;
};

// Names: "mnist", "fashion-mnist", "spambase", "pendigits", "letter". A missing data set is a
// kNotFound error naming the command that fetches it (scripts/fetch-data.sh NAME).
Result<Split> load(std::string_view name, const LoadOptions& opt = {});

// $MYCEL_DATA or "data".
std::string default_data_dir();

}  // namespace mycel::data
