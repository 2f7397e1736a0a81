// Liveness of a fixed set of peers (D-PSGD's neighbours, FedAvg's clients and server), sans-IO.
// A peer is in one of three states, and "not yet" is never confused with "gone":
//   pending  never heard from (it may not have started yet): probed with backoff, not counted
//            as down, waited for until the start-up deadline;
//   up       heard from (a frame, or a connection to or from it);
//   down     it was up, then silent for `timeout_s` (protocol.peer_timeout_s): not waited for
//            until it is heard from again.
// A transport failure (connection closed, send failed) does not make a peer down by itself:
// it only means our last message may not have arrived, and the peer is probed again until
// it answers or the silence lasts `timeout_s`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace mycel::runtime {

class Liveness {
 public:
  enum class State : uint8_t { kPending, kUp, kDown };

  Liveness(size_t n, double timeout_s, double probe_min_s = 0.1, double probe_max_s = 2.0)
      : peers_(n), timeout_s_(timeout_s), probe_min_s_(probe_min_s), probe_max_s_(probe_max_s) {
    for (auto& p : peers_) p.probe_backoff_s = probe_min_s_;
  }

  size_t size() const { return peers_.size(); }
  State state(size_t i) const { return peers_[i].state; }
  bool down(size_t i) const { return peers_[i].state == State::kDown; }
  bool pending(size_t i) const { return peers_[i].state == State::kPending; }
  bool ever_heard(size_t i) const { return peers_[i].last_heard_s >= 0; }
  // Reachable now: heard from and no transport failure since.
  bool reachable(size_t i) const { return ever_heard(i) && !peers_[i].lost; }
  double last_heard(size_t i) const { return peers_[i].last_heard_s; }

  // Any sign of life. Returns true when the peer was not reachable until now (pending, lost
  // or down): whatever we could not send it can go now.
  bool heard(size_t i, double now) {
    Peer& p = peers_[i];
    bool back = p.state != State::kUp || p.lost;
    p.last_heard_s = std::max(p.last_heard_s, now);
    p.state = State::kUp;
    p.lost = false;
    p.probe_backoff_s = probe_min_s_;
    return back;
  }

  // The transport could not reach it (or its connection closed): probe it until it answers.
  void lost(size_t i, double now) {
    Peer& p = peers_[i];
    if (!p.lost) {
      p.lost = true;
      p.probe_at_s = now + p.probe_backoff_s;
    }
  }

  // The start-up deadline passed: peers still pending are treated as down (not waited for)
  // until heard from; they are not counted as peers that went down. Returns them.
  std::vector<size_t> give_up_pending() {
    std::vector<size_t> out;
    for (size_t i = 0; i < peers_.size(); ++i)
      if (peers_[i].state == State::kPending) {
        peers_[i].state = State::kDown;
        peers_[i].lost = true;
        out.push_back(i);
      }
    return out;
  }

  // Peers that were up and have been silent for timeout_s become down; returns them.
  std::vector<size_t> expire(double now) {
    std::vector<size_t> out;
    for (size_t i = 0; i < peers_.size(); ++i) {
      Peer& p = peers_[i];
      if (p.state == State::kUp && now - p.last_heard_s >= timeout_s_ - 1e-9) {
        p.state = State::kDown;
        p.lost = true;
        if (p.probe_at_s < now) p.probe_at_s = now;
        out.push_back(i);
      }
    }
    return out;
  }

  // Peers to probe now (pending ones, and lost or down ones), each rescheduled with a doubled
  // backoff (bounded by probe_max_s) until heard from.
  std::vector<size_t> due_probes(double now) {
    std::vector<size_t> out;
    for (size_t i = 0; i < peers_.size(); ++i) {
      Peer& p = peers_[i];
      if ((p.state == State::kUp && !p.lost) || p.probe_at_s > now + 1e-9) continue;
      out.push_back(i);
      p.probe_at_s = now + p.probe_backoff_s;
      p.probe_backoff_s = std::min(probe_max_s_, p.probe_backoff_s * 2);
    }
    return out;
  }

  // The earliest time at which expire() or due_probes() may have something to say.
  double next_event() const {
    double t = std::numeric_limits<double>::infinity();
    for (const Peer& p : peers_) {
      if (p.state == State::kUp) t = std::min(t, p.last_heard_s + timeout_s_);
      if (p.state != State::kUp || p.lost) t = std::min(t, p.probe_at_s);
    }
    return t;
  }

 private:
  struct Peer {
    State state = State::kPending;
    bool lost = false;          // a transport failure since it was last heard from
    double last_heard_s = -1;   // < 0: never
    double probe_at_s = 0;      // pending peers are probed at once
    double probe_backoff_s = 0;
  };
  std::vector<Peer> peers_;
  double timeout_s_, probe_min_s_, probe_max_s_;
};

}  // namespace mycel::runtime
