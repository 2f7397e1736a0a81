#include "runtime/core/peer_sampling.h"

#include <algorithm>
#include <limits>

namespace mycel::runtime {

PeerSampling::PeerSampling(std::string self, size_t view_size, size_t shuffle_len, uint64_t seed,
                           double retry_min_s, double retry_max_s)
    : self_(std::move(self)),
      capacity_(std::max<size_t>(1, view_size)),
      shuffle_len_(std::clamp<size_t>(shuffle_len, 1, std::max<size_t>(1, view_size))),
      retry_min_s_(retry_min_s),
      retry_max_s_(std::max(retry_min_s, retry_max_s)),
      rng_(seed) {}

void PeerSampling::add_seed(const std::string& address, double now) {
  if (address == self_ || address.empty()) return;
  retry_.try_emplace(address, Retry{now, retry_min_s_});
}

void PeerSampling::insert_or_refresh(const Descriptor& d) {
  if (d.address == self_ || d.address.empty()) return;
  for (auto& v : view_) {
    if (v.address == d.address) {
      v.age = std::min(v.age, d.age);
      return;
    }
  }
  if (view_.size() < capacity_) view_.push_back(d);
}

// A uniform random subset of k view entries other than `exclude`: a partial Fisher-Yates over
// indices, so that only the chosen entries are copied (the simulator calls this for every
// shuffle and every gossip send of thousands of peers).
std::vector<size_t> PeerSampling::random_indices(size_t k, const std::string& exclude) {
  std::vector<size_t> idx;
  idx.reserve(view_.size());
  for (size_t i = 0; i < view_.size(); ++i)
    if (exclude.empty() || view_[i].address != exclude) idx.push_back(i);
  const size_t take = std::min(k, idx.size());
  for (size_t i = 0; i < take; ++i) std::swap(idx[i], idx[i + rng_.below(idx.size() - i)]);
  idx.resize(take);
  return idx;
}

std::vector<Descriptor> PeerSampling::random_subset(size_t k, const std::string& exclude) {
  std::vector<Descriptor> out;
  for (size_t i : random_indices(k, exclude)) out.push_back(view_[i]);
  return out;
}

std::optional<ShuffleRequest> PeerSampling::start_shuffle() {
  if (view_.empty()) return std::nullopt;
  for (auto& d : view_) ++d.age;
  auto oldest = std::max_element(view_.begin(), view_.end(),
                                 [](const Descriptor& a, const Descriptor& b) { return a.age < b.age; });
  ShuffleRequest req;
  req.to = oldest->address;
  view_.erase(oldest);  // it comes back only if it answers (or someone vouches for it)
  req.entries = random_subset(shuffle_len_ - 1, req.to);
  sent_[req.to] = req.entries;
  req.entries.push_back(Descriptor{self_, 0});
  return req;
}

std::vector<Descriptor> PeerSampling::on_shuffle_request(const std::string& from,
                                                         const std::vector<Descriptor>& entries,
                                                         double now) {
  std::vector<Descriptor> reply = random_subset(shuffle_len_, from);
  on_heard(from, now);
  merge(entries, reply);
  return reply;
}

void PeerSampling::on_shuffle_reply(const std::string& from, const std::vector<Descriptor>& entries,
                                    double now) {
  auto it = sent_.find(from);
  std::vector<Descriptor> sent = it != sent_.end() ? it->second : std::vector<Descriptor>{};
  if (it != sent_.end()) sent_.erase(it);
  on_heard(from, now);
  merge(entries, sent);
}

// Cyclon's merge: skip self and known entries (keeping the younger age), fill empty slots,
// then replace entries we sent to the other side.
void PeerSampling::merge(const std::vector<Descriptor>& received, const std::vector<Descriptor>& sent) {
  size_t replaceable = sent.size();  // entries sent to the other side, taken from the back
  for (const auto& d : received) {
    if (d.address == self_ || d.address.empty() || retry_.count(d.address)) continue;
    auto known = std::find_if(view_.begin(), view_.end(),
                              [&](const Descriptor& v) { return v.address == d.address; });
    if (known != view_.end()) {
      known->age = std::min(known->age, d.age);
      continue;
    }
    if (view_.size() < capacity_) {
      view_.push_back(d);
      continue;
    }
    while (replaceable > 0) {
      const std::string& victim = sent[--replaceable].address;
      auto v = std::find_if(view_.begin(), view_.end(),
                            [&](const Descriptor& x) { return x.address == victim; });
      if (v != view_.end()) {
        *v = d;
        break;
      }
    }
  }
}

void PeerSampling::on_heard(const std::string& from, double now) {
  if (from == self_ || from.empty()) return;
  retry_.erase(from);
  auto known = std::find_if(view_.begin(), view_.end(),
                            [&](const Descriptor& v) { return v.address == from; });
  if (known != view_.end()) {
    known->age = 0;
    return;
  }
  if (view_.size() < capacity_) {
    view_.push_back(Descriptor{from, 0});
  } else {
    // Replace the oldest entry: a peer we just heard from is the freshest evidence we have.
    auto oldest = std::max_element(view_.begin(), view_.end(),
                                   [](const Descriptor& a, const Descriptor& b) { return a.age < b.age; });
    *oldest = Descriptor{from, 0};
  }
}

bool PeerSampling::on_peer_down(const std::string& address, double now) {
  if (address == self_) return false;
  const bool was_in_view = std::erase_if(view_, [&](const Descriptor& d) { return d.address == address; }) > 0;
  sent_.erase(address);
  retry_.try_emplace(address, Retry{now + retry_min_s_, retry_min_s_});
  return was_in_view;
}

std::vector<std::string> PeerSampling::due_retries(double now) {
  std::vector<std::string> due;
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  for (auto& [addr, r] : retry_) {
    if (r.next_s <= now) {
      due.push_back(addr);
      r.backoff_s = std::min(retry_max_s_, r.backoff_s * 2);
      r.next_s = now + r.backoff_s * jitter(rng_);
    }
  }
  return due;
}

double PeerSampling::next_retry_s() const {
  double t = std::numeric_limits<double>::infinity();
  for (const auto& [addr, r] : retry_) t = std::min(t, r.next_s);
  return t;
}

std::optional<std::string> PeerSampling::random_peer() {
  if (view_.empty()) return std::nullopt;
  return view_[rng_.below(view_.size())].address;
}

std::vector<std::string> PeerSampling::sample(size_t k) {
  std::vector<std::string> out;
  for (size_t i : random_indices(k, std::string())) out.push_back(view_[i].address);
  return out;
}

}  // namespace mycel::runtime
