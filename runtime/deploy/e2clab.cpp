#include "runtime/deploy/e2clab.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <regex>
#include <set>
#include <sstream>

namespace mycel::runtime::deploy {
namespace {

// Grid'5000 clusters whose size the scenario checks (shared/e2clab-schema/README.md).
struct KnownCluster {
  std::string_view name;
  int nodes;
  bool exotic;  // needs the OAR job type "exotic"
};
constexpr KnownCluster kClusters[] = {
    {"estats", 12, true},  // Toulouse, Jetson AGX Xavier (aarch64, sm_72)
};
const KnownCluster* known_cluster(std::string_view name) {
  for (const auto& c : kClusters)
    if (c.name == name) return &c;
  return nullptr;
}

// The E2Clab service every layer runs (scripts/e2clab/GossipPeer.py) and the host patterns
// its sub-services get: layer.gossippeer.<service id>.peer.<machine id>.
constexpr std::string_view kService = "GossipPeer";
std::string peer_pattern(std::string_view layer) { return std::string(layer) + ".gossippeer.*.peer.*"; }

std::string where(std::string_view source, const YAML::Node& n) {
  const YAML::Mark m = n.Mark();
  if (m.is_null() || m.line < 0) return std::string(source);
  return std::string(source) + ":" + std::to_string(m.line + 1);
}

Status bad(std::string_view source, const YAML::Node& n, const std::string& key, const std::string& why) {
  return Error(Code::kInvalidArgument, where(source, n) + ": " + key + ": " + why);
}

// Rejects keys of `map` outside `allowed`, naming the full key.
Status only_keys(std::string_view source, const YAML::Node& map, const std::string& prefix,
                 const std::vector<std::string_view>& allowed) {
  for (const auto& kv : map) {
    const std::string key = kv.first.as<std::string>();
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    return Error(Code::kInvalidArgument, where(source, kv.first) + ": unknown key '" + prefix + "." + key +
                                             "'; expected one of: " + list);
  }
  return Ok();
}

Status get_string(std::string_view source, const YAML::Node& map, std::string_view key,
                  const std::string& path, std::string* out) {
  const YAML::Node v = map[std::string(key)];
  if (!v) return Ok();
  if (!v.IsScalar()) return bad(source, v, path, "expected a string");
  *out = v.as<std::string>();
  return Ok();
}

Status get_int(std::string_view source, const YAML::Node& map, std::string_view key, const std::string& path,
               int64_t lo, int64_t hi, int* out) {
  const YAML::Node v = map[std::string(key)];
  if (!v) return Ok();
  std::string expected = "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  if (!v.IsScalar()) return bad(source, v, path, expected);
  const std::string t = v.as<std::string>();
  int64_t x = 0;
  auto r = std::from_chars(t.data(), t.data() + t.size(), x);
  if (r.ec != std::errc() || r.ptr != t.data() + t.size())
    return bad(source, v, path, "'" + t + "' is not an integer; " + expected);
  if (x < lo || x > hi) return bad(source, v, path, t + " is out of range; " + expected);
  *out = static_cast<int>(x);
  return Ok();
}

Status get_bool(std::string_view source, const YAML::Node& map, std::string_view key, const std::string& path,
                bool* out) {
  const YAML::Node v = map[std::string(key)];
  if (!v) return Ok();
  const std::string t = v.IsScalar() ? v.as<std::string>() : "";
  if (t == "true" || t == "yes" || t == "on") { *out = true; return Ok(); }
  if (t == "false" || t == "no" || t == "off") { *out = false; return Ok(); }
  return bad(source, v, path, "expected a boolean (true or false)");
}

Status get_strings(std::string_view source, const YAML::Node& map, std::string_view key, const std::string& path,
                   std::vector<std::string>* out) {
  const YAML::Node v = map[std::string(key)];
  if (!v) return Ok();
  if (!v.IsSequence()) return bad(source, v, path, "expected a list of strings");
  out->clear();
  for (const auto& item : v) {
    if (!item.IsScalar()) return bad(source, item, path, "expected a list of strings");
    out->push_back(item.as<std::string>());
  }
  return Ok();
}

bool one_of(std::string_view v, std::initializer_list<std::string_view> choices) {
  return std::find(choices.begin(), choices.end(), v) != choices.end();
}

int walltime_seconds(const std::string& w) {
  return std::stoi(w.substr(0, 2)) * 3600 + std::stoi(w.substr(3, 2)) * 60 + std::stoi(w.substr(6, 2));
}

// Network figures in the forms E2Clab's schema and EnOSlib's netem service take.
Status check_delay(std::string_view source, const YAML::Node& n, const std::string& path, const std::string& v) {
  if (!v.empty() && v[0] == '-') return bad(source, n, path, "'" + v + "': a delay cannot be negative");
  static const std::regex re(R"(^[0-9]+(\.[0-9]+)?ms$)");
  if (!std::regex_match(v, re))
    return bad(source, n, path, "'" + v + "' is not a delay E2Clab takes; expected a number then ms (e.g. 20ms)");
  return Ok();
}
Status check_rate(std::string_view source, const YAML::Node& n, const std::string& path, const std::string& v) {
  if (!v.empty() && v[0] == '-') return bad(source, n, path, "'" + v + "': a rate cannot be negative");
  static const std::regex re(R"(^[0-9]+(\.[0-9]+)?(kbit|mbit|gbit)$)");
  if (!std::regex_match(v, re))
    return bad(source, n, path, "'" + v + "' is not a rate E2Clab takes; expected a number then kbit, mbit or "
                                "gbit (e.g. 100mbit)");
  if (std::stod(v) <= 0) return bad(source, n, path, "'" + v + "': the rate must be above 0");
  return Ok();
}
Status check_loss(std::string_view source, const YAML::Node& n, const std::string& path, const std::string& v) {
  static const std::regex re(R"(^[0-9]+(\.[0-9]+)?%$)");
  if (!std::regex_match(v, re))
    return bad(source, n, path, "'" + v + "' is not a loss E2Clab takes; expected a percentage (e.g. 0.5%)");
  if (std::stod(v) > 100) return bad(source, n, path, "'" + v + "' is above 100%");
  return Ok();
}

Result<Layer> parse_layer(std::string_view source, const YAML::Node& n, const std::string& path) {
  if (!n.IsMap()) return bad(source, n, path, "expected a mapping (name, cluster, nodes, peers_per_node)");
  MYCEL_CHECK(only_keys(source, n, path, {"name", "cluster", "servers", "nodes", "peers_per_node"}));
  Layer l;
  if (!n["name"]) return bad(source, n, path, "'name' is missing (the E2Clab layer: edge, cloud, ...)");
  MYCEL_CHECK(get_string(source, n, "name", path + ".name", &l.name));
  static const std::regex name_re("^[a-z][a-z0-9_]*$");
  if (!std::regex_match(l.name, name_re))
    return bad(source, n["name"], path + ".name",
               "'" + l.name + "': expected a lower-case name of letters, digits and _ (E2Clab addresses hosts "
                              "as layer.service.N.M in lower case)");
  MYCEL_CHECK(get_string(source, n, "cluster", path + ".cluster", &l.cluster));
  MYCEL_CHECK(get_strings(source, n, "servers", path + ".servers", &l.servers));
  if (l.cluster.empty() && l.servers.empty())
    return bad(source, n, path + ".cluster",
               "missing: every layer needs a Grid'5000 cluster (e.g. estats, chifflot, chuc) or a list of "
               "servers");
  if (!n["nodes"] && l.servers.empty())
    return bad(source, n, path + ".nodes", "missing: the number of nodes to reserve on " + l.cluster);
  l.nodes = static_cast<int>(l.servers.size());
  MYCEL_CHECK(get_int(source, n, "nodes", path + ".nodes", 1, 10000, &l.nodes));
  if (!l.servers.empty() && l.nodes != static_cast<int>(l.servers.size()))
    return bad(source, n["nodes"], path + ".nodes",
               std::to_string(l.nodes) + " nodes but " + std::to_string(l.servers.size()) + " servers listed");
  if (const KnownCluster* c = known_cluster(l.cluster); c && l.servers.empty() && l.nodes > c->nodes)
    return bad(source, n["nodes"], path + ".nodes",
               std::to_string(l.nodes) + " nodes asked but " + l.cluster + " has " + std::to_string(c->nodes));
  MYCEL_CHECK(get_int(source, n, "peers_per_node", path + ".peers_per_node", 1, 1024, &l.peers_per_node));
  return l;
}

Result<Link> parse_link(std::string_view source, const YAML::Node& n, const std::string& path,
                        const std::vector<Layer>& layers) {
  if (!n.IsMap()) return bad(source, n, path, "expected a mapping (src, dst, delay, rate, loss, symmetric)");
  MYCEL_CHECK(only_keys(source, n, path, {"src", "dst", "delay", "rate", "loss", "symmetric"}));
  Link k;
  for (auto [key, out] : {std::pair{"src", &k.src}, std::pair{"dst", &k.dst}}) {
    if (!n[key]) return bad(source, n, path + "." + key, "missing: a layer name");
    MYCEL_CHECK(get_string(source, n, key, path + "." + key, out));
    bool found = false;
    std::string names;
    for (const auto& l : layers) {
      found |= l.name == *out;
      names += (names.empty() ? "" : ", ") + l.name;
    }
    if (!found) return bad(source, n[key], path + "." + key, "'" + *out + "' is not a layer (" + names + ")");
  }
  for (auto [key, out] : {std::pair{"delay", &k.delay}, std::pair{"rate", &k.rate}}) {
    if (!n[key])
      return bad(source, n, path + "." + key,
                 std::string("missing (E2Clab needs both delay and rate, e.g. delay: 20ms, rate: 1gbit)"));
    if (!n[key].IsScalar()) return bad(source, n[key], path + "." + key, "expected a string");
    *out = n[key].as<std::string>();
  }
  MYCEL_CHECK(check_delay(source, n["delay"], path + ".delay", k.delay));
  MYCEL_CHECK(check_rate(source, n["rate"], path + ".rate", k.rate));
  MYCEL_CHECK(get_string(source, n, "loss", path + ".loss", &k.loss));
  if (!k.loss.empty()) MYCEL_CHECK(check_loss(source, n["loss"], path + ".loss", k.loss));
  MYCEL_CHECK(get_bool(source, n, "symmetric", path + ".symmetric", &k.symmetric));
  return k;
}

Result<Spec> parse_section(std::string_view source, const YAML::Node& d) {
  if (!d.IsMap()) return bad(source, d, "deploy", "expected a mapping (layers, network, walltime, ...)");
  MYCEL_CHECK(only_keys(source, d, "deploy",
                        {"job_name", "walltime", "queue", "reservation", "job_type", "env_name", "prepare",
                         "monitoring", "remote_dir", "base_port", "layers", "network"}));
  Spec s;
  MYCEL_CHECK(get_string(source, d, "job_name", "deploy.job_name", &s.job_name));
  MYCEL_CHECK(get_string(source, d, "walltime", "deploy.walltime", &s.walltime));
  static const std::regex wt(R"(^([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])$)");
  if (!std::regex_match(s.walltime, wt))
    return bad(source, d["walltime"], "deploy.walltime",
               "'" + s.walltime + "': expected hh:mm:ss, at most 23:59:59 (quote it: \"02:00:00\")");
  MYCEL_CHECK(get_string(source, d, "queue", "deploy.queue", &s.queue));
  if (!one_of(s.queue, {"default", "production", "besteffort", "testing"}))
    return bad(source, d["queue"], "deploy.queue",
               "'" + s.queue + "': expected one of default, production, besteffort, testing");
  MYCEL_CHECK(get_string(source, d, "reservation", "deploy.reservation", &s.reservation));
  static const std::regex resa(R"(^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$)");
  if (!s.reservation.empty() && !std::regex_match(s.reservation, resa))
    return bad(source, d["reservation"], "deploy.reservation",
               "'" + s.reservation + "': expected \"YYYY-mm-dd HH:MM:SS\"");
  MYCEL_CHECK(get_strings(source, d, "job_type", "deploy.job_type", &s.job_type));
  MYCEL_CHECK(get_string(source, d, "env_name", "deploy.env_name", &s.env_name));
  MYCEL_CHECK(get_string(source, d, "prepare", "deploy.prepare", &s.prepare));
  if (!one_of(s.prepare, {"build", "push"}))
    return bad(source, d["prepare"], "deploy.prepare",
               "'" + s.prepare + "': expected build (build on every node) or push (copy artifacts/bin/ARCH/mycel)");
  MYCEL_CHECK(get_string(source, d, "monitoring", "deploy.monitoring", &s.monitoring));
  if (!one_of(s.monitoring, {"dstat", "none"}))
    return bad(source, d["monitoring"], "deploy.monitoring", "'" + s.monitoring + "': expected dstat or none");
  MYCEL_CHECK(get_string(source, d, "remote_dir", "deploy.remote_dir", &s.remote_dir));
  if (s.remote_dir.empty() || s.remote_dir[0] != '/' ||
      s.remote_dir.find_first_of(" '\"$`\\") != std::string::npos)
    return bad(source, d["remote_dir"], "deploy.remote_dir",
               "'" + s.remote_dir + "': expected an absolute path without spaces or quotes");
  MYCEL_CHECK(get_int(source, d, "base_port", "deploy.base_port", 1024, 65535, &s.base_port));

  const YAML::Node layers = d["layers"];
  if (!layers) return bad(source, d, "deploy.layers", "missing: at least one layer (name, cluster, nodes, peers_per_node)");
  if (!layers.IsSequence() || layers.size() == 0)
    return bad(source, layers, "deploy.layers", "expected a non-empty list of layers");
  std::set<std::string> names;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string path = "deploy.layers[" + std::to_string(i) + "]";
    MYCEL_ASSIGN_OR_RETURN(Layer l, parse_layer(source, layers[i], path));
    if (!names.insert(l.name).second) return bad(source, layers[i]["name"], path + ".name", "'" + l.name + "' given twice");
    s.layers.push_back(std::move(l));
  }
  if (const YAML::Node net = d["network"]; net && !net.IsNull()) {
    if (!net.IsSequence()) return bad(source, net, "deploy.network", "expected a list of links (src, dst, delay, rate)");
    for (size_t i = 0; i < net.size(); ++i) {
      MYCEL_ASSIGN_OR_RETURN(Link k, parse_link(source, net[i], "deploy.network[" + std::to_string(i) + "]", s.layers));
      s.network.push_back(std::move(k));
    }
  }
  return s;
}

// ---- scenario text --------------------------------------------------------------------------

std::string shell_quote(std::string_view s) {
  std::string o = "'";
  for (char c : s) {
    if (c == '\'') o += "'\\''";
    else o += c;
  }
  return o + "'";
}

void key_str(YAML::Emitter& e, std::string_view k, std::string_view v) {
  e << YAML::Key << std::string(k) << YAML::Value << YAML::DoubleQuoted << std::string(v);
}

std::string header(std::string_view what) {
  return "# " + std::string(what) + "\n# Generated by `mycel deploy e2clab`; docs/grid5000.md explains each part.\n";
}

std::string layers_services_yaml(const ExperimentConfig& cfg, const Spec& s) {
  const std::vector<int> per_layer = peers_per_layer(s, cfg.peers.count);
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "environment" << YAML::Value << YAML::BeginMap;
  key_str(e, "job_name", s.job_name);
  key_str(e, "walltime", s.walltime);
  e << YAML::Key << "g5k" << YAML::Value << YAML::BeginMap;
  for (const auto& l : s.layers) {  // the default cluster: the first layer's
    if (!l.cluster.empty()) {
      key_str(e, "cluster", l.cluster);
      break;
    }
  }
  key_str(e, "queue", s.queue);
  if (!s.job_type.empty()) {
    e << YAML::Key << "job_type" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const auto& t : s.job_type) e << YAML::DoubleQuoted << t;
    e << YAML::EndSeq;
  }
  if (!s.env_name.empty()) key_str(e, "env_name", s.env_name);
  if (!s.reservation.empty()) key_str(e, "reservation", s.reservation);
  e << YAML::EndMap << YAML::EndMap;
  if (s.monitoring == "dstat") {
    e << YAML::Key << "monitoring" << YAML::Value << YAML::BeginMap;
    key_str(e, "type", "dstat");
    e << YAML::EndMap;
  }
  e << YAML::Key << "layers" << YAML::Value << YAML::BeginSeq;
  int first = 0;
  for (size_t i = 0; i < s.layers.size(); ++i) {
    const Layer& l = s.layers[i];
    e << YAML::BeginMap;
    key_str(e, "name", l.name);
    e << YAML::Key << "services" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
    key_str(e, "name", kService);
    if (!l.cluster.empty()) key_str(e, "cluster", l.cluster);
    if (!l.servers.empty()) {
      e << YAML::Key << "servers" << YAML::Value << YAML::BeginSeq;
      for (const auto& sv : l.servers) e << YAML::DoubleQuoted << sv;
      e << YAML::EndSeq;
    }
    e << YAML::Key << "quantity" << YAML::Value << l.nodes;
    if (s.monitoring != "none") {
      e << YAML::Key << "roles" << YAML::Value << YAML::Flow << YAML::BeginSeq << "monitoring" << YAML::EndSeq;
    }
    // Read by GossipPeer.py (self.env): which peers this layer's nodes run.
    e << YAML::Key << "env" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "first_id" << YAML::Value << first;
    e << YAML::Key << "peers" << YAML::Value << per_layer[i];
    e << YAML::Key << "peers_per_node" << YAML::Value << l.peers_per_node;
    e << YAML::Key << "base_port" << YAML::Value << s.base_port;
    e << YAML::EndMap;
    e << YAML::EndMap << YAML::EndSeq << YAML::EndMap;
    first += per_layer[i];
  }
  e << YAML::EndSeq << YAML::EndMap;
  return header("E2Clab layers and services for experiment '" + cfg.name + "': " +
                std::to_string(cfg.peers.count) + " mycel peers on Grid'5000.") +
         "---\n" + e.c_str() + "\n";
}

std::string network_yaml(const Spec& s) {
  YAML::Emitter e;
  e << YAML::BeginMap << YAML::Key << "networks" << YAML::Value;
  if (s.network.empty()) {
    e << YAML::Null;
  } else {
    e << YAML::BeginSeq;
    for (const auto& k : s.network) {
      e << YAML::BeginMap;
      key_str(e, "src", k.src);
      key_str(e, "dst", k.dst);
      key_str(e, "delay", k.delay);
      key_str(e, "rate", k.rate);
      if (!k.loss.empty()) key_str(e, "loss", k.loss);
      e << YAML::Key << "symmetric" << YAML::Value << k.symmetric;
      e << YAML::EndMap;
    }
    e << YAML::EndSeq;
  }
  e << YAML::EndMap;
  return header("Emulated links between layers (tc netem on the src hosts' egress; symmetric adds the "
                "reverse rule).") +
         "---\n" + e.c_str() + "\n";
}

void task(YAML::Emitter& e, std::string_view name, std::string_view module,
          const std::vector<std::pair<std::string, std::string>>& args) {
  e << YAML::BeginMap;
  key_str(e, "name", name);
  e << YAML::Key << std::string(module) << YAML::Value;
  if (args.size() == 1 && args[0].first.empty()) {
    e << YAML::DoubleQuoted << args[0].second;
  } else {
    e << YAML::BeginMap;
    for (const auto& [k, v] : args) {
      if (v == "yes") e << YAML::Key << k << YAML::Value << true;
      else key_str(e, k, v);
    }
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
}
void shell(YAML::Emitter& e, std::string_view name, const std::string& cmd) { task(e, name, "shell", {{"", cmd}}); }

std::string workflow_yaml(const ExperimentConfig& cfg, const Spec& s) {
  const std::string& d = s.remote_dir;
  YAML::Emitter e;
  e << YAML::BeginSeq;

  // prepare: on every node.
  e << YAML::BeginMap;
  key_str(e, "hosts", "*.gossippeer.*.peer.*");
  e << YAML::Key << "prepare" << YAML::Value << YAML::BeginSeq;
  task(e, "copy the mycel sources", "copy",
       {{"src", "{{ artifacts_dir }}/mycel-src.tar.gz"}, {"dest", "/tmp/mycel-src.tar.gz"}});
  shell(e, "unpack them", "mkdir -p " + d + " && tar -xzf /tmp/mycel-src.tar.gz -C " + d);
  shell(e, "requirements (Debian packages) and data sets (scripts/setup.sh, scripts/fetch-data.sh)",
        "cd " + d + " && scripts/setup.sh --no-build && scripts/fetch-data.sh " + cfg.data.dataset);
  if (s.prepare == "build") {
    // x86_64 GPU nodes build for the GPUs they have (chifflot's P100/V100 are sm_60/sm_70, which
    // the cuda preset's default list lacks); estats boards take the jetson-xavier preset.
    shell(e, "build mycel: preset jetson-xavier (CUDA 11.4, sm_72) on estats, cuda for this node's GPUs elsewhere",
          "cd " + d + " && if [ \"$(uname -m)\" = aarch64 ]; then p=jetson-xavier; a=; else p=cuda; "
          "a=-DCMAKE_CUDA_ARCHITECTURES=native; fi && cmake --preset $p $a && cmake --build build/$p --target mycel && "
          "ln -sfn build/$p/bin/mycel mycel");
  } else {
    task(e, "copy the prebuilt binaries (artifacts/bin/x86_64/mycel, artifacts/bin/aarch64/mycel)", "copy",
         {{"src", "{{ artifacts_dir }}/bin/"}, {"dest", d + "/bin/"}, {"mode", "0755"}});
    shell(e, "pick this node's architecture", "cd " + d + " && ln -sfn bin/$(uname -m)/mycel mycel");
  }
  task(e, "copy the experiment config", "copy",
       {{"src", "{{ artifacts_dir }}/experiment.yaml"}, {"dest", d + "/experiment.yaml"}});
  task(e, "copy the peer launcher", "copy",
       {{"src", "{{ artifacts_dir }}/launch-peers.sh"}, {"dest", d + "/launch-peers.sh"}, {"mode", "0755"}});
  shell(e, "check the binary (backends, GPUs visible)", d + "/mycel --version");
  e << YAML::EndSeq << YAML::EndMap;

  // launch: one play per layer; every host gets every layer's host names, to build the
  // --seeds and --peers lists (launch-peers.sh sorts them, as GossipPeer.py does).
  std::string lists;
  for (const auto& l : s.layers) lists += " {{ " + l.name + "_hosts | join(',') }}";
  std::string sets = " -- --set run.duration_s={{ env_duration_s | default(" + cfg.flat.at("run.duration_s") +
                     ") }} --set codec.spec={{ env_codec | default('" + cfg.params.codec +
                     "') }} --set protocol.name={{ env_protocol | default('" + cfg.protocol.name + "') }}";
  for (const auto& l : s.layers) {
    e << YAML::BeginMap;
    key_str(e, "hosts", peer_pattern(l.name));
    e << YAML::Key << "depends_on" << YAML::Value << YAML::BeginSeq;
    for (const auto& o : s.layers) {
      e << YAML::BeginMap;
      key_str(e, "service_selector", peer_pattern(o.name));
      key_str(e, "grouping", "asarray");
      key_str(e, "array_info", "hostname");
      key_str(e, "prefix", o.name + "_hosts");
      e << YAML::EndMap;
    }
    e << YAML::EndSeq;
    e << YAML::Key << "launch" << YAML::Value << YAML::BeginSeq;
    shell(e, "start this node's peers (ids, ports, seeds, --peers: launch-peers.sh)",
          d + "/launch-peers.sh start " + l.name + " {{ _self.__address__ }}" + lists + sets);
    e << YAML::EndSeq << YAML::EndMap;
  }

  // finalize: stop what still runs, bring every node's run folder back.
  e << YAML::BeginMap;
  key_str(e, "hosts", "*.gossippeer.*.peer.*");
  e << YAML::Key << "finalize" << YAML::Value << YAML::BeginSeq;
  shell(e, "stop the peers still running (SIGTERM: each writes its results)", d + "/launch-peers.sh stop");
  shell(e, "pack this node's run folder", "cd " + d + " && tar -czf /tmp/mycel-run.tar.gz run");
  task(e, "bring it back", "fetch",
       {{"src", "/tmp/mycel-run.tar.gz"},
        {"dest", "{{ working_dir }}/mycel-runs/{{ inventory_hostname }}.tar.gz"},
        {"flat", "yes"}});
  e << YAML::EndSeq << YAML::EndMap;

  e << YAML::EndSeq;
  return header("Workflow: prepare (sources, build, data), launch (the peers), finalize (collect the run "
                "folders).") +
         "---\n" + e.c_str() + "\n";
}

std::string workflow_env_yaml(const ExperimentConfig& cfg) {
  YAML::Emitter e;
  e << YAML::BeginMap << YAML::Key << "default" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "duration_s" << YAML::Value << cfg.duration_s;
  key_str(e, "codec", cfg.params.codec);
  key_str(e, "protocol", cfg.protocol.name);
  e << YAML::EndMap << YAML::EndMap;
  return header("Application configurations: `e2clab launch --app_conf default` sets env_duration_s, "
                "env_codec, env_protocol for the launch step; add one mapping per variant.") +
         "---\n" + e.c_str() + "\n";
}

// The peer launcher: constants from the spec, then a fixed body.
constexpr std::string_view kLaunchBody = R"SH(
usage() {
  echo "usage: launch-peers.sh start LAYER SELF HOSTS... [-- MYCEL-PEER-OPTIONS]  (one comma list per layer, ${LAYERS[*]})" >&2
  echo "       launch-peers.sh stop" >&2
  exit 2
}
[ $# -ge 1 ] || usage
cmd=$1; shift
RUN="$DIR/run"
run() { if [ -n "${MYCEL_DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }

if [ "$cmd" = stop ]; then
  [ -f "$RUN/pids" ] || { echo "launch-peers: no peers started here"; exit 0; }
  pids=$(cat "$RUN/pids")
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for p in $pids; do kill -0 "$p" 2>/dev/null && { echo "launch-peers: peer pid $p killed after 20 s"; kill -KILL "$p"; }; done
  exit 0
fi
[ "$cmd" = start ] || usage
[ $# -ge $((2 + ${#LAYERS[@]})) ] || usage
layer=$1; self=$2; shift 2
declare -a HOSTS
for i in "${!LAYERS[@]}"; do HOSTS[$i]=$(echo "$1" | tr ',' '\n' | sed '/^$/d' | LC_ALL=C sort | tr '\n' ' '); shift; done
[ "${1:-}" = -- ] && shift
li=-1
for i in "${!LAYERS[@]}"; do [ "${LAYERS[$i]}" = "$layer" ] && li=$i; done
[ "$li" -ge 0 ] || { echo "launch-peers: unknown layer '$layer' (${LAYERS[*]})" >&2; exit 2; }

# Addresses are IPv4 numbers: a peer advertises the address it listens at, and the others must
# list it under the same one.
resolve() {
  if [ -n "${MYCEL_NO_RESOLVE:-}" ]; then echo "$1"; return; fi
  local a; a=$(getent ahostsv4 "$1" | awk 'NR == 1 { print $1 }')
  [ -n "$a" ] || { echo "launch-peers: cannot resolve $1" >&2; exit 1; }
  echo "$a"
}
declare -a ADDR   # ADDR[id] = ucx://IP:PORT
for i in "${!LAYERS[@]}"; do
  read -r -a hs <<<"${HOSTS[$i]}"
  need=$(( (COUNT[$i] + PPN[$i] - 1) / PPN[$i] ))
  [ "${#hs[@]}" -ge "$need" ] || { echo "launch-peers: layer ${LAYERS[$i]} has ${#hs[@]} hosts, $need needed" >&2; exit 1; }
  for k in $(seq 0 $((COUNT[$i] - 1))); do
    ADDR[$((FIRST[$i] + k))]="ucx://$(resolve "${hs[$((k / PPN[$i]))]}"):$((BASE_PORT + k % PPN[$i]))"
  done
done
peers=$(IFS=,; echo "${ADDR[*]}")

read -r -a mine <<<"${HOSTS[$li]}"
node=-1
for n in "${!mine[@]}"; do [ "${mine[$n]}" = "$self" ] && node=$n; done
[ "$node" -ge 0 ] || { echo "launch-peers: $self is not among layer $layer's hosts: ${HOSTS[$li]}" >&2; exit 1; }
ip=$(resolve "$self")

gpus=0
if [ "$SPREAD_GPUS" = 1 ] && command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
threads=$(( $(nproc) / PPN[$li] )); [ "$threads" -ge 1 ] || threads=1
run mkdir -p "$RUN"
for s in $(seq 0 $((PPN[$li] - 1))); do
  id=$((FIRST[$li] + node * PPN[$li] + s))
  [ "$id" -lt $((FIRST[$li] + COUNT[$li])) ] || break
  seeds=""
  for i in "${!LAYERS[@]}"; do
    a=${ADDR[${FIRST[$i]}]}
    [ "$a" = "${ADDR[$id]}" ] || seeds="${seeds:+$seeds,}$a"
  done
  [ -n "$seeds" ] || seeds=${ADDR[$(( id == 0 ? 1 : 0 ))]:-${ADDR[$id]}}
  dev=()
  [ "$gpus" -gt 0 ] && dev=(--device "cuda:$((s % gpus))")
  port=$((BASE_PORT + s))
  if [ -n "${MYCEL_DRY_RUN:-}" ]; then
    echo "$DIR/mycel --threads $threads ${dev[*]} peer --config $DIR/experiment.yaml --id $id --listen ucx://$ip:$port --seeds $seeds --peers $peers --out $RUN ${SETS[*]} $*"
  else
    nohup "$DIR/mycel" --threads "$threads" "${dev[@]}" peer --config "$DIR/experiment.yaml" --id "$id" \
      --listen "ucx://$ip:$port" --seeds "$seeds" --peers "$peers" --out "$RUN" "${SETS[@]}" "$@" \
      >"$RUN/peer-$id.stdout" 2>&1 &
    echo $! >>"$RUN/pids"
    echo "launch-peers: peer $id at ucx://$ip:$port (pid $!)"
  fi
done
)SH";

std::string launch_script(const ExperimentConfig& cfg, const Spec& s, const std::vector<std::string>& overrides) {
  const std::vector<int> per = peers_per_layer(s, cfg.peers.count);
  std::ostringstream o;
  o << "#!/usr/bin/env bash\n"
    << "# Starts (or stops) this node's mycel peers; generated by `mycel deploy e2clab` for experiment '"
    << cfg.name << "'.\n"
    << "# Peers are dealt layer by layer, node by node (host names sorted), PPN per node; peer k of a\n"
    << "# node listens at BASE_PORT + k. Seeds: the first peer of every layer. --peers: every peer in\n"
    << "# id order. MYCEL_DRY_RUN=1 prints the commands; MYCEL_NO_RESOLVE=1 keeps host names.\n"
    << "set -euo pipefail\n";
  o << "LAYERS=(";
  for (size_t i = 0; i < s.layers.size(); ++i) o << (i ? " " : "") << s.layers[i].name;
  o << ")\nFIRST=(";
  int first = 0;
  for (size_t i = 0; i < s.layers.size(); ++i) {
    o << (i ? " " : "") << first;
    first += per[i];
  }
  o << ")\nCOUNT=(";
  for (size_t i = 0; i < s.layers.size(); ++i) o << (i ? " " : "") << per[i];
  o << ")\nPPN=(";
  for (size_t i = 0; i < s.layers.size(); ++i) o << (i ? " " : "") << s.layers[i].peers_per_node;
  o << ")\nBASE_PORT=" << s.base_port << "\nDIR=" << s.remote_dir << "\n";
  o << "SPREAD_GPUS=" << (cfg.device == "auto" ? 1 : 0) << "  # device auto: peer k of a node on GPU k mod GPUs\n";
  o << "SETS=(";
  for (size_t i = 0; i < overrides.size(); ++i) o << (i ? " " : "") << "--set " << shell_quote(overrides[i]);
  o << ")\n" << kLaunchBody;
  return o.str();
}

}  // namespace

Result<Spec> parse_deploy(std::string_view yaml, std::string_view source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return Error(Code::kInvalidArgument,
                 std::string(source) + ":" + std::to_string(e.mark.line + 1) + ": yaml syntax error: " + e.msg);
  }
  if (!root.IsMap() || !root["deploy"])
    return Error(Code::kInvalidArgument,
                 std::string(source) + ": no 'deploy' section: add deploy.layers (name, cluster, nodes, "
                                       "peers_per_node) and deploy.walltime (docs/grid5000.md)");
  try {
    return parse_section(source, root["deploy"]);
  } catch (const YAML::Exception& e) {
    return Error(Code::kInvalidArgument, std::string(source) + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

std::vector<int> peers_per_layer(const Spec& spec, int peer_count) {
  std::vector<int> out;
  int left = peer_count;
  for (const auto& l : spec.layers) {
    int n = std::min(left, l.nodes * l.peers_per_node);
    out.push_back(n);
    left -= n;
  }
  return out;
}

std::vector<Placement> place_peers(const Spec& spec, int peer_count) {
  std::vector<Placement> out;
  const std::vector<int> per = peers_per_layer(spec, peer_count);
  int id = 0;
  for (size_t li = 0; li < spec.layers.size(); ++li) {
    const int ppn = spec.layers[li].peers_per_node;
    for (int k = 0; k < per[li]; ++k, ++id)
      out.push_back({id, static_cast<int>(li), k / ppn, k % ppn, spec.base_port + k % ppn});
  }
  return out;
}

Status check_spec(const ExperimentConfig& cfg, Spec& spec) {
  if (cfg.peers.transport != "ucx")
    return Error(Code::kInvalidArgument, "deploy: peers.transport is '" + cfg.peers.transport +
                                             "'; peers on separate nodes need ucx");
  int capacity = 0;
  std::string parts;
  for (const auto& l : spec.layers) {
    capacity += l.nodes * l.peers_per_node;
    parts += (parts.empty() ? "" : " + ") + l.name + " " + std::to_string(l.nodes) + " nodes x " +
             std::to_string(l.peers_per_node);
  }
  if (cfg.peers.count > capacity)
    return Error(Code::kInvalidArgument,
                 "deploy.layers: peers.count is " + std::to_string(cfg.peers.count) + " but the layers hold " +
                     std::to_string(capacity) + " peers (" + parts + "): more peers than fit; add nodes or "
                     "raise peers_per_node");
  const std::vector<int> per = peers_per_layer(spec, cfg.peers.count);
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const Layer& l = spec.layers[i];
    const int used = (per[i] + l.peers_per_node - 1) / l.peers_per_node;
    if (used < l.nodes)
      return Error(Code::kInvalidArgument,
                   "deploy.layers[" + std::to_string(i) + "].nodes: " + l.name + " reserves " +
                       std::to_string(l.nodes) + " nodes but only " + std::to_string(used) +
                       " get a peer (peers.count " + std::to_string(cfg.peers.count) +
                       ", dealt layer by layer); lower nodes or peers_per_node");
    if (spec.base_port + l.peers_per_node - 1 > 65535)
      return Error(Code::kInvalidArgument, "deploy.base_port: " + std::to_string(spec.base_port) + " + " +
                                               std::to_string(l.peers_per_node) + " peers per node passes 65535");
  }
  if (cfg.duration_s > 0 && walltime_seconds(spec.walltime) < cfg.duration_s)
    return Error(Code::kInvalidArgument, "deploy.walltime: " + spec.walltime + " is shorter than run.duration_s (" +
                                             cfg.flat.at("run.duration_s") + " s)");
  if (spec.job_name.empty()) spec.job_name = cfg.name;
  auto add_type = [&](const std::string& t) {
    if (std::find(spec.job_type.begin(), spec.job_type.end(), t) == spec.job_type.end()) spec.job_type.push_back(t);
  };
  for (const auto& l : spec.layers)
    if (const KnownCluster* c = known_cluster(l.cluster); c && c->exotic) add_type("exotic");
  if (!spec.env_name.empty()) add_type("deploy");  // kadeploy images need a deploy job
  return Ok();
}

Result<std::vector<File>> make_scenario(const ExperimentConfig& cfg, const Spec& spec,
                                        std::string_view config_text,
                                        const std::vector<std::string>& overrides) {
  Spec s = spec;
  MYCEL_CHECK(check_spec(cfg, s));
  std::vector<File> files;
  files.push_back({"layers_services.yaml", layers_services_yaml(cfg, s)});
  files.push_back({"network.yaml", network_yaml(s)});
  files.push_back({"workflow.yaml", workflow_yaml(cfg, s)});
  files.push_back({"workflow_env.yaml", workflow_env_yaml(cfg)});
  files.push_back({"artifacts/experiment.yaml", std::string(config_text)});
  files.push_back({"artifacts/launch-peers.sh", launch_script(cfg, s, overrides), true});
  return files;
}

}  // namespace mycel::runtime::deploy
