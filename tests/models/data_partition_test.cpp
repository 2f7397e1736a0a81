// Partitioners: disjoint, covering, deterministic from a seed; Dirichlet's label skew grows as
// alpha falls; shards give at most K classes per peer; one-class exactly one.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "data_test_util.h"
#include "models/data/partition.h"

namespace mycel::data {
namespace {

using testing_util::ScratchDir;

// 10 unbalanced classes: class c has 200 + 37c samples, interleaved as in a shuffled file.
std::vector<int32_t> labels10() {
  std::vector<int32_t> y;
  for (int c = 0; c < 10; ++c)
    for (int i = 0; i < 200 + 37 * c; ++i) y.push_back(c);
  // a fixed interleaving: stride through the sorted list
  std::vector<int32_t> out;
  const size_t n = y.size();
  for (size_t k = 0; k < 7; ++k)
    for (size_t i = k; i < n; i += 7) out.push_back(y[i]);
  return out;
}

PartitionSpec spec(std::string_view s) {
  auto r = parse_partition_spec(s);
  EXPECT_TRUE(r) << r.status().to_string();
  return r ? *r : PartitionSpec{};
}

size_t classes_held(const std::vector<size_t>& h) {
  return static_cast<size_t>(std::count_if(h.begin(), h.end(), [](size_t v) { return v > 0; }));
}

struct SchemeCase {
  std::string spec;
  size_t peers;
  bool seed_matters = true;  // one-class with one peer per class has nothing to draw
};

class DataPartitionAll : public ::testing::TestWithParam<SchemeCase> {};

TEST_P(DataPartitionAll, DisjointCoveringAndSeeded) {
  const auto y = labels10();
  const SchemeCase& c = GetParam();
  auto a = partition(y, 10, c.peers, spec(c.spec), 42);
  ASSERT_TRUE(a) << a.status().to_string();
  ASSERT_EQ(a->peers.size(), c.peers);
  std::vector<int> seen(y.size(), 0);
  for (const auto& p : a->peers) {
    EXPECT_FALSE(p.empty());
    EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
    for (size_t i : p) {
      ASSERT_LT(i, y.size());
      ++seen[i];
    }
  }
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(seen[i], 1) << "sample " << i;

  auto b = partition(y, 10, c.peers, spec(c.spec), 42);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->peers, b->peers);
  auto other = partition(y, 10, c.peers, spec(c.spec), 43);
  ASSERT_TRUE(other);
  if (c.seed_matters) {
    EXPECT_NE(a->peers, other->peers);
  } else {
    EXPECT_EQ(a->peers, other->peers);
  }

  // Histograms add up to the class counts.
  const auto h = label_histograms(*a, y, 10);
  std::vector<size_t> tot(10, 0);
  for (const auto& r : h)
    for (size_t k = 0; k < 10; ++k) tot[k] += r[k];
  for (size_t k = 0; k < 10; ++k) EXPECT_EQ(tot[k], 200u + 37u * k);
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, DataPartitionAll,
    ::testing::Values(SchemeCase{"iid", 7}, SchemeCase{"iid", 100}, SchemeCase{"dirichlet:0.5", 10},
                      SchemeCase{"dirichlet:0.1", 50}, SchemeCase{"dirichlet:100", 20},
                      SchemeCase{"shards:2", 10}, SchemeCase{"shards:2", 37},
                      SchemeCase{"shards:1", 4}, SchemeCase{"one-class", 10, false},
                      SchemeCase{"one-class", 23}),
    [](const auto& info) {
      std::string s = info.param.spec + "_" + std::to_string(info.param.peers);
      for (char& ch : s)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return s;
    });

TEST(DataPartition, IidIsBalanced) {
  const auto y = labels10();
  auto p = partition(y, 10, 7, spec("iid"), 1);
  ASSERT_TRUE(p);
  for (const auto& v : p->peers) {
    EXPECT_GE(v.size(), y.size() / 7);
    EXPECT_LE(v.size(), y.size() / 7 + 1);
  }
  EXPECT_LT(mean_label_skew(label_histograms(*p, y, 10)), 0.1);
}

TEST(DataPartition, DirichletSkewGrowsAsAlphaFalls) {
  const auto y = labels10();
  auto skew = [&](double alpha) {
    double s = 0;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      PartitionSpec sp;
      sp.scheme = PartitionSpec::Scheme::kDirichlet;
      sp.alpha = alpha;
      auto p = partition(y, 10, 20, sp, seed);
      EXPECT_TRUE(p) << p.status().to_string();
      if (p) s += mean_label_skew(label_histograms(*p, y, 10));
    }
    return s / 5;
  };
  const double s01 = skew(0.1), s1 = skew(1.0), s100 = skew(100.0);
  EXPECT_GT(s01, s1 + 0.1) << s01 << " vs " << s1;
  EXPECT_GT(s1, s100 + 0.1) << s1 << " vs " << s100;
  EXPECT_LT(s100, 0.15);  // near IID
  EXPECT_GT(s01, 0.5);    // most peers see a few classes
}

TEST(DataPartition, DirichletKeepsTheMinimumPerPeer) {
  const auto y = labels10();
  // alpha 0.01 over 100 peers: redrawing alone almost never gives every peer 20 samples, so
  // this goes through the top-up path too.
  for (const char* s : {"dirichlet:0.5", "dirichlet:0.01:20", "dirichlet:0.1:30"}) {
    const PartitionSpec sp = spec(s);
    auto p = partition(y, 10, 100, sp, 7);
    ASSERT_TRUE(p) << s << ": " << p.status().to_string();
    for (const auto& v : p->peers) EXPECT_GE(v.size(), sp.min_samples) << s;
  }
  // Thousands of peers (the simulator's case): still covering, still at least the minimum.
  auto big = partition(y, 10, 400, spec("dirichlet:0.05:5"), 11);
  ASSERT_TRUE(big) << big.status().to_string();
  size_t total = 0;
  for (const auto& v : big->peers) {
    EXPECT_GE(v.size(), 5u);
    total += v.size();
  }
  EXPECT_EQ(total, y.size());
  auto too_many = partition(y, 10, 100, spec("dirichlet:0.5:1000"), 1);
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.status().code(), Code::kInvalidArgument);
}

TEST(DataPartition, ShardsGiveAtMostKClassesPerPeer) {
  const auto y = labels10();
  for (size_t peers : {5u, 10u, 37u, 100u}) {
    for (size_t k : {1u, 2u, 3u}) {
      PartitionSpec sp;
      sp.scheme = PartitionSpec::Scheme::kShards;
      sp.shards_per_peer = k;
      auto p = partition(y, 10, peers, sp, 3);
      ASSERT_TRUE(p) << peers << " " << k << ": " << p.status().to_string();
      if (k * peers < 10) continue;  // FedAvg's straight cut: shards may straddle classes
      const auto h = label_histograms(*p, y, 10);
      size_t lo = y.size(), hi = 0;
      for (const auto& r : h) {
        EXPECT_LE(classes_held(r), k) << peers << " peers, " << k << " shards each";
        size_t n = 0;
        for (size_t v : r) n += v;
        lo = std::min(lo, n);
        hi = std::max(hi, n);
      }
      // Shards are near-equal once there are a few per class, so peers are too.
      if (k * peers >= 20) {
        EXPECT_LE(hi, 2 * lo) << peers << " peers, " << k;
      }
    }
  }
  // With 10 peers and 2 shards each, peers must mostly hold 2 classes (not 1): the pathological
  // split is about pairs.
  auto p = partition(y, 10, 10, spec("shards:2"), 5);
  ASSERT_TRUE(p);
  size_t two = 0;
  for (const auto& r : label_histograms(*p, y, 10)) two += classes_held(r) == 2;
  EXPECT_GE(two, 5u);
}

TEST(DataPartition, OneClassPerPeer) {
  const auto y = labels10();
  for (size_t peers : {10u, 23u, 40u}) {
    auto p = partition(y, 10, peers, spec("one-class"), 9);
    ASSERT_TRUE(p) << p.status().to_string();
    const auto h = label_histograms(*p, y, 10);
    for (size_t i = 0; i < peers; ++i) {
      EXPECT_EQ(classes_held(h[i]), 1u) << "peer " << i;
      EXPECT_GT(h[i][i % 10], 0u) << "peer " << i << " should hold class " << i % 10;
    }
  }
  auto few = partition(y, 10, 5, spec("one-class"), 1);
  ASSERT_FALSE(few);
  EXPECT_NE(few.status().message().find("10 classes"), std::string::npos) << few.status().message();
  // Classes with no samples are skipped: labels only 0, 3, 7 of 10 -> 3 peers suffice.
  std::vector<int32_t> sparse = {0, 3, 7, 0, 3, 7, 7};
  auto s = partition(sparse, 10, 3, spec("one-class"), 1);
  ASSERT_TRUE(s) << s.status().to_string();
  EXPECT_EQ(s->peers[2], (std::vector<size_t>{2, 5, 6}));
}

TEST(DataPartition, SpecParsing) {
  auto d = parse_partition_spec("dirichlet:0.25:5");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->scheme, PartitionSpec::Scheme::kDirichlet);
  EXPECT_DOUBLE_EQ(d->alpha, 0.25);
  EXPECT_EQ(d->min_samples, 5u);
  EXPECT_EQ(to_string(*d), "dirichlet:0.25:5");
  auto s = parse_partition_spec("shards");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->shards_per_peer, 2u);
  EXPECT_EQ(to_string(*parse_partition_spec("shards:3")), "shards:3");
  EXPECT_EQ(to_string(*parse_partition_spec("one-class")), "one-class");
  EXPECT_EQ(to_string(*parse_partition_spec("iid")), "iid");
  for (const char* bad : {"", "iid:2", "dirichlet", "dirichlet:", "dirichlet:0", "dirichlet:-1",
                          "dirichlet:abc", "dirichlet:nan", "dirichlet:0.5:x", "dirichlet:1:2:3",
                          "shards:0", "shards:two", "shards:1:2", "one-class:3", "label-skew"}) {
    auto r = parse_partition_spec(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("accepted:"), std::string::npos) << r.status().message();
  }
}

TEST(DataPartition, BadArguments) {
  const std::vector<int32_t> y = {0, 1, 2, 1};
  EXPECT_EQ(partition(y, 3, 0, spec("iid"), 1).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(partition(y, 3, 5, spec("iid"), 1).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(partition(std::vector<int32_t>{0, 3}, 3, 1, spec("iid"), 1).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(partition(y, 3, 3, spec("shards:2"), 1).status().code(), Code::kInvalidArgument);
}

TEST(DataPartition, HistogramTableCsvAndPeerView) {
  ScratchDir dir;
  Dataset d;
  d.name = "toy";
  d.n = 6;
  d.dim = 2;
  d.classes = 3;
  d.x = {0, 1, 10, 11, 20, 21, 30, 31, 40, 41, 50, 51};
  d.y = {0, 1, 2, 0, 1, 2};
  Partition part;
  part.peers = {{0, 3}, {1, 2, 4, 5}};
  const auto h = label_histograms(part, d.y, 3);
  EXPECT_EQ(h, (std::vector<std::vector<size_t>>{{2, 0, 0}, {0, 2, 2}}));
  // Global (1/3, 1/3, 1/3): peer 0 is at TV 2/3, peer 1 at 1/3.
  EXPECT_NEAR(mean_label_skew(h), 0.5, 1e-12);
  const std::string table = format_histograms(h);
  EXPECT_NE(table.find("total"), std::string::npos) << table;
  EXPECT_NE(table.find("0.5000"), std::string::npos) << table;

  const std::string csv = dir.file("h.csv");
  ASSERT_TRUE(write_histograms_csv(csv, h));
  std::ifstream f(csv);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), "peer,samples,c0,c1,c2\n0,2,2,0,0\n1,4,0,2,2\n");
  auto bad = write_histograms_csv(dir.file("no/such/dir/h.csv"), h);
  EXPECT_EQ(bad.code(), Code::kIo);

  auto v = peer_dataset(d, part, 1);
  ASSERT_TRUE(v) << v.status().to_string();
  EXPECT_EQ(v->n, 4u);
  EXPECT_EQ(v->classes, 3);
  EXPECT_EQ(v->x, (std::vector<float>{10, 11, 20, 21, 40, 41, 50, 51}));
  EXPECT_EQ(v->y, (std::vector<int32_t>{1, 2, 1, 2}));
  EXPECT_EQ(peer_dataset(d, part, 2).status().code(), Code::kOutOfRange);
  part.peers[0].push_back(6);
  EXPECT_EQ(peer_dataset(d, part, 0).status().code(), Code::kOutOfRange);

  // A long table elides the middle.
  std::vector<std::vector<size_t>> many(100, std::vector<size_t>{1, 2, 3});
  const std::string t = format_histograms(many, 10);
  EXPECT_NE(t.find("90 peers not shown"), std::string::npos) << t;
}

}  // namespace
}  // namespace mycel::data
