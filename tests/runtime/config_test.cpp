#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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

// The reader answers with a value or an error: never an exception, never a hang.
// Each bad input names the key (and, from YAML, the line).
void expect_refused(std::string_view yaml, const std::string& key, const std::string& what = "") {
  Result<ExperimentConfig> c = Error(Code::kInternal, "unset");
  EXPECT_NO_THROW(c = parse_config(yaml, "t.yaml")) << yaml;
  ASSERT_FALSE(c.is_ok()) << "accepted: " << yaml;
  EXPECT_NE(c.status().message().find("'" + key + "'"), std::string::npos) << c.status().message();
  if (!what.empty()) {
    EXPECT_NE(c.status().message().find(what), std::string::npos) << c.status().message();
  }
}

TEST(Config, NumbersThatDoNotFitAreErrors) {
  expect_refused("train:\n  lr: 1e-400\n", "train.lr", "t.yaml:2");
  expect_refused("train:\n  lr: 1e400\n", "train.lr", "t.yaml:2");
  expect_refused("train:\n  lr: nan\n", "train.lr");
  expect_refused("train:\n  lr: inf\n", "train.lr");
  expect_refused("train:\n  lr: 3abc\n", "train.lr");
  expect_refused("seed: 1180591620717411303424\n", "seed", "64-bit");  // 2^70
  expect_refused("seed: -1\n", "seed");
  expect_refused("train:\n  batch: 2.5\n", "train.batch");
  // The same through --set, which used to throw out of std::stod.
  auto base = parse_config("", "t.yaml");
  ASSERT_TRUE(base.is_ok());
  for (std::string o : {"train.lr=1e-400", "train.lr=1e400", "train.lr=nan", "train.lr=3abc",
                        "seed=1180591620717411303424", "train.batch=1.5", "peers.count=-3"}) {
    Result<ExperimentConfig> c = Error(Code::kInternal, "unset");
    EXPECT_NO_THROW(c = apply_overrides(*base, {o}));
    ASSERT_FALSE(c.is_ok()) << o;
    EXPECT_NE(c.status().message().find("'" + o.substr(0, o.find('=')) + "'"), std::string::npos)
        << c.status().message();
  }
}

TEST(Config, NameIsOneSafeFileNameComponent) {
  expect_refused("name: ../../x\n", "name");
  expect_refused("name: a/b\n", "name");
  expect_refused("name: ..\n", "name");
  expect_refused("name: .hidden\n", "name");
  expect_refused("name: 'a\"b'\n", "name");
  expect_refused("name: 'a\\b'\n", "name");
  expect_refused(std::string("name: \"a\\0b\"\n"), "name", "control");  // YAML escape for NUL
  expect_refused(std::string("name: a\xff" "b\n"), "name");
  expect_refused("name: " + std::string(200, 'a') + "\n", "name", "longer");
  auto ok = parse_config("name: run-1_\xc3\xa9t\xc3\xa9\n", "t.yaml");  // UTF-8 is fine
  EXPECT_TRUE(ok.is_ok()) << ok.status().to_string();
  auto base = parse_config("", "t.yaml");
  ASSERT_TRUE(base.is_ok());
  EXPECT_FALSE(apply_overrides(*base, {"name=../x"}).is_ok());
  EXPECT_FALSE(apply_overrides(*base, {std::string("name=a\0b", 8)}).is_ok());
  // Other strings: no control characters, valid UTF-8.
  expect_refused(std::string("model: \"mlp\\x01\"\n"), "model", "control");
  expect_refused(std::string("data:\n  dir: a\xc0\xaf\n"), "data.dir", "UTF-8");  // overlong '/'
}

TEST(Config, SecondYamlDocumentIsRefused) {
  auto c = parse_config("name: a\n---\nname: b\n", "t.yaml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("second YAML document"), std::string::npos) << c.status().message();
}

// Found by the config fuzzer: yaml-cpp 0.7's LoadAll loops for ever (allocating) on this text;
// the reader asks the parser for two documents at most and answers with an error.
TEST(Config, MalformedTextThatLoopsYamlCppLoadAllIsAnError) {
  const std::string text("[1, ],23 \n\xb4", 11);
  auto c = parse_config(text, "t.yaml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("t.yaml:"), std::string::npos) << c.status().message();
  for (const char* t : {",", "[:", "{:", "bad YAML: ["}) {
    auto r = parse_config(t, "u.yaml");
    EXPECT_FALSE(r.is_ok()) << "'" << t << "' was accepted";
  }
}

class ConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mycel-config-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(ConfigFiles, FifoIsRefusedPromptly) {
  std::string fifo = dir_ + "/c.yaml";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto t0 = std::chrono::steady_clock::now();
  auto c = load_config(fifo);  // no writer: a blocking open would hang here
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("not a regular file"), std::string::npos) << c.status().message();
}

TEST_F(ConfigFiles, DevicesDirectoriesAndHugeFilesAreRefused) {
  auto z = load_config("/dev/zero");
  ASSERT_FALSE(z.is_ok());
  EXPECT_NE(z.status().message().find("not a regular file"), std::string::npos) << z.status().message();
  auto d = load_config(dir_);
  ASSERT_FALSE(d.is_ok());
  EXPECT_NE(d.status().message().find("directory"), std::string::npos) << d.status().message();
  EXPECT_FALSE(load_config("").is_ok());
  std::string big = dir_ + "/big.yaml";
  {
    std::ofstream f(big);
    f << "# " << std::string((1 << 20) + 10, 'x') << "\n";
  }
  auto b = load_config(big);
  ASSERT_FALSE(b.is_ok());
  EXPECT_NE(b.status().message().find("limit"), std::string::npos) << b.status().message();
  std::string good = dir_ + "/good.yaml";
  std::ofstream(good) << "name: fine\n";
  auto g = load_config(good);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ(g->name, "fine");
}

TEST(Config, CheckExperimentNamesTheKey) {
  auto base = parse_config("", "t.yaml");
  ASSERT_TRUE(base.is_ok());
  EXPECT_TRUE(check_experiment(*base).is_ok()) << check_experiment(*base).to_string();
  auto refused = [&](const ExperimentConfig& c, const std::string& key) {
    Status s = check_experiment(c);
    ASSERT_FALSE(s.is_ok()) << key;
    EXPECT_NE(s.message().find("'" + key + "'"), std::string::npos) << s.message();
  };
  ExperimentConfig c = *base;
  c.model = "mlp:abc";
  refused(c, "model");
  c = *base;
  c.data.partition = "dirichlet:x";
  refused(c, "data.partition");
  c = *base;
  c.train.schedule = "step:";
  refused(c, "train.schedule");
  c = *base;
  c.device = "gpu";
  refused(c, "device");
  c = *base;
  c.device = "cuda:x";
  refused(c, "device");
  c = *base;
  c.peers.host = "a/b";
  refused(c, "peers.host");
  c = *base;
  c.peers.count = 2;
  c.peers.addresses = {"ucx://a:1", "tcp://b:2"};
  refused(c, "peers.addresses");
  c.peers.addresses = {"ucx://a:1", "ucx://b:99999"};
  refused(c, "peers.addresses");
  c.peers.addresses = {"ucx://a:1", "inproc://b"};
  EXPECT_TRUE(check_experiment(c).is_ok()) << check_experiment(c).to_string();
  c = *base;
  c.protocol.name = "dpsgd";
  c.protocol.topology = "regular";
  c.peers.count = 5;
  c.protocol.degree = 3;  // n * d odd: no 3-regular graph on 5 nodes
  refused(c, "protocol.topology");
  c.protocol.degree = 2;
  EXPECT_TRUE(check_experiment(c).is_ok()) << check_experiment(c).to_string();
}

}  // namespace
}  // namespace mycel::runtime
