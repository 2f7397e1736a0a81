#include "runtime/core/peer_sampling.h"

#include <algorithm>
#include <limits>

namespace mycel::runtime {
namespace {

// Address equality, compared from the end: two addresses of a swarm share their beginning
// (scheme, host, "s:") and differ in the last characters (port, id), so a mismatch is found at
// the first byte looked at, with no call to memcmp (views are searched on every message).
inline bool same(const std::string& a, const std::string& b) {
  const size_t n = a.size();
  if (n != b.size()) return false;
  const char* x = a.data();
  const char* y = b.data();
  for (size_t i = n; i-- > 0;)
    if (x[i] != y[i]) return false;
  return true;
}

}  // namespace

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
  if (d.address.empty() || same(d.address, self_)) return;
  auto v = find_in_view(d.address);
  if (v != view_.end()) {
    v->age = std::min(v->age, d.age);
    return;
  }
  if (view_.size() < capacity_) view_.push_back(d);
}

std::vector<Descriptor>::iterator PeerSampling::find_in_view(const std::string& address) {
  return std::find_if(view_.begin(), view_.end(), [&](const Descriptor& v) { return same(v.address, address); });
}

PeerSampling::Sent* PeerSampling::find_sent(const std::string& to) {
  for (auto& s : sent_)
    if (!s.to.empty() && same(s.to, to)) return &s;
  return nullptr;
}

// A uniform random subset of k view entries other than `exclude`: a partial Fisher-Yates over
// indices, so that only the chosen entries are copied (the simulator calls this for every
// shuffle and every gossip send of thousands of peers).
void PeerSampling::random_indices(size_t k, const std::string& exclude) {
  auto& idx = idx_;
  idx.clear();
  for (size_t i = 0; i < view_.size(); ++i)
    if (exclude.empty() || !same(view_[i].address, exclude)) idx.push_back(static_cast<uint32_t>(i));
  const size_t take = std::min(k, idx.size());
  for (size_t i = 0; i < take; ++i) std::swap(idx[i], idx[i + rng_.below(idx.size() - i)]);
  idx.resize(take);
}

std::vector<Descriptor> PeerSampling::random_subset(size_t k, const std::string& exclude) {
  random_indices(k, exclude);
  std::vector<Descriptor> out;
  out.reserve(idx_.size() + 1);  // start_shuffle adds its own descriptor
  for (uint32_t i : idx_) out.push_back(view_[i]);
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
  Sent* slot = find_sent(req.to);
  if (!slot) {
    for (auto& s : sent_)
      if (s.to.empty()) {
        slot = &s;
        break;
      }
    if (!slot) slot = &sent_.emplace_back();
    slot->to = req.to;
  }
  slot->entries.assign(req.entries.begin(), req.entries.end());
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
  Sent* slot = find_sent(from);
  on_heard(from, now);
  if (!slot) {
    merge(entries, {});
    return;
  }
  merge(entries, slot->entries);
  slot->to.clear();  // the slot is free again (its capacity kept)
  slot->entries.clear();
}

// Cyclon's merge: skip self and known entries (keeping the younger age), fill empty slots,
// then replace entries we sent to the other side.
void PeerSampling::merge(const std::vector<Descriptor>& received, const std::vector<Descriptor>& sent) {
  size_t replaceable = sent.size();  // entries sent to the other side, taken from the back
  for (const auto& d : received) {
    if (d.address.empty() || same(d.address, self_) || (!retry_.empty() && retry_.count(d.address))) continue;
    auto known = find_in_view(d.address);
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
      auto v = find_in_view(victim);
      if (v != view_.end()) {
        *v = d;
        break;
      }
    }
  }
}

void PeerSampling::on_heard(const std::string& from, double now) {
  if (from.empty() || same(from, self_)) return;
  if (!retry_.empty()) retry_.erase(from);
  auto known = find_in_view(from);
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
  const bool was_in_view = std::erase_if(view_, [&](const Descriptor& d) { return same(d.address, address); }) > 0;
  if (Sent* slot = find_sent(address)) {
    slot->to.clear();
    slot->entries.clear();
  }
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
  random_indices(k, std::string());
  std::vector<std::string> out;
  out.reserve(idx_.size());
  for (uint32_t i : idx_) out.push_back(view_[i].address);
  return out;
}

}  // namespace mycel::runtime
