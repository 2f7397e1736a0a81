#include "runtime/sim/network.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "runtime/core/rng.h"

namespace mycel::runtime::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

Status bad(std::string_view key, std::string_view text, std::string_view why) {
  return Error(Code::kInvalidArgument, std::string(key) + ": '" + std::string(text) + "' " + std::string(why));
}

// Splits a number from its unit suffix.
bool split_number(std::string_view t, double* v, std::string_view* unit) {
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.' || t[i] == 'e' ||
                          t[i] == 'E' || t[i] == '-' || t[i] == '+')) {
    // an 'e' followed by a letter is a unit, not an exponent
    if ((t[i] == 'e' || t[i] == 'E') && (i + 1 >= t.size() || !(std::isdigit(static_cast<unsigned char>(t[i + 1])) ||
                                                                 t[i + 1] == '-' || t[i + 1] == '+')))
      break;
    ++i;
  }
  if (i == 0) return false;
  auto r = std::from_chars(t.data(), t.data() + i, *v);
  if (r.ec != std::errc() || r.ptr != t.data() + i || !std::isfinite(*v)) return false;
  *unit = t.substr(i);
  return true;
}

uint64_t mix(uint64_t a, uint64_t b) {
  SmallRng r(a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull));
  return r();
}

double draw_uniform(uint64_t& s) {
  SmallRng r(s);
  double u = r.uniform();
  s = r.state();
  return u;
}

}  // namespace

Uplink uplink_transfer(double now, size_t bytes, double up_Bps, double* up_free) {
  Uplink u;
  u.start = std::max(now, *up_free);
  u.end = u.start + (std::isfinite(up_Bps) ? static_cast<double>(bytes) / up_Bps : 0.0);
  *up_free = u.end;
  return u;
}

double downlink_transfer(double first, double earliest, size_t bytes, double down_Bps, double* down_free) {
  double end = earliest;
  if (std::isfinite(down_Bps)) end = std::max(end, std::max(first, *down_free) + static_cast<double>(bytes) / down_Bps);
  *down_free = end;
  return end;
}

Result<double> parse_rate(std::string_view text, std::string_view key) {
  if (text == "inf" || text == "unlimited") return kInf;
  double v = 0;
  std::string_view unit;
  if (!split_number(text, &v, &unit)) return bad(key, text, "is not a rate (e.g. 100Mbit, 2.5Gbit, 800kbit, 1MB, inf)");
  double mult = 0;
  if (unit == "bit" || unit == "bps") mult = 1.0 / 8;
  else if (unit == "kbit" || unit == "Kbit") mult = 1e3 / 8;
  else if (unit == "Mbit") mult = 1e6 / 8;
  else if (unit == "Gbit") mult = 1e9 / 8;
  else if (unit == "B") mult = 1;
  else if (unit == "kB" || unit == "KB") mult = 1e3;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "GB") mult = 1e9;
  else return bad(key, text, "has no known unit (bit, kbit, Mbit, Gbit, B, kB, MB, GB per second)");
  if (!(v > 0)) return bad(key, text, "must be a positive rate (a link of rate 0 carries nothing)");
  return v * mult;
}

Result<double> parse_duration(std::string_view text, std::string_view key) {
  double v = 0;
  std::string_view unit;
  if (!split_number(text, &v, &unit)) return bad(key, text, "is not a duration (e.g. 10ms, 1.5s, 200us)");
  double mult = 0;
  if (unit == "s" || unit.empty()) mult = 1;
  else if (unit == "ms") mult = 1e-3;
  else if (unit == "us") mult = 1e-6;
  else if (unit == "min") mult = 60;
  else if (unit == "h") mult = 3600;
  else return bad(key, text, "has no known unit (us, ms, s, min, h)");
  if (v < 0) return bad(key, text, "must not be negative");
  return v * mult;
}

double Distribution::min() const { return *std::min_element(v.begin(), v.end()); }
double Distribution::max() const { return *std::max_element(v.begin(), v.end()); }

double Distribution::draw(uint64_t& s) const {
  switch (kind) {
    case Kind::kFixed:
      return v[0];
    case Kind::kUniform:
      return v[0] + (v[1] - v[0]) * draw_uniform(s);
    case Kind::kChoice: {
      size_t i = std::min(v.size() - 1, static_cast<size_t>(draw_uniform(s) * static_cast<double>(v.size())));
      return v[i];
    }
  }
  return v[0];
}

Result<Distribution> parse_distribution(std::string_view text, std::string_view key, bool rate) {
  auto one = [&](std::string_view t) { return rate ? parse_rate(t, key) : parse_duration(t, key); };
  Distribution d;
  std::string_view body = text;
  if (text.starts_with("uniform:")) {
    d.kind = Distribution::Kind::kUniform;
    body = text.substr(8);
  } else if (text.starts_with("choice:")) {
    d.kind = Distribution::Kind::kChoice;
    body = text.substr(7);
  }
  size_t start = 0;
  while (start <= body.size()) {
    size_t comma = body.find(',', start);
    std::string_view part = body.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    MYCEL_ASSIGN_OR_RETURN(double x, one(part));
    d.v.push_back(x);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (d.kind == Distribution::Kind::kFixed && d.v.size() != 1)
    return bad(key, text, "gives several values: write uniform:A,B or choice:A,B,...");
  if (d.kind == Distribution::Kind::kUniform && (d.v.size() != 2 || d.v[1] < d.v[0] || !std::isfinite(d.v[1])))
    return bad(key, text, "needs two finite values A <= B (uniform:A,B)");
  if (d.kind == Distribution::Kind::kChoice && d.v.empty()) return bad(key, text, "lists no value");
  return d;
}

Result<Network> Network::build(const NetworkSpec& spec, size_t peers, double horizon_s, uint64_t seed, int server) {
  Network n;
  if (peers == 0) return Error(Code::kInvalidArgument, "peers.count: a simulation needs at least one peer");
  MYCEL_ASSIGN_OR_RETURN(auto up, parse_distribution(spec.uplink, "network.uplink", true));
  MYCEL_ASSIGN_OR_RETURN(auto down, parse_distribution(spec.downlink, "network.downlink", true));
  MYCEL_ASSIGN_OR_RETURN(n.latency_, parse_distribution(spec.latency, "network.latency", false));
  MYCEL_ASSIGN_OR_RETURN(double server_link, parse_rate(spec.server_link, "network.server_link"));
  if (!(spec.loss >= 0 && spec.loss < 1))
    return Error(Code::kInvalidArgument, "network.loss: " + std::to_string(spec.loss) + " must be in [0, 1)");
  n.loss_ = spec.loss;
  n.up_.resize(peers);
  n.down_.resize(peers);
  for (size_t p = 0; p < peers; ++p) {
    uint64_t s = mix(seed ^ 0x11ull, p);
    n.up_[p] = up.draw(s);
    n.down_[p] = down.draw(s);
  }
  if (server >= 0 && static_cast<size_t>(server) < peers) n.up_[server] = n.down_[server] = server_link;

  n.first_.assign(peers + 1, 0);
  if (spec.churn == "none") {
    n.churn_ = false;
    for (size_t p = 0; p < peers; ++p) {
      n.on_.push_back(0);
      n.off_.push_back(kInf);
      n.first_[p + 1] = static_cast<uint32_t>(n.on_.size());
    }
    return n;
  }
  n.churn_ = true;
  if (spec.churn == "exponential") {
    if (!(spec.churn_on_s > 0) || !(spec.churn_off_s > 0))
      return Error(Code::kInvalidArgument, "churn.on_s and churn.off_s must be > 0 (mean session lengths)");
    const double p_on = spec.churn_on_s / (spec.churn_on_s + spec.churn_off_s);
    for (size_t p = 0; p < peers; ++p) {
      if (static_cast<int>(p) == server) {  // FedAvg's server does not churn
        n.on_.push_back(0);
        n.off_.push_back(kInf);
        n.first_[p + 1] = static_cast<uint32_t>(n.on_.size());
        continue;
      }
      uint64_t s = mix(seed ^ 0x22ull, p);
      bool on = draw_uniform(s) < p_on;
      double t = 0;
      while (t <= horizon_s) {
        // Exponential lengths; the first is a residual life, memoryless, so also exponential.
        const double len = -std::log(1.0 - draw_uniform(s)) * (on ? spec.churn_on_s : spec.churn_off_s);
        if (on) {
          n.on_.push_back(t);
          n.off_.push_back(t + len);
        }
        t += len;
        on = !on;
      }
      n.first_[p + 1] = static_cast<uint32_t>(n.on_.size());
    }
    return n;
  }
  if (spec.churn != "trace")
    return Error(Code::kInvalidArgument, "churn.model: '" + spec.churn + "' is not none, exponential or trace");
  if (spec.churn_trace.empty()) return Error(Code::kInvalidArgument, "churn.trace: no trace file given (churn.model = trace)");
  std::ifstream in(spec.churn_trace);
  if (!in) return Error(Code::kNotFound, "churn.trace: cannot read " + spec.churn_trace);
  // One line per user-week: id, online flag at the start, start time (ms), timezone, then
  // alternating session lengths in ms starting with the state the flag gives.
  struct User {
    bool on;
    std::vector<double> lengths_s;
  };
  std::vector<User> users;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    std::istringstream ls(line);
    std::string id;
    int flag = 0;
    double start = 0, tz = 0;
    if (!(ls >> id >> flag >> start >> tz) || (flag != 0 && flag != 1))
      return Error(Code::kInvalidArgument, "churn.trace: " + spec.churn_trace + " line " + std::to_string(lineno) +
                                               " is not 'user flag start timezone lengths...'");
    User u{flag == 1, {}};
    double ms = 0;
    while (ls >> ms) {
      if (ms < 0) return Error(Code::kInvalidArgument, "churn.trace: negative session length on line " + std::to_string(lineno));
      u.lengths_s.push_back(ms / 1000.0);
    }
    users.push_back(std::move(u));
    if (users.size() > 10'000'000) break;
  }
  n.trace_users_ = users.size();
  if (users.empty()) return Error(Code::kInvalidArgument, "churn.trace: " + spec.churn_trace + " holds no user line");
  if (users.size() < peers && !spec.churn_wrap)
    return Error(Code::kInvalidArgument, "churn.trace: " + spec.churn_trace + " has " + std::to_string(users.size()) +
                                             " users for " + std::to_string(peers) +
                                             " peers (set churn.wrap: true to reuse lines)");
  // Each peer gets a distinct random line (a random permutation; with wrap-around, lines are
  // reused once every line has been given).
  std::vector<uint32_t> order(users.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  uint64_t s = mix(seed ^ 0x33ull, 0);
  for (size_t i = order.size(); i > 1; --i) {
    SmallRng r(s);
    std::swap(order[i - 1], order[r.below(i)]);
    s = r.state();
  }
  for (size_t p = 0; p < peers; ++p) {
    if (static_cast<int>(p) == server) {  // FedAvg's server does not churn
      n.on_.push_back(0);
      n.off_.push_back(kInf);
      n.first_[p + 1] = static_cast<uint32_t>(n.on_.size());
      continue;
    }
    const User& u = users[order[p % order.size()]];
    bool on = u.on;
    double t = 0;
    for (double len : u.lengths_s) {
      if (on && len > 0) {
        n.on_.push_back(t);
        n.off_.push_back(t + len);
      }
      t += len;
      on = !on;
      if (t > horizon_s) break;
    }
    // After the trace's last session the peer stays in its last state.
    if (on && t <= horizon_s) {
      n.on_.push_back(t);
      n.off_.push_back(kInf);
    }
    n.first_[p + 1] = static_cast<uint32_t>(n.on_.size());
  }
  return n;
}

double Network::min_delay(size_t min_message_bytes) const {
  double up = *std::max_element(up_.begin(), up_.end());
  double down = *std::max_element(down_.begin(), down_.end());
  double ser = 0;
  if (std::isfinite(up)) ser = std::max(ser, static_cast<double>(min_message_bytes) / up);
  if (std::isfinite(down)) ser = std::max(ser, static_cast<double>(min_message_bytes) / down);
  return latency_.min() + ser;
}

bool Network::online(size_t p, double t) const {
  const double* b = on_.data() + first_[p];
  const double* e = on_.data() + first_[p + 1];
  const double* it = std::upper_bound(b, e, t);  // first session starting after t
  if (it == b) return false;
  size_t k = static_cast<size_t>(it - on_.data()) - 1;
  return t < off_[k];
}

double Network::session_end(size_t p, double t) const {
  const double* b = on_.data() + first_[p];
  const double* e = on_.data() + first_[p + 1];
  const double* it = std::upper_bound(b, e, t);
  if (it == b) return t;
  size_t k = static_cast<size_t>(it - on_.data()) - 1;
  return t < off_[k] ? off_[k] : t;
}

bool Network::online_throughout(size_t p, double a, double b) const {
  return online(p, a) && session_end(p, a) > b;
}

std::vector<std::pair<double, bool>> Network::transitions(size_t p) const {
  std::vector<std::pair<double, bool>> out;
  for (uint32_t k = first_[p]; k < first_[p + 1]; ++k) {
    if (on_[k] > 0) out.emplace_back(on_[k], true);
    if (std::isfinite(off_[k])) out.emplace_back(off_[k], false);
  }
  return out;
}

double Network::mean_online_fraction(double horizon_s) const {
  if (!(horizon_s > 0)) return 0;
  double total = 0;
  for (size_t p = 0; p < peers(); ++p)
    for (uint32_t k = first_[p]; k < first_[p + 1]; ++k)
      total += std::max(0.0, std::min(off_[k], horizon_s) - std::min(on_[k], horizon_s));
  return total / (horizon_s * static_cast<double>(peers()));
}

}  // namespace mycel::runtime::sim
