#include <gtest/gtest.h>

#include <thread>

#include "runtime/config/config.h"

namespace mycel::runtime {
namespace {

TEST(Config, EmptyTextGivesDefaults) {
  auto c = parse_config("", "t.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->protocol.name, "gossip");
  EXPECT_EQ(c->params.codec, "int8");
  EXPECT_EQ(c->peers.count, 16);
  EXPECT_EQ(c->train.batch, 32);
  EXPECT_EQ(c->flat.size(), config_schema().size());
}

TEST(Config, ParsesNestedValues) {
  auto c = parse_config(R"(
name: spam
seed: 7
data:
  dataset: spambase
  partition: iid
model: logreg
train:
  lr: 0.5
  batch: 16
protocol:
  name: fedavg
  client_fraction: 0.25
codec:
  spec: topk:0.1+zstd
  error_feedback: false
peers:
  count: 3
  addresses: [ucx://a:1, ucx://b:2, ucx://c:3]
run:
  rounds: 10
  duration_s: 0
)",
                        "t.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->name, "spam");
  EXPECT_EQ(c->seed, 7u);
  EXPECT_EQ(c->data.dataset, "spambase");
  EXPECT_DOUBLE_EQ(c->params.lr, 0.5);
  EXPECT_EQ(c->train.batch, 16);
  EXPECT_EQ(c->protocol.name, "fedavg");
  EXPECT_DOUBLE_EQ(c->protocol.client_fraction, 0.25);
  EXPECT_EQ(c->params.codec, "topk:0.1+zstd");
  EXPECT_FALSE(c->params.error_feedback);
  ASSERT_EQ(c->peers.addresses.size(), 3u);
  EXPECT_EQ(c->peers.addresses[1], "ucx://b:2");
  EXPECT_EQ(c->rounds, 10u);
}

// Each kind of mistake names the key, the line and what was expected.
TEST(Config, UnknownKeyNamesKeyLineAndSuggestion) {
  auto c = parse_config("seed: 1\ntrain:\n  lrr: 0.1\n", "exp.yaml");
  ASSERT_FALSE(c.is_ok());
  const std::string m = c.status().message();
  EXPECT_NE(m.find("exp.yaml:3"), std::string::npos) << m;
  EXPECT_NE(m.find("train.lrr"), std::string::npos) << m;
  EXPECT_NE(m.find("train.lr'?"), std::string::npos) << m;
}

TEST(Config, WrongTypeNamesExpectation) {
  auto c = parse_config("train:\n  batch: many\n", "exp.yaml");
  ASSERT_FALSE(c.is_ok());
  const std::string m = c.status().message();
  EXPECT_NE(m.find("exp.yaml:2"), std::string::npos) << m;
  EXPECT_NE(m.find("train.batch"), std::string::npos) << m;
  EXPECT_NE(m.find("integer"), std::string::npos) << m;
}

TEST(Config, OutOfRangeAndBadChoiceAndBadCodec) {
  auto a = parse_config("train:\n  batch: 0\n");
  ASSERT_FALSE(a.is_ok());
  EXPECT_NE(a.status().message().find("out of range"), std::string::npos);
  auto b = parse_config("protocol:\n  name: telepathy\n");
  ASSERT_FALSE(b.is_ok());
  EXPECT_NE(b.status().message().find("gossip|push-pull|dpsgd|fedavg"), std::string::npos);
  auto c = parse_config("codec:\n  spec: int9\n");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("codec.spec"), std::string::npos);
}

// data.dataset is checked by the data layer: built-in names and csv:/idx:/npy: specs pass,
// anything else is an error naming the key and the line.
TEST(Config, DataSetNamesAndUserDataKeys) {
  auto c = parse_config(R"(
data:
  dataset: csv:data/digits/digits.csv.gz
  header: no
  label: "0"
  test: other.csv
  test_fraction: 0.3
  normalize: false
)",
                        "u.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->data.dataset, "csv:data/digits/digits.csv.gz");
  const data::LoadOptions lo = load_options(c->data, 9);
  EXPECT_EQ(lo.header, data::HeaderMode::kNo);
  EXPECT_EQ(lo.label, "0");
  EXPECT_EQ(lo.test, "other.csv");
  EXPECT_DOUBLE_EQ(lo.test_fraction, 0.3);
  EXPECT_EQ(lo.normalize, data::Normalize::kOff);
  EXPECT_EQ(lo.seed, 9u);
  auto d = parse_config("");
  ASSERT_TRUE(d.is_ok());
  EXPECT_EQ(load_options(d->data, 1).header, data::HeaderMode::kAuto);
  EXPECT_EQ(load_options(d->data, 1).normalize, data::Normalize::kAuto);
  EXPECT_DOUBLE_EQ(load_options(d->data, 1).test_fraction, 0.2);
  for (const char* ok : {"idx:some/dir", "npy:X.npy,Y.npy", "letter"}) {
    EXPECT_TRUE(parse_config(std::string("data:\n  dataset: ") + ok + "\n").is_ok()) << ok;
  }
  for (const char* bad : {"cifar", "csv:", "npy:X.npy", "tsv:a.tsv"}) {
    auto b = parse_config(std::string("seed: 1\ndata:\n  dataset: '") + bad + "'\n", "b.yaml");
    ASSERT_FALSE(b.is_ok()) << bad;
    EXPECT_NE(b.status().message().find("b.yaml:3"), std::string::npos) << b.status().message();
    EXPECT_NE(b.status().message().find("data.dataset"), std::string::npos) << b.status().message();
  }
  EXPECT_FALSE(parse_config("data:\n  header: maybe\n").is_ok());
  EXPECT_FALSE(parse_config("data:\n  normalize: sometimes\n").is_ok());
  EXPECT_FALSE(parse_config("data:\n  test_fraction: 1.5\n").is_ok());
}

TEST(Config, StructuralMistakes) {
  EXPECT_FALSE(parse_config("train: 3\n").is_ok());            // section given a scalar
  EXPECT_FALSE(parse_config("- a\n- b\n").is_ok());            // not a mapping
  EXPECT_FALSE(parse_config("seed: [1, 2]\n").is_ok());        // list for a scalar
  EXPECT_FALSE(parse_config("seed: 1\nseed: 2\n").is_ok());    // duplicate
  auto s = parse_config("seed: 1\n  bad indent: [\n", "x.yaml");  // syntax error
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.status().message().find("x.yaml:"), std::string::npos);
  auto n = parse_config("peers:\n  count: 2\n  addresses: [ucx://a:1]\n");
  ASSERT_FALSE(n.is_ok());
  EXPECT_NE(n.status().message().find("peers.count"), std::string::npos);
  EXPECT_FALSE(parse_config("run:\n  duration_s: 0\n  rounds: 0\n").is_ok());
}

TEST(Config, MissingFileIsNotFound) {
  auto c = load_config("/nonexistent/exp.yaml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), Code::kNotFound);
}

TEST(Config, OverridesAreValidated) {
  auto c = parse_config("");
  ASSERT_TRUE(c.is_ok());
  auto d = apply_overrides(*c, {"train.lr=0.2", "peers.count=4"});
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_DOUBLE_EQ(d->params.lr, 0.2);
  EXPECT_EQ(d->peers.count, 4);
  EXPECT_FALSE(apply_overrides(*c, {"train.lr=-1"}).is_ok());
  EXPECT_FALSE(apply_overrides(*c, {"nope=1"}).is_ok());
  EXPECT_FALSE(apply_overrides(*c, {"train.lr"}).is_ok());
}

TEST(Config, DescribeListsEveryKey) {
  std::string text = describe_schema(false), md = describe_schema(true);
  for (const auto& k : config_schema()) {
    EXPECT_NE(text.find(std::string(k.path)), std::string::npos) << k.path;
    EXPECT_NE(md.find("`" + std::string(k.path) + "`"), std::string::npos) << k.path;
  }
}

TEST(ParamStore, ReplaceIsAtomicAndValidated) {
  ParamStore store(RuntimeParams{});
  auto before = store.get();
  RuntimeParams bad = *before;
  bad.period_s = -1;
  EXPECT_FALSE(store.replace(bad).is_ok());
  EXPECT_EQ(store.version(), 1u);
  bad = *before;
  bad.codec = "int9";
  EXPECT_FALSE(store.replace(bad).is_ok());
  EXPECT_EQ(store.get()->codec, "int8");

  // Readers always see a whole set: codec and lr are changed together.
  std::atomic<bool> stop{false}, torn{false};
  std::thread reader([&] {
    while (!stop) {
      auto p = store.get();
      if ((p->codec == "fp16") != (p->lr == 0.25)) torn = true;
    }
  });
  for (int i = 0; i < 2000; ++i) {
    RuntimeParams p = *store.get();
    p.codec = i % 2 ? "fp16" : "int8";
    p.lr = i % 2 ? 0.25 : 0.05;
    ASSERT_TRUE(store.replace(p).is_ok());
  }
  stop = true;
  reader.join();
  EXPECT_FALSE(torn);
  EXPECT_EQ(store.version(), 2001u);
  EXPECT_EQ(before->codec, "int8");  // an old snapshot stays valid
}

}  // namespace
}  // namespace mycel::runtime
