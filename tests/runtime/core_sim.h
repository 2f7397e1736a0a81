// A small discrete-event loop that drives sans-IO protocol cores with scalar "models":
// messages are delivered after a fixed latency, timers honoured, payloads kept by handle as the
// live driver keeps them. Deterministic for a seed.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <queue>

#include "runtime/core/protocol.h"

namespace mycel::runtime::simtest {

struct Sim {
  struct Node {
    std::unique_ptr<Protocol> proto;
    ProtocolOptions opt;  // to start a fresh instance (restart)
    double x = 0;
    bool alive = true;
    double next_timer = 1e18;
  };
  struct Event {
    double t;
    int seq;
    int to;
    bool is_timer;
    Message msg;
    double value;           // model value carried
    bool is_start = false;  // the node (re)starts: start(t)
    bool fresh = false;     // is_start: with a new protocol instance (a restart after a crash)
    bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };

  std::vector<Node> nodes;
  ParamStore params;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> q;
  int seq = 0;
  double latency = 0.01;
  uint64_t merges = 0, models = 0, drops = 0;
  std::map<uint64_t, double> held;  // payloads by handle, as the driver keeps them
  double train_drift = 0;  // added to x per train step

  static std::string addr(int i) { return "inproc://n" + std::to_string(i); }
  static int index(const std::string& a) { return std::stoi(a.substr(10)); }

  std::string proto_name;

  // start_times[i] > 0: node i is not running until then (messages to it fail as to a dead one).
  Sim(int n, const std::string& proto, RuntimeParams p, int seeds = 1,
      const std::function<void(ProtocolOptions&)>& tweak = {}, std::vector<double> start_times = {})
      : params(p), proto_name(proto) {
    for (int i = 0; i < n; ++i) {
      ProtocolOptions o;
      o.self = addr(i);
      for (int s = 0; s < seeds; ++s)
        if (s != i) o.seeds.push_back(addr(s));
      for (int j = 0; j < n; ++j) o.peers.push_back(addr(j));
      o.id = i;
      o.seed = 100 + i;
      o.view_size = 6;
      if (tweak) tweak(o);
      auto pr = make_protocol(proto, o, &params);
      EXPECT_TRUE(pr.is_ok());
      Node node;
      node.proto = std::move(pr).value();
      node.opt = o;
      node.x = i;  // initial models 0..n-1
      nodes.push_back(std::move(node));
    }
    for (int i = 0; i < n; ++i) {
      double t = static_cast<size_t>(i) < start_times.size() ? start_times[i] : 0;
      if (t > 0) {
        nodes[i].alive = false;
        q.push({t, seq++, i, false, {}, 0, true, false});
        continue;
      }
      std::vector<Action> out;
      nodes[i].proto->start(0, out);
      run_actions(i, 0, out);
    }
  }

  // Node i crashes now (its state is lost) and starts afresh at time `at`.
  void crash(int i) { nodes[i].alive = false; }
  void restart_at(int i, double at) { q.push({at, seq++, i, false, {}, 0, true, true}); }

  void run_actions(int i, double now, std::vector<Action>& out) {
    for (auto& a : out) {
      if (auto* s = std::get_if<SendModel>(&a)) {
        ++models;
        Message m{s->kind, addr(i), s->age, s->version, 0, s->partition, {}};
        q.push({now + latency, seq++, index(s->to), false, m, nodes[i].x});
      } else if (auto* v = std::get_if<SendView>(&a)) {
        Message m{v->kind, addr(i), 0, 0, 0, 0, v->entries};
        q.push({now + latency, seq++, index(v->to), false, m, 0});
      } else if (auto* mg = std::get_if<MergeModel>(&a)) {
        ++merges;
        auto h = held.find(mg->handle);
        ASSERT_NE(h, held.end()) << "merge of an unknown handle";
        nodes[i].x = (1 - mg->weight) * nodes[i].x + mg->weight * h->second;
        held.erase(h);
      } else if (auto* d = std::get_if<Drop>(&a)) {
        ++drops;
        ASSERT_EQ(held.erase(d->handle), 1u) << "drop of an unknown handle";
      } else if (auto* t = std::get_if<Train>(&a)) {
        nodes[i].x += train_drift * t->steps;
      } else if (auto* tm = std::get_if<SetTimer>(&a)) {
        if (tm->at < nodes[i].next_timer - 1e-12 || nodes[i].next_timer <= now) {
          nodes[i].next_timer = tm->at;
          q.push({tm->at, seq++, i, true, {}, 0});
        }
      }
    }
  }

  void run_until(double t_end) {
    while (!q.empty() && q.top().t <= t_end) {
      Event e = q.top();
      q.pop();
      Node& n = nodes[e.to];
      std::vector<Action> out;
      if (e.is_start) {
        if (e.fresh) {
          auto pr = make_protocol(proto_name, n.opt, &params);
          EXPECT_TRUE(pr.is_ok());
          n.proto = std::move(pr).value();
        }
        n.alive = true;
        n.next_timer = 1e18;
        std::vector<Action> out;
        n.proto->start(e.t, out);
        run_actions(e.to, e.t, out);
        continue;
      }
      if (e.is_timer) {
        if (!n.alive || std::abs(e.t - n.next_timer) > 1e-12) continue;
        n.next_timer = 1e18;
        n.proto->tick(e.t, out);
        run_actions(e.to, e.t, out);
        continue;
      }
      if (!n.alive) {  // the sender's transport reports the failure
        int from = index(e.msg.from);
        if (nodes[from].alive) {
          nodes[from].proto->peer_down(e.t, addr(e.to), out);
          run_actions(from, e.t, out);
        }
        continue;
      }
      if (e.msg.kind == MsgKind::kModel || e.msg.kind == MsgKind::kModelReply) {
        e.msg.handle = static_cast<uint64_t>(++seq);
        held[e.msg.handle] = e.value;
      }
      n.proto->message(e.t, e.msg, out);
      run_actions(e.to, e.t, out);
    }
  }

  double mean() const {
    double s = 0;
    int c = 0;
    for (const auto& n : nodes)
      if (n.alive) { s += n.x; ++c; }
    return s / c;
  }
  double spread() const {
    double lo = 1e18, hi = -1e18;
    for (const auto& n : nodes)
      if (n.alive) { lo = std::min(lo, n.x); hi = std::max(hi, n.x); }
    return hi - lo;
  }
};

}  // namespace mycel::runtime::simtest
