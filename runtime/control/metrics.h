// One table of metrics. Every figure a peer reports is declared once here (name, kind, unit,
// help, labels), and every output is generated from that table: the peer's CSV (header and
// rows), its JSON summary and GET /status (nlohmann-json), the Prometheus text exposition
// (GET /metrics), and the columns `mycel top` shows. The live driver fills a PeerSnapshot from
// its own objects and publishes it; nothing here reads the driver's objects.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/config/config.h"
#include "transport/transport.h"

namespace mycel::control {

enum class MetricKind : uint8_t { kCounter, kGauge, kHistogram, kInfo };
// Which labels a metric's samples carry besides peer="ID": none, link="ADDRESS" (one sample per
// transport link), codec="SPEC" (one sample per codec that sent bytes).
enum class MetricScope : uint8_t { kPeer, kLink, kCodec };
std::string_view metric_kind_name(MetricKind k);  // "counter", "gauge", "histogram", "info"

// A histogram: cumulative-free bucket counts (counts[i]: observations <= bounds[i] and above
// bounds[i-1]; counts.back(): above the last bound), their sum and count.
struct Histogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // bounds.size() + 1
  double sum = 0;
  uint64_t count = 0;
  static Histogram with_bounds(std::vector<double> b);
  void observe(double v);
};

// Everything a live peer reports, as one value: the driver copies it out of its counters, its
// transport's stats and its ParamStore, and publishes it (SnapshotBox) for other threads.
struct PeerSnapshot {
  int peer = 0;                 // the peer's id (label peer="ID")
  std::string address;          // its transport address
  std::string state = "running";  // starting | running | stopping | done
  double seconds = 0;           // since its loop started
  uint64_t age = 0;             // model age (protocol)
  double test_accuracy = 0, test_loss = 0;  // the last evaluation
  uint64_t samples = 0;         // training samples it holds
  uint64_t bytes_sent = 0, bytes_received = 0, frames_sent = 0, frames_received = 0;
  uint64_t model_bytes_sent = 0, fp32_bytes_equivalent = 0, models_sent = 0;
  uint64_t merges = 0, train_steps = 0, rejected_frames = 0, rejected_payloads = 0;
  uint64_t dropped_sends = 0, send_failures = 0, unreached_sends = 0, skipped_steps = 0;
  uint64_t wakeups = 0, peers_down = 0;  // protocol stats
  uint64_t ages_clamped = 0;       // received ages cut to local + trust.max_age_lead
  uint64_t sender_mismatches = 0;  // frames whose header sender id is not the connection's peer
  uint64_t control_refused = 0;    // control requests refused (4xx) and connections over its cap (503)
  uint64_t checkpoints_written = 0, checkpoint_failures = 0;  // docs/checkpoints.md
  std::map<std::string, uint64_t> bytes_by_codec;  // model bytes sent per codec
  std::vector<transport::PeerStats> links;         // the transport's view of each link
  runtime::RuntimeParams params;                   // the live parameters in force
  uint64_t params_version = 1;                     // ParamStore::version()
  Histogram eval_seconds = Histogram::with_bounds({0.001, 0.01, 0.1, 1, 10});  // per evaluation
};

// A metric's value for one sample: exact for integers (counters above 2^53 stay exact).
struct Num {
  bool is_int = false;
  uint64_t u = 0;
  double d = 0;
  static Num of(uint64_t v) { return Num{true, v, static_cast<double>(v)}; }
  static Num of(double v) { return Num{false, 0, v}; }
  double as_double() const { return is_int ? static_cast<double>(u) : d; }
};

struct MetricDef {
  std::string_view name;   // the JSON key: "bytes_sent"
  std::string_view prom;   // the Prometheus name: "mycel_bytes_sent_total"
  MetricKind kind;
  MetricScope scope;
  std::string_view unit;   // "bytes", "seconds", "bytes/s", "ratio", "" (a count)
  std::string_view help;
  std::string_view csv;    // the CSV column ("" when not a column of peer-ID.csv)
  int decimals = 0;        // CSV: digits after the point (floating values)
  Num (*peer_value)(const PeerSnapshot&) = nullptr;            // kPeer numbers
  Num (*link_value)(const transport::PeerStats&) = nullptr;    // kLink numbers
  std::string (*text)(const PeerSnapshot&) = nullptr;          // kInfo: the label's value
  const Histogram* (*hist)(const PeerSnapshot&) = nullptr;     // kHistogram
  std::string_view info_label;  // kInfo: the label carrying the text ("codec", "address")
};

// The table, in output order (the CSV's column order is the order of its csv entries).
const std::vector<MetricDef>& metric_table();
const MetricDef* find_metric(std::string_view name);

// peer-ID.csv: the header line and one row (each ends with '\n').
std::string csv_header();
std::string csv_row(const PeerSnapshot& s);

// The JSON summary (peer-ID.json, GET /status): "peer", then every metric by name, "links"
// (one object per link: "peer" is the link's address), "bytes_by_codec", "params" (the live
// keys as config text), and "state". Keys in table order, "links" last.
nlohmann::ordered_json summary_json(const PeerSnapshot& s);

// The Prometheus text exposition format 0.0.4 (# HELP / # TYPE, escaped label values).
std::string prometheus_text(const PeerSnapshot& s);
inline constexpr std::string_view kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

// Escaping used by prometheus_text (exposed for tests).
std::string prom_escape_label(std::string_view v);
std::string prom_escape_help(std::string_view v);

}  // namespace mycel::control
