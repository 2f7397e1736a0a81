// IDX and CSV readers on files the tests write byte by byte: exact values for valid files, the
// right error (kCorrupt naming the file, never a crash or an out-of-bounds read) for truncated,
// corrupt and inconsistent ones.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "data_test_util.h"
#include "models/data/readers.h"

namespace mycel::data {
namespace {

using testing_util::gzip;
using testing_util::idx;
using testing_util::ScratchDir;
using testing_util::write_bytes;
using testing_util::write_text;

// 3 images of 2 rows x 3 columns with known pixels, and their labels.
std::vector<uint8_t> pixels() {
  std::vector<uint8_t> p(18);
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>(i * 15);  // 0..255
  return p;
}
const std::vector<uint8_t> kLabels = {7, 0, 9};

TEST(DataIdx, ParsesHeaderAndData) {
  auto r = parse_idx(idx({3, 2, 3}, pixels()), "mem");
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->dims, (std::vector<uint32_t>{3, 2, 3}));
  EXPECT_EQ(r->data, pixels());
}

class DataIdxFiles : public ::testing::TestWithParam<bool> {};  // param: gzipped

TEST_P(DataIdxFiles, ReadsImagesAndLabelsExactly) {
  ScratchDir dir;
  const bool gz = GetParam();
  auto enc = [&](const std::vector<uint8_t>& b) { return gz ? gzip(b) : b; };
  const std::string img = dir.file(gz ? "img.gz" : "img"), lab = dir.file(gz ? "lab.gz" : "lab");
  write_bytes(img, enc(idx({3, 2, 3}, pixels())));
  write_bytes(lab, enc(idx({3}, kLabels)));
  auto r = read_idx_dataset(img, lab, "tiny", 10);
  ASSERT_TRUE(r) << r.status().to_string();
  const Dataset& d = *r;
  EXPECT_EQ(d.name, "tiny");
  EXPECT_EQ(d.n, 3u);
  EXPECT_EQ(d.dim, 6u);
  EXPECT_EQ(d.channels, 1);
  EXPECT_EQ(d.height, 2);
  EXPECT_EQ(d.width, 3);
  EXPECT_EQ(d.classes, 10);
  EXPECT_EQ(d.y, (std::vector<int32_t>{7, 0, 9}));
  ASSERT_EQ(d.x.size(), 18u);
  for (size_t i = 0; i < 18; ++i) EXPECT_FLOAT_EQ(d.x[i], static_cast<float>(i * 15) / 255.0f) << i;
  EXPECT_FLOAT_EQ(d.row(2)[5], 1.0f);
  EXPECT_FLOAT_EQ(d.row(0)[0], 0.0f);
}

TEST_P(DataIdxFiles, TruncatedAnywhereIsCorruptAndNamesTheFile) {
  ScratchDir dir;
  const bool gz = GetParam();
  const auto full = idx({3, 2, 3}, pixels());
  const auto bytes = gz ? gzip(full) : full;
  const std::string lab = dir.file("lab");
  write_bytes(lab, idx({3}, kLabels));
  // Cut points: empty, inside the magic, after it, inside the dimensions, at the end of the
  // header, inside the data, one byte short.
  for (size_t cut : {size_t{0}, size_t{1}, size_t{3}, size_t{4}, size_t{9}, size_t{15}, size_t{16},
                     size_t{17}, size_t{25}, bytes.size() - 1}) {
    if (cut >= bytes.size()) continue;
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(bytes.size()));
    const std::string img = dir.file("img_" + std::to_string(cut));
    write_bytes(img,
                std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(cut)));
    auto r = read_idx_dataset(img, lab, "tiny", 10);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().to_string();
    EXPECT_NE(r.status().message().find(img), std::string::npos) << r.status().message();
  }
}

TEST_P(DataIdxFiles, TrailingBytesAreCorrupt) {
  ScratchDir dir;
  auto full = idx({3}, kLabels);
  full.push_back(1);
  const std::string p = dir.file("lab");
  write_bytes(p, GetParam() ? gzip(full) : full);
  auto r = read_idx(p);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_NE(r.status().message().find("trailing"), std::string::npos) << r.status().message();
}

INSTANTIATE_TEST_SUITE_P(PlainAndGzip, DataIdxFiles, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "gzip" : "plain"; });

TEST(DataIdx, BadMagicTypeAndDimensionCount) {
  auto good = idx({3}, kLabels);
  struct Case {
    size_t at;
    uint8_t value;
    const char* needle;
  };
  for (const Case& c : {Case{0, 1, "magic"}, Case{1, 8, "magic"}, Case{2, 0x0D, "0x0d"},
                        Case{3, 0, "dimension count"}, Case{3, 5, "dimension count"}}) {
    auto b = good;
    b[c.at] = c.value;
    auto r = parse_idx(b, "file.idx");
    ASSERT_FALSE(r) << c.at;
    EXPECT_EQ(r.status().code(), Code::kCorrupt);
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("file.idx"), std::string::npos);
  }
}

TEST(DataIdx, ZeroAndOverflowingDimensionsAreRejectedWithoutAllocating) {
  auto r0 = parse_idx(idx({3, 0, 3}, {}), "z");
  ASSERT_FALSE(r0);
  EXPECT_EQ(r0.status().code(), Code::kCorrupt);
  // 2^32-1 ^ 3 would overflow 64 bits; 2^32-1 ^ 2 does not but is far past the file's length.
  auto r1 = parse_idx(idx({0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, {1, 2, 3}), "big3");
  ASSERT_FALSE(r1);
  EXPECT_NE(r1.status().message().find("overflow"), std::string::npos) << r1.status().message();
  auto r2 = parse_idx(idx({0xFFFFFFFFu, 0xFFFFFFFFu}, {1, 2, 3}), "big2");
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.status().message().find("truncated"), std::string::npos) << r2.status().message();
}

TEST(DataIdx, ImageAndLabelFilesMustAgree) {
  ScratchDir dir;
  const std::string img = dir.file("img"), lab = dir.file("lab");
  write_bytes(img, idx({3, 2, 3}, pixels()));
  write_bytes(lab, idx({2}, {1, 2}));  // one label short
  auto r = read_idx_dataset(img, lab, "tiny", 10);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_NE(r.status().message().find("3 images"), std::string::npos) << r.status().message();

  write_bytes(lab, idx({3}, {1, 10, 2}));  // label 10 with 10 classes
  r = read_idx_dataset(img, lab, "tiny", 10);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("label 10"), std::string::npos) << r.status().message();

  write_bytes(img, idx({3, 6}, pixels()));  // images with 2 dimensions
  write_bytes(lab, idx({3}, kLabels));
  r = read_idx_dataset(img, lab, "tiny", 10);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("3 dimensions"), std::string::npos) << r.status().message();

  write_bytes(img, idx({3, 2, 3}, pixels()));  // swapped: labels where images should be
  r = read_idx_dataset(lab, img, "tiny", 10);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
}

TEST(DataGzip, CorruptStreamIsDetected) {
  ScratchDir dir;
  auto gz = gzip(idx({3, 2, 3}, pixels()));
  // Flip a bit in the deflate body and, separately, in the CRC32 trailer: zlib must notice both.
  for (size_t at : {gz.size() / 2, gz.size() - 6}) {
    auto bad = gz;
    bad[at] ^= 0x10;
    const std::string p = dir.file("bad_" + std::to_string(at) + ".gz");
    write_bytes(p, bad);
    auto r = read_file(p);
    ASSERT_FALSE(r) << at;
    EXPECT_EQ(r.status().code(), Code::kCorrupt) << r.status().to_string();
    EXPECT_NE(r.status().message().find(p), std::string::npos);
  }
}

TEST(DataGzip, BombIsCappedAndConcatenatedMembersAreRead) {
  ScratchDir dir;
  const std::string p = dir.file("zeros.gz");
  write_bytes(p, gzip(std::vector<uint8_t>(1 << 20, 0)));
  auto r = read_file(p, 1000);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  auto ok = read_file(p);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->size(), size_t{1} << 20);

  auto a = gzip({1, 2, 3}), b = gzip({4, 5});
  a.insert(a.end(), b.begin(), b.end());
  const std::string q = dir.file("two.gz");
  write_bytes(q, a);
  auto two = read_file(q);
  ASSERT_TRUE(two) << two.status().to_string();
  EXPECT_EQ(*two, (std::vector<uint8_t>{1, 2, 3, 4, 5}));
}

TEST(DataFiles, MissingFileIsNotFound) {
  ScratchDir dir;
  auto r = read_idx(dir.file("nope"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("nope"), std::string::npos);
}

// --- CSV --------------------------------------------------------------------------------------

TEST(DataCsv, IntegerLabelLastWithSpacesAndCrlf) {
  const std::string text = " 1, 2.5,-3,1\r\n0.25,  0 ,1e2,0\r\n\r\n4,5,6,1";  // no final newline
  auto r = parse_csv(text, CsvFormat{3, false, CsvFormat::Label::kInteger, 2}, "t.csv", "t");
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->n, 3u);
  EXPECT_EQ(r->dim, 3u);
  EXPECT_EQ(r->channels, 0);
  EXPECT_EQ(r->classes, 2);
  EXPECT_EQ(r->x, (std::vector<float>{1, 2.5f, -3, 0.25f, 0, 100, 4, 5, 6}));
  EXPECT_EQ(r->y, (std::vector<int32_t>{1, 0, 1}));
}

TEST(DataCsv, LetterLabelFirst) {
  auto r = parse_csv("T,2,8\nA,0,1\nZ,15,15\n", CsvFormat{2, true, CsvFormat::Label::kLetter, 26},
                     "l", "letter");
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->y, (std::vector<int32_t>{19, 0, 25}));
  EXPECT_EQ(r->x, (std::vector<float>{2, 8, 0, 1, 15, 15}));
}

TEST(DataCsv, MalformedRowsNameFileAndLine) {
  const CsvFormat f{3, false, CsvFormat::Label::kInteger, 2};
  struct Case {
    std::string text, needle;
  };
  const std::vector<Case> cases = {
      {"1,2,3,0\n1,2,0\n", "f.csv:2: expected 4 fields, got 3"},
      {"1,2,3,0\n1,2,3,4,0\n", "f.csv:2: expected 4 fields, got 5"},
      {"1,x,3,0\n", "f.csv:1: field 2 'x' is not a finite number"},
      {"1,nan,3,0\n", "not a finite number"},
      {"1,inf,3,0\n", "not a finite number"},
      {"1,,3,0\n", "empty field 2"},
      {"1,2,3,\n", "empty field 4"},
      {"1,2,3,2\n", "label '2' outside [0, 2)"},
      {"1,2,3,-1\n", "outside"},
      {"1,2,3,0.5\n", "not an integer"},
      {"1,2,3e,0\n", "not a finite number"},
      {"\n\r\n", "no data rows"},
  };
  for (const auto& c : cases) {
    auto r = parse_csv(c.text, f, "f.csv", "t");
    ASSERT_FALSE(r) << c.text;
    EXPECT_EQ(r.status().code(), Code::kCorrupt) << c.text;
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos)
        << c.text << " -> " << r.status().message();
  }
  auto bad_letter = parse_csv("a,1\n", CsvFormat{1, true, CsvFormat::Label::kLetter, 26}, "l", "l");
  ASSERT_FALSE(bad_letter);
  EXPECT_NE(bad_letter.status().message().find("capital letter"), std::string::npos);
}

TEST(DataCsv, ReadsGzippedFileToo) {
  ScratchDir dir;
  const std::string text = "1,2,1\n3,4,0\n";
  write_bytes(dir.file("t.csv.gz"), gzip(std::vector<uint8_t>(text.begin(), text.end())));
  write_text(dir.file("t.csv"), text);
  const CsvFormat f{2, false, CsvFormat::Label::kInteger, 2};
  auto a = read_csv(dir.file("t.csv.gz"), f, "t");
  auto b = read_csv(dir.file("t.csv"), f, "t");
  ASSERT_TRUE(a) << a.status().to_string();
  ASSERT_TRUE(b) << b.status().to_string();
  EXPECT_EQ(a->x, b->x);
  EXPECT_EQ(a->y, (std::vector<int32_t>{1, 0}));
}

}  // namespace
}  // namespace mycel::data
