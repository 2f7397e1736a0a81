// A snapshot with a value in every field, distinct enough that a column read from the wrong
// place shows.
#pragma once

#include "runtime/control/metrics.h"

namespace mycel::control::testing {

inline PeerSnapshot sample_snapshot() {
  PeerSnapshot s;
  s.peer = 7;
  s.address = "ucx://127.0.0.1:4242";
  s.state = "running";
  s.seconds = 12.345;
  s.age = 41;
  s.test_accuracy = 0.875;
  s.test_loss = 0.3125;
  s.samples = 500;
  s.bytes_sent = (uint64_t{1} << 53) + 1;  // not exact as a double: every output must keep it
  s.bytes_received = 2002;
  s.frames_sent = 30;
  s.frames_received = 31;
  s.model_bytes_sent = 1500;
  s.fp32_bytes_equivalent = 6000;
  s.models_sent = 12;
  s.merges = 9;
  s.train_steps = 80;
  s.rejected_frames = 2;
  s.rejected_payloads = 1;
  s.dropped_sends = 3;
  s.send_failures = 4;
  s.unreached_sends = 5;
  s.skipped_steps = 6;
  s.wakeups = 13;
  s.peers_down = 1;
  s.control_refused = 14;
  s.bytes_by_codec = {{"int8", 1000}, {"topk:0.01", 500}};
  transport::PeerStats a;
  a.peer = "ucx://127.0.0.1:5000";
  a.bytes_sent = 700;
  a.frames_sent = 10;
  a.bandwidth_Bps = 1.5e9;
  a.rtt_s = 0.00025;
  a.bandwidth_age_s = 0.5;
  a.rtt_age_s = -1;
  a.connected = true;
  transport::PeerStats b;
  b.peer = "weird\"addr\\with\nnewline";  // escaping
  b.bytes_received = 99;
  b.connected = false;
  s.links = {a, b};
  s.params.codec = "topk:0.01";
  s.params.period_s = 0.5;
  s.params_version = 3;
  s.eval_seconds.observe(0.004);
  s.eval_seconds.observe(0.2);
  s.eval_seconds.observe(50);
  return s;
}

}  // namespace mycel::control::testing
