#include "models/data/partition.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <queue>
#include <utility>

#include "models/data/rng.h"

namespace mycel::data {
namespace {

constexpr const char* kForms =
    "accepted: iid | dirichlet:ALPHA[:MIN_PER_PEER] | shards[:PER_PEER] | one-class";

Status bad_spec(std::string_view spec, const std::string& why) {
  return Error(Code::kInvalidArgument,
               "partition scheme '" + std::string(spec) + "': " + why + " (" + kForms + ")");
}

std::vector<std::string_view> split_colon(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    const size_t c = s.find(':', start);
    out.push_back(
        s.substr(start, c == std::string_view::npos ? std::string_view::npos : c - start));
    if (c == std::string_view::npos) break;
    start = c + 1;
  }
  return out;
}

template <typename T>
bool parse_num(std::string_view s, T& v) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size();
}

// Cuts `v` into `k` contiguous near-equal parts and appends part j to out[targets[j]].
void deal_equal(const std::vector<size_t>& v, size_t k, std::vector<std::vector<size_t>>& out,
                const std::vector<size_t>& targets) {
  for (size_t j = 0; j < k; ++j) {
    const size_t a = v.size() * j / k, b = v.size() * (j + 1) / k;
    out[targets[j]].insert(out[targets[j]].end(), v.begin() + static_cast<ptrdiff_t>(a),
                           v.begin() + static_cast<ptrdiff_t>(b));
  }
}

// Proportions over `k` peers ~ Dir(alpha, ..., alpha) by normalised gammas.
std::vector<double> dirichlet(Rng& rng, double alpha, size_t k) {
  std::vector<double> p(k);
  double sum = 0;
  for (double& x : p) sum += (x = rng.gamma(alpha));
  if (!(sum > 0) || !std::isfinite(sum)) {
    // Every gamma underflowed (alpha far below 0.01): the limit of Dir(alpha) as alpha -> 0 is
    // all mass on one uniformly chosen peer.
    std::fill(p.begin(), p.end(), 0.0);
    p[rng.below(k)] = 1.0;
    return p;
  }
  for (double& x : p) x /= sum;
  return p;
}

// Cut boundaries of `len` items by cumulative proportions: b[0] = 0, b[k] = len.
std::vector<size_t> cuts(const std::vector<double>& p, size_t len) {
  std::vector<size_t> b(p.size() + 1, 0);
  double cum = 0;
  for (size_t j = 0; j + 1 < p.size(); ++j) {
    cum += p[j];
    b[j + 1] = std::min(len, static_cast<size_t>(std::llround(cum * static_cast<double>(len))));
    b[j + 1] = std::max(b[j + 1], b[j]);
  }
  b[p.size()] = len;
  return b;
}

Result<std::vector<std::vector<size_t>>> dirichlet_split(
    const std::vector<std::vector<size_t>>& by_class, size_t n, size_t peers,
    const PartitionSpec& spec, Rng& rng) {
  const size_t min = spec.min_samples;
  if (min > n / peers) {
    return Error(Code::kInvalidArgument,
                 "dirichlet: " + std::to_string(peers) + " peers x " + std::to_string(min) +
                     " minimum samples exceeds the " + std::to_string(n) +
                     " samples; lower the minimum with dirichlet:ALPHA:MIN");
  }
  // Up to 100 draws, fewer for very many peers (about 2^20 gamma variates in all), after which
  // the top-up below takes over.
  const size_t per_draw = std::max<size_t>(1, by_class.size() * peers);
  const size_t attempts = std::clamp<size_t>((size_t{1} << 20) / per_draw, 3, 100);
  std::vector<std::vector<double>> props(by_class.size());
  bool ok = false;
  for (size_t attempt = 0; attempt < attempts && !ok; ++attempt) {
    std::vector<size_t> count(peers, 0);
    for (size_t c = 0; c < by_class.size(); ++c) {
      if (by_class[c].empty()) continue;
      props[c] = dirichlet(rng, spec.alpha, peers);
      const auto b = cuts(props[c], by_class[c].size());
      for (size_t j = 0; j < peers; ++j) count[j] += b[j + 1] - b[j];
    }
    ok = *std::min_element(count.begin(), count.end()) >= min;
  }
  std::vector<std::vector<size_t>> out(peers);
  for (size_t c = 0; c < by_class.size(); ++c) {
    if (by_class[c].empty()) continue;
    const auto b = cuts(props[c], by_class[c].size());
    for (size_t j = 0; j < peers; ++j) {
      out[j].insert(out[j].end(), by_class[c].begin() + static_cast<ptrdiff_t>(b[j]),
                    by_class[c].begin() + static_cast<ptrdiff_t>(b[j + 1]));
    }
  }
  if (!ok) {
    // Top up: the largest peer gives one random sample to a short one until none is short.
    // It barely changes the skew (it moves at most peers * min samples). A heap keeps the
    // largest peer at hand: thousands of peers are the simulator's normal case.
    // (size, -index): the largest first, and the lowest index among equals, for determinism.
    std::priority_queue<std::pair<size_t, ptrdiff_t>> donors;
    for (size_t p = 0; p < peers; ++p) donors.emplace(out[p].size(), -static_cast<ptrdiff_t>(p));
    for (size_t p = 0; p < peers; ++p) {
      bool p_taken_out = false;
      while (out[p].size() < min) {
        auto [size, neg] = donors.top();
        donors.pop();
        const auto q = static_cast<size_t>(-neg);
        auto& d = out[q];
        if (q == p) {  // the short peer itself: back in once it is topped up
          p_taken_out = true;
          continue;
        }
        if (size != d.size()) {  // stale (an earlier recipient): refresh
          donors.emplace(d.size(), neg);
          continue;
        }
        if (d.size() <= min) {  // cannot happen while n >= peers * min
          return Error(Code::kInternal, "dirichlet: no peer left to top up from");
        }
        const size_t k = rng.below(d.size());
        std::swap(d[k], d.back());
        out[p].push_back(d.back());
        d.pop_back();
        donors.emplace(d.size(), neg);
      }
      if (p_taken_out) donors.emplace(out[p].size(), -static_cast<ptrdiff_t>(p));
    }
  }
  return out;
}

Result<std::vector<std::vector<size_t>>> shard_split(
    const std::vector<std::vector<size_t>>& by_class, size_t n, size_t peers,
    const PartitionSpec& spec, Rng& rng) {
  const size_t k = spec.shards_per_peer;
  const size_t total = k * peers;
  if (total > n) {
    return Error(Code::kInvalidArgument, "shards: " + std::to_string(total) +
                                             " shards exceed the " + std::to_string(n) +
                                             " samples");
  }
  std::vector<size_t> nonempty;
  for (size_t c = 0; c < by_class.size(); ++c)
    if (!by_class[c].empty()) nonempty.push_back(c);

  std::vector<std::vector<size_t>> shards;
  shards.reserve(total);
  if (total >= nonempty.size()) {
    // Shards inside classes: each class one shard, the rest by D'Hondt (the class with the
    // largest samples-per-shard gets the next), so shard sizes stay close to n / total.
    std::vector<size_t> s(by_class.size(), 0);
    for (size_t c : nonempty) s[c] = 1;
    for (size_t r = nonempty.size(); r < total; ++r) {
      size_t best = by_class.size();
      for (size_t c : nonempty) {
        if (s[c] >= by_class[c].size()) continue;
        // by_class[c].size() / s[c] > by_class[best].size() / s[best], without division
        if (best == by_class.size() || by_class[c].size() * s[best] > by_class[best].size() * s[c])
          best = c;
      }
      ++s[best];  // total <= n guarantees some class still has room
    }
    for (size_t c : nonempty) {
      const auto& v = by_class[c];
      for (size_t j = 0; j < s[c]; ++j) {
        const size_t a = v.size() * j / s[c], b = v.size() * (j + 1) / s[c];
        shards.emplace_back(v.begin() + static_cast<ptrdiff_t>(a),
                            v.begin() + static_cast<ptrdiff_t>(b));
      }
    }
  } else {
    std::vector<size_t> sorted;
    sorted.reserve(n);
    for (const auto& v : by_class) sorted.insert(sorted.end(), v.begin(), v.end());
    for (size_t j = 0; j < total; ++j) {
      const size_t a = n * j / total, b = n * (j + 1) / total;
      shards.emplace_back(sorted.begin() + static_cast<ptrdiff_t>(a),
                          sorted.begin() + static_cast<ptrdiff_t>(b));
    }
  }
  rng.shuffle(shards);
  std::vector<std::vector<size_t>> out(peers);
  for (size_t j = 0; j < total; ++j) {
    auto& dst = out[j / k];
    dst.insert(dst.end(), shards[j].begin(), shards[j].end());
  }
  return out;
}

}  // namespace

Result<PartitionSpec> parse_partition_spec(std::string_view spec) {
  const auto f = split_colon(spec);
  PartitionSpec s;
  if (f[0] == "iid") {
    if (f.size() != 1) return bad_spec(spec, "iid takes no parameter");
    s.scheme = PartitionSpec::Scheme::kIid;
  } else if (f[0] == "dirichlet") {
    s.scheme = PartitionSpec::Scheme::kDirichlet;
    if (f.size() < 2 || f.size() > 3) return bad_spec(spec, "dirichlet needs an alpha");
    if (!parse_num(f[1], s.alpha) || !std::isfinite(s.alpha) || s.alpha <= 0) {
      return bad_spec(spec, "alpha '" + std::string(f[1]) + "' is not a number > 0");
    }
    if (f.size() == 3 && !parse_num(f[2], s.min_samples)) {
      return bad_spec(spec, "minimum per peer '" + std::string(f[2]) + "' is not an integer >= 0");
    }
  } else if (f[0] == "shards") {
    s.scheme = PartitionSpec::Scheme::kShards;
    if (f.size() > 2) return bad_spec(spec, "shards takes one parameter");
    if (f.size() == 2 && (!parse_num(f[1], s.shards_per_peer) || s.shards_per_peer == 0)) {
      return bad_spec(spec, "shards per peer '" + std::string(f[1]) + "' is not an integer > 0");
    }
  } else if (f[0] == "one-class") {
    if (f.size() != 1) return bad_spec(spec, "one-class takes no parameter");
    s.scheme = PartitionSpec::Scheme::kOneClass;
  } else {
    return bad_spec(spec, "unknown scheme '" + std::string(f[0]) + "'");
  }
  return s;
}

std::string to_string(const PartitionSpec& s) {
  switch (s.scheme) {
    case PartitionSpec::Scheme::kIid:
      return "iid";
    case PartitionSpec::Scheme::kDirichlet: {
      char b[64];
      std::snprintf(b, sizeof b, "dirichlet:%g:%zu", s.alpha, s.min_samples);
      return b;
    }
    case PartitionSpec::Scheme::kShards:
      return "shards:" + std::to_string(s.shards_per_peer);
    case PartitionSpec::Scheme::kOneClass:
      return "one-class";
  }
  return "?";
}

Result<Partition> partition(std::span<const int32_t> labels, int classes, size_t peers,
                            const PartitionSpec& spec, uint64_t seed) {
  const size_t n = labels.size();
  if (peers == 0) return Error(Code::kInvalidArgument, "partition: no peers");
  if (classes <= 0) return Error(Code::kInvalidArgument, "partition: no classes");
  if (peers > n) {
    return Error(Code::kInvalidArgument, "partition: " + std::to_string(peers) +
                                             " peers but only " + std::to_string(n) + " samples");
  }
  std::vector<std::vector<size_t>> by_class(static_cast<size_t>(classes));
  for (size_t i = 0; i < n; ++i) {
    if (labels[i] < 0 || labels[i] >= classes) {
      return Error(Code::kInvalidArgument, "partition: label " + std::to_string(labels[i]) +
                                               " at index " + std::to_string(i) + " outside [0, " +
                                               std::to_string(classes) + ")");
    }
    by_class[static_cast<size_t>(labels[i])].push_back(i);
  }
  Rng rng(seed);
  for (auto& v : by_class) rng.shuffle(v);

  Partition part;
  switch (spec.scheme) {
    case PartitionSpec::Scheme::kIid: {
      std::vector<size_t> all(n);
      std::iota(all.begin(), all.end(), size_t{0});
      rng.shuffle(all);
      part.peers.resize(peers);
      std::vector<size_t> targets(peers);
      std::iota(targets.begin(), targets.end(), size_t{0});
      deal_equal(all, peers, part.peers, targets);
      break;
    }
    case PartitionSpec::Scheme::kDirichlet: {
      if (!(spec.alpha > 0) || !std::isfinite(spec.alpha)) {
        return Error(Code::kInvalidArgument, "dirichlet: alpha must be a finite number > 0");
      }
      MYCEL_ASSIGN_OR_RETURN(part.peers, dirichlet_split(by_class, n, peers, spec, rng));
      break;
    }
    case PartitionSpec::Scheme::kShards: {
      if (spec.shards_per_peer == 0) {
        return Error(Code::kInvalidArgument, "shards: shards per peer must be > 0");
      }
      MYCEL_ASSIGN_OR_RETURN(part.peers, shard_split(by_class, n, peers, spec, rng));
      break;
    }
    case PartitionSpec::Scheme::kOneClass: {
      std::vector<size_t> nonempty;
      for (size_t c = 0; c < by_class.size(); ++c)
        if (!by_class[c].empty()) nonempty.push_back(c);
      const size_t cc = nonempty.size();
      if (peers < cc) {
        return Error(Code::kInvalidArgument, "one-class: " + std::to_string(peers) +
                                                 " peers cannot hold " + std::to_string(cc) +
                                                 " classes one each without dropping data "
                                                 "(use at least " +
                                                 std::to_string(cc) + " peers, or shards:1)");
      }
      part.peers.resize(peers);
      for (size_t k = 0; k < cc; ++k) {
        std::vector<size_t> targets;  // peers k, k + cc, k + 2cc, ...
        for (size_t p = k; p < peers; p += cc) targets.push_back(p);
        deal_equal(by_class[nonempty[k]], targets.size(), part.peers, targets);
      }
      break;
    }
  }
  for (size_t p = 0; p < peers; ++p) {
    if (part.peers[p].empty()) {
      return Error(Code::kInvalidArgument, "partition " + to_string(spec) + ": peer " +
                                               std::to_string(p) + " would get no samples (" +
                                               std::to_string(peers) + " peers, " +
                                               std::to_string(n) + " samples); use fewer peers");
    }
    std::sort(part.peers[p].begin(), part.peers[p].end());
  }
  return part;
}

std::vector<std::vector<size_t>> label_histograms(const Partition& part,
                                                  std::span<const int32_t> labels, int classes) {
  std::vector<std::vector<size_t>> h(
      part.peers.size(), std::vector<size_t>(static_cast<size_t>(std::max(classes, 0))));
  for (size_t p = 0; p < part.peers.size(); ++p) {
    for (size_t i : part.peers[p]) {
      if (i < labels.size() && labels[i] >= 0 && labels[i] < classes)
        ++h[p][static_cast<size_t>(labels[i])];
    }
  }
  return h;
}

double mean_label_skew(const std::vector<std::vector<size_t>>& hist) {
  if (hist.empty()) return 0;
  const size_t c = hist[0].size();
  std::vector<double> global(c, 0);
  double total = 0;
  for (const auto& h : hist)
    for (size_t j = 0; j < c && j < h.size(); ++j) global[j] += static_cast<double>(h[j]);
  for (double g : global) total += g;
  if (total == 0) return 0;
  double sum = 0;
  size_t counted = 0;
  for (const auto& h : hist) {
    double n = 0;
    for (size_t j = 0; j < c && j < h.size(); ++j) n += static_cast<double>(h[j]);
    if (n == 0) continue;
    double tv = 0;
    for (size_t j = 0; j < c && j < h.size(); ++j)
      tv += std::abs(static_cast<double>(h[j]) / n - global[j] / total);
    sum += 0.5 * tv;
    ++counted;
  }
  return counted ? sum / static_cast<double>(counted) : 0;
}

std::string format_histograms(const std::vector<std::vector<size_t>>& hist, size_t max_rows) {
  const size_t c = hist.empty() ? 0 : hist[0].size();
  std::string out;
  char b[64];
  auto row = [&](const std::string& label, const std::vector<size_t>& h) {
    std::snprintf(b, sizeof b, "%6s", label.c_str());
    out += b;
    size_t n = 0;
    for (size_t v : h) n += v;
    std::snprintf(b, sizeof b, " %8zu", n);
    out += b;
    for (size_t v : h) {
      std::snprintf(b, sizeof b, " %6zu", v);
      out += b;
    }
    out += '\n';
  };
  std::snprintf(b, sizeof b, "%6s %8s", "peer", "samples");
  out += b;
  for (size_t j = 0; j < c; ++j) {
    char cls[24];
    std::snprintf(cls, sizeof cls, "c%zu", j);
    std::snprintf(b, sizeof b, " %6s", cls);
    out += b;
  }
  out += '\n';
  std::vector<size_t> total(c, 0);
  for (const auto& h : hist)
    for (size_t j = 0; j < c && j < h.size(); ++j) total[j] += h[j];
  const bool elide = max_rows > 0 && hist.size() > max_rows;
  const size_t head = elide ? (max_rows + 1) / 2 : hist.size();
  const size_t tail_from = elide ? hist.size() - max_rows / 2 : hist.size();
  for (size_t p = 0; p < hist.size(); ++p) {
    if (p < head || p >= tail_from) {
      row(std::to_string(p), hist[p]);
    } else if (p == head) {
      out += "   ... (" + std::to_string(tail_from - head) + " peers not shown)\n";
    }
  }
  row("total", total);
  std::snprintf(b, sizeof b, "%.4f", mean_label_skew(hist));
  out += "mean label skew (total variation from the global label distribution): ";
  out += b;
  out += '\n';
  return out;
}

Status write_histograms_csv(const std::string& path, const std::vector<std::vector<size_t>>& hist) {
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> f(std::fopen(path.c_str(), "w"));
  if (!f) return Error(Code::kIo, path + ": cannot open for writing: " + std::strerror(errno));
  const size_t c = hist.empty() ? 0 : hist[0].size();
  std::string s = "peer,samples";
  for (size_t j = 0; j < c; ++j) s.append(",c").append(std::to_string(j));
  s += '\n';
  for (size_t p = 0; p < hist.size(); ++p) {
    size_t n = 0;
    for (size_t v : hist[p]) n += v;
    s.append(std::to_string(p)).append(",").append(std::to_string(n));
    for (size_t v : hist[p]) s.append(",").append(std::to_string(v));
    s += '\n';
  }
  if (std::fwrite(s.data(), 1, s.size(), f.get()) != s.size()) {
    return Error(Code::kIo, path + ": write failed: " + std::strerror(errno));
  }
  if (std::fclose(f.release()) != 0) {
    return Error(Code::kIo, path + ": close failed: " + std::strerror(errno));
  }
  return Ok();
}

Result<Dataset> peer_dataset(const Dataset& d, const Partition& part, size_t peer) {
  if (peer >= part.peers.size()) {
    return Error(Code::kOutOfRange, "peer " + std::to_string(peer) + " not below " +
                                        std::to_string(part.peers.size()) + " peers");
  }
  return subset(d, part.peers[peer]);
}

}  // namespace mycel::data
