// Peer sampling with partial views: Cyclon (Voulgaris, Gavidia, van Steen, 2005). Each peer
// keeps at most view_size descriptors (address, age); every period it ages them, removes the
// oldest peer Q and swaps a random subset of its view (plus a fresh descriptor of itself) with
// Q's. Nobody knows every peer, yet each view stays a random sample of the live ones: a dead
// peer stops answering, so once it is the oldest it is removed and not re-inserted.
// Sans-IO: no clock, no sockets. `now` comes in as an argument; messages go out as return values.
//
// Failure handling beyond Cyclon: a peer reported down (transport error, timeout) is removed at
// once and kept on a retry list with exponential backoff; due_retries() says whom to probe again,
// so a peer that comes back after a disconnection rejoins. Seeds that never answered stay on the
// retry list, so a swarm started in any order converges.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "runtime/core/rng.h"

namespace mycel::runtime {

struct Descriptor {
  std::string address;
  uint32_t age = 0;  // periods since its owner produced it
  bool operator==(const Descriptor&) const = default;
};

struct ShuffleRequest {
  std::string to;
  std::vector<Descriptor> entries;  // includes the sender itself with age 0
};

class PeerSampling {
 public:
  PeerSampling(std::string self, size_t view_size, size_t shuffle_len, uint64_t seed,
               double retry_min_s = 1.0, double retry_max_s = 30.0);

  const std::string& self() const { return self_; }
  const std::vector<Descriptor>& view() const { return view_; }
  size_t view_size() const { return capacity_; }

  // Seeds are tried like peers that went down: at once, then with backoff until they answer.
  void add_seed(const std::string& address, double now);

  // One Cyclon period: ages the view, picks the oldest peer (removed until it answers) and what
  // to send it. nullopt with an empty view.
  std::optional<ShuffleRequest> start_shuffle();
  // A shuffle request from `from`: returns the reply entries and merges the received ones.
  std::vector<Descriptor> on_shuffle_request(const std::string& from,
                                             const std::vector<Descriptor>& entries, double now);
  // The reply to our last shuffle with `from`.
  void on_shuffle_reply(const std::string& from, const std::vector<Descriptor>& entries, double now);

  // Any message from a peer proves it alive: it leaves the retry list and enters the view.
  void on_heard(const std::string& from, double now);
  // A peer is unreachable: it leaves the view and goes on the retry list. Returns whether it
  // was in the view (a live peer lost), as opposed to a seed or retry that has not answered yet.
  bool on_peer_down(const std::string& address, double now);

  // Peers on the retry list whose backoff has expired; each is rescheduled with a doubled
  // backoff (with jitter) until heard from.
  std::vector<std::string> due_retries(double now);
  bool is_down(const std::string& address) const { return retry_.count(address) > 0; }
  // When due_retries() next has something to say (infinity with nobody to retry).
  double next_retry_s() const;

  // Uniform choices among the view (excluding peers on the retry list).
  std::optional<std::string> random_peer();
  std::vector<std::string> sample(size_t k);

 private:
  struct Retry {
    double next_s;
    double backoff_s;
  };
  // The entries last sent to one shuffle target; a slot with an empty address is free (kept
  // with its capacity for the next shuffle: a simulated swarm shuffles every period of every
  // peer).
  struct Sent {
    std::string to;
    std::vector<Descriptor> entries;
  };
  void merge(const std::vector<Descriptor>& received, const std::vector<Descriptor>& sent);
  std::vector<Descriptor> random_subset(size_t k, const std::string& exclude);
  // Fills idx_ with the chosen view indices.
  void random_indices(size_t k, const std::string& exclude);
  void insert_or_refresh(const Descriptor& d);
  Sent* find_sent(const std::string& to);
  std::vector<Descriptor>::iterator find_in_view(const std::string& address);

  std::string self_;
  size_t capacity_, shuffle_len_;
  std::vector<Descriptor> view_;
  std::vector<Sent> sent_;  // last entries sent per shuffle target (a few at most)
  std::vector<uint32_t> idx_;  // scratch of random_indices
  std::map<std::string, Retry> retry_;
  double retry_min_s_, retry_max_s_;
  SmallRng rng_;
};

}  // namespace mycel::runtime
