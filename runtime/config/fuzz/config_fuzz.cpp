// libFuzzer target for the experiment config reader (scripts/fuzz.sh runs it): arbitrary bytes
// as a YAML config, then as `--set key=value` overrides on top of the defaults.
// Properties checked on every input, beyond "no crash, no leak, no UB, no exception":
// - the reader answers with a config or an error with a message (never an empty error);
// - an accepted config passes its own range checks: its live parameters validate, its values
//   as text (`flat`) re-read as overrides give the same values (what the run folder records
//   reads back);
// - check_experiment() answers on every accepted config (an error or OK, never a throw).
// With MYCEL_FUZZ_WRITE_CORPUS=DIR set, it writes a seed corpus (the shipped examples' shapes,
// and the bad inputs issue 16 lists) into DIR and exits instead of fuzzing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "common/fuzz_seeds.h"
#include "common/log.h"
#include "runtime/config/config.h"

namespace mr = mycel::runtime;

namespace {

int write_corpus(const char* dir) {
  const std::vector<std::string> seeds = {
      "",
      "name: q\nseed: 3\n",
      "name: quickstart\nseed: 1\nmodel: mlp:200,200\ndata: {dataset: fashion-mnist, partition: dirichlet:0.5}\n"
      "train: {batch: 32, lr: 0.05, local_steps: 1}\nprotocol: {name: gossip, period_s: 1}\n"
      "codec: {spec: int8, error_feedback: true}\npeers: {count: 16}\nrun: {duration_s: 240}\n",
      "protocol: {name: dpsgd, topology: random-regular, degree: 3}\npeers: {count: 16}\nrun: {rounds: 100}\n",
      "protocol: {name: fedavg, client_fraction: 0.5, local_epochs: 1}\n",
      "network: {uplink: 1Mbit, downlink: 10Mbit, latency: 50ms}\nchurn: {model: none}\n",
      "train:\n  lr: 1e-400\n",
      "train: {lr: nan}\n",
      "name: ../../x\n",
      "name: \"a\\\"b\"\n",
      "a: 1\n---\nb: 2\n",
      "model: mlp:abc\n",
      "peers: {count: 99999999999999999999}\n",
      "codec: {spec: topk:0.01}\n",
      "[1, 2, 3]\n",
      "{{{{",
      "x: &a [*a]\n",
      "train: {batch: 1.5}\n",
  };
  return mycel::fuzz::write_seed_files(dir, seeds);
}

// The defaults (an empty config), parsed once.
const mr::ExperimentConfig& defaults() {
  static const mr::ExperimentConfig* d = [] {
    auto r = mr::parse_config("", "defaults");
    if (!r.is_ok()) std::abort();
    return new mr::ExperimentConfig(std::move(r).value());
  }();
  return *d;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  return mycel::fuzz::initialize(write_corpus);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  // 1. The bytes as a YAML config.
  auto cfg = mr::parse_config(text, "fuzz.yaml");
  if (!cfg.is_ok()) {
    if (cfg.status().message().empty()) std::abort();
  } else {
    if (!mr::validate(cfg->params).is_ok()) std::abort();
    (void)mr::check_experiment(*cfg);
    // What the run folder records (every key as text) reads back to the same values.
    std::vector<std::string> overrides;
    for (const auto& [k, v] : cfg->flat) overrides.push_back(k + "=" + v);
    auto again = mr::apply_overrides(defaults(), overrides);
    if (!again.is_ok() || again->flat != cfg->flat) std::abort();
  }

  // 2. The bytes as `--set` overrides, one per line.
  std::vector<std::string> sets;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '\n') {
      sets.emplace_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  auto o = mr::apply_overrides(defaults(), sets);
  if (!o.is_ok()) {
    if (o.status().message().empty()) std::abort();
  } else if (!mr::validate(o->params).is_ok()) {
    std::abort();
  }
  return 0;
}
