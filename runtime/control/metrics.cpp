#include "runtime/control/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mycel::control {
namespace {

using K = MetricKind;
using S = MetricScope;
using transport::PeerStats;

#define PU(f) [](const PeerSnapshot& s) { return Num::of(static_cast<uint64_t>(s.f)); }
#define PD(f) [](const PeerSnapshot& s) { return Num::of(static_cast<double>(s.f)); }
#define LU(f) [](const PeerStats& l) { return Num::of(static_cast<uint64_t>(l.f)); }
#define LD(f) [](const PeerStats& l) { return Num::of(static_cast<double>(l.f)); }

MetricDef base(std::string_view name, std::string_view prom, K kind, S scope, std::string_view unit,
               std::string_view help, std::string_view csv, int decimals) {
  MetricDef d;
  d.name = name;
  d.prom = prom;
  d.kind = kind;
  d.scope = scope;
  d.unit = unit;
  d.help = help;
  d.csv = csv;
  d.decimals = decimals;
  return d;
}

MetricDef peer(std::string_view name, std::string_view prom, K kind, std::string_view unit, std::string_view help,
               std::string_view csv, int decimals, Num (*v)(const PeerSnapshot&)) {
  MetricDef d = base(name, prom, kind, S::kPeer, unit, help, csv, decimals);
  d.peer_value = v;
  return d;
}
MetricDef link(std::string_view name, std::string_view prom, K kind, std::string_view unit, std::string_view help,
               Num (*v)(const PeerStats&)) {
  MetricDef d = base(name, prom, kind, S::kLink, unit, help, "", 0);
  d.link_value = v;
  return d;
}

const std::vector<MetricDef> kTable = [] {
  std::vector<MetricDef> t = {
      // The CSV's columns, in the order the CSV has always had (scripts/plot.py reads them by name).
      peer("seconds", "mycel_uptime_seconds", K::kGauge, "seconds", "seconds since the peer's loop started",
           "time_s", 3, PD(seconds)),
      peer("age", "mycel_model_age", K::kGauge, "", "model age (merges and local steps it stands for)", "age", 0,
           PU(age)),
      peer("test_accuracy", "mycel_test_accuracy_ratio", K::kGauge, "ratio", "accuracy of the last evaluation",
           "test_accuracy", 6, PD(test_accuracy)),
      peer("test_loss", "mycel_test_loss", K::kGauge, "", "loss of the last evaluation", "test_loss", 6,
           PD(test_loss)),
      peer("bytes_sent", "mycel_sent_bytes_total", K::kCounter, "bytes", "bytes of completed sends (all frames)",
           "bytes_sent", 0, PU(bytes_sent)),
      peer("bytes_received", "mycel_received_bytes_total", K::kCounter, "bytes", "bytes of frames received",
           "bytes_received", 0, PU(bytes_received)),
      peer("frames_sent", "mycel_sent_frames_total", K::kCounter, "", "frames whose send completed", "frames_sent",
           0, PU(frames_sent)),
      peer("frames_received", "mycel_received_frames_total", K::kCounter, "", "frames received", "frames_received",
           0, PU(frames_received)),
      peer("model_bytes_sent", "mycel_model_sent_bytes_total", K::kCounter, "bytes",
           "bytes of model frames whose send completed", "model_bytes_sent", 0, PU(model_bytes_sent)),
      peer("fp32_bytes_equivalent", "mycel_fp32_equivalent_bytes_total", K::kCounter, "bytes",
           "bytes the model frames sent would have taken in fp32", "fp32_bytes_equivalent", 0,
           PU(fp32_bytes_equivalent)),
      peer("merges", "mycel_merges_total", K::kCounter, "", "received models merged into the local one", "merges",
           0, PU(merges)),
      peer("train_steps", "mycel_train_steps_total", K::kCounter, "", "local SGD steps taken", "train_steps", 0,
           PU(train_steps)),
  };
  MetricDef codec = base("codec", "mycel_codec_info", K::kInfo, S::kPeer, "", "the codec in force (label codec)", "codec", 0);
  codec.text = [](const PeerSnapshot& s) { return s.params.codec; };
  codec.info_label = "codec";
  t.push_back(codec);
  t.push_back(peer("params_version", "mycel_params_version", K::kGauge, "",
                   "version of the live parameter set (bumped by each change)", "params_version", 0,
                   PU(params_version)));
  MetricDef addr = base("address", "mycel_peer_info", K::kInfo, S::kPeer, "", "the peer's transport address (label address)",
                 "", 0);
  addr.text = [](const PeerSnapshot& s) { return s.address; };
  addr.info_label = "address";
  t.push_back(addr);
  std::vector<MetricDef> more = {
      peer("samples", "mycel_train_samples", K::kGauge, "", "training samples the peer holds", "", 0, PU(samples)),
      peer("models_sent", "mycel_sent_models_total", K::kCounter, "", "model frames whose send completed", "", 0,
           PU(models_sent)),
      peer("rejected_frames", "mycel_rejected_frames_total", K::kCounter, "",
           "frames refused (bad header, checksum, unknown sender)", "", 0, PU(rejected_frames)),
      peer("rejected_payloads", "mycel_rejected_payloads_total", K::kCounter, "",
           "model payloads refused (wrong size, bad payload, failed decode)", "", 0, PU(rejected_payloads)),
      peer("dropped_sends", "mycel_dropped_sends_total", K::kCounter, "", "sends skipped for back-pressure", "", 0,
           PU(dropped_sends)),
      peer("send_failures", "mycel_send_failures_total", K::kCounter, "", "sends that failed to a peer reached before",
           "", 0, PU(send_failures)),
      peer("unreached_sends", "mycel_unreached_sends_total", K::kCounter, "", "sends to peers never reached yet", "",
           0, PU(unreached_sends)),
      peer("skipped_steps", "mycel_skipped_steps_total", K::kCounter, "",
           "training steps skipped because compute was behind", "", 0, PU(skipped_steps)),
      peer("wakeups", "mycel_wakeups_total", K::kCounter, "", "protocol periods or rounds", "", 0, PU(wakeups)),
      peer("peers_down", "mycel_peers_down_total", K::kCounter, "", "peers the protocol took as down", "", 0,
           PU(peers_down)),
      peer("ages_clamped", "mycel_ages_clamped_total", K::kCounter, "",
           "received model ages cut to the local age + trust.max_age_lead", "", 0, PU(ages_clamped)),
      peer("sender_mismatches", "mycel_sender_mismatches_total", K::kCounter, "",
           "frames whose header sender id is not the authenticated peer's (D-PSGD, FedAvg)", "", 0,
           PU(sender_mismatches)),
      peer("control_refused", "mycel_control_refused_total", K::kCounter, "",
           "control endpoint requests refused (4xx: malformed, invalid, no or wrong token, too large) and "
           "connections over control.max_connections (503)", "", 0, PU(control_refused)),
      peer("checkpoints_written", "mycel_checkpoints_written_total", K::kCounter, "",
           "checkpoints written whole (docs/checkpoints.md)", "", 0, PU(checkpoints_written)),
      peer("checkpoint_failures", "mycel_checkpoint_failures_total", K::kCounter, "",
           "checkpoints that could not be written (the previous one was kept)", "", 0, PU(checkpoint_failures)),
  };
  t.insert(t.end(), more.begin(), more.end());
  MetricDef ev = base("eval_seconds", "mycel_eval_seconds", K::kHistogram, S::kPeer, "seconds",
               "time one evaluation of the test set took", "", 0);
  ev.hist = [](const PeerSnapshot& s) { return &s.eval_seconds; };
  t.push_back(ev);
  MetricDef bc = base("bytes_by_codec", "mycel_model_sent_bytes_by_codec_total", K::kCounter, S::kCodec, "bytes",
               "model bytes sent, by codec (label codec)", "", 0);
  t.push_back(bc);
  std::vector<MetricDef> links = {
      link("bytes_sent", "mycel_link_sent_bytes_total", K::kCounter, "bytes", "bytes sent on the link", LU(bytes_sent)),
      link("bytes_received", "mycel_link_received_bytes_total", K::kCounter, "bytes", "bytes received on the link",
           LU(bytes_received)),
      link("frames_sent", "mycel_link_sent_frames_total", K::kCounter, "", "frames sent on the link", LU(frames_sent)),
      link("frames_received", "mycel_link_received_frames_total", K::kCounter, "", "frames received on the link",
           LU(frames_received)),
      link("send_failures", "mycel_link_send_failures_total", K::kCounter, "", "failed sends on the link",
           LU(send_failures)),
      link("timeouts", "mycel_link_timeouts_total", K::kCounter, "", "timeouts on the link", LU(timeouts)),
      link("reconnects", "mycel_link_reconnects_total", K::kCounter, "", "reconnections of the link", LU(reconnects)),
      link("rejected_frames", "mycel_link_rejected_frames_total", K::kCounter, "", "frames refused on the link",
           LU(rejected_frames)),
      link("inflight_bytes", "mycel_link_inflight_bytes", K::kGauge, "bytes", "bytes sent and not yet completed",
           LU(inflight_bytes)),
      link("bandwidth_Bps", "mycel_link_bandwidth_bytes_per_second", K::kGauge, "bytes/s",
           "link bandwidth estimate (0 before any)", LD(bandwidth_Bps)),
      link("bandwidth_age_s", "mycel_link_bandwidth_age_seconds", K::kGauge, "seconds",
           "seconds since the bandwidth estimate changed (-1: never)", LD(bandwidth_age_s)),
      link("rtt_s", "mycel_link_rtt_seconds", K::kGauge, "seconds", "round-trip estimate (0 before any)", LD(rtt_s)),
      link("rtt_age_s", "mycel_link_rtt_age_seconds", K::kGauge, "seconds",
           "seconds since the round-trip estimate changed (-1: never)", LD(rtt_age_s)),
      link("oldest_send_wait_s", "mycel_link_oldest_send_wait_seconds", K::kGauge, "seconds",
           "how long the oldest send in flight has waited", LD(oldest_send_wait_s)),
      link("connected", "mycel_link_connected", K::kGauge, "", "1 while the link is connected",
           [](const PeerStats& l) { return Num::of(uint64_t{l.connected ? 1u : 0u}); }),
  };
  t.insert(t.end(), links.begin(), links.end());
  return t;
}();

std::string num_text(const Num& n, int decimals) {
  if (n.is_int) return std::to_string(n.u);
  if (!std::isfinite(n.d)) return std::isnan(n.d) ? "nan" : (n.d > 0 ? "inf" : "-inf");
  return fmt::format("{:.{}f}", n.d, decimals);
}

// Prometheus sample values: Go's float syntax; integers exactly.
std::string prom_value(const Num& n) {
  if (n.is_int) return std::to_string(n.u);
  if (std::isnan(n.d)) return "NaN";
  if (std::isinf(n.d)) return n.d > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", n.d);  // shortest round-trip form
}

std::string csv_field(std::string_view v) {
  if (v.find_first_of(",\"\n\r") == std::string_view::npos) return std::string(v);
  std::string o = "\"";
  for (char c : v) {
    if (c == '"') o += '"';
    o += c;
  }
  return o + "\"";
}

nlohmann::ordered_json json_num(const Num& n) {
  if (n.is_int) return n.u;
  if (!std::isfinite(n.d)) return nullptr;  // JSON has no NaN / Inf
  return n.d;
}

}  // namespace

std::string_view metric_kind_name(MetricKind k) {
  switch (k) {
    case K::kCounter: return "counter";
    case K::kGauge: return "gauge";
    case K::kHistogram: return "histogram";
    case K::kInfo: return "info";
  }
  return "?";
}

Histogram Histogram::with_bounds(std::vector<double> b) {
  Histogram h;
  std::sort(b.begin(), b.end());
  h.bounds = std::move(b);
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

void Histogram::observe(double v) {
  if (counts.size() != bounds.size() + 1) counts.assign(bounds.size() + 1, 0);
  size_t i = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

const std::vector<MetricDef>& metric_table() { return kTable; }

const MetricDef* find_metric(std::string_view name) {
  for (const auto& m : kTable)
    if (m.name == name && m.scope != S::kLink) return &m;
  return nullptr;
}

std::string csv_header() {
  std::string h;
  for (const auto& m : kTable)
    if (!m.csv.empty()) h += (h.empty() ? "" : ",") + std::string(m.csv);
  return h + "\n";
}

std::string csv_row(const PeerSnapshot& s) {
  std::string r;
  bool first = true;
  for (const auto& m : kTable) {
    if (m.csv.empty()) continue;
    if (!first) r += ',';
    first = false;
    if (m.kind == K::kInfo) r += csv_field(m.text(s));
    else r += num_text(m.peer_value(s), m.decimals);
  }
  return r + "\n";
}

nlohmann::ordered_json summary_json(const PeerSnapshot& s) {
  using json = nlohmann::ordered_json;
  json j = json::object();
  j["peer"] = s.peer;
  j["state"] = s.state;
  auto links = json::array();
  for (const auto& l : s.links) {
    json o = json::object();
    o["peer"] = l.peer;
    links.push_back(std::move(o));
  }
  for (const auto& m : kTable) {
    switch (m.scope) {
      case S::kPeer:
        if (m.kind == K::kInfo) {
          j[std::string(m.name)] = m.text(s);
        } else if (m.kind == K::kHistogram) {
          const Histogram* h = m.hist(s);
          j[std::string(m.name)] = {{"bounds", h->bounds}, {"counts", h->counts}, {"sum", h->sum}, {"count", h->count}};
        } else {
          j[std::string(m.name)] = json_num(m.peer_value(s));
        }
        break;
      case S::kCodec: {
        json o = json::object();
        for (const auto& [c, b] : s.bytes_by_codec) o[c] = b;
        j[std::string(m.name)] = std::move(o);
        break;
      }
      case S::kLink:
        for (size_t i = 0; i < s.links.size(); ++i) links[i][std::string(m.name)] = json_num(m.link_value(s.links[i]));
        break;
    }
  }
  // The boolean the JSON summary has always had for a link.
  for (size_t i = 0; i < s.links.size(); ++i) links[i]["connected"] = s.links[i].connected;
  json p = json::object();
  for (const auto& [k, v] : runtime::live_param_values(s.params)) p[k] = v;
  j["params"] = std::move(p);
  j["links"] = std::move(links);  // last: readers looking up a top-level key find it first
  return j;
}

std::string prom_escape_label(std::string_view v) {
  std::string o;
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '"') o += "\\\"";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}

std::string prom_escape_help(std::string_view v) {
  std::string o;
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}

std::string prometheus_text(const PeerSnapshot& s) {
  std::string o;
  const std::string pl = "peer=\"" + std::to_string(s.peer) + "\"";
  for (const auto& m : kTable) {
    const std::string name(m.prom);
    std::string help(m.help);
    if (!m.unit.empty() && m.unit != "bytes" && m.unit != "seconds") help += " (" + std::string(m.unit) + ")";
    o += "# HELP " + name + " " + prom_escape_help(help) + "\n";
    o += "# TYPE " + name + " " + std::string(m.kind == K::kInfo ? "gauge" : metric_kind_name(m.kind)) + "\n";
    switch (m.scope) {
      case S::kPeer:
        if (m.kind == K::kInfo) {
          o += name + "{" + pl + "," + std::string(m.info_label) + "=\"" + prom_escape_label(m.text(s)) + "\"} 1\n";
        } else if (m.kind == K::kHistogram) {
          const Histogram* h = m.hist(s);
          uint64_t cum = 0;
          for (size_t i = 0; i < h->bounds.size(); ++i) {
            cum += i < h->counts.size() ? h->counts[i] : 0;
            o += name + "_bucket{" + pl + ",le=\"" + prom_value(Num::of(h->bounds[i])) + "\"} " + std::to_string(cum) +
                 "\n";
          }
          o += name + "_bucket{" + pl + ",le=\"+Inf\"} " + std::to_string(h->count) + "\n";
          o += name + "_sum{" + pl + "} " + prom_value(Num::of(h->sum)) + "\n";
          o += name + "_count{" + pl + "} " + std::to_string(h->count) + "\n";
        } else {
          o += name + "{" + pl + "} " + prom_value(m.peer_value(s)) + "\n";
        }
        break;
      case S::kCodec:
        for (const auto& [c, b] : s.bytes_by_codec)
          o += name + "{" + pl + ",codec=\"" + prom_escape_label(c) + "\"} " + std::to_string(b) + "\n";
        break;
      case S::kLink:
        for (const auto& l : s.links)
          o += name + "{" + pl + ",link=\"" + prom_escape_label(l.peer) + "\"} " + prom_value(m.link_value(l)) + "\n";
        break;
    }
  }
  return o;
}

}  // namespace mycel::control
