// Data sets in memory: features as one row-major float matrix (already standardised or scaled
// to [0, 1]), labels as int32 class indices. Images keep their shape for the CNN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mycel::data {

struct Dataset {
  std::string name;
  size_t n = 0;      // samples
  size_t dim = 0;    // features per sample (channels * height * width for images)
  int channels = 0;  // images: 1; tabular: 0
  int height = 0, width = 0;
  int classes = 0;
  std::vector<float> x;    // n * dim
  std::vector<int32_t> y;  // n, each in [0, classes)
  // The label text of each class, for data sets read from the user's files (csv:, npy:, idx:):
  // class c is class_names[c]. Labels are mapped to 0..C-1 in sorted order (numerically when
  // every label is a number, so {1, 2, 5} become 0, 1, 2). Empty for the built-in sets.
  std::vector<std::string> class_names;

  const float* row(size_t i) const { return x.data() + i * dim; }
};

struct Split {
  Dataset train;
  Dataset test;
};

// CSV header row: detected (kAuto), present, or absent.
enum class HeaderMode { kAuto, kYes, kNo };
// Feature standardisation: kAuto is on for tabular data (built-in tabular sets, csv:, npy:)
// and off for images (pixels scaled to [0, 1]); kOn on images is the scalar pixel
// normalisation of normalize_images; kOff on tabular data keeps the values as read.
enum class Normalize { kAuto, kOn, kOff };

// "auto" | "yes" | "no" and "auto" | "true" | "false" (the config keys data.header and
// data.normalize); anything else is kInvalidArgument.
Result<HeaderMode> parse_header_mode(std::string_view s);
Result<Normalize> parse_normalize(std::string_view s);

struct LoadOptions {
  std::string dir;    // data folder; empty: $MYCEL_DATA or "data"
  uint64_t seed = 1;  // for data sets without a fixed test split (spambase: 80/20)
  double test_fraction = 0.2;
  size_t max_train = 0;  // 0: all (tests and benches may take a prefix)
  size_t max_test = 0;
  // Images (mnist, fashion-mnist): pixels are scaled to [0, 1]; with this set they are then
  // normalised as (p - mean) / std with the scalar pixel mean and std of the training split
  // (torchvision's Normalize((0.1307,), (0.3081,)) for MNIST). Tabular sets are always
  // standardised per feature with training statistics.
  bool normalize_images = false;
  // --- the user's own data (csv:PATH, idx:DIR, npy:X.npy,Y.npy) ---
  HeaderMode header = HeaderMode::kAuto;  // csv: is the first row a header?
  std::string label;  // csv: label column by header name or 0-based index; empty: the last
  // A test split in the same form as the data set (csv: a CSV path; npy: "X.npy,Y.npy").
  // Empty: a stratified split of test_fraction drawn from seed. idx: has its own test files.
  std::string test;
  Normalize normalize = Normalize::kAuto;
};

// What a data set name stands for: a built-in set, or the user's files.
struct DataSpec {
  enum class Kind { kBuiltin, kCsv, kIdx, kNpy };
  Kind kind = Kind::kBuiltin;
  std::string name;    // built-in: the name; otherwise the whole spec
  std::string path;    // csv: the file; idx: the folder; npy: the features (X)
  std::string y_path;  // npy: the labels (Y)
};
// Parses "mnist", "csv:PATH", "idx:DIR", "npy:X.npy,Y.npy" without touching the files. An
// unknown name or a malformed prefix is kInvalidArgument listing the accepted forms.
Result<DataSpec> parse_data_spec(std::string_view spec);

// Names: "mnist", "fashion-mnist", "spambase", "pendigits", "letter", or the user's files:
// "csv:PATH", "idx:DIR", "npy:X.npy,Y.npy" (docs/data.md). A missing built-in data set is a
// kNotFound error naming the command that fetches it (scripts/fetch-data.sh NAME).
Result<Split> load(std::string_view name, const LoadOptions& opt = {});

// $MYCEL_DATA or "data".
std::string default_data_dir();

// --- additions beyond the first contract -------------------------------------------------

// The names load() accepts, in a stable order.
std::span<const std::string_view> dataset_names();

// Per-feature mean and standard deviation (population, over all rows of `d`).
struct FeatureStats {
  std::vector<double> mean;
  std::vector<double> std;
};
FeatureStats feature_stats(const Dataset& d);

// x <- (x - mean) / std per feature; a constant feature (std below 1e-12) is only centred,
// so that it becomes 0 instead of NaN.
void standardize(Dataset& d, const FeatureStats& s);

// A copy of the rows `idx` (in that order), same shape and classes. Indices out of range are
// a kOutOfRange error.
Result<Dataset> subset(const Dataset& d, std::span<const size_t> idx);

// Samples per class.
std::vector<size_t> class_counts(const Dataset& d);

}  // namespace mycel::data
