// `mycel data`: look at a data set and at how a partition deals it out to peers.
//   mycel data info NAME
//   mycel data partition NAME --peers N --scheme dirichlet:0.5 --seed S [--csv FILE]
// NAME is a built-in data set or the user's files: csv:PATH, idx:DIR, npy:X.npy,Y.npy.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "models/data/dataset.h"
#include "models/data/partition.h"
#include "runtime/cli/commands.h"

namespace mycel::cli {
namespace {

struct DataFlags {
  std::string name;
  std::string dir;
  uint64_t seed = 1;
  bool normalize = false;
  std::string standardize = "auto";  // --normalize auto|true|false
  std::string header = "auto", label, test;
  double test_fraction = 0.2;
  // partition
  size_t peers = 10;
  std::string scheme = "iid";
  std::string csv;
  std::string split = "train";
  size_t rows = 40;
};

[[noreturn]] void fail(const Status& s) {
  std::fprintf(stderr, "mycel data: %s\n", s.message().c_str());
  throw CLI::RuntimeError(s.code() == Code::kNotFound ? 3 : 2);
}

data::Split load_or_fail(const DataFlags& f) {
  data::LoadOptions opt;
  opt.dir = f.dir;
  opt.seed = f.seed;
  opt.normalize_images = f.normalize;
  opt.label = f.label;
  opt.test = f.test;
  opt.test_fraction = f.test_fraction;
  auto h = data::parse_header_mode(f.header);
  if (!h) fail(h.status());
  opt.header = *h;
  auto n = data::parse_normalize(f.standardize);
  if (!n) fail(n.status());
  opt.normalize = *n;
  auto r = data::load(f.name, opt);
  if (!r) fail(r.status());
  return std::move(r).value();
}

void add_common(CLI::App& cmd, DataFlags& f) {
  cmd.add_option("NAME", f.name,
                 "data set: mnist fashion-mnist spambase pendigits letter, or csv:PATH "
                 "idx:DIR npy:X.npy,Y.npy")
      ->required();
  cmd.add_option("--header", f.header, "csv: header row auto | yes | no")->capture_default_str();
  cmd.add_option("--label", f.label, "csv: label column by name or 0-based index (default: last)");
  cmd.add_option("--test", f.test, "csv/npy: test split files (a CSV; X.npy,Y.npy)");
  cmd.add_option("--test-fraction", f.test_fraction,
                 "fraction drawn as the stratified test split when there is none")
      ->check(CLI::Range(0.001, 0.999))
      ->capture_default_str();
  cmd.add_option("--normalize", f.standardize,
                 "standardise features with training statistics: auto | true | false")
      ->capture_default_str();
  cmd.add_option("--data-dir", f.dir, "data folder (default: $MYCEL_DATA or data)");
  cmd.add_option("--seed", f.seed, "seed of the split (spambase) and of the partition")
      ->capture_default_str();
}

struct Range {
  double lo = 1e300, hi = -1e300, sum = 0;
  size_t n = 0;
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    ++n;
  }
  double mean() const { return n ? sum / static_cast<double>(n) : 0; }
};

void print_stats(const char* side, const data::Dataset& d) {
  const data::FeatureStats s = data::feature_stats(d);
  Range m, sd, v;
  for (size_t j = 0; j < d.dim; ++j) {
    m.add(s.mean[j]);
    sd.add(s.std[j]);
  }
  for (float x : d.x) v.add(x);
  std::printf("%-6s %10.4f %10.4f %10.4f %10.4f %10.4f %10.4f %10.4f %10.4f\n", side, m.mean(),
              m.lo, m.hi, sd.mean(), sd.lo, sd.hi, v.lo, v.hi);
}

// Per-feature min and max of a split, as loaded (after preprocessing).
void print_ranges(const data::Dataset& d) {
  if (d.n == 0 || d.dim == 0) return;
  std::vector<float> lo(d.row(0), d.row(0) + d.dim), hi = lo;
  for (size_t i = 1; i < d.n; ++i) {
    const float* r = d.row(i);
    for (size_t j = 0; j < d.dim; ++j) {
      lo[j] = std::min(lo[j], r[j]);
      hi[j] = std::max(hi[j], r[j]);
    }
  }
  // Many features (images): the first 8 and the last 4, the rest elided.
  const size_t head = d.dim > 16 ? 8 : d.dim, tail = d.dim > 16 ? 4 : 0;
  std::printf("%-8s %12s %12s\n", "feature", "min", "max");
  for (size_t j = 0; j < d.dim; ++j) {
    if (j == head && tail) {
      std::printf("%-8s (%zu features not shown)\n", "...", d.dim - head - tail);
      j = d.dim - tail;
    }
    std::printf("%-8zu %12.6g %12.6g\n", j, double(lo[j]), double(hi[j]));
  }
}

void run_info(const DataFlags& f) {
  const data::Split s = load_or_fail(f);
  const auto& tr = s.train;
  auto spec = data::parse_data_spec(f.name);
  const bool builtin = spec && spec->kind == data::DataSpec::Kind::kBuiltin;
  if (builtin) {
    std::printf("data set   %s (data folder: %s)\n", f.name.c_str(),
                f.dir.empty() ? data::default_data_dir().c_str() : f.dir.c_str());
  } else {
    std::printf("data set   %s\n", f.name.c_str());
  }
  std::printf("rows       %zu (%zu train, %zu test)\n", tr.n + s.test.n, tr.n, s.test.n);
  const bool standardised =
      f.standardize == "true" || (f.standardize == "auto" && tr.channels == 0);
  if (tr.channels > 0) {
    std::printf("features   %zu (images %dx%dx%d, pixels scaled to [0, 1]%s)\n", tr.dim,
                tr.channels, tr.height, tr.width,
                f.normalize || f.standardize == "true"
                    ? ", then normalised with the training pixel mean and std"
                    : "");
  } else {
    std::printf("features   %zu (tabular, %s)\n", tr.dim,
                standardised ? "standardised with training-split mean and std" : "as read");
  }
  std::printf("classes    %d\n\n", tr.classes);
  const auto ctr = data::class_counts(tr), cte = data::class_counts(s.test);
  size_t name_w = 6;
  for (const auto& n : tr.class_names) name_w = std::max(name_w, std::min<size_t>(n.size(), 24));
  std::printf("%-6s %-*s %8s %7s %8s %7s\n", "class", int(name_w), "label", "train", "%", "test",
              "%");
  for (size_t c = 0; c < ctr.size(); ++c) {
    const std::string label =
        c < tr.class_names.size() ? tr.class_names[c].substr(0, 24) : std::to_string(c);
    std::printf(
        "%-6zu %-*s %8zu %6.2f%% %8zu %6.2f%%\n", c, int(name_w), label.c_str(), ctr[c],
        tr.n ? 100.0 * static_cast<double>(ctr[c]) / static_cast<double>(tr.n) : 0.0, cte[c],
        s.test.n ? 100.0 * static_cast<double>(cte[c]) / static_cast<double>(s.test.n) : 0.0);
  }
  std::printf("\nfeature ranges of the training split as loaded%s\n",
              standardised ? " (standardised; --normalize false for the values as read)" : "");
  print_ranges(tr);
  std::printf("\nper-feature statistics after preprocessing (means and stds over the features)\n");
  std::printf("%-6s %10s %10s %10s %10s %10s %10s %10s %10s\n", "split", "mean(mean)", "min(mean)",
              "max(mean)", "mean(std)", "min(std)", "max(std)", "min x", "max x");
  print_stats("train", tr);
  print_stats("test", s.test);
}

void run_partition(const DataFlags& f) {
  auto spec = data::parse_partition_spec(f.scheme);
  if (!spec) fail(spec.status());
  if (f.split != "train" && f.split != "test") {
    fail(Error(Code::kInvalidArgument, "--split must be train or test, got '" + f.split + "'"));
  }
  const data::Split s = load_or_fail(f);
  const data::Dataset& d = f.split == "train" ? s.train : s.test;
  auto part = data::partition(d.y, d.classes, f.peers, *spec, f.seed);
  if (!part) fail(part.status());
  const auto hist = data::label_histograms(*part, d.y, d.classes);
  size_t lo = d.n, hi = 0;
  for (const auto& p : part->peers) {
    lo = std::min(lo, p.size());
    hi = std::max(hi, p.size());
  }
  std::printf("%s %s split (%zu samples, %d classes) over %zu peers: %s, seed %llu\n",
              f.name.c_str(), f.split.c_str(), d.n, d.classes, f.peers,
              data::to_string(*spec).c_str(), static_cast<unsigned long long>(f.seed));
  std::printf("samples per peer: min %zu, max %zu\n\n", lo, hi);
  std::fputs(data::format_histograms(hist, f.rows).c_str(), stdout);
  if (!f.csv.empty()) {
    Status st = data::write_histograms_csv(f.csv, hist);
    if (!st) fail(st);
    std::printf("wrote %s\n", f.csv.c_str());
  }
}

}  // namespace

void add_data_commands(CLI::App& app, Common&) {
  auto* data_cmd = app.add_subcommand("data",
                                      "data sets: sizes, classes, feature statistics, "
                                      "and per-peer label histograms of a partition");
  data_cmd->require_subcommand(1);

  auto info = std::make_shared<DataFlags>();
  auto* ic =
      data_cmd->add_subcommand("info", "sizes, classes and feature statistics of a data set");
  add_common(*ic, *info);
  ic->add_flag("--normalize-images", info->normalize,
               "images: normalise with the training pixel mean and std");
  ic->callback([info] { run_info(*info); });

  auto part = std::make_shared<DataFlags>();
  auto* pc = data_cmd->add_subcommand(
      "partition", "deal a data set out to N peers and print per-peer label histograms");
  add_common(*pc, *part);
  pc->add_option("--peers", part->peers, "number of peers")->capture_default_str();
  pc->add_option("--scheme", part->scheme,
                 "iid | dirichlet:ALPHA[:MIN_PER_PEER] | shards[:PER_PEER] | one-class")
      ->capture_default_str();
  pc->add_option("--split", part->split, "which split to partition: train or test")
      ->capture_default_str();
  pc->add_option("--csv", part->csv, "also write the histograms to this CSV file");
  pc->add_option("--rows", part->rows, "peers shown in the table (0: all)")->capture_default_str();
  pc->callback([part] { run_partition(*part); });
}

}  // namespace mycel::cli
