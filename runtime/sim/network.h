// The simulator's model of the network and of churn, immutable once built and shared by every
// simulated peer (nothing here grows per peer beyond a few numbers and its sessions).
//
// Links: each peer has an uplink and a downlink of its own bandwidth (fixed, or drawn per peer
// from a distribution), a one-way latency drawn per message, and a message loss probability.
// A message is serialised at the sender's uplink (FIFO: transfers leave one after another, so
// overlapping transfers share the link's rate) and at the receiver's downlink (FIFO as well);
// its last byte arrives at max(uplink end + latency, downlink end). A 10 MB model over 1 Mbit/s
// thus takes 80 s. Unlimited bandwidth ("inf") means no serialisation.
//
// Churn: none; exponential on/off sessions (means churn.on_s, churn.off_s; each peer starts
// online with probability on/(on+off)); or replay of a session trace (the smartphone trace of
// the gossip-learning papers: one user line per peer, aligned at t = 0, lines drawn at random by
// seed, wrapping around when asked). A peer is online on a union of intervals [start, end).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mycel::runtime::sim {

// "100Mbit", "2.5Gbit", "800kbit", "1MB" (bytes), "inf"; the result in bytes per second
// (infinity for "inf"). Errors name `key`.
Result<double> parse_rate(std::string_view text, std::string_view key);
// "10ms", "1.5s", "200us", "0"; the result in seconds.
Result<double> parse_duration(std::string_view text, std::string_view key);

// A per-peer or per-message quantity: "X" (fixed), "uniform:A,B", "choice:A,B,C" (one of them,
// equally likely).
struct Distribution {
  enum class Kind { kFixed, kUniform, kChoice } kind = Kind::kFixed;
  std::vector<double> v;  // fixed: {x}; uniform: {a, b}; choice: the values
  double min() const;
  double max() const;
  double draw(uint64_t& rng_state) const;
};
// `parse_one` parses one value (rate or duration).
Result<Distribution> parse_distribution(std::string_view text, std::string_view key, bool rate);

// One transfer through the link model (what the simulator does per message): the uplink is a
// FIFO at up_Bps starting no earlier than `now` (up_free: when it is next free, updated);
// returns when the first byte left and when the last did.
struct Uplink {
  double start = 0, end = 0;
};
Uplink uplink_transfer(double now, size_t bytes, double up_Bps, double* up_free);
// The receiver's side: its downlink is a FIFO at down_Bps from the first byte's arrival
// (first); the last byte arrives no earlier than `earliest` (uplink end + latency). Returns the
// delivery time (down_free updated).
double downlink_transfer(double first, double earliest, size_t bytes, double down_Bps, double* down_free);

struct NetworkSpec {
  std::string uplink = "inf", downlink = "inf", latency = "10ms";
  double loss = 0;
  std::string server_link = "inf";  // FedAvg: the server's uplink and downlink
  std::string churn = "none";       // none | exponential | trace
  double churn_on_s = 3600, churn_off_s = 3600;
  std::string churn_trace;          // trace file (churn = trace)
  bool churn_wrap = false;          // reuse trace lines when there are fewer users than peers
};

class Network {
 public:
  // Draws every peer's bandwidths and sessions for [0, horizon_s]. Errors name the config key.
  // `server` (FedAvg's peer 0; -1 for none) gets network.server_link and never churns.
  static Result<Network> build(const NetworkSpec& spec, size_t peers, double horizon_s, uint64_t seed,
                               int server = -1);

  size_t peers() const { return up_.size(); }
  double uplink_Bps(size_t p) const { return up_[p]; }
  double downlink_Bps(size_t p) const { return down_[p]; }
  double latency(uint64_t& rng_state) const { return latency_.draw(rng_state); }
  double loss() const { return loss_; }
  // The smallest time any message takes from send to delivery (the simulator's lookahead).
  double min_delay(size_t min_message_bytes) const;
  bool has_churn() const { return churn_; }

  // Sessions: peer p is online on [on_[k], off_[k]) for k in [first_[p], first_[p + 1]).
  bool online(size_t p, double t) const;
  // The end of the online session containing t (t must be online).
  double session_end(size_t p, double t) const;
  // Whether p is online during all of [a, b] (one session covers it).
  bool online_throughout(size_t p, double a, double b) const;
  // Every on/off transition of p, in time order: (time, going online?).
  std::vector<std::pair<double, bool>> transitions(size_t p) const;
  double mean_online_fraction(double horizon_s) const;
  size_t trace_users() const { return trace_users_; }

 private:
  std::vector<double> up_, down_;
  Distribution latency_;
  double loss_ = 0;
  bool churn_ = false;
  std::vector<uint32_t> first_;
  std::vector<double> on_, off_;
  size_t trace_users_ = 0;
};

}  // namespace mycel::runtime::sim
