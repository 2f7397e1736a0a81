// data::load(): where each data set lives under the data folder, how it is split, and the
// preprocessing (pixels to [0, 1]; tabular features standardised with training statistics).
#include "models/data/dataset.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>

#include "common/log.h"
#include "models/data/readers.h"
#include "models/data/rng.h"
#include "models/data/user_data.h"

namespace mycel::data {
namespace {

constexpr std::array<std::string_view, 5> kNames = {"mnist", "fashion-mnist", "spambase",
                                                    "pendigits", "letter"};

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Status missing(std::string_view name, const std::string& dir, const std::string& file) {
  return Error(Code::kNotFound, "data set '" + std::string(name) + "' not found: " + file +
                                    " is missing (data folder '" + dir +
                                    "', set MYCEL_DATA to use another); fetch it with: "
                                    "scripts/fetch-data.sh " +
                                    std::string(name));
}

// `base` or `base`.gz, whichever exists (plain first).
std::string find_maybe_gz(const std::string& base) {
  if (exists(base)) return base;
  if (exists(base + ".gz")) return base + ".gz";
  return {};
}

void take_prefix(Dataset& d, size_t max) {
  if (max == 0 || max >= d.n) return;
  d.n = max;
  d.x.resize(max * d.dim);
  d.y.resize(max);
  d.x.shrink_to_fit();
  d.y.shrink_to_fit();
}

// One scalar mean and std over every training pixel (as torchvision's Normalize does).
void normalize_pixels(Split& s) {
  double sum = 0, sq = 0;
  for (float v : s.train.x) {
    sum += v;
    sq += double{v} * v;
  }
  const double cnt = static_cast<double>(s.train.x.size());
  const double mean = cnt > 0 ? sum / cnt : 0;
  const double sd = cnt > 0 ? std::sqrt(std::max(0.0, sq / cnt - mean * mean)) : 0;
  const float m = static_cast<float>(mean), inv = static_cast<float>(sd > 1e-12 ? 1.0 / sd : 1.0);
  for (auto* d : {&s.train, &s.test})
    for (float& v : d->x) v = (v - m) * inv;
}

Result<Split> load_idx_set(std::string_view name, const std::string& dir, const LoadOptions& opt) {
  const std::string folder = dir + "/" + std::string(name) + "/";
  std::array<std::string, 4> paths;
  const std::array<const char*, 4> bases = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
  for (size_t i = 0; i < 4; ++i) {
    paths[i] = find_maybe_gz(folder + bases[i]);
    if (paths[i].empty()) return missing(name, dir, folder + bases[i] + "[.gz]");
  }
  Split s;
  MYCEL_ASSIGN_OR_RETURN(s.train, read_idx_dataset(paths[0], paths[1], name, 10));
  MYCEL_ASSIGN_OR_RETURN(s.test, read_idx_dataset(paths[2], paths[3], name, 10));
  if (s.train.dim != s.test.dim) {
    return Error(Code::kCorrupt, folder + ": train and test images differ in size");
  }
  if (opt.normalize_images || opt.normalize == Normalize::kOn) normalize_pixels(s);
  return s;
}

Dataset rows(const Dataset& src, std::span<const size_t> idx) {
  Dataset d;
  d.name = src.name;
  d.dim = src.dim;
  d.channels = src.channels;
  d.height = src.height;
  d.width = src.width;
  d.classes = src.classes;
  d.class_names = src.class_names;
  d.n = idx.size();
  d.x.resize(d.n * d.dim);
  d.y.resize(d.n);
  for (size_t i = 0; i < idx.size(); ++i) {
    std::copy_n(src.row(idx[i]), d.dim, d.x.data() + i * d.dim);
    d.y[i] = src.y[idx[i]];
  }
  return d;
}

// Stratified split: in each class, a seeded shuffle and round(count * fraction) rows to the test
// side, so both sides keep the class ratio; then each side is shuffled as a whole, because the
// Spambase file is sorted by class and a prefix (max_train) would otherwise be one class.
Split stratified_split(const Dataset& all, double test_fraction, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<size_t>> by_class(static_cast<size_t>(all.classes));
  for (size_t i = 0; i < all.n; ++i) by_class[static_cast<size_t>(all.y[i])].push_back(i);
  std::vector<size_t> train, test;
  for (auto& c : by_class) {
    rng.shuffle(c);
    const auto nt =
        static_cast<size_t>(std::llround(static_cast<double>(c.size()) * test_fraction));
    test.insert(test.end(), c.begin(), c.begin() + static_cast<ptrdiff_t>(nt));
    train.insert(train.end(), c.begin() + static_cast<ptrdiff_t>(nt), c.end());
  }
  rng.shuffle(train);
  rng.shuffle(test);
  return Split{rows(all, train), rows(all, test)};
}

Split head_tail(const Dataset& all, size_t n_train) {
  std::vector<size_t> a(n_train), b(all.n - n_train);
  for (size_t i = 0; i < a.size(); ++i) a[i] = i;
  for (size_t i = 0; i < b.size(); ++i) b[i] = n_train + i;
  return Split{rows(all, a), rows(all, b)};
}

Result<Split> load_tabular(std::string_view name, const std::string& dir, const LoadOptions& opt) {
  const std::string folder = dir + "/" + std::string(name) + "/";
  Split s;
  if (name == "spambase") {
    // 57 features (word/char frequencies, capital-run statistics), label last (1 = spam).
    const std::string p = find_maybe_gz(folder + "spambase.csv");
    if (p.empty()) return missing(name, dir, folder + "spambase.csv");
    if (!(opt.test_fraction > 0.0 && opt.test_fraction < 1.0)) {
      return Error(Code::kInvalidArgument, "spambase: test_fraction must lie in (0, 1), got " +
                                               std::to_string(opt.test_fraction));
    }
    MYCEL_ASSIGN_OR_RETURN(Dataset all,
                           read_csv(p, CsvFormat{57, false, CsvFormat::Label::kInteger, 2}, name));
    s = stratified_split(all, opt.test_fraction, opt.seed);
  } else if (name == "pendigits") {
    // The UCI writer-independent split: 30 writers in .tra, 14 others in .tes.
    const std::string tra = find_maybe_gz(folder + "pendigits.tra");
    const std::string tes = find_maybe_gz(folder + "pendigits.tes");
    if (tra.empty()) return missing(name, dir, folder + "pendigits.tra");
    if (tes.empty()) return missing(name, dir, folder + "pendigits.tes");
    const CsvFormat f{16, false, CsvFormat::Label::kInteger, 10};
    MYCEL_ASSIGN_OR_RETURN(s.train, read_csv(tra, f, name));
    MYCEL_ASSIGN_OR_RETURN(s.test, read_csv(tes, f, name));
  } else {  // letter
    // The usual split of the UCI description: first 16000 rows train, last 4000 test.
    const std::string p = find_maybe_gz(folder + "letter-recognition.data");
    if (p.empty()) return missing(name, dir, folder + "letter-recognition.data");
    MYCEL_ASSIGN_OR_RETURN(Dataset all,
                           read_csv(p, CsvFormat{16, true, CsvFormat::Label::kLetter, 26}, name));
    if (all.n != 20000) {
      return Error(Code::kCorrupt, p + ": expected 20000 rows, found " + std::to_string(all.n));
    }
    s = head_tail(all, 16000);
  }
  // Statistics from the whole training split (before any max_train prefix, so that a prefix
  // sees the same feature values as a full load), applied to both sides.
  if (opt.normalize != Normalize::kOff) {
    const FeatureStats st = feature_stats(s.train);
    standardize(s.train, st);
    standardize(s.test, st);
  }
  return s;
}

std::string known_names() {
  std::string known;
  for (auto n : kNames) known += (known.empty() ? "" : ", ") + std::string(n);
  return known + "; or csv:PATH, idx:DIR, npy:X.npy,Y.npy";
}

// The user's files: csv:, idx:, npy:. Test split from opt.test or a stratified draw; features
// standardised with training statistics unless opt.normalize says otherwise.
Result<Split> load_user(const DataSpec& spec, const LoadOptions& opt) {
  Split s;
  const bool has_test = !opt.test.empty();
  if (!has_test && spec.kind != DataSpec::Kind::kIdx &&
      !(opt.test_fraction > 0.0 && opt.test_fraction < 1.0)) {
    return Error(Code::kInvalidArgument, spec.name + ": test_fraction must lie in (0, 1), got " +
                                             std::to_string(opt.test_fraction));
  }
  RawTable train, test;
  if (spec.kind == DataSpec::Kind::kCsv) {
    const UserCsvOptions co{opt.header, opt.label};
    MYCEL_ASSIGN_OR_RETURN(train, read_user_csv(spec.path, co));
    if (has_test) {
      MYCEL_ASSIGN_OR_RETURN(test, read_user_csv(opt.test, co));
    }
  } else if (spec.kind == DataSpec::Kind::kNpy) {
    MYCEL_ASSIGN_OR_RETURN(train, read_user_npy(spec.path, spec.y_path));
    if (has_test) {
      const size_t c = opt.test.find(',');
      if (c == std::string::npos || c == 0 || c + 1 >= opt.test.size() ||
          opt.test.find(',', c + 1) != std::string::npos) {
        return Error(Code::kInvalidArgument, "test split '" + opt.test +
                                                 "': an npy data set's test split is "
                                                 "X.npy,Y.npy (two paths, one comma)");
      }
      MYCEL_ASSIGN_OR_RETURN(test, read_user_npy(opt.test.substr(0, c), opt.test.substr(c + 1)));
    }
  } else {  // idx
    if (has_test) {
      return Error(Code::kInvalidArgument, spec.name + ": an idx data set has its own test split "
                                                       "(t10k-*); leave the test split empty");
    }
    MYCEL_ASSIGN_OR_RETURN(train, read_user_idx_part(spec.path, true));
    MYCEL_ASSIGN_OR_RETURN(test, read_user_idx_part(spec.path, false));
  }
  const bool two = has_test || spec.kind == DataSpec::Kind::kIdx;
  if (two && test.d.dim != train.d.dim) {
    return Error(Code::kInvalidArgument,
                 (has_test ? opt.test : spec.name) + ": the test split has " +
                     std::to_string(test.d.dim) + " features per row, the training split " +
                     std::to_string(train.d.dim));
  }
  MYCEL_ASSIGN_OR_RETURN(s, assign_classes(std::move(train), two ? &test : nullptr, spec.name));
  if (!two) {
    Split st = stratified_split(s.train, opt.test_fraction, opt.seed);
    if (st.train.n == 0 || st.test.n == 0) {
      return Error(Code::kInvalidArgument,
                   spec.name + ": " + std::to_string(s.train.n) + " rows are too few to split " +
                       std::to_string(opt.test_fraction) +
                       " of them off as a test split (give a test split of its own)");
    }
    st.train.class_names = s.train.class_names;
    st.test.class_names = s.train.class_names;
    s = std::move(st);
  }
  s.train.name = s.test.name = spec.name;
  const bool images = spec.kind == DataSpec::Kind::kIdx;
  const bool on = opt.normalize == Normalize::kOn || (opt.normalize == Normalize::kAuto && !images);
  if (on && images) {
    normalize_pixels(s);
  } else if (on) {
    const FeatureStats st = feature_stats(s.train);
    standardize(s.train, st);
    standardize(s.test, st);
  }
  return s;
}

}  // namespace

std::string default_data_dir() {
  const char* e = std::getenv("MYCEL_DATA");
  return (e && *e) ? std::string(e) : std::string("data");
}

std::span<const std::string_view> dataset_names() { return kNames; }

Result<HeaderMode> parse_header_mode(std::string_view s) {
  if (s == "auto") return HeaderMode::kAuto;
  if (s == "yes" || s == "true") return HeaderMode::kYes;
  if (s == "no" || s == "false") return HeaderMode::kNo;
  return Error(Code::kInvalidArgument, "header mode '" + std::string(s) + "': expected auto, yes or no");
}

Result<Normalize> parse_normalize(std::string_view s) {
  if (s == "auto") return Normalize::kAuto;
  if (s == "true" || s == "yes" || s == "on") return Normalize::kOn;
  if (s == "false" || s == "no" || s == "off") return Normalize::kOff;
  return Error(Code::kInvalidArgument,
               "normalize '" + std::string(s) + "': expected auto, true or false");
}

Result<DataSpec> parse_data_spec(std::string_view spec) {
  DataSpec d;
  d.name = std::string(spec);
  auto bad = [&](const std::string& why) {
    return Error(Code::kInvalidArgument, "data set '" + std::string(spec) + "': " + why);
  };
  const size_t colon = spec.find(':');
  if (colon == std::string_view::npos) {
    if (std::find(kNames.begin(), kNames.end(), spec) == kNames.end()) {
      return Error(Code::kInvalidArgument,
                   "unknown data set '" + std::string(spec) + "' (known: " + known_names() + ")");
    }
    return d;
  }
  const std::string_view kind = spec.substr(0, colon), rest = spec.substr(colon + 1);
  if (kind == "csv") {
    d.kind = DataSpec::Kind::kCsv;
  } else if (kind == "idx") {
    d.kind = DataSpec::Kind::kIdx;
  } else if (kind == "npy") {
    d.kind = DataSpec::Kind::kNpy;
  } else {
    return bad("unknown prefix '" + std::string(kind) + ":' (known: " + known_names() + ")");
  }
  if (rest.empty()) return bad("no path after '" + std::string(kind) + ":'");
  if (d.kind == DataSpec::Kind::kNpy) {
    const size_t c = rest.find(',');
    if (c == std::string_view::npos || c == 0 || c + 1 >= rest.size() ||
        rest.find(',', c + 1) != std::string_view::npos) {
      return bad("expected npy:X.npy,Y.npy (two paths, one comma)");
    }
    d.path = std::string(rest.substr(0, c));
    d.y_path = std::string(rest.substr(c + 1));
  } else {
    d.path = std::string(rest);
    if (d.kind == DataSpec::Kind::kIdx) {
      while (d.path.size() > 1 && d.path.back() == '/') d.path.pop_back();
    }
  }
  return d;
}

Result<Split> load(std::string_view name, const LoadOptions& opt) {
  MYCEL_ASSIGN_OR_RETURN(const DataSpec spec, parse_data_spec(name));
  Split s;
  if (spec.kind != DataSpec::Kind::kBuiltin) {
    MYCEL_ASSIGN_OR_RETURN(s, load_user(spec, opt));
  } else {
    if (!opt.test.empty()) {
      return Error(Code::kInvalidArgument, "data set '" + spec.name +
                                               "' has its own test split; a test split of "
                                               "your own is for csv: and npy: data sets");
    }
    std::string dir = opt.dir.empty() ? default_data_dir() : opt.dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (name == "mnist" || name == "fashion-mnist") {
      MYCEL_ASSIGN_OR_RETURN(s, load_idx_set(name, dir, opt));
    } else {
      MYCEL_ASSIGN_OR_RETURN(s, load_tabular(name, dir, opt));
    }
  }
  take_prefix(s.train, opt.max_train);
  take_prefix(s.test, opt.max_test);
  MYCEL_LOG_DEBUG("models", "loaded {}: {} train, {} test, {} features, {} classes", name,
                  s.train.n, s.test.n, s.train.dim, s.train.classes);
  return s;
}

FeatureStats feature_stats(const Dataset& d) {
  FeatureStats s;
  s.mean.assign(d.dim, 0.0);
  s.std.assign(d.dim, 0.0);
  if (d.n == 0) return s;
  for (size_t i = 0; i < d.n; ++i) {
    const float* r = d.row(i);
    for (size_t j = 0; j < d.dim; ++j) s.mean[j] += r[j];
  }
  for (double& m : s.mean) m /= static_cast<double>(d.n);
  // Two passes: the one-pass formula loses digits on features like capital_run_length_total
  // (values in the thousands, spread in the hundreds).
  for (size_t i = 0; i < d.n; ++i) {
    const float* r = d.row(i);
    for (size_t j = 0; j < d.dim; ++j) {
      const double c = r[j] - s.mean[j];
      s.std[j] += c * c;
    }
  }
  for (double& v : s.std) v = std::sqrt(v / static_cast<double>(d.n));
  return s;
}

void standardize(Dataset& d, const FeatureStats& s) {
  if (s.mean.size() != d.dim || s.std.size() != d.dim) return;
  std::vector<float> m(d.dim), inv(d.dim);
  for (size_t j = 0; j < d.dim; ++j) {
    m[j] = static_cast<float>(s.mean[j]);
    inv[j] = static_cast<float>(s.std[j] > 1e-12 ? 1.0 / s.std[j] : 1.0);
  }
  for (size_t i = 0; i < d.n; ++i) {
    float* r = d.x.data() + i * d.dim;
    for (size_t j = 0; j < d.dim; ++j) r[j] = (r[j] - m[j]) * inv[j];
  }
}

Result<Dataset> subset(const Dataset& d, std::span<const size_t> idx) {
  for (size_t i : idx) {
    if (i >= d.n) {
      return Error(Code::kOutOfRange, "subset: index " + std::to_string(i) + " not below " +
                                          std::to_string(d.n) + " samples of " + d.name);
    }
  }
  return rows(d, idx);
}

std::vector<size_t> class_counts(const Dataset& d) {
  std::vector<size_t> c(static_cast<size_t>(std::max(d.classes, 0)), 0);
  for (int32_t y : d.y)
    if (y >= 0 && y < d.classes) ++c[static_cast<size_t>(y)];
  return c;
}

}  // namespace mycel::data
