// The metric table's outputs (CSV, JSON, Prometheus) say the same thing for every metric.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/control/metrics.h"
#include "tests/control/test_util.h"

namespace mycel::control {
namespace {

using json = nlohmann::json;

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool q = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (q) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') cur += '"', ++i;
      else if (c == '"') q = false;
      else cur += c;
    } else if (c == '"') q = true;
    else if (c == ',') out.push_back(cur), cur.clear();
    else if (c != '\n') cur += c;
  }
  out.push_back(cur);
  return out;
}

struct Prom {
  std::map<std::string, std::string> samples;  // "name{labels}" -> value text
  std::map<std::string, int> help, type_count;
  std::map<std::string, std::string> type;
};

Prom parse_prom(const std::string& text) {
  Prom p;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      ++p.help[line.substr(7, line.find(' ', 7) - 7)];
    } else if (line.rfind("# TYPE ", 0) == 0) {
      auto sp = line.find(' ', 7);
      std::string n = line.substr(7, sp - 7);
      ++p.type_count[n];
      p.type[n] = line.substr(sp + 1);
    } else if (!line.empty()) {
      auto sp = line.rfind(' ');
      p.samples[line.substr(0, sp)] = line.substr(sp + 1);
    }
  }
  return p;
}

TEST(MetricTable, CsvJsonAndPrometheusAgreeOnEveryMetric) {
  const PeerSnapshot s = testing::sample_snapshot();
  auto header = split_csv(csv_header());
  auto row = split_csv(csv_row(s));
  ASSERT_EQ(header.size(), row.size());
  std::map<std::string, std::string> csv;
  for (size_t i = 0; i < header.size(); ++i) csv[header[i]] = row[i];
  const json j = json::parse(summary_json(s).dump());
  const Prom p = parse_prom(prometheus_text(s));
  const std::string pl = "peer=\"7\"";
  size_t checked = 0;
  for (const auto& m : metric_table()) {
    const std::string prom(m.prom);
    EXPECT_EQ(p.help.count(prom) ? p.help.at(prom) : 0, 1) << prom;
    ASSERT_EQ(p.type_count.count(prom) ? p.type_count.at(prom) : 0, 1) << prom;
    EXPECT_EQ(p.type.at(prom), m.kind == MetricKind::kInfo ? "gauge" : std::string(metric_kind_name(m.kind))) << prom;
    if (m.kind == MetricKind::kCounter) {
      EXPECT_TRUE(prom.ends_with("_total")) << prom;
    }
    if (m.scope == MetricScope::kPeer && m.kind != MetricKind::kInfo && m.kind != MetricKind::kHistogram) {
      const Num v = m.peer_value(s);
      const std::string key = prom + "{" + pl + "}";
      ASSERT_TRUE(p.samples.count(key)) << key;
      ASSERT_TRUE(j.contains(std::string(m.name))) << m.name;
      if (v.is_int) {
        EXPECT_EQ(p.samples.at(key), std::to_string(v.u)) << key;
        EXPECT_EQ(j[std::string(m.name)].get<uint64_t>(), v.u) << m.name;
        if (!m.csv.empty()) {
          EXPECT_EQ(csv.at(std::string(m.csv)), std::to_string(v.u)) << m.csv;
        }
      } else {
        EXPECT_DOUBLE_EQ(std::stod(p.samples.at(key)), v.d) << key;
        EXPECT_DOUBLE_EQ(j[std::string(m.name)].get<double>(), v.d) << m.name;
        if (!m.csv.empty()) {
          EXPECT_NEAR(std::stod(csv.at(std::string(m.csv))), v.d, std::pow(10.0, -m.decimals)) << m.csv;
        }
      }
      ++checked;
    }
    if (m.kind == MetricKind::kInfo) {
      const std::string text = m.text(s);
      EXPECT_EQ(j[std::string(m.name)].get<std::string>(), text);
      EXPECT_TRUE(p.samples.count(prom + "{" + pl + "," + std::string(m.info_label) + "=\"" + prom_escape_label(text) +
                                  "\"}"))
          << prom;
      if (!m.csv.empty()) {
        EXPECT_EQ(csv.at(std::string(m.csv)), text);
      }
    }
    if (m.scope == MetricScope::kLink) {
      for (size_t i = 0; i < s.links.size(); ++i) {
        const Num v = m.link_value(s.links[i]);
        const std::string key = prom + "{" + pl + ",link=\"" + prom_escape_label(s.links[i].peer) + "\"}";
        ASSERT_TRUE(p.samples.count(key)) << key;
        EXPECT_DOUBLE_EQ(std::stod(p.samples.at(key)), v.as_double()) << key;
        EXPECT_EQ(j["links"][i]["peer"].get<std::string>(), s.links[i].peer);
        if (m.name != "connected") {
          EXPECT_DOUBLE_EQ(j["links"][i][std::string(m.name)].get<double>(), v.as_double());
        }
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 40u);
  // Exact beyond 2^53 everywhere.
  EXPECT_EQ(csv.at("bytes_sent"), "9007199254740993");
  EXPECT_EQ(p.samples.at("mycel_sent_bytes_total{" + pl + "}"), "9007199254740993");
  EXPECT_EQ(j["bytes_sent"].get<uint64_t>(), 9007199254740993ull);
  // Per codec.
  EXPECT_EQ(j["bytes_by_codec"]["topk:0.01"].get<uint64_t>(), 500u);
  EXPECT_EQ(p.samples.at("mycel_model_sent_bytes_by_codec_total{" + pl + ",codec=\"topk:0.01\"}"), "500");
  EXPECT_EQ(p.samples.at("mycel_model_sent_bytes_by_codec_total{" + pl + ",codec=\"int8\"}"), "1000");
  // The live parameters and their version.
  EXPECT_EQ(j["params"]["codec.spec"], "topk:0.01");
  EXPECT_EQ(j["params"]["protocol.period_s"], "0.5");
  EXPECT_EQ(j["params_version"], 3);
  EXPECT_TRUE(j["links"][0]["connected"].get<bool>());
  EXPECT_FALSE(j["links"][1]["connected"].get<bool>());
}

TEST(MetricTable, CsvKeepsItsColumnsAndQuotes) {
  EXPECT_EQ(csv_header().rfind("time_s,age,test_accuracy,test_loss,bytes_sent,bytes_received,frames_sent,"
                               "frames_received,model_bytes_sent,fp32_bytes_equivalent,merges,train_steps,codec",
                               0),
            0u)
      << csv_header();
  PeerSnapshot s = testing::sample_snapshot();
  s.params.codec = "a,b\"c";
  auto row = split_csv(csv_row(s));
  auto header = split_csv(csv_header());
  ASSERT_EQ(row.size(), header.size());
  EXPECT_EQ(row[12], "a,b\"c");
}

TEST(MetricTable, HistogramIsCumulativeInPrometheus) {
  const PeerSnapshot s = testing::sample_snapshot();
  const Prom p = parse_prom(prometheus_text(s));
  const std::string b = "mycel_eval_seconds_bucket{peer=\"7\",le=\"";
  EXPECT_EQ(p.samples.at(b + "0.001\"}"), "0");
  EXPECT_EQ(p.samples.at(b + "0.01\"}"), "1");
  EXPECT_EQ(p.samples.at(b + "0.1\"}"), "1");
  EXPECT_EQ(p.samples.at(b + "1\"}"), "2");
  EXPECT_EQ(p.samples.at(b + "10\"}"), "2");
  EXPECT_EQ(p.samples.at(b + "+Inf\"}"), "3");
  EXPECT_EQ(p.samples.at("mycel_eval_seconds_count{peer=\"7\"}"), "3");
  EXPECT_DOUBLE_EQ(std::stod(p.samples.at("mycel_eval_seconds_sum{peer=\"7\"}")), 50.204);
  const json j = json::parse(summary_json(s).dump());
  EXPECT_EQ(j["eval_seconds"]["count"], 3);
}

TEST(MetricTable, PrometheusEscaping) {
  EXPECT_EQ(prom_escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(prom_escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
  const std::string text = prometheus_text(testing::sample_snapshot());
  EXPECT_NE(text.find("link=\"weird\\\"addr\\\\with\\nnewline\""), std::string::npos);
  // No raw newline inside a sample line: every line is a comment or "name{...} value".
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    EXPECT_EQ(line.rfind("mycel_", 0), 0u) << line;
  }
}

TEST(MetricTable, NamesAreUnique) {
  std::map<std::string, int> prom;
  for (const auto& m : metric_table()) ++prom[std::string(m.prom)];
  for (const auto& [n, c] : prom) EXPECT_EQ(c, 1) << n;
}

}  // namespace
}  // namespace mycel::control
