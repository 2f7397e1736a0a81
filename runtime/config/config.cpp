#include "runtime/config/config.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "kernels/codec.h"
#include "models/data/dataset.h"
#include "models/data/partition.h"
#include "models/model.h"
#include "models/optim.h"
#include "runtime/core/merge_rule.h"
#include "runtime/core/topology.h"

namespace mycel::runtime {
namespace {

using K = KeyType;
constexpr double kBig = 1e18;
constexpr size_t kMaxConfigBytes = size_t{1} << 20;  // 1 MiB

// The single table of keys. Order is the order of `mycel config --defaults`.
const std::vector<ConfigKey> kSchema = {
    {"name", K::kString, "experiment", 0, 0, "", false, "experiment name (used in the output folder)"},
    {"seed", K::kInt, "1", 0, kBig, "", false, "seed of every random choice (partition, init, peer sampling)"},
    {"device", K::kString, "auto", 0, 0, "", false, "auto | cpu | cuda | cuda:N (auto: the GPU when present)"},
    {"data.dataset", K::kString, "fashion-mnist", 0, 0, "", false, "data set: mnist | fashion-mnist | spambase | pendigits | letter (scripts/fetch-data.sh NAME fetches it), or your own files: csv:PATH | idx:DIR | npy:X.npy,Y.npy (docs/data.md)"},
    {"data.dir", K::kString, "", 0, 0, "", false, "data folder (empty: $MYCEL_DATA or data/)"},
    {"data.partition", K::kString, "dirichlet:0.5", 0, 0, "", false, "how the training set is split over peers: iid | dirichlet:ALPHA | shards:S | one-class"},
    {"data.max_train", K::kInt, "0", 0, kBig, "", false, "use at most this many training samples (0: all)"},
    {"data.max_test", K::kInt, "0", 0, kBig, "", false, "use at most this many test samples (0: all)"},
    {"data.header", K::kString, "auto", 0, 0, "auto|yes|no", false, "csv: is the first row a header (auto: when its fields are not all numbers)"},
    {"data.label", K::kString, "", 0, 0, "", false, "csv: the label column, by header name or 0-based index (empty: the last column)"},
    {"data.test", K::kString, "", 0, 0, "", false, "csv/npy: a test split in the same form (a CSV path; X.npy,Y.npy) (empty: split data.test_fraction off)"},
    {"data.test_fraction", K::kFloat, "0.2", 0.001, 0.999, "", false, "fraction of the rows drawn (stratified, by seed) as the test split when the data set has none"},
    {"data.normalize", K::kString, "auto", 0, 0, "auto|true|false", false, "standardise features with training-split statistics (auto: tabular data yes, images no)"},
    {"model", K::kString, "mlp:200,200", 0, 0, "", false, "model: logreg | mlp:H1,H2,... | cnn | cnn:C1,C2,FC"},
    {"train.batch", K::kInt, "32", 1, 65536, "", false, "minibatch size of local SGD"},
    {"train.lr", K::kFloat, "0.05", 0, 100, "", true, "base learning rate"},
    {"train.momentum", K::kFloat, "0", 0, 0.999, "", false, "SGD momentum"},
    {"train.weight_decay", K::kFloat, "0", 0, 1, "", false, "L2 weight decay"},
    {"train.schedule", K::kString, "constant", 0, 0, "", false, "learning-rate schedule: constant | step:EVERY[,GAMMA] | cosine[:MIN] | age (eta / age) | pegasos (1 / (lambda age))"},
    {"train.local_steps", K::kInt, "1", 0, 100000, "", true, "local SGD steps after each merge (gossip) or per round (D-PSGD)"},
    {"protocol.name", K::kString, "gossip", 0, 0, "gossip|push-pull|dpsgd|fedavg", false, "decentralized protocol, or fedavg (with a server) as the baseline"},
    {"protocol.period_s", K::kFloat, "1.0", 1e-3, 86400, "", true, "gossip period: a peer wakes and sends its model this often"},
    {"protocol.jitter", K::kFloat, "0.1", 0, 0.99, "", true, "period jitter, as a fraction of the period (uniform +-)"},
    {"protocol.fanout", K::kInt, "1", 1, 64, "", true, "peers a model is sent to per period"},
    {"protocol.merge", K::kString, "age", 0, 0, "", true, "merge rule (age: a = age_recv / (age + age_recv))"},
    {"protocol.view_size", K::kInt, "8", 1, 1024, "", false, "peer-sampling partial view size (Newscast)"},
    {"protocol.peer_timeout_s", K::kFloat, "10", 0.01, 86400, "", false, "a peer that was up and then silent for this long is taken as down (D-PSGD: a round waits for every neighbour not down; FedAvg: a round waits this long for the chosen clients)"},
    {"protocol.startup_timeout_s", K::kFloat, "30", 0, 86400, "", false, "D-PSGD, FedAvg: round 0 waits this long for peers never heard from yet (then starts without them, naming them)"},
    {"protocol.partitions", K::kInt, "1", 1, 1024, "", false, "gossip: partitioned subsampling, each message carries one of this many slices of the model, each slice with its own age (1: whole models)"},
    {"protocol.topology", K::kString, "ring", 0, 0, "ring|torus|regular|complete", false, "D-PSGD topology (Metropolis-Hastings weights)"},
    {"protocol.degree", K::kInt, "4", 1, 1024, "", false, "degree of the random regular topology"},
    {"protocol.client_fraction", K::kFloat, "0.1", 1e-6, 1, "", false, "FedAvg: fraction C of clients per round"},
    {"protocol.local_epochs", K::kInt, "1", 1, 1000, "", false, "FedAvg: local epochs E per round"},
    {"trust.max_age_lead", K::kInt, "1000", 0, kBig, "", true, "gossip: a received model's age counts for at most this many updates more than the local model's (in the merge weight and in age = max), so a forged age gets no weight near 1 and does not spread; cut ages are counted (ages_clamped)"},
    {"trust.max_abs_param", K::kFloat, "1e4", 0, 1e38, "", true, "a received model holding a value of larger magnitude is refused before it touches the local model (counted in rejected_payloads; int8/int4: scale x qmax); 0: no bound"},
    {"codec.spec", K::kString, "int8", 0, 0, "", true, "codec of model exchanges: fp32 fp16 bf16 int8[:block=B] int4[:block=B] topk:F randk:F [+zstd]"},
    {"codec.error_feedback", K::kBool, "true", 0, 0, "", true, "keep a dense lossy codec's rounding error and add it to the next message (sparse codecs send whole values: none)"},
    {"transport.key_file", K::kString, "", 0, 0, "", false, "bootstrap key file (`mycel keygen --out FILE`, mode 0600): peers authenticate each other with it; empty: unauthenticated, with a warning (mycel run then makes one per run in the run folder)"},
    {"peers.count", K::kInt, "16", 1, 10000000, "", false, "number of peers (local swarm or simulation)"},
    {"peers.addresses", K::kStringList, "", 0, 0, "", false, "explicit peer addresses (deployment); empty: local peers on loopback"},
    {"peers.transport", K::kString, "ucx", 0, 0, "ucx|inproc", false, "transport between peers"},
    {"peers.host", K::kString, "127.0.0.1", 0, 0, "", false, "host the local peers listen on"},
    {"peers.base_port", K::kInt, "0", 0, 65535, "", false, "first port of the local peers (0: any free port)"},
    {"run.duration_s", K::kFloat, "60", 0, 1e9, "", false, "stop after this many seconds (0: no limit; then run.rounds)"},
    {"run.rounds", K::kInt, "0", 0, kBig, "", false, "stop after this many rounds/periods per peer (0: no limit)"},
    {"eval.every_s", K::kFloat, "5", 0.01, 1e9, "", false, "each peer evaluates its model on the test set this often"},
    {"eval.max_test", K::kInt, "2000", 0, kBig, "", false, "test samples per evaluation (0: the whole test set)"},
    {"output", K::kString, "runs", 0, 0, "", false, "output folder: one subfolder per run with per-peer CSVs and summary.json"},
    {"checkpoint.every_s", K::kFloat, "0", 0, 1e9, "", false, "each peer writes a checkpoint (model, optimizer, residual, protocol state; docs/checkpoints.md) this often, and on a clean stop (0: no checkpoints but those asked for with POST /checkpoint)"},
    {"checkpoint.dir", K::kString, "", 0, 0, "", false, "folder of the checkpoints (empty: the peer's run folder); files peer-ID-SEQ.ckpt"},
    {"checkpoint.keep", K::kInt, "2", 1, 1000, "", false, "checkpoints kept per peer (the newest); the previous one stays until the new one is in place"},
    {"network.uplink", K::kString, "inf", 0, 0, "", false, "mycel sim: each peer's uplink bandwidth: RATE (100Mbit, 2.5Gbit, 800kbit, 1MB), uniform:A,B or choice:A,B,... drawn per peer, or inf (no serialisation)"},
    {"network.downlink", K::kString, "inf", 0, 0, "", false, "mycel sim: each peer's downlink bandwidth, as network.uplink"},
    {"network.latency", K::kString, "10ms", 0, 0, "", false, "mycel sim: one-way latency per message: DURATION (10ms, 1.5s), uniform:A,B or choice:A,B,..."},
    {"network.loss", K::kFloat, "0", 0, 0.999, "", false, "mycel sim: probability that a message is lost"},
    {"network.server_link", K::kString, "inf", 0, 0, "", false, "mycel sim, FedAvg: the server's uplink and downlink bandwidth"},
    {"churn.model", K::kString, "none", 0, 0, "none|exponential|trace", false, "mycel sim: peers going offline and online: none, exponential on/off sessions, or replay of a session trace"},
    {"churn.on_s", K::kFloat, "3600", 1e-3, 1e9, "", false, "churn.model exponential: mean online session (s)"},
    {"churn.off_s", K::kFloat, "3600", 1e-3, 1e9, "", false, "churn.model exponential: mean offline session (s)"},
    {"churn.trace", K::kString, "", 0, 0, "", false, "churn.model trace: session file (one user per line: id flag start tz lengths_ms..., e.g. ../shared/data/churn-trace/peersim_session_100_2014.txt)"},
    {"churn.wrap", K::kBool, "false", 0, 0, "", false, "churn.model trace: reuse trace lines when the trace has fewer users than peers"},
    {"sim.threads", K::kInt, "0", 0, 256, "", false, "mycel sim: worker threads (0: every core); a run is deterministic for a seed and a thread count"},
    {"sim.eval_peers", K::kInt, "100", 0, 1000000, "", false, "mycel sim: online peers sampled at each evaluation (0: every online peer)"},
    {"sim.csv_peers", K::kInt, "16", 0, 100000, "", false, "mycel sim: peers (the first ones) that get a per-peer CSV"},
    {"sim.seeds", K::kInt, "0", 0, 1024, "", false, "mycel sim, gossip: random peers each peer is given as bootstrap seeds (0: protocol.view_size)"},
    {"control.enabled", K::kBool, "false", 0, 0, "", false, "serve the peer's control endpoint (GET /status /metrics /params, PUT /params, POST /stop; docs/control.md)"},
    {"control.listen", K::kString, "127.0.0.1:0", 0, 0, "", false, "HOST:PORT of the control endpoint (port 0: any free port, recorded in the run folder as control-ID.json); reads need the token too off loopback"},
    {"control.token_file", K::kString, "", 0, 0, "", false, "file with the bearer token that state-changing requests need (empty: generated per run, written mode 0600 to the output folder)"},
    {"control.max_body_bytes", K::kInt, "65536", 256, 16777216, "", false, "largest request body the control endpoint reads (larger: 413)"},
    {"control.max_connections", K::kInt, "8", 1, 1024, "", false, "connections the control endpoint serves at once (more: 503)"},
    {"control.timeout_s", K::kFloat, "5", 0.1, 300, "", false, "read, write and keep-alive timeout of a control connection"},
};

const ConfigKey* find_key(std::string_view path) {
  for (const auto& k : kSchema)
    if (k.path == path) return &k;
  return nullptr;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> d(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) d[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t prev = d[0];
    d[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cur = d[j];
      d[j] = std::min({d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1)});
      prev = cur;
    }
  }
  return d[b.size()];
}

std::string suggest(std::string_view path) {
  const ConfigKey* best = nullptr;
  size_t bd = 4;
  for (const auto& k : kSchema) {
    size_t d = edit_distance(path, k.path);
    if (d < bd) { bd = d; best = &k; }
  }
  return best ? " (did you mean '" + std::string(best->path) + "'?)" : "";
}

std::string where(std::string_view source, const YAML::Mark& m) {
  if (m.is_null()) return std::string(source);
  return std::string(source) + ":" + std::to_string(m.line + 1);
}

std::string expected_text(const ConfigKey& k) {
  std::string s(key_type_name(k.type));
  if (!k.choices.empty()) s += " (one of " + std::string(k.choices) + ")";
  if (k.min < k.max) {
    std::ostringstream os;
    os << " in [" << k.min << ", " << (k.max >= kBig ? std::string("inf") : "") ;
    if (k.max < kBig) os << k.max;
    os << "]";
    s += os.str();
  }
  return s;
}

// "" when the text is a whole int64, else why not.
std::string parse_int(std::string_view s, int64_t* v) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), *v);
  if (r.ec == std::errc::result_out_of_range) return "does not fit a 64-bit integer";
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return "is not an integer";
  return "";
}
// "" when the text is a whole finite double that does not underflow, else why not.
std::string parse_float(std::string_view s, double* v) {
  std::string t(s);
  if (t.empty() || std::isspace(static_cast<unsigned char>(t[0]))) return "is not a number";
  char* end = nullptr;
  errno = 0;
  *v = std::strtod(t.c_str(), &end);
  int err = errno;
  if (end != t.c_str() + t.size()) return "is not a number";
  if (!std::isfinite(*v)) return "is not a finite number";
  if (err == ERANGE) {
    if (std::fabs(*v) >= 1.0) return "overflows a double";
    return "underflows a double";  // 1e-400: a nonzero literal that would read as 0 or a denormal
  }
  return "";
}

// Strings: valid UTF-8, no control characters (NUL included), bounded length. "" when fine.
constexpr size_t kMaxString = 4096;
constexpr size_t kMaxName = 128;
std::string check_string(std::string_view s, size_t max_len) {
  if (s.size() > max_len) return "is longer than " + std::to_string(max_len) + " bytes";
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return "contains a control character (byte " + std::to_string(c) + ")";
    if (c < 0x80) { ++i; continue; }
    size_t n = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) { n = 1; cp = c & 0x1f; }
    else if ((c & 0xf0) == 0xe0) { n = 2; cp = c & 0x0f; }
    else if ((c & 0xf8) == 0xf0) { n = 3; cp = c & 0x07; }
    else return "is not valid UTF-8";
    for (size_t j = 1; j <= n; ++j) {
      if (i + j >= s.size()) return "is not valid UTF-8";
      auto d = static_cast<unsigned char>(s[i + j]);
      if ((d & 0xc0) != 0x80) return "is not valid UTF-8";
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return "is not valid UTF-8";
    if (cp >= 0x80 && cp < 0xa0) return "contains a control character";
    i += n + 1;
  }
  return "";
}

// `name` becomes a folder under `output`: one safe file-name component.
std::string check_name(std::string_view s) {
  if (s.empty()) return "is empty";
  if (s.front() == '.') return "starts with '.'";
  for (char c : s)
    if (c == '/' || c == '\\' || c == '"' || c == '\'' || c == '`')
      return std::string("contains '") + c + "' (a name is one file-name component)";
  return "";
}
bool parse_bool(std::string_view s, bool* v) {
  if (s == "true" || s == "yes" || s == "on") { *v = true; return true; }
  if (s == "false" || s == "no" || s == "off") { *v = false; return true; }
  return false;
}

// Checks one scalar value text against its key; returns the normalised text.
Result<std::string> check_value(const ConfigKey& k, const std::string& text, const std::string& loc) {
  auto bad = [&](std::string why) {
    return Error(Code::kInvalidArgument, loc + ": key '" + std::string(k.path) + "': " + why +
                                             "; expected " + expected_text(k));
  };
  switch (k.type) {
    case K::kInt: {
      int64_t v;
      if (auto why = parse_int(text, &v); !why.empty()) return bad("'" + text + "' " + why);
      if (k.min < k.max && (v < k.min || v > k.max)) return bad(text + " is out of range");
      return std::to_string(v);
    }
    case K::kFloat: {
      double v;
      if (auto why = parse_float(text, &v); !why.empty()) return bad("'" + text + "' " + why);
      if (k.min < k.max && (v < k.min || v > k.max)) return bad(text + " is out of range");
      return text;
    }
    case K::kBool: {
      bool v;
      if (!parse_bool(text, &v)) return bad("'" + text + "' is not a boolean");
      return std::string(v ? "true" : "false");
    }
    case K::kString: {
      if (auto why = check_string(text, k.path == "name" ? kMaxName : kMaxString); !why.empty())
        return bad("the value " + why);
      if (k.path == "name")
        if (auto why = check_name(text); !why.empty()) return bad("'" + text + "' " + why);
      if (!k.choices.empty()) {
        std::string_view c = k.choices;
        bool ok = false;
        while (!c.empty()) {
          size_t bar = c.find('|');
          if (c.substr(0, bar) == text) ok = true;
          c = bar == std::string_view::npos ? std::string_view{} : c.substr(bar + 1);
        }
        if (!ok) return bad("'" + text + "' is not allowed");
      }
      if (k.path == "protocol.merge") {
        auto rule = make_merge_rule(text);
        if (!rule) return bad(rule.status().message());
      }
      if (k.path == "data.dataset") {
        auto spec = data::parse_data_spec(text);
        if (!spec) return bad(spec.status().message());
      }
      if (k.path == "codec.spec") {
        auto spec = parse_codec(text);
        if (!spec) return bad(spec.status().message());
      }
      return text;
    }
    case K::kStringList:
      if (auto why = check_string(text, kMaxString * 16); !why.empty()) return bad("the value " + why);
      return text;
  }
  return text;
}

Status walk(const YAML::Node& node, const std::string& prefix, std::string_view source,
            std::map<std::string, std::string>& values, std::set<std::string>& seen) {
  if (!node.IsMap())
    return Error(Code::kInvalidArgument, where(source, node.Mark()) + ": expected a mapping of keys" +
                                             (prefix.empty() ? "" : " under '" + prefix + "'"));
  for (const auto& kv : node) {
    std::string key = kv.first.as<std::string>();
    std::string path = prefix.empty() ? key : prefix + "." + key;
    std::string loc = where(source, kv.first.Mark());
    if (path == "deploy") {  // read by runtime/deploy (`mycel deploy e2clab`), not by the experiment
      if (!kv.second.IsMap()) return Error(Code::kInvalidArgument, loc + ": 'deploy' is a section; expected a mapping");
      continue;
    }
    const ConfigKey* k = find_key(path);
    if (!k) {
      // A known section: recurse.
      bool section = false;
      for (const auto& s : kSchema)
        if (s.path.size() > path.size() && s.path.substr(0, path.size()) == path &&
            s.path[path.size()] == '.')
          section = true;
      if (section) {
        if (!kv.second.IsMap())
          return Error(Code::kInvalidArgument, loc + ": '" + path + "' is a section; expected a mapping");
        MYCEL_CHECK(walk(kv.second, path, source, values, seen));
        continue;
      }
      return Error(Code::kInvalidArgument, loc + ": unknown key '" + path + "'" + suggest(path));
    }
    if (!seen.insert(path).second)
      return Error(Code::kInvalidArgument, loc + ": key '" + path + "' given twice");
    const YAML::Node& v = kv.second;
    if (k->type == K::kStringList) {
      if (v.IsNull()) { values[path] = ""; continue; }
      if (!v.IsSequence())
        return Error(Code::kInvalidArgument, loc + ": key '" + path + "': expected a list of strings");
      std::string joined;
      for (const auto& item : v) {
        if (!item.IsScalar())
          return Error(Code::kInvalidArgument, where(source, item.Mark()) + ": key '" + path +
                                                   "': expected a list of strings");
        if (!joined.empty()) joined += ",";
        joined += item.as<std::string>();
      }
      MYCEL_ASSIGN_OR_RETURN(values[path], check_value(*k, joined, loc));
      continue;
    }
    if (!v.IsScalar())
      return Error(Code::kInvalidArgument, loc + ": key '" + path + "': expected " + expected_text(*k));
    MYCEL_ASSIGN_OR_RETURN(values[path], check_value(*k, v.as<std::string>(), loc));
  }
  return Ok();
}

Result<ExperimentConfig> build(std::map<std::string, std::string> values, std::string_view source) {
  // Every value passed check_value; these conversions cannot fail, and do not throw if they did.
  auto I = [&](const char* k) {
    int64_t v = 0;
    (void)parse_int(values.at(k), &v);
    return v;
  };
  auto F = [&](const char* k) {
    double v = 0;
    (void)parse_float(values.at(k), &v);
    return v;
  };
  auto B = [&](const char* k) { return values.at(k) == "true"; };
  auto S = [&](const char* k) { return values.at(k); };
  ExperimentConfig c;
  c.name = S("name");
  c.seed = static_cast<uint64_t>(I("seed"));
  c.device = S("device");
  c.data.dataset = S("data.dataset");
  c.data.dir = S("data.dir");
  c.data.partition = S("data.partition");
  c.data.max_train = static_cast<uint64_t>(I("data.max_train"));
  c.data.max_test = static_cast<uint64_t>(I("data.max_test"));
  c.data.header = S("data.header");
  c.data.label = S("data.label");
  c.data.test = S("data.test");
  c.data.test_fraction = F("data.test_fraction");
  c.data.normalize = S("data.normalize");
  c.model = S("model");
  c.train.batch = static_cast<int>(I("train.batch"));
  c.train.momentum = F("train.momentum");
  c.train.weight_decay = F("train.weight_decay");
  c.train.schedule = S("train.schedule");
  c.params.lr = F("train.lr");
  c.params.local_steps = static_cast<int>(I("train.local_steps"));
  c.protocol.name = S("protocol.name");
  c.params.period_s = F("protocol.period_s");
  c.params.jitter = F("protocol.jitter");
  c.params.fanout = static_cast<int>(I("protocol.fanout"));
  c.params.merge = S("protocol.merge");
  c.params.max_age_lead = static_cast<uint64_t>(I("trust.max_age_lead"));
  c.params.max_abs_param = F("trust.max_abs_param");
  c.transport.key_file = S("transport.key_file");
  c.protocol.view_size = static_cast<int>(I("protocol.view_size"));
  c.protocol.peer_timeout_s = F("protocol.peer_timeout_s");
  c.protocol.startup_timeout_s = F("protocol.startup_timeout_s");
  c.protocol.partitions = static_cast<int>(I("protocol.partitions"));
  c.protocol.topology = S("protocol.topology");
  c.protocol.degree = static_cast<int>(I("protocol.degree"));
  c.protocol.client_fraction = F("protocol.client_fraction");
  c.protocol.local_epochs = static_cast<int>(I("protocol.local_epochs"));
  c.params.codec = S("codec.spec");
  c.params.error_feedback = B("codec.error_feedback");
  c.peers.count = static_cast<int>(I("peers.count"));
  c.peers.addresses = split_list(S("peers.addresses"));
  c.peers.transport = S("peers.transport");
  c.peers.host = S("peers.host");
  c.peers.base_port = static_cast<int>(I("peers.base_port"));
  c.duration_s = F("run.duration_s");
  c.rounds = static_cast<uint64_t>(I("run.rounds"));
  c.eval.every_s = F("eval.every_s");
  c.eval.max_test = static_cast<uint64_t>(I("eval.max_test"));
  c.output = S("output");
  c.checkpoint.every_s = F("checkpoint.every_s");
  c.checkpoint.dir = S("checkpoint.dir");
  c.checkpoint.keep = static_cast<int>(I("checkpoint.keep"));
  c.network.uplink = S("network.uplink");
  c.network.downlink = S("network.downlink");
  c.network.latency = S("network.latency");
  c.network.loss = F("network.loss");
  c.network.server_link = S("network.server_link");
  c.churn.model = S("churn.model");
  c.churn.on_s = F("churn.on_s");
  c.churn.off_s = F("churn.off_s");
  c.churn.trace = S("churn.trace");
  c.churn.wrap = B("churn.wrap");
  c.sim.threads = static_cast<int>(I("sim.threads"));
  c.sim.eval_peers = static_cast<size_t>(I("sim.eval_peers"));
  c.sim.csv_peers = static_cast<size_t>(I("sim.csv_peers"));
  c.sim.seeds = static_cast<int>(I("sim.seeds"));
  c.control.enabled = B("control.enabled");
  c.control.listen = S("control.listen");
  c.control.token_file = S("control.token_file");
  c.control.max_body_bytes = static_cast<int>(I("control.max_body_bytes"));
  c.control.max_connections = static_cast<int>(I("control.max_connections"));
  c.control.timeout_s = F("control.timeout_s");
  // Cross-key rules.
  if (!c.peers.addresses.empty() && static_cast<int>(c.peers.addresses.size()) != c.peers.count)
    return Error(Code::kInvalidArgument,
                 std::string(source) + ": peers.addresses lists " + std::to_string(c.peers.addresses.size()) +
                     " addresses but peers.count is " + std::to_string(c.peers.count));
  if (c.duration_s == 0 && c.rounds == 0)
    return Error(Code::kInvalidArgument,
                 std::string(source) + ": run.duration_s and run.rounds are both 0: the run would never end");
  c.flat = std::move(values);
  return c;
}

std::map<std::string, std::string> defaults() {
  std::map<std::string, std::string> v;
  for (const auto& k : kSchema) v[std::string(k.path)] = std::string(k.def);
  return v;
}

}  // namespace

data::LoadOptions load_options(const ExperimentConfig::Data& d, uint64_t seed) {
  data::LoadOptions lo;
  lo.dir = d.dir;
  lo.seed = seed;
  lo.max_train = d.max_train;
  lo.max_test = d.max_test;
  lo.test_fraction = d.test_fraction;
  lo.label = d.label;
  lo.test = d.test;
  // The schema's choices checked both already; a hand-built Data falls back to auto.
  if (auto h = data::parse_header_mode(d.header)) lo.header = *h;
  if (auto n = data::parse_normalize(d.normalize)) lo.normalize = *n;
  return lo;
}

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t c = text.find(',', start);
    if (c == std::string_view::npos) c = text.size();
    if (c > start) out.emplace_back(text.substr(start, c - start));
    start = c + 1;
  }
  return out;
}

std::string_view key_type_name(KeyType t) {
  switch (t) {
    case K::kInt: return "integer";
    case K::kFloat: return "number";
    case K::kBool: return "boolean";
    case K::kString: return "string";
    case K::kStringList: return "list of strings";
  }
  return "?";
}

const std::vector<ConfigKey>& config_schema() { return kSchema; }

namespace {

// Counts documents and notes where the second starts; builds nothing. YAML::LoadAll is not used:
// in yaml-cpp 0.7 (Debian 12) it loops for ever, allocating, on some malformed text (11 bytes
// found by the config fuzzer: "[1, ],23 \n\xb4"; upstream yaml-cpp PR #1319), because the parser
// keeps answering "another (empty) document" without consuming input. Here the parser is asked
// for two documents at most.
class DocumentCounter final : public YAML::EventHandler {
 public:
  int documents = 0;
  YAML::Mark second;
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents == 2) second = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

}  // namespace

Result<ExperimentConfig> parse_config(std::string_view yaml, std::string_view source) {
  YAML::Node root;
  try {
    const std::string text(yaml);
    {
      std::istringstream in(text);
      YAML::Parser parser(in);
      DocumentCounter count;
      if (parser.HandleNextDocument(count) && parser.HandleNextDocument(count))
        return Error(Code::kInvalidArgument,
                     where(source, count.second) +
                         ": a second YAML document ('---', or text after the first document's end); a config is "
                         "one document");
    }
    root = YAML::Load(text);  // the first document only
  } catch (const YAML::Exception& e) {
    return Error(Code::kInvalidArgument,
                 std::string(source) + ":" + std::to_string(e.mark.line + 1) + ": yaml syntax error: " + e.msg);
  } catch (const std::exception& e) {
    return Error(Code::kInvalidArgument, std::string(source) + ": cannot read yaml: " + e.what());
  }
  auto values = defaults();
  if (!root.IsNull()) {
    std::set<std::string> seen;
    try {
      MYCEL_CHECK(walk(root, "", source, values, seen));
    } catch (const YAML::Exception& e) {
      return Error(Code::kInvalidArgument,
                   std::string(source) + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
    } catch (const std::exception& e) {
      return Error(Code::kInvalidArgument, std::string(source) + ": " + e.what());
    }
  }
  try {
    return build(std::move(values), source);
  } catch (const std::exception& e) {
    return Error(Code::kInvalidArgument, std::string(source) + ": " + e.what());
  }
}

Result<ExperimentConfig> load_config(const std::string& path) {
  if (path.empty()) return Error(Code::kInvalidArgument, "config: the path is empty");
  // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int e = errno;
    return Error(e == ENOENT ? Code::kNotFound : Code::kInvalidArgument,
                 "cannot open config '" + path + "': " + std::strerror(e));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    return Error(Code::kInvalidArgument, "config '" + path + "': fstat: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return Error(Code::kInvalidArgument, "config '" + path + "' is a directory, not a file");
  if (!S_ISREG(st.st_mode))
    return Error(Code::kInvalidArgument, "config '" + path +
                                             "' is not a regular file (a FIFO, device or socket); give a YAML file");
  if (st.st_size > static_cast<off_t>(kMaxConfigBytes))
    return Error(Code::kInvalidArgument, "config '" + path + "' is " + std::to_string(st.st_size) +
                                             " bytes; the limit is " + std::to_string(kMaxConfigBytes));
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error(Code::kInvalidArgument, "config '" + path + "': read: " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxConfigBytes)  // grew while read
      return Error(Code::kInvalidArgument, "config '" + path + "' is over the limit of " +
                                               std::to_string(kMaxConfigBytes) + " bytes");
  }
  return parse_config(text, path);
}

namespace {
Status check_address(std::string_view a, const std::string& what) {
  auto bad = [&](const std::string& why) {
    return Error(Code::kInvalidArgument, "key '" + what + "': address '" + std::string(a) + "' " + why +
                                             "; expected ucx://HOST:PORT or inproc://NAME");
  };
  if (a.starts_with("inproc://")) {
    if (a.size() == 9) return bad("has no name");
    return Ok();
  }
  if (!a.starts_with("ucx://")) return bad("has no ucx:// or inproc:// scheme");
  std::string_view hp = a.substr(6);
  size_t colon = hp.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("has no HOST:PORT");
  std::string_view port = hp.substr(colon + 1);
  int64_t p = 0;
  if (!parse_int(port, &p).empty() || p < 0 || p > 65535) return bad("has a bad port");
  return Ok();
}
}  // namespace

Status check_experiment(const ExperimentConfig& c) {
  auto bad = [](const char* key, const std::string& value, const Status& s) {
    return Error(Code::kInvalidArgument, "key '" + std::string(key) + "': '" + value + "': " + s.message());
  };
  try {
    if (auto r = models::parse_model_spec(c.model); !r) return bad("model", c.model, r.status());
    if (auto r = data::parse_partition_spec(c.data.partition); !r)
      return bad("data.partition", c.data.partition, r.status());
    if (auto r = data::parse_data_spec(c.data.dataset); !r) return bad("data.dataset", c.data.dataset, r.status());
    if (auto r = models::parse_schedule(c.train.schedule, static_cast<float>(c.params.lr), 1,
                                        static_cast<float>(c.train.weight_decay));
        !r)
      return bad("train.schedule", c.train.schedule, r.status());
    if (auto r = parse_codec(c.params.codec); !r) return bad("codec.spec", c.params.codec, r.status());
    if (auto r = make_merge_rule(c.params.merge); !r) return bad("protocol.merge", c.params.merge, r.status());
    {
      const std::string& d = c.device;
      bool ok = d == "auto" || d == "cpu" || d == "cuda";
      if (!ok && d.starts_with("cuda:")) {
        int64_t n = 0;
        ok = parse_int(std::string_view(d).substr(5), &n).empty() && n >= 0 && n < 1024;
      }
      if (!ok)
        return Error(Code::kInvalidArgument, "key 'device': '" + d + "': expected auto | cpu | cuda | cuda:N");
    }
    if (c.peers.host.empty() || c.peers.host.find_first_of("/: \t") != std::string::npos)
      return Error(Code::kInvalidArgument, "key 'peers.host': '" + c.peers.host +
                                               "' is not a host name or IPv4 address");
    for (const auto& a : c.peers.addresses) MYCEL_CHECK(check_address(a, "peers.addresses"));
    if (c.protocol.name == "dpsgd")
      if (auto r = make_topology(c.protocol.topology, c.peers.count, c.protocol.degree, c.seed); !r)
        return Error(Code::kInvalidArgument, "key 'protocol.topology': '" + c.protocol.topology + "' with peers.count " +
                                                 std::to_string(c.peers.count) + " and protocol.degree " +
                                                 std::to_string(c.protocol.degree) + ": " + r.status().message());
    if (auto why = check_name(c.name); !why.empty())
      return Error(Code::kInvalidArgument, "key 'name': '" + c.name + "' " + why);
    if (auto r = parse_host_port(c.control.listen); !r)
      return Error(Code::kInvalidArgument, "key 'control.listen': '" + c.control.listen + "': " + r.status().message());
  } catch (const std::exception& e) {
    return Error(Code::kInvalidArgument, std::string("config check: ") + e.what());
  }
  return Ok();
}

Result<ExperimentConfig> apply_overrides(const ExperimentConfig& base,
                                         const std::vector<std::string>& overrides) {
  auto values = base.flat;
  for (const auto& o : overrides) {
    size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      return Error(Code::kInvalidArgument, "override '" + o + "': expected KEY=VALUE");
    std::string key = o.substr(0, eq), val = o.substr(eq + 1);
    const ConfigKey* k = find_key(key);
    if (!k) return Error(Code::kInvalidArgument, "override: unknown key '" + key + "'" + suggest(key));
    if (k->type == K::kStringList) {
      MYCEL_ASSIGN_OR_RETURN(values[key], check_value(*k, val, "override"));
      continue;
    }
    MYCEL_ASSIGN_OR_RETURN(values[key], check_value(*k, val, "override"));
  }
  return build(std::move(values), "override");
}

Status validate(const RuntimeParams& p) {
  std::map<std::string, std::string> v = {
      {"codec.spec", p.codec},
      {"protocol.period_s", std::to_string(p.period_s)},
      {"protocol.jitter", std::to_string(p.jitter)},
      {"protocol.fanout", std::to_string(p.fanout)},
      {"train.lr", std::to_string(p.lr)},
      {"train.local_steps", std::to_string(p.local_steps)},
      {"protocol.merge", p.merge},
      {"trust.max_age_lead", std::to_string(p.max_age_lead)},
      {"trust.max_abs_param", std::to_string(p.max_abs_param)},
  };
  for (const auto& [key, val] : v) {
    auto r = check_value(*find_key(key), val, "parameters");
    if (!r) return r.status();
  }
  return Ok();
}

Result<std::pair<std::string, int>> parse_host_port(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    return Error(Code::kInvalidArgument, "expected HOST:PORT (e.g. 127.0.0.1:0)");
  std::string host(text.substr(0, colon));
  if (host.find_first_of("/ \t") != std::string::npos)
    return Error(Code::kInvalidArgument, "'" + host + "' is not a host name or IPv4 address");
  int64_t p = 0;
  if (!parse_int(text.substr(colon + 1), &p).empty() || p < 0 || p > 65535)
    return Error(Code::kInvalidArgument, "the port is not an integer in [0, 65535]");
  return std::make_pair(host, static_cast<int>(p));
}

std::vector<std::pair<std::string, std::string>> live_param_values(const RuntimeParams& p) {
  auto num = [](double v) {  // the shortest text that reads back as v
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  };
  return {
      {"codec.spec", p.codec},
      {"codec.error_feedback", p.error_feedback ? "true" : "false"},
      {"protocol.period_s", num(p.period_s)},
      {"protocol.jitter", num(p.jitter)},
      {"protocol.fanout", std::to_string(p.fanout)},
      {"protocol.merge", p.merge},
      {"train.lr", num(p.lr)},
      {"train.local_steps", std::to_string(p.local_steps)},
  };
}

Result<RuntimeParams> apply_param_changes(const RuntimeParams& base,
                                          const std::vector<std::pair<std::string, std::string>>& changes) {
  RuntimeParams p = base;
  for (const auto& [key, val] : changes) {
    const ConfigKey* k = find_key(key);
    if (!k) return Error(Code::kInvalidArgument, "key '" + key + "': unknown key" + suggest(key));
    if (!k->live)
      return Error(Code::kInvalidArgument, "key '" + key + "': not a live parameter (fixed for the run; live: " +
                                               [] {
                                                 std::string l;
                                                 for (const auto& s : kSchema)
                                                   if (s.live) l += (l.empty() ? "" : ", ") + std::string(s.path);
                                                 return l;
                                               }() + ")");
    MYCEL_ASSIGN_OR_RETURN(std::string v, check_value(*k, val, "parameters"));
    int64_t i = 0;
    double f = 0;
    if (key == "codec.spec") p.codec = v;
    else if (key == "codec.error_feedback") p.error_feedback = v == "true";
    else if (key == "protocol.period_s") { (void)parse_float(v, &f); p.period_s = f; }
    else if (key == "protocol.jitter") { (void)parse_float(v, &f); p.jitter = f; }
    else if (key == "protocol.fanout") { (void)parse_int(v, &i); p.fanout = static_cast<int>(i); }
    else if (key == "protocol.merge") p.merge = v;
    else if (key == "train.lr") { (void)parse_float(v, &f); p.lr = f; }
    else if (key == "train.local_steps") { (void)parse_int(v, &i); p.local_steps = static_cast<int>(i); }
    else return Error(Code::kInternal, "key '" + key + "': live in the schema but not in RuntimeParams");
  }
  MYCEL_CHECK(validate(p));
  return p;
}

std::string describe_schema(bool markdown) {
  std::ostringstream os;
  if (markdown) {
    auto esc = [](std::string_view t) {
      std::string o;
      for (char c : t) {
        if (c == '|') o += '\\';
        o += c;
      }
      return o;
    };
    os << "| key | type | default | live | meaning |\n|---|---|---|---|---|\n";
    for (const auto& k : kSchema) {
      os << "| `" << k.path << "` | " << esc(expected_text(k)) << " | `" << (k.def.empty() ? "\"\"" : k.def)
         << "` | " << (k.live ? "yes" : "") << " | " << esc(k.help) << " |\n";
    }
    return os.str();
  }
  size_t w = 0;
  for (const auto& k : kSchema) w = std::max(w, k.path.size());
  for (const auto& k : kSchema) {
    std::string d = k.def.empty() ? "\"\"" : std::string(k.def);
    os << std::string(k.path) << std::string(w + 2 - k.path.size(), ' ') << d
       << std::string(d.size() < 16 ? 16 - d.size() : 1, ' ') << (k.live ? "[live] " : "") << k.help
       << "  (" << expected_text(k) << ")\n";
  }
  return os.str();
}

ParamStore::ParamStore(RuntimeParams initial)
    : cur_(std::make_shared<const RuntimeParams>(std::move(initial))) {}

Status ParamStore::replace(RuntimeParams next) {
  MYCEL_CHECK(validate(next));
  cur_.store(std::make_shared<const RuntimeParams>(std::move(next)));
  version_.fetch_add(1);
  return Ok();
}

Status ParamStore::restore(RuntimeParams p, uint64_t version) {
  MYCEL_CHECK(validate(p));
  cur_.store(std::make_shared<const RuntimeParams>(std::move(p)));
  version_.store(version == 0 ? 1 : version);
  return Ok();
}

}  // namespace mycel::runtime
