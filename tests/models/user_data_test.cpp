// The user's own data sets: data::load("csv:PATH" | "idx:DIR" | "npy:X.npy,Y.npy") on files the
// tests write byte by byte. Round trips (header or not, string labels, label column by name and
// by index, gzip, IDX, .npy 1.0/2.0/3.0 of every supported dtype); every class of bad input
// gives an error naming the file (and the line, for CSV); the stratified split keeps class
// proportions; standardisation uses training statistics only.
#include <gtest/gtest.h>
#include <zlib.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "data_test_util.h"
#include "models/data/dataset.h"
#include "models/data/user_data.h"

namespace mycel::data {
namespace {

using testing_util::gzip;
using testing_util::idx;
using testing_util::ScratchDir;
using testing_util::write_bytes;
using testing_util::write_text;

LoadOptions raw_options() {
  LoadOptions o;
  o.normalize = Normalize::kOff;
  return o;
}

// Train and test rows together, in file order: a test fraction that the split needs, undone by
// looking the rows up again. Simpler: parse_user_csv + assign_classes for exact round trips.
Result<Dataset> read_all(const std::string& path, const UserCsvOptions& o = {}) {
  MYCEL_ASSIGN_OR_RETURN(auto t, read_user_csv(path, o));
  MYCEL_ASSIGN_OR_RETURN(auto s, assign_classes(std::move(t), nullptr, path));
  return s.train;
}

void write_gz_with_gzwrite(const std::string& path, const std::string& text) {
  gzFile g = gzopen(path.c_str(), "wb");
  ASSERT_NE(g, nullptr) << path;
  ASSERT_EQ(gzwrite(g, text.data(), static_cast<unsigned>(text.size())), int(text.size()));
  ASSERT_EQ(gzclose(g), Z_OK);
}

// Expects an error whose message holds every one of `parts`.
void expect_error(const Status& s, Code code, std::initializer_list<std::string> parts) {
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.code(), code) << s.to_string();
  for (const auto& p : parts)
    EXPECT_NE(s.message().find(p), std::string::npos) << "'" << p << "' not in: " << s.message();
}

// ---- CSV round trips ----

TEST(UserCsv, NoHeaderIntegerLabelsMappedInSortedOrder) {
  ScratchDir dir;
  const std::string p = dir.file("t.csv");
  write_text(p, "1.5,-2,5\n0,3e2,1\r\n\n  7 , 8 ,2\n-0.25,+4,5\n");
  auto d = read_all(p);
  ASSERT_TRUE(d) << d.status().to_string();
  EXPECT_EQ(d->n, 4u);
  EXPECT_EQ(d->dim, 2u);
  EXPECT_EQ(d->classes, 3);
  EXPECT_EQ(d->class_names, (std::vector<std::string>{"1", "2", "5"}));
  EXPECT_EQ(d->y, (std::vector<int32_t>{2, 0, 1, 2}));
  EXPECT_EQ(d->x, (std::vector<float>{1.5f, -2.f, 0.f, 300.f, 7.f, 8.f, -0.25f, 4.f}));
}

TEST(UserCsv, NumericLabelsSortByValueNotText) {
  ScratchDir dir;
  const std::string p = dir.file("t.csv");
  write_text(p, "1,10\n2,9\n3,-1\n4,9\n");
  auto d = read_all(p);
  ASSERT_TRUE(d) << d.status().to_string();
  EXPECT_EQ(d->class_names, (std::vector<std::string>{"-1", "9", "10"}));
  EXPECT_EQ(d->y, (std::vector<int32_t>{2, 1, 0, 1}));
}

TEST(UserCsv, HeaderDetectedAndStringLabels) {
  ScratchDir dir;
  const std::string p = dir.file("iris.csv");
  write_text(p,
             "\"sepal length\",sepal_width,species\n5.1,3.5,setosa\n7.0,3.2,versicolor\n"
             "6.3,3.3,\"virginica\"\n4.9,3.0,setosa\n");
  auto t = read_user_csv(p, {});
  ASSERT_TRUE(t) << t.status().to_string();
  EXPECT_EQ(t->columns, (std::vector<std::string>{"sepal length", "sepal_width"}));
  auto d = read_all(p);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->n, 4u);
  EXPECT_EQ(d->class_names, (std::vector<std::string>{"setosa", "versicolor", "virginica"}));
  EXPECT_EQ(d->y, (std::vector<int32_t>{0, 1, 2, 0}));
  EXPECT_FLOAT_EQ(d->x[0], 5.1f);
}

TEST(UserCsv, HeaderWithOnlyTheLabelTextIsDetected) {
  ScratchDir dir;
  const std::string p = dir.file("t.csv");
  // Numeric feature names, a text label name, numeric labels below: a header.
  write_text(p, "1,2,label\n0.5,1,0\n0.25,2,1\n");
  auto d = read_all(p);
  ASSERT_TRUE(d) << d.status().to_string();
  EXPECT_EQ(d->n, 2u);
  // Text labels on every row: the first row is data.
  write_text(p, "1,2,cat\n3,4,dog\n");
  d = read_all(p);
  ASSERT_TRUE(d) << d.status().to_string();
  EXPECT_EQ(d->n, 2u);
}

TEST(UserCsv, HeaderModeOverridesDetection) {
  ScratchDir dir;
  const std::string p = dir.file("t.csv");
  write_text(p, "1,2,0\n3,4,1\n5,6,2\n");
  auto d = read_all(p, {HeaderMode::kYes, ""});
  ASSERT_TRUE(d) << d.status().to_string();
  EXPECT_EQ(d->n, 2u);  // the first row taken as names
  write_text(p, "a,b,y\n3,4,1\n5,6,0\n");
  auto bad = read_all(p, {HeaderMode::kNo, ""});
  expect_error(bad.status(), Code::kCorrupt, {p + ":1:", "field 1 'a'", "not a finite number"});
}

TEST(UserCsv, LabelColumnByNameAndByIndex) {
  ScratchDir dir;
  const std::string p = dir.file("t.csv");
  write_text(p, "x,species,z\n1,a,2\n3,b,4\n5,a,6\n");
  auto d = read_all(p, {HeaderMode::kAuto, "species"});
  ASSERT_TRUE(d) << d.status().to_string();
  EXPECT_EQ(d->dim, 2u);
  EXPECT_EQ(d->x, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(d->y, (std::vector<int32_t>{0, 1, 0}));
  auto t = read_user_csv(p, {HeaderMode::kAuto, "species"});
  ASSERT_TRUE(t);
  EXPECT_EQ(t->columns, (std::vector<std::string>{"x", "z"}));

  const std::string q = dir.file("u.csv");
  write_text(q, "7,1.5,2\n8,2.5,3\n7,3.5,4\n");
  auto e = read_all(q, {HeaderMode::kAuto, "0"});
  ASSERT_TRUE(e) << e.status().to_string();
  EXPECT_EQ(e->class_names, (std::vector<std::string>{"7", "8"}));
  EXPECT_EQ(e->x, (std::vector<float>{1.5f, 2, 2.5f, 3, 3.5f, 4}));
  EXPECT_EQ(e->y, (std::vector<int32_t>{0, 1, 0}));
}

TEST(UserCsv, GzipWrittenByGzwriteReadsTheSame) {
  ScratchDir dir;
  std::string text = "f1,f2,f3,label\n";
  for (int i = 0; i < 500; ++i)
    text += std::to_string(i) + "," + std::to_string(i * 0.5) + "," + std::to_string(-i) + "," +
            (i % 3 == 0 ? "red" : i % 3 == 1 ? "green" : "blue") + "\n";
  write_text(dir.file("a.csv"), text);
  write_gz_with_gzwrite(dir.file("a.csv.gz"), text);
  auto a = read_all(dir.file("a.csv"));
  auto b = read_all(dir.file("a.csv.gz"));
  ASSERT_TRUE(a) << a.status().to_string();
  ASSERT_TRUE(b) << b.status().to_string();
  EXPECT_EQ(a->n, 500u);
  EXPECT_EQ(a->x, b->x);
  EXPECT_EQ(a->y, b->y);
  EXPECT_EQ(b->class_names, (std::vector<std::string>{"blue", "green", "red"}));
}

TEST(UserCsv, LoadThroughTheSpecWithAnExplicitTestFile) {
  ScratchDir dir;
  write_text(dir.file("train.csv"), "h1,h2,y\n1,2,b\n3,4,a\n5,6,b\n");
  write_text(dir.file("test.csv"), "h1,h2,y\n7,8,c\n9,10,a\n");
  LoadOptions o = raw_options();
  o.test = dir.file("test.csv");
  auto s = load("csv:" + dir.file("train.csv"), o);
  ASSERT_TRUE(s) << s.status().to_string();
  EXPECT_EQ(s->train.n, 3u);
  EXPECT_EQ(s->test.n, 2u);
  // Classes over the union of both files, one mapping for both sides.
  EXPECT_EQ(s->train.class_names, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(s->test.class_names, s->train.class_names);
  EXPECT_EQ(s->train.classes, 3);
  EXPECT_EQ(s->test.y, (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(s->train.name, "csv:" + dir.file("train.csv"));

  write_text(dir.file("test.csv"), "7,8,9,a\n");
  auto bad = load("csv:" + dir.file("train.csv"), o);
  expect_error(bad.status(), Code::kInvalidArgument, {dir.file("test.csv"), "3 features", "2"});
}

// The reader's fast float path must give exactly std::from_chars's float: decimals of every
// length around float's 24-bit mantissa limit, with up to 12 fraction digits, both signs.
TEST(UserCsv, FastFloatPathMatchesFromChars) {
  uint64_t z = 12345;
  auto next = [&z] {
    z = z * 6364136223846793005ull + 1442695040888963407ull;
    return z >> 17;
  };
  size_t fast_taken = 0;
  for (int i = 0; i < 200000; ++i) {
    const uint64_t m = next() % (uint64_t{1} << (1 + i % 27));
    std::string t = std::to_string(m);
    const int frac = int(next() % 13);
    if (frac > 0) {
      while (int(t.size()) <= frac) t = "0" + t;
      t.insert(t.size() - size_t(frac), ".");
    }
    if (next() % 2) t = "-" + t;
    float fast = 0, ref = 0;
    const char* end = parse_float_fast(t.data(), t.data() + t.size(), &fast);
    if (!end) continue;
    ++fast_taken;
    auto r = std::from_chars(t.data(), t.data() + t.size(), ref);
    ASSERT_EQ(r.ec, std::errc()) << t;
    ASSERT_EQ(r.ptr, end) << t;
    ASSERT_EQ(std::memcmp(&fast, &ref, sizeof fast), 0) << t << ": " << fast << " vs " << ref;
  }
  EXPECT_GT(fast_taken, 50000u);
  float v = 0;
  for (const char* slow : {"1e5", "inf", ".5", "1.", "16777217", "1.00000000001", "-", ""}) {
    EXPECT_EQ(parse_float_fast(slow, slow + std::strlen(slow), &v), nullptr) << slow;
  }
}

// ---- CSV bad input: each names the file and the line ----

struct BadCsv {
  const char* name;
  std::string text;
  HeaderMode header;
  const char* label;
  Code code;
  std::string line;  // ":N:" expected in the message ("" when the error has no line)
  std::string what;  // expected in the message
};

class UserCsvBad : public ::testing::TestWithParam<BadCsv> {};

TEST_P(UserCsvBad, ErrorNamesFileLineAndWhatWasExpected) {
  const BadCsv& c = GetParam();
  ScratchDir dir;
  const std::string p = dir.file("bad.csv");
  write_text(p, c.text);
  LoadOptions o = raw_options();
  o.header = c.header;
  o.label = c.label;
  auto r = load("csv:" + p, o);
  expect_error(r.status(), c.code, {p + c.line, c.what});
}

INSTANTIATE_TEST_SUITE_P(
    All, UserCsvBad,
    ::testing::Values(
        BadCsv{"ragged_short", "1,2,0\n3,4,1\n5,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":3:",
               "expected 3 fields (as on line 1), got 2"},
        BadCsv{"ragged_long", "1,2,0\n3,4,1,7\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:",
               "expected 3 fields (as on line 1), got 4"},
        BadCsv{"trailing_comma", "1,2,0\n3,4,\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:", "label (field 3) is empty"},
        BadCsv{"non_numeric", "1,2,0\n3,4,1\n\n3,x4,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":4:",
               "field 2 'x4' is not a finite number"},
        BadCsv{"number_then_text", "1,2,0\n3,4.5.6,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:",
               "field 2 '4.5.6'"},
        BadCsv{"empty_feature", "1,2,0\n ,4,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:", "field 1 is empty"},
        BadCsv{"nan", "1,2,0\n3,nan,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:", "field 2 'nan' is not a finite"},
        BadCsv{"inf", "1,2,0\n-inf,4,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:", "field 1 '-inf'"},
        BadCsv{"overflow", "1,2,0\n1e39,4,1\n", HeaderMode::kAuto, "", Code::kCorrupt, ":2:", "field 1 '1e39'"},
        BadCsv{"empty_file", "", HeaderMode::kAuto, "", Code::kCorrupt, "", "empty file"},
        BadCsv{"blank_lines_only", "\n  \r\n\n", HeaderMode::kAuto, "", Code::kCorrupt, "", "empty file"},
        BadCsv{"header_only", "a,b,y\n", HeaderMode::kAuto, "", Code::kCorrupt, "", "no data rows"},
        BadCsv{"one_class", "1,2,7\n3,4,7\n5,6,7\n", HeaderMode::kAuto, "", Code::kInvalidArgument, "",
               "only one class (label '7')"},
        BadCsv{"one_field", "1\n2\n", HeaderMode::kAuto, "", Code::kCorrupt, ":1:", "at least 2"},
        BadCsv{"label_name_missing", "a,b,y\n1,2,0\n", HeaderMode::kAuto, "species",
               Code::kInvalidArgument, ":1:", "label column 'species' not in the header (columns: a, b, y)"},
        BadCsv{"label_index_missing", "1,2,0\n3,4,1\n", HeaderMode::kAuto, "3",
               Code::kInvalidArgument, ":1:", "label column 3 does not exist (rows have 3 fields"},
        BadCsv{"label_name_without_header", "1,2,0\n3,4,1\n", HeaderMode::kNo, "y",
               Code::kInvalidArgument, "", "header is off"}),
    [](const ::testing::TestParamInfo<BadCsv>& i) { return std::string(i.param.name); });

TEST(UserCsv, TruncatedGzipNamesTheFile) {
  ScratchDir dir;
  std::string text;
  for (int i = 0; i < 2000; ++i) text += std::to_string(i) + "," + std::to_string(i % 2) + "\n";
  auto gz = gzip(std::vector<uint8_t>(text.begin(), text.end()));
  gz.resize(gz.size() / 2);
  const std::string p = dir.file("t.csv.gz");
  write_bytes(p, gz);
  auto r = load("csv:" + p, raw_options());
  expect_error(r.status(), Code::kCorrupt, {p, "truncated"});
}

TEST(UserCsv, MissingFileIsNotFound) {
  auto r = load("csv:/nonexistent/mycel/x.csv", raw_options());
  expect_error(r.status(), Code::kNotFound, {"/nonexistent/mycel/x.csv"});
}

// ---- splits and standardisation ----

TEST(UserSplit, StratifiedSplitKeepsClassProportions) {
  ScratchDir dir;
  std::string text;
  for (int i = 0; i < 400; ++i) text += std::to_string(i) + "," + (i < 300 ? "a" : "b") + "\n";
  const std::string p = dir.file("t.csv");
  write_text(p, text);
  LoadOptions o = raw_options();
  o.test_fraction = 0.25;
  o.seed = 3;
  auto s = load("csv:" + p, o);
  ASSERT_TRUE(s) << s.status().to_string();
  EXPECT_EQ(class_counts(s->train), (std::vector<size_t>{225, 75}));
  EXPECT_EQ(class_counts(s->test), (std::vector<size_t>{75, 25}));
  // Disjoint and complete: every row once, on one side.
  std::vector<int> seen(400, 0);
  for (const Dataset* d : {&s->train, &s->test})
    for (float v : d->x) ++seen[static_cast<size_t>(v)];
  for (int c : seen) EXPECT_EQ(c, 1);
  // The same seed draws the same split; another seed another one.
  auto again = load("csv:" + p, o);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->test.x, s->test.x);
  o.seed = 4;
  auto other = load("csv:" + p, o);
  ASSERT_TRUE(other);
  EXPECT_NE(other->test.x, s->test.x);
}

TEST(UserSplit, StandardisationUsesTrainingStatisticsOnly) {
  ScratchDir dir;
  // Train feature 0: 1, 2, 3, 6 (mean 3, population std sqrt(3.5)); feature 1 constant 5.
  write_text(dir.file("train.csv"), "1,5,0\n2,5,1\n3,5,0\n6,5,1\n");
  write_text(dir.file("test.csv"), "100,9,0\n-4,5,1\n");
  LoadOptions o;  // normalize: auto -> on for csv
  o.test = dir.file("test.csv");
  auto s = load("csv:" + dir.file("train.csv"), o);
  ASSERT_TRUE(s) << s.status().to_string();
  const double sd = std::sqrt(3.5);
  EXPECT_NEAR(s->train.x[0], (1 - 3) / sd, 1e-6);
  EXPECT_NEAR(s->train.x[6], (6 - 3) / sd, 1e-6);
  EXPECT_NEAR(s->test.x[0], (100 - 3) / sd, 1e-4);  // the test rows' own stats are ignored
  EXPECT_NEAR(s->test.x[2], (-4 - 3) / sd, 1e-6);
  EXPECT_FLOAT_EQ(s->train.x[1], 0.f);  // constant: only centred
  EXPECT_FLOAT_EQ(s->test.x[1], 4.f);
  o.normalize = Normalize::kOff;
  auto raw = load("csv:" + dir.file("train.csv"), o);
  ASSERT_TRUE(raw);
  EXPECT_FLOAT_EQ(raw->test.x[0], 100.f);
}

TEST(UserSplit, TooFewRowsToSplitIsAnError) {
  ScratchDir dir;
  write_text(dir.file("t.csv"), "1,0\n2,1\n");
  auto s = load("csv:" + dir.file("t.csv"), raw_options());
  expect_error(s.status(), Code::kInvalidArgument, {dir.file("t.csv"), "too few"});
}

// ---- specs ----

TEST(UserSpec, ParsesEachFormAndRefusesMalformedOnes) {
  auto c = parse_data_spec("csv:data/x.csv.gz");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->kind, DataSpec::Kind::kCsv);
  EXPECT_EQ(c->path, "data/x.csv.gz");
  auto n = parse_data_spec("npy:a/X.npy,a/Y.npy");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->kind, DataSpec::Kind::kNpy);
  EXPECT_EQ(n->path, "a/X.npy");
  EXPECT_EQ(n->y_path, "a/Y.npy");
  auto i = parse_data_spec("idx:some/dir/");
  ASSERT_TRUE(i);
  EXPECT_EQ(i->path, "some/dir");
  ASSERT_TRUE(parse_data_spec("letter"));
  for (const char* bad : {"csv:", "npy:X.npy", "npy:a,b,c", "npy:,b", "tsv:x", "cifar", "idx:"}) {
    auto r = parse_data_spec(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
  }
  EXPECT_NE(parse_data_spec("cifar").status().message().find("csv:PATH"), std::string::npos);
}

// ---- IDX ----

TEST(UserIdx, FourFilesPlainAndGzipped) {
  ScratchDir dir;
  std::vector<uint8_t> train_px(3 * 2 * 2), test_px(2 * 2 * 2);
  for (size_t i = 0; i < train_px.size(); ++i) train_px[i] = uint8_t(i * 20);
  for (size_t i = 0; i < test_px.size(); ++i) test_px[i] = uint8_t(255 - i);
  write_bytes(dir.file("train-images-idx3-ubyte"), idx({3, 2, 2}, train_px));
  write_bytes(dir.file("train-labels-idx1-ubyte.gz"), gzip(idx({3}, {3, 7, 3})));
  write_bytes(dir.file("t10k-images-idx3-ubyte.gz"), gzip(idx({2, 2, 2}, test_px)));
  write_bytes(dir.file("t10k-labels-idx1-ubyte"), idx({2}, {7, 9}));
  auto s = load("idx:" + dir.path(), LoadOptions{});
  ASSERT_TRUE(s) << s.status().to_string();
  EXPECT_EQ(s->train.n, 3u);
  EXPECT_EQ(s->test.n, 2u);
  EXPECT_EQ(s->train.channels, 1);
  EXPECT_EQ(s->train.height, 2);
  EXPECT_EQ(s->train.class_names, (std::vector<std::string>{"3", "7", "9"}));
  EXPECT_EQ(s->train.y, (std::vector<int32_t>{0, 1, 0}));
  EXPECT_EQ(s->test.y, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(s->train.x[1], 20.f / 255.f);  // pixels to [0, 1], not standardised
  EXPECT_FLOAT_EQ(s->test.x[0], 1.f);
}

TEST(UserIdx, MissingFileAndTruncatedFileNameThePath) {
  ScratchDir dir;
  write_bytes(dir.file("train-images-idx3-ubyte"), idx({3, 2, 2}, std::vector<uint8_t>(12)));
  auto r = load("idx:" + dir.path(), LoadOptions{});
  expect_error(r.status(), Code::kNotFound, {dir.path(), "train-labels-idx1"});
  write_bytes(dir.file("train-labels-idx1-ubyte"), idx({3}, {0, 1, 0}));
  write_bytes(dir.file("t10k-images-idx3-ubyte"), idx({2, 2, 2}, std::vector<uint8_t>(5)));
  write_bytes(dir.file("t10k-labels-idx1-ubyte"), idx({2}, {0, 1}));
  // idx() appends what it is given: 5 bytes where the header says 8.
  r = load("idx:" + dir.path(), LoadOptions{});
  expect_error(r.status(), Code::kCorrupt, {dir.file("t10k-images-idx3-ubyte"), "truncated"});
}

// ---- .npy ----

// A .npy file as numpy.save writes it: magic, version, header length, the header dict padded
// with spaces to a multiple of 64 (16 for 1.0 in old numpy; either is valid) and '\n', data.
std::vector<uint8_t> npy(const std::string& descr, const std::vector<size_t>& shape,
                         const void* data, size_t bytes, int major = 1, bool fortran = false) {
  std::string sh = "(";
  for (size_t i = 0; i < shape.size(); ++i) sh += std::to_string(shape[i]) + (i + 1 < shape.size() ? ", " : "");
  if (shape.size() == 1) sh += ",";
  sh += ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                  ", 'shape': " + sh + ", }";
  const size_t pre = major == 1 ? 10 : 12;
  while ((pre + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::vector<uint8_t> b = {0x93, 'N', 'U', 'M', 'P', 'Y', uint8_t(major), 0};
  const size_t n = h.size();
  b.push_back(uint8_t(n));
  b.push_back(uint8_t(n >> 8));
  if (major != 1) {
    b.push_back(uint8_t(n >> 16));
    b.push_back(uint8_t(n >> 24));
  }
  b.insert(b.end(), h.begin(), h.end());
  const auto* p = static_cast<const uint8_t*>(data);
  b.insert(b.end(), p, p + bytes);
  return b;
}

template <typename T>
std::vector<uint8_t> npy_of(const std::string& descr, const std::vector<size_t>& shape,
                            const std::vector<T>& v, int major = 1, bool fortran = false) {
  return npy(descr, shape, v.data(), v.size() * sizeof(T), major, fortran);
}

TEST(UserNpy, Float32FeaturesInt64Labels) {
  ScratchDir dir;
  std::vector<float> x(10 * 3);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) * 0.5f - 3.f;
  std::vector<int64_t> y = {5, 1, 5, 1, 2, 2, 1, 5, 1, 2};
  write_bytes(dir.file("X.npy"), npy_of("<f4", {10, 3}, x));
  write_bytes(dir.file("Y.npy"), npy_of("<i8", {10}, y));
  auto t = read_user_npy(dir.file("X.npy"), dir.file("Y.npy"));
  ASSERT_TRUE(t) << t.status().to_string();
  auto s = assign_classes(std::move(*t), nullptr, "npy");
  ASSERT_TRUE(s) << s.status().to_string();
  EXPECT_EQ(s->train.x, x);
  EXPECT_EQ(s->train.dim, 3u);
  EXPECT_EQ(s->train.channels, 0);
  EXPECT_EQ(s->train.class_names, (std::vector<std::string>{"1", "2", "5"}));
  EXPECT_EQ(s->train.y, (std::vector<int32_t>{2, 0, 2, 0, 1, 1, 0, 2, 0, 1}));
  // Through load(), with a split drawn: 10 rows, 0.2 -> 2 test rows (round(4*.2)+round(3*.2)*2).
  auto l = load("npy:" + dir.file("X.npy") + "," + dir.file("Y.npy"), raw_options());
  ASSERT_TRUE(l) << l.status().to_string();
  EXPECT_EQ(l->train.n + l->test.n, 10u);
}

TEST(UserNpy, EveryDtypeAndFormatVersion) {
  ScratchDir dir;
  const std::vector<double> xd = {0.25, -1e10, 3, 4, 5, 6};
  const std::vector<uint8_t> xu = {0, 51, 255, 102, 0, 0, 1, 2};
  struct YCase {
    const char* descr;
    std::vector<uint8_t> bytes;
  };
  // Labels {0, 1} as every integer type.
  std::vector<YCase> ys;
  auto add = [&]<typename T>(const char* d, T) {
    std::vector<T> v = {T(1), T(0)};
    ys.push_back({d, std::vector<uint8_t>(reinterpret_cast<uint8_t*>(v.data()),
                                          reinterpret_cast<uint8_t*>(v.data()) + 2 * sizeof(T))});
  };
  add("|i1", int8_t{}), add("|u1", uint8_t{}), add("<i2", int16_t{}), add("<u2", uint16_t{});
  add("<i4", int32_t{}), add("<u4", uint32_t{}), add("<i8", int64_t{}), add("<u8", uint64_t{});
  for (int major : {1, 2, 3}) {
    for (const auto& yc : ys) {
      write_bytes(dir.file("Y.npy"), npy(yc.descr, {2}, yc.bytes.data(), yc.bytes.size(), major));
      write_bytes(dir.file("X.npy"), npy_of("<f8", {2, 3}, xd, major));
      auto a = read_user_npy(dir.file("X.npy"), dir.file("Y.npy"));
      ASSERT_TRUE(a) << yc.descr << " v" << major << ": " << a.status().to_string();
      EXPECT_EQ(a->d.x[1], -1e10f);
      EXPECT_EQ(a->labels, (std::vector<std::string>{"1", "0"})) << yc.descr;
      // uint8 images of shape (n, h, w): scaled to [0, 1], shape kept.
      write_bytes(dir.file("X.npy"), npy_of("|u1", {2, 2, 2}, xu, major));
      auto b = read_user_npy(dir.file("X.npy"), dir.file("Y.npy"));
      ASSERT_TRUE(b) << b.status().to_string();
      EXPECT_EQ(b->d.channels, 1);
      EXPECT_EQ(b->d.height, 2);
      EXPECT_EQ(b->d.width, 2);
      EXPECT_FLOAT_EQ(b->d.x[2], 1.f);
      EXPECT_FLOAT_EQ(b->d.x[1], 0.2f);
    }
  }
}

TEST(UserNpy, BadInputNamesTheFile) {
  ScratchDir dir;
  const std::string X = dir.file("X.npy"), Y = dir.file("Y.npy");
  const std::vector<float> x(12, 1.f);
  const std::vector<int32_t> y = {0, 1, 0, 1};
  write_bytes(Y, npy_of("<i4", {4}, y));
  auto try_load = [&] { return read_user_npy(X, Y).status(); };

  auto trunc = npy_of("<f4", {4, 3}, x);
  trunc.resize(trunc.size() - 5);
  write_bytes(X, trunc);
  expect_error(try_load(), Code::kCorrupt, {X, "size mismatch", "(truncated)"});

  auto extra = npy_of("<f4", {4, 3}, x);
  extra.push_back(0);
  write_bytes(X, extra);
  expect_error(try_load(), Code::kCorrupt, {X, "(trailing bytes)"});

  write_bytes(X, std::vector<uint8_t>{0x93, 'N', 'U', 'M'});
  expect_error(try_load(), Code::kCorrupt, {X, "not a .npy file"});

  auto hdr = npy_of("<f4", {4, 3}, x);
  hdr.resize(40);  // inside the header
  write_bytes(X, hdr);
  expect_error(try_load(), Code::kCorrupt, {X, "truncated .npy header"});

  write_bytes(X, npy_of("<f4", {4, 3}, x, 1, /*fortran=*/true));
  expect_error(try_load(), Code::kInvalidArgument, {X, "Fortran-order"});

  write_bytes(X, npy_of("<f4", {5, 3}, std::vector<float>(15, 1.f)));
  expect_error(try_load(), Code::kInvalidArgument, {X, "5 rows", Y, "4 labels"});

  std::vector<float> nan = x;
  nan[7] = std::nanf("");
  write_bytes(X, npy_of("<f4", {4, 3}, nan));
  expect_error(try_load(), Code::kCorrupt, {X, "element 1 of row 2", "NaN or Inf"});

  write_bytes(X, npy_of(">f4", {4, 3}, x));
  expect_error(try_load(), Code::kCorrupt, {X, "big-endian"});

  write_bytes(X, npy_of("<i4", {4, 3}, std::vector<int32_t>(12)));
  expect_error(try_load(), Code::kInvalidArgument, {X, "float32, float64 or uint8"});

  write_bytes(X, npy_of("<f4", {12}, x));
  expect_error(try_load(), Code::kInvalidArgument, {X, "shape (n, d) or (n, h, w)"});

  write_bytes(X, npy_of("<f4", {4, 3}, x));
  write_bytes(Y, npy_of("<f4", {4}, std::vector<float>(4)));
  expect_error(try_load(), Code::kInvalidArgument, {Y, "labels must be integers"});

  write_bytes(Y, gzip(npy_of("<i4", {4}, y)));  // a gzipped .npy is read too; truncated is not
  EXPECT_TRUE(try_load().is_ok()) << try_load().to_string();
  auto gz = gzip(npy_of("<i4", {4}, y));
  gz.resize(gz.size() - 6);
  write_bytes(Y, gz);
  expect_error(try_load(), Code::kCorrupt, {Y, "truncated"});

  write_bytes(Y, npy_of("<i4", {4}, std::vector<int32_t>{3, 3, 3, 3}));
  auto one = load("npy:" + X + "," + Y, raw_options());
  expect_error(one.status(), Code::kInvalidArgument, {"only one class"});
}

}  // namespace
}  // namespace mycel::data
