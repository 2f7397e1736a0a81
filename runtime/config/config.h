// Experiment configuration: one YAML file describes an experiment (data, model, training,
// protocol, codec, peers, duration, evaluation, outputs). Every key is declared once in a
// schema table (name, type, default, range, meaning), which drives validation, defaults,
// `mycel config --defaults` and docs/config.md (NCCL_PARAM / UCX config-table habit).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "models/data/dataset.h"

namespace mycel::runtime {

enum class KeyType : uint8_t { kInt, kFloat, kBool, kString, kStringList };
std::string_view key_type_name(KeyType t);

struct ConfigKey {
  std::string_view path;     // dotted: "train.lr"
  KeyType type;
  std::string_view def;      // default, as YAML text ("" for an empty string or list)
  double min = 0, max = 0;   // numeric range (inclusive) when min < max
  std::string_view choices;  // "a|b|c" for strings with a fixed set of values, else ""
  bool live = false;         // part of the run-time parameter set (RuntimeParams)
  std::string_view help;
};

const std::vector<ConfigKey>& config_schema();

// The run-time parameter set: what an adaptive scheduler or an operator changes while a peer
// runs. A peer reads it once per cycle through ParamStore; it is replaced atomically.
struct RuntimeParams {
  std::string codec = "int8";         // codec spec (kernels/codec.h parse_codec)
  bool error_feedback = true;
  double period_s = 1.0;              // gossip period
  double jitter = 0.1;                // +- fraction of the period
  int fanout = 1;                     // peers contacted per period
  double lr = 0.05;                   // base learning rate
  int local_steps = 1;                // local SGD steps after each merge / per period
  std::string merge = "age";          // merge rule name (runtime merge-rule registry)
  // Trust (docs/security.md): a received age counts for at most this many updates more than
  // the local one; a received model with a value above max_abs_param is refused (0: no bound).
  uint64_t max_age_lead = 1000;
  double max_abs_param = 1e4;
};

struct ExperimentConfig {
  std::string name;
  uint64_t seed = 1;
  std::string device;                 // auto | cpu | cuda | cuda:N
  struct Data {
    std::string dataset, dir, partition;
    uint64_t max_train = 0, max_test = 0;
    std::string header = "auto";     // csv: auto | yes | no
    std::string label;               // csv: label column (name or index); empty: the last
    std::string test;                // csv/npy: test split files; empty: test_fraction
    double test_fraction = 0.2;
    std::string normalize = "auto";  // auto | true | false
  } data;
  std::string model;
  struct Train {
    int batch = 32;
    double momentum = 0, weight_decay = 0;
    std::string schedule;
  } train;
  struct Protocol {
    std::string name, topology;
    int view_size = 0, degree = 0;
    int partitions = 1;
    double client_fraction = 1;
    int local_epochs = 1;
    double peer_timeout_s = 0;
    double startup_timeout_s = 30;
  } protocol;
  RuntimeParams params;
  struct Transport {
    std::string key_file;  // bootstrap key file (empty: unauthenticated, loopback use only)
  } transport;
  struct Peers {
    int count = 0;
    std::vector<std::string> addresses;
    std::string transport, host;
    int base_port = 0;
  } peers;
  double duration_s = 0;
  uint64_t rounds = 0;
  struct Eval {
    double every_s = 0;
    uint64_t max_test = 0;
  } eval;
  std::string output;
  struct Checkpoint {  // runtime/engine/checkpoint.h
    double every_s = 0;  // 0: none but those asked for (POST /checkpoint)
    std::string dir;     // empty: the peer's run folder
    int keep = 2;
  } checkpoint;
  // mycel sim only: the modelled network, churn and the simulator's own settings.
  struct Network {
    std::string uplink, downlink, latency, server_link;
    double loss = 0;
  } network;
  struct Churn {
    std::string model, trace;
    double on_s = 3600, off_s = 3600;
    bool wrap = false;
  } churn;
  struct Sim {
    int threads = 0;
    size_t eval_peers = 100, csv_peers = 16;
    int seeds = 0;
  } sim;
  struct Control {  // the control endpoint (runtime/control/server.h)
    bool enabled = false;
    std::string listen = "127.0.0.1:0";
    std::string token_file;
    int max_body_bytes = 65536;
    int max_connections = 8;
    double timeout_s = 5;
  } control;

  // Every key with its value as text, in schema order (for run folders and logs).
  std::map<std::string, std::string> flat;
};

// Parses YAML text. Unknown keys, wrong types, out-of-range values and bad choices are errors
// naming the key, the line and what is expected. `source` names the text in messages.
Result<ExperimentConfig> parse_config(std::string_view yaml, std::string_view source = "<config>");
// Refuses, before reading, what is not a regular file (a directory, FIFO, device, socket) and
// files over 1 MiB; a FIFO is opened without blocking. A second YAML document is an error.
Result<ExperimentConfig> load_config(const std::string& path);
// Every check that needs no data and no device: the model, partition, data set name form, LR
// schedule, codec, merge rule, device spec, peers.host, peers.addresses, the D-PSGD topology with
// peers.count and protocol.degree. `mycel config --check`, `mycel run` and `mycel peer` call it
// before they start anything. Errors name the key.
Status check_experiment(const ExperimentConfig& c);
// Applies "key=value" overrides (the command line's --set) on top of a parsed config's values.
Result<ExperimentConfig> apply_overrides(const ExperimentConfig& base,
                                         const std::vector<std::string>& overrides);
// The data::load options of a config's data section: the one place they are built (the
// peers, `mycel run`, benches). The caller sets what other sections decide (eval.max_test).
data::LoadOptions load_options(const ExperimentConfig::Data& d, uint64_t seed);

// "a,b,,c" -> {"a", "b", "c"}: the list form of peers.addresses and of --seeds / --peers.
std::vector<std::string> split_list(std::string_view text);

// Validates a parameter set against the schema's ranges (for replacements at run time).
Status validate(const RuntimeParams& p);

// "HOST:PORT" -> (host, port), port in [0, 65535] (control.listen).
Result<std::pair<std::string, int>> parse_host_port(std::string_view text);

// The live keys (ConfigKey::live) and their values as text, in a fixed order (GET /params).
std::vector<std::pair<std::string, std::string>> live_param_values(const RuntimeParams& p);
// A partial change of the live parameters: each key must be a live key of the schema and each
// value pass the same checks as in a config file; the first bad one is an error naming the key
// and the reason, and nothing is applied. Returns the whole new set (PUT /params, mycel ctl set).
Result<RuntimeParams> apply_param_changes(const RuntimeParams& base,
                                          const std::vector<std::pair<std::string, std::string>>& changes);

// Human-readable listing of every key, its default and meaning; `markdown` for docs/config.md.
std::string describe_schema(bool markdown);

// Atomic holder of the current RuntimeParams: readers take a snapshot per cycle, a writer
// replaces the whole set; each replacement bumps the version.
class ParamStore {
 public:
  explicit ParamStore(RuntimeParams initial);
  std::shared_ptr<const RuntimeParams> get() const { return cur_.load(); }
  uint64_t version() const { return version_.load(); }
  Status replace(RuntimeParams next);  // rejected (and nothing changes) when invalid
  // A checkpoint's set and version (before the peer starts): validated like replace().
  Status restore(RuntimeParams p, uint64_t version);

 private:
  std::atomic<std::shared_ptr<const RuntimeParams>> cur_;
  std::atomic<uint64_t> version_{1};
};

}  // namespace mycel::runtime
