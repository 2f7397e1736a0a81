// A stand-in peer for the tests of `mycel top`, `mycel ctl` and the Prometheus scrape: it
// serves the real control endpoint (runtime/control/server.h) with a snapshot it publishes
// every 100 ms, whose counters grow (bytes at a rate that depends on the codec in force, so a
// `mycel ctl set codec.spec=...` shows), and writes DIR/control-ID.json as a live peer does.
// It is also the wiring the live driver needs, in small.
//   control_fake_peer --dir DIR --id N [--duration S]   serve until POST /stop, SIGTERM or S s
//   control_fake_peer --metrics                         print one exposition and exit
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "runtime/control/server.h"

namespace {
std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop.store(true); }
}  // namespace

int main(int argc, char** argv) {
  using namespace mycel;
  std::string dir;
  int id = 0;
  double duration = 3600;
  bool metrics_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--id" && i + 1 < argc) id = std::atoi(argv[++i]);
    else if (a == "--duration" && i + 1 < argc) duration = std::atof(argv[++i]);
    else if (a == "--metrics") metrics_only = true;
    else {
      std::fprintf(stderr, "usage: control_fake_peer --dir DIR --id N [--duration S] | --metrics\n");
      return 2;
    }
  }
  runtime::ParamStore store{runtime::RuntimeParams{}};
  control::PeerSnapshot s;
  s.peer = id;
  s.address = "ucx://127.0.0.1:" + std::to_string(20000 + id);
  s.samples = 1000;
  s.bytes_by_codec["int8"] = 0;
  transport::PeerStats link;
  link.peer = "ucx://127.0.0.1:" + std::to_string(20000 + (id + 1) % 4);
  link.connected = true;
  link.bandwidth_Bps = 1e8 * (id + 1);
  link.rtt_s = 1e-4;
  s.links = {link};
  if (metrics_only) {
    s.bytes_sent = 12345;
    s.eval_seconds.observe(0.02);
    std::fputs(control::prometheus_text(s).c_str(), stdout);
    return 0;
  }
  if (dir.empty()) {
    std::fprintf(stderr, "control_fake_peer: --dir is required\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  // The wiring: a box, a ring, hooks over the ParamStore and the stop flag, a server, the
  // endpoint file.
  control::SnapshotBox box;
  control::EventRing events;
  runtime::ExperimentConfig::Control cc;  // the defaults: loopback, any port, generated token
  auto opt = control::ServerOptions::from_config(cc, dir);
  if (!opt) {
    std::fprintf(stderr, "control_fake_peer: %s\n", opt.status().message().c_str());
    return 1;
  }
  box.publish(std::make_shared<const control::PeerSnapshot>(s));
  auto srv = control::ControlServer::start(*opt, control::ControlHooks::for_param_store(store, &g_stop), &box, &events);
  if (!srv) {
    std::fprintf(stderr, "control_fake_peer: %s\n", srv.status().message().c_str());
    return 1;
  }
  if (Status st = (*srv)->write_endpoint_file(dir, id, dir + "/control.token"); !st.is_ok()) {
    std::fprintf(stderr, "control_fake_peer: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("peer %d serving %s\n", id, (*srv)->url().c_str());
  std::fflush(stdout);
  events.push("peer_up", link.peer);
  auto t0 = std::chrono::steady_clock::now();
  while (!g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t > duration) break;
    auto p = store.get();
    // Bytes per 100 ms by codec: what changes when the codec does.
    uint64_t b = p->codec == "fp32" ? 40000 : p->codec.starts_with("topk") ? 400 : 10000;
    s.seconds = t;
    s.age += 1;
    s.bytes_sent += b + static_cast<uint64_t>(id) * 100;
    s.model_bytes_sent += b;
    s.bytes_received += b;
    s.frames_sent += 1;
    s.frames_received += 1;
    s.merges += 1;
    s.wakeups += 1;
    s.bytes_by_codec[p->codec] += b;
    s.test_accuracy = 0.5 + 0.4 * (1 - 1 / (1 + t)) + 0.01 * id;
    s.test_loss = 1 / (1 + t);
    s.params = *p;
    s.params_version = store.version();
    s.links[0].bytes_sent += b;
    box.publish(std::make_shared<const control::PeerSnapshot>(s));
  }
  (*srv)->stop();
  std::printf("peer %d stopped\n", id);
  return 0;
}
