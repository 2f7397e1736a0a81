// data::load(): file layout under the data folder, splits, standardisation with training
// statistics, prefixes; first on small data folders the tests write, then on the real data sets
// when scripts/fetch-data.sh --tests has placed them (skipped with the fetch command if not).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "data_test_util.h"
#include "models/data/dataset.h"

namespace mycel::data {
namespace {

using testing_util::gzip;
using testing_util::idx;
using testing_util::real_data_dir;
using testing_util::ScratchDir;
using testing_util::write_bytes;
using testing_util::write_text;

TEST(DataLoad, UnknownNameListsTheKnownOnes) {
  auto r = load("cifar");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("fashion-mnist"), std::string::npos);
}

TEST(DataLoad, MissingDataSetNamesTheFetchCommand) {
  ScratchDir dir;
  for (std::string_view name : dataset_names()) {
    LoadOptions o;
    o.dir = dir.path();
    auto r = load(name, o);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.status().code(), Code::kNotFound) << name;
    EXPECT_NE(r.status().message().find("scripts/fetch-data.sh " + std::string(name)),
              std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find(dir.path()), std::string::npos) << r.status().message();
  }
}

TEST(DataLoad, TabularIsStandardisedWithTrainingStatistics) {
  ScratchDir dir;
  // pendigits layout: 16 features then the label; train rows 0..3, test rows 4..5.
  auto row = [](int base, int label) {
    std::string s;
    for (int j = 0; j < 16; ++j) s += std::to_string(base + j * (base % 3 + 1)) + ",";
    return s + std::to_string(label) + "\n";
  };
  write_text(dir.file("pendigits/pendigits.tra"), row(0, 1) + row(10, 2) + row(20, 3) + row(50, 9));
  write_text(dir.file("pendigits/pendigits.tes"), row(7, 0) + row(100, 5));
  LoadOptions o;
  o.dir = dir.path();
  auto r = load("pendigits", o);
  ASSERT_TRUE(r) << r.status().to_string();
  const Dataset& tr = r->train;
  const Dataset& te = r->test;
  ASSERT_EQ(tr.n, 4u);
  ASSERT_EQ(te.n, 2u);
  EXPECT_EQ(tr.dim, 16u);
  EXPECT_EQ(tr.classes, 10);
  EXPECT_EQ(tr.y, (std::vector<int32_t>{1, 2, 3, 9}));
  EXPECT_EQ(te.y, (std::vector<int32_t>{0, 5}));
  const FeatureStats st = feature_stats(tr);
  for (size_t j = 0; j < 16; ++j) {
    EXPECT_NEAR(st.mean[j], 0.0, 1e-6) << j;
    EXPECT_NEAR(st.std[j], 1.0, 1e-5) << j;
  }
  // Test rows use the training mean and std, computed here by hand for feature 3.
  const double raw_tr[4] = {0 + 3 * 1, 10 + 3 * 2, 20 + 3 * 3, 50 + 3 * 3};
  double m = 0, v = 0;
  for (double x : raw_tr) m += x / 4;
  for (double x : raw_tr) v += (x - m) * (x - m) / 4;
  const double sd = std::sqrt(v);
  EXPECT_NEAR(te.row(0)[3], (7 + 3 * 2 - m) / sd, 1e-5);
  EXPECT_NEAR(te.row(1)[3], (100 + 3 * 2 - m) / sd, 1e-5);
  EXPECT_GT(std::abs(feature_stats(te).mean[3]), 0.1);  // not re-centred on the test side
}

TEST(DataLoad, SpambaseSplitIsStratifiedAndSeeded) {
  ScratchDir dir;
  // 100 rows: 60 of class 0, 40 of class 1, sorted by class as the real file is; feature 0 is
  // the row number so the rows can be told apart after standardisation.
  std::string text;
  for (int i = 0; i < 100; ++i) {
    text += std::to_string(i);
    for (int j = 1; j < 57; ++j) text.append(",").append(std::to_string((i * 7 + j) % 13));
    text += i < 60 ? ",0\r\n" : ",1\r\n";
  }
  write_text(dir.file("spambase/spambase.csv"), text);
  LoadOptions o;
  o.dir = dir.path();
  auto a = load("spambase", o);
  ASSERT_TRUE(a) << a.status().to_string();
  EXPECT_EQ(a->train.n, 80u);
  EXPECT_EQ(a->test.n, 20u);
  EXPECT_EQ(a->train.dim, 57u);
  EXPECT_EQ(a->train.classes, 2);
  EXPECT_EQ(class_counts(a->test), (std::vector<size_t>{12, 8}));
  EXPECT_EQ(class_counts(a->train), (std::vector<size_t>{48, 32}));

  auto b = load("spambase", o);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->train.x, b->train.x);
  EXPECT_EQ(a->test.y, b->test.y);
  o.seed = 2;
  auto c = load("spambase", o);
  ASSERT_TRUE(c);
  EXPECT_NE(a->train.x, c->train.x);
  EXPECT_EQ(class_counts(c->test), (std::vector<size_t>{12, 8}));
  // Shuffled, not file order: a prefix of train holds both classes.
  o.seed = 1;
  o.max_train = 10;
  o.max_test = 5;
  auto p = load("spambase", o);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->train.n, 10u);
  EXPECT_EQ(p->test.n, 5u);
  auto cc = class_counts(p->train);
  EXPECT_GT(cc[0], 0u);
  EXPECT_GT(cc[1], 0u);
  // A prefix sees the same values as the full load (statistics from the full training split).
  EXPECT_EQ(p->train.x, std::vector<float>(a->train.x.begin(), a->train.x.begin() + 10 * 57));
}

TEST(DataLoad, SpambaseRowsAreDisjointAcrossTheSplit) {
  ScratchDir dir;
  std::string text;
  for (int i = 0; i < 50; ++i) {
    text += std::to_string(i);
    for (int j = 1; j < 57; ++j) text += ",1";
    text += i % 2 ? ",1\n" : ",0\n";
  }
  write_text(dir.file("spambase/spambase.csv"), text);
  LoadOptions o;
  o.dir = dir.path();
  auto r = load("spambase", o);
  ASSERT_TRUE(r) << r.status().to_string();
  // The raw feature-0 values of the train side are unknown, but standardisation is affine and
  // increasing, so ranks are kept: sort all standardised values and check there are 50 distinct.
  std::map<float, int> seen;
  for (size_t i = 0; i < r->train.n; ++i) ++seen[r->train.row(i)[0]];
  for (size_t i = 0; i < r->test.n; ++i) ++seen[r->test.row(i)[0]];
  EXPECT_EQ(seen.size(), 50u);
  for (const auto& [v, n] : seen) EXPECT_EQ(n, 1) << v;
  // Constant features become 0, not NaN.
  for (float v : r->test.x) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(r->train.row(0)[1], 0.0f);
}

TEST(DataLoad, IdxSetLayoutPlainOrGzipAndImageNormalisation) {
  ScratchDir dir;
  std::vector<uint8_t> px(4 * 3 * 3), lab = {0, 1, 2, 3};
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 7);
  // fashion-mnist gzipped, mnist plain: the loader takes either.
  write_bytes(dir.file("fashion-mnist/train-images-idx3-ubyte.gz"), gzip(idx({4, 3, 3}, px)));
  write_bytes(dir.file("fashion-mnist/train-labels-idx1-ubyte.gz"), gzip(idx({4}, lab)));
  write_bytes(dir.file("fashion-mnist/t10k-images-idx3-ubyte.gz"), gzip(idx({4, 3, 3}, px)));
  write_bytes(dir.file("fashion-mnist/t10k-labels-idx1-ubyte.gz"), gzip(idx({4}, lab)));
  for (const char* f : {"train-images-idx3-ubyte", "t10k-images-idx3-ubyte"})
    write_bytes(dir.file(std::string("mnist/") + f), idx({4, 3, 3}, px));
  for (const char* f : {"train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"})
    write_bytes(dir.file(std::string("mnist/") + f), idx({4}, lab));
  LoadOptions o;
  o.dir = dir.path();
  auto f = load("fashion-mnist", o);
  auto m = load("mnist", o);
  ASSERT_TRUE(f) << f.status().to_string();
  ASSERT_TRUE(m) << m.status().to_string();
  EXPECT_EQ(f->train.x, m->train.x);
  EXPECT_EQ(f->train.height, 3);
  EXPECT_FLOAT_EQ(f->train.x[5], 35.0f / 255.0f);
  o.normalize_images = true;
  auto n = load("mnist", o);
  ASSERT_TRUE(n);
  double sum = 0, sq = 0;
  for (float v : n->train.x) {
    sum += v;
    sq += double{v} * v;
  }
  const double cnt = static_cast<double>(n->train.x.size());
  EXPECT_NEAR(sum / cnt, 0.0, 1e-5);
  EXPECT_NEAR(sq / cnt, 1.0, 1e-4);
}

// --- the real data sets -----------------------------------------------------------------------

// Loads a real data set once per test binary; skips with the fetch command when it is absent.
const Split* real(const std::string& name) {
  static std::map<std::string, Result<Split>> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    LoadOptions o;
    o.dir = real_data_dir();
    it = cache.emplace(name, load(name, o)).first;
  }
  return it->second ? &it->second.value() : nullptr;
}

#define LOAD_OR_SKIP(var, name)                                                                \
  const Split* var = real(name);                                                               \
  if (var == nullptr) {                                                                        \
    LoadOptions _o;                                                                            \
    _o.dir = real_data_dir();                                                                  \
    auto _r = load(name, _o);                                                                  \
    if (_r.status().code() == Code::kNotFound)                                                 \
      GTEST_SKIP() << name << " not in " << real_data_dir()                                    \
                   << ": run scripts/fetch-data.sh --tests (" << _r.status().message() << ")"; \
    FAIL() << _r.status().to_string();                                                         \
  }

void expect_standardised_train(const Split& s) {
  const FeatureStats tr = feature_stats(s.train);
  const FeatureStats te = feature_stats(s.test);
  double max_test_dev = 0;
  for (size_t j = 0; j < s.train.dim; ++j) {
    EXPECT_NEAR(tr.mean[j], 0.0, 1e-4) << j;
    if (tr.std[j] > 0) {
      EXPECT_NEAR(tr.std[j], 1.0, 1e-4) << j;
    }
    max_test_dev = std::max(max_test_dev, std::abs(te.mean[j]));
  }
  // Had the test side been standardised with its own statistics, every mean would be ~0.
  EXPECT_GT(max_test_dev, 1e-3);
}

TEST(DataReal, FashionMnist) {
  LOAD_OR_SKIP(s, "fashion-mnist");
  EXPECT_EQ(s->train.n, 60000u);
  EXPECT_EQ(s->test.n, 10000u);
  EXPECT_EQ(s->train.dim, 784u);
  EXPECT_EQ(s->train.channels, 1);
  EXPECT_EQ(s->train.height, 28);
  EXPECT_EQ(s->train.width, 28);
  EXPECT_EQ(s->train.classes, 10);
  EXPECT_EQ(class_counts(s->train), std::vector<size_t>(10, 6000));  // balanced by design
  EXPECT_EQ(class_counts(s->test), std::vector<size_t>(10, 1000));
  EXPECT_EQ(s->train.y[0], 9);  // the first training image is an ankle boot
  float lo = 1, hi = 0;
  for (float v : s->train.x) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 1.0f);
}

TEST(DataReal, Mnist) {
  LOAD_OR_SKIP(s, "mnist");
  EXPECT_EQ(s->train.n, 60000u);
  EXPECT_EQ(s->test.n, 10000u);
  EXPECT_EQ(s->train.dim, 784u);
  EXPECT_EQ(s->train.classes, 10);
  EXPECT_EQ(s->train.y[0], 5);  // the famous first digit
  EXPECT_EQ(s->test.y[0], 7);
  EXPECT_EQ(class_counts(s->train)[1], 6742u);
}

TEST(DataReal, Spambase) {
  LOAD_OR_SKIP(s, "spambase");
  EXPECT_EQ(s->train.n + s->test.n, 4601u);
  EXPECT_EQ(s->test.n, 921u);  // round(2788 * 0.2) + round(1813 * 0.2) = 558 + 363
  EXPECT_EQ(s->train.dim, 57u);
  EXPECT_EQ(s->train.classes, 2);
  const auto a = class_counts(s->train), b = class_counts(s->test);
  EXPECT_EQ(a[1] + b[1], 1813u);  // spam
  EXPECT_EQ(a[0] + b[0], 2788u);
  EXPECT_EQ(b[1], 363u);
  expect_standardised_train(*s);
}

TEST(DataReal, Pendigits) {
  LOAD_OR_SKIP(s, "pendigits");
  EXPECT_EQ(s->train.n, 7494u);
  EXPECT_EQ(s->test.n, 3498u);
  EXPECT_EQ(s->train.dim, 16u);
  EXPECT_EQ(s->train.classes, 10);
  EXPECT_EQ(s->train.y[0], 8);
  EXPECT_EQ(s->train.y[1], 2);
  expect_standardised_train(*s);
}

TEST(DataReal, Letter) {
  LOAD_OR_SKIP(s, "letter");
  EXPECT_EQ(s->train.n, 16000u);
  EXPECT_EQ(s->test.n, 4000u);
  EXPECT_EQ(s->train.dim, 16u);
  EXPECT_EQ(s->train.classes, 26);
  EXPECT_EQ(s->train.y[0], 'T' - 'A');
  EXPECT_EQ(s->train.y[1], 'I' - 'A');
  for (size_t c : class_counts(s->train)) EXPECT_GT(c, 500u);
  expect_standardised_train(*s);
}

TEST(DataReal, PrefixesForTests) {
  LoadOptions o;
  o.dir = real_data_dir();
  o.max_train = 100;
  o.max_test = 50;
  auto r = load("pendigits", o);
  if (!r && r.status().code() == Code::kNotFound) {
    GTEST_SKIP() << r.status().message();
  }
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->train.n, 100u);
  EXPECT_EQ(r->train.x.size(), 1600u);
  EXPECT_EQ(r->test.n, 50u);
  EXPECT_EQ(r->test.y.size(), 50u);
}

}  // namespace
}  // namespace mycel::data
