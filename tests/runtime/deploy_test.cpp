// runtime/deploy/e2clab: the deploy: section, peer placement and the scenario's text. The
// scenario is validated against E2Clab's schemas by tests/e2clab/test_scenario.py.
#include <gtest/gtest.h>

#include <set>

#include "runtime/config/config.h"
#include "runtime/deploy/e2clab.h"

namespace mycel::runtime::deploy {
namespace {

constexpr const char* kTwoLayers = R"(
name: t
peers:
  count: 30
run:
  duration_s: 600
deploy:
  walltime: "00:20:00"
  base_port: 14000
  layers:
    - {name: edge, cluster: estats, nodes: 5, peers_per_node: 4}
    - {name: cloud, cluster: chuc, nodes: 3, peers_per_node: 4}
  network:
    - {src: edge, dst: cloud, delay: 10ms, rate: 1gbit}
)";

TEST(Deploy, ExperimentReaderIgnoresTheDeploySection) {
  auto c = parse_config(kTwoLayers, "t.yaml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->peers.count, 30);
  auto bad = parse_config("deploy: 3\n", "t.yaml");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("'deploy' is a section"), std::string::npos);
}

TEST(Deploy, PlacesPeersLayerByLayerNodeByNode) {
  auto s = parse_deploy(kTwoLayers, "t.yaml");
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  auto p = place_peers(*s, 30);
  ASSERT_EQ(p.size(), 30u);
  EXPECT_EQ(peers_per_layer(*s, 30), (std::vector<int>{20, 10}));
  std::set<std::pair<int, int>> slots;  // (layer, node, slot) unique per layer via port
  for (const auto& x : p) {
    EXPECT_EQ(x.port, 14000 + x.slot);
    EXPECT_LT(x.slot, 4);
    EXPECT_TRUE(slots.insert({x.layer * 1000 + x.node, x.slot}).second) << "peer " << x.id;
  }
  EXPECT_EQ(p[19].layer, 0);
  EXPECT_EQ(p[19].node, 4);
  EXPECT_EQ(p[20].layer, 1);
  EXPECT_EQ(p[20].node, 0);
  EXPECT_EQ(p[29].node, 2);  // the last cloud node holds 2 peers
  EXPECT_EQ(p[29].slot, 1);
}

TEST(Deploy, CheckSpecAddsJobTypesAndRejectsWhatDoesNotFit) {
  auto c = parse_config(kTwoLayers, "t.yaml");
  auto s = parse_deploy(kTwoLayers, "t.yaml");
  ASSERT_TRUE(c.is_ok() && s.is_ok());
  Spec ok = *s;
  ASSERT_TRUE(check_spec(*c, ok).is_ok());
  EXPECT_EQ(ok.job_name, "t");
  EXPECT_EQ(ok.job_type, (std::vector<std::string>{"exotic"}));
  ExperimentConfig more = *c;
  more.peers.count = 33;
  Spec s2 = *s;
  Status st = check_spec(more, s2);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("more peers than fit"), std::string::npos) << st.message();
  ExperimentConfig fewer = *c;
  fewer.peers.count = 21;  // cloud's nodes 2 and 3 would be idle
  Spec s3 = *s;
  st = check_spec(fewer, s3);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("deploy.layers[1].nodes"), std::string::npos) << st.message();
}

TEST(Deploy, ErrorsNameTheKeyAndTheLine) {
  std::string t = kTwoLayers;
  t.replace(t.find("rate: 1gbit"), 11, "rate: 1GB");
  auto s = parse_deploy(t, "t.yaml");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.status().message().find("t.yaml:14: deploy.network[0].rate"), std::string::npos)
      << s.status().message();
}

TEST(Deploy, ScenarioQuotesStringsAndWritesEveryFile) {
  auto c = parse_config(kTwoLayers, "t.yaml");
  auto s = parse_deploy(kTwoLayers, "t.yaml");
  ASSERT_TRUE(c.is_ok() && s.is_ok());
  auto files = make_scenario(*c, *s, kTwoLayers, {"train.lr=0.1"});
  ASSERT_TRUE(files.is_ok()) << files.status().to_string();
  std::set<std::string> names;
  for (const auto& f : *files) names.insert(f.path);
  EXPECT_EQ(names, (std::set<std::string>{"layers_services.yaml", "network.yaml", "workflow.yaml",
                                          "workflow_env.yaml", "artifacts/experiment.yaml",
                                          "artifacts/launch-peers.sh"}));
  for (const auto& f : *files) {
    if (f.path == "layers_services.yaml") {
      // YAML 1.1 readers (PyYAML, so E2Clab) read an unquoted 00:20:00 as a number.
      EXPECT_NE(f.text.find("walltime: \"00:20:00\""), std::string::npos) << f.text;
      EXPECT_NE(f.text.find("job_type: [\"exotic\"]"), std::string::npos) << f.text;
    }
    if (f.path == "artifacts/launch-peers.sh") {
      EXPECT_TRUE(f.executable);
      EXPECT_NE(f.text.find("FIRST=(0 20)"), std::string::npos);
      EXPECT_NE(f.text.find("COUNT=(20 10)"), std::string::npos);
      EXPECT_NE(f.text.find("SETS=(--set 'train.lr=0.1')"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace mycel::runtime::deploy
