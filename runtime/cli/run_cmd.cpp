// `mycel peer` (one peer, as on a Jetson or a Grid'5000 node) and `mycel run` (a local swarm).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/log.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/quickstart_yaml.h"
#include "runtime/config/config.h"
#include "runtime/driver/live_peer.h"
#include "runtime/driver/swarm.h"

namespace mycel::cli {
namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop.store(true); }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Over RLIMIT_FSIZE a write fails with EFBIG (checked, reported) instead of killing the peer.
  signal(SIGXFSZ, SIG_IGN);
}

[[noreturn]] void fail(const char* cmd, const Status& s, int code = 2) {
  std::fprintf(stderr, "mycel %s: %s\n", cmd, s.message().c_str());
  throw CLI::RuntimeError(code);
}

}  // namespace

void add_run_commands(CLI::App& app, Common& common) {
  // ---- mycel peer ----
  struct PeerOpts {
    std::string config, listen, seeds, peers, out, resume;
    int id = 0;
    std::vector<std::string> sets;
  };
  auto po = std::make_shared<PeerOpts>();
  auto* peer = app.add_subcommand("peer", "run one peer of an experiment (one per process / host)");
  peer->add_option("--config", po->config, "experiment config (YAML)")->required();
  peer->add_option("--id", po->id, "peer index: its data shard and sender id")->required();
  peer->add_option("--listen", po->listen, "address to listen at, e.g. ucx://0.0.0.0:13337 "
                                           "(default: peers.addresses[id])");
  peer->add_option("--seeds", po->seeds, "bootstrap peers, comma separated (default: peers.addresses)");
  peer->add_option("--peers", po->peers, "every peer's address in id order, comma separated, for "
                                         "dpsgd and fedavg (default: peers.addresses)");
  peer->add_option("--out", po->out, "folder for peer-ID.csv / .json (default: the config's output)");
  peer->add_option("--set", po->sets, "KEY=VALUE config overrides");
  peer->add_option("--resume", po->resume, "go on from the newest whole checkpoint of this peer in DIR (a damaged "
                                           "one is skipped for the one before; says which it used)");
  peer->callback([po, &common] {
    auto cfg = runtime::load_config(po->config);
    if (cfg && !po->sets.empty()) cfg = runtime::apply_overrides(*cfg, po->sets);
    if (!cfg) fail("peer", cfg.status());
    if (common.device != "auto") cfg->device = common.device;
    if (Status s = runtime::check_experiment(*cfg); !s.is_ok()) fail("peer", s);
    if (po->id < 0 || po->id >= cfg->peers.count)
      fail("peer", Error(Code::kInvalidArgument, "--id " + std::to_string(po->id) + " is outside 0.." +
                                                     std::to_string(cfg->peers.count - 1) + " (peers.count)"));
    if (common.device != "auto") cfg->device = common.device;
    runtime::PeerArgs a;
    a.cfg = *cfg;
    a.id = po->id;
    a.listen = po->listen;
    if (a.listen.empty()) {
      if (cfg->peers.addresses.empty())
        fail("peer", Error(Code::kInvalidArgument, "--listen is required when peers.addresses is empty"));
      a.listen = cfg->peers.addresses[static_cast<size_t>(po->id)];
    }
    a.seeds = po->seeds.empty() ? cfg->peers.addresses : runtime::split_list(po->seeds);
    a.peers = po->peers.empty() ? cfg->peers.addresses : runtime::split_list(po->peers);
    if ((cfg->protocol.name == "dpsgd" || cfg->protocol.name == "fedavg") &&
        static_cast<int>(a.peers.size()) != cfg->peers.count)
      fail("peer", Error(Code::kInvalidArgument, cfg->protocol.name + " needs every peer's address: --peers or "
                                                 "peers.addresses with peers.count entries"));
    a.out_dir = po->out.empty() ? cfg->output : po->out;
    a.threads = common.threads;
    a.resume_dir = po->resume;
    install_stop_handlers();
    Status s = runtime::run_peer(a, &g_stop);
    if (!s.is_ok()) fail("peer", s);
  });

  // ---- mycel run ----
  struct RunOpts {
    std::string config;
    std::vector<std::string> sets;
    int threads_per_peer = 0;
    std::string peer_log = "warn";
    bool no_control = false;
    std::string resume;
  };
  auto ro = std::make_shared<RunOpts>();
  auto* run = app.add_subcommand("run", "run an experiment as a local swarm of peer processes "
                                        "(no CONFIG: the embedded examples/quickstart.yaml)");
  run->add_option("config", ro->config, "experiment config (YAML)");
  run->add_option("--set", ro->sets, "KEY=VALUE config overrides, e.g. --set run.duration_s=60");
  run->add_option("--peer-threads", ro->threads_per_peer, "CPU threads per peer (0: cores / peers)");
  run->add_option("--peer-log-level", ro->peer_log, "log level of the peers (logs in the run folder)")
      ->capture_default_str();
  run->add_option("--resume", ro->resume,
                  "restart the swarm of RUN_DIR (a run folder): every peer goes on from its newest whole checkpoint "
                  "(the config and overrides come from RUN_DIR unless given; checkpoint.every_s must have been on)");
  run->add_flag("--no-control", ro->no_control,
                "no control endpoints (by default each peer serves one on loopback; docs/control.md)");
  run->callback([ro, &common] {
    std::string path = ro->config;
    Result<runtime::ExperimentConfig> cfg = Error(Code::kInternal, "unset");
    std::vector<std::string> sets = ro->sets;
    if (!ro->resume.empty() && path.empty()) {
      // The run folder holds the config and overrides it was started with; --set adds to them.
      path = ro->resume + "/config.yaml";
      if (!std::filesystem::exists(path))
        fail("run", Error(Code::kNotFound, ro->resume + " has no config.yaml: is it a run folder? (or give the CONFIG)"));
      std::ifstream ov(ro->resume + "/overrides.txt");
      std::vector<std::string> saved;
      for (std::string line; std::getline(ov, line);)
        if (!line.empty()) saved.push_back(line);
      sets.insert(sets.begin(), saved.begin(), saved.end());
    }
    if (path.empty()) {
      cfg = runtime::parse_config(kQuickstartYaml, "examples/quickstart.yaml (embedded)");
    } else {
      cfg = runtime::load_config(path);
    }
    if (cfg && !sets.empty()) cfg = runtime::apply_overrides(*cfg, sets);
    if (!cfg) fail("run", cfg.status());
    if (Status s = runtime::check_experiment(*cfg); !s.is_ok()) fail("run", s);
    if (path.empty()) {  // the peers read the embedded default from a file in the output folder
      std::filesystem::create_directories(cfg->output);
      path = cfg->output + "/quickstart.yaml";
      std::ofstream(path) << kQuickstartYaml;
    }
    runtime::SwarmOptions so;
    so.config_path = path;
    so.overrides = sets;
    so.resume_dir = ro->resume;
    if (common.device != "auto") so.overrides.push_back("device=" + common.device);
    so.cfg = *cfg;
    so.threads_per_peer = ro->threads_per_peer;
    so.log_level = ro->peer_log;
    install_stop_handlers();
    so.control = !ro->no_control;
    auto sum = runtime::run_swarm(so, &g_stop);
    if (!sum) fail("run", sum.status(), 1);
    std::printf("%s", runtime::format_summary(*sum).c_str());
    std::fflush(stdout);
    if (!sum->failed.empty()) {
      std::string names;
      for (const auto& f : sum->failed) names += "\n  " + f;
      fail("run", Error(Code::kInternal, std::to_string(sum->failed.size()) + " of " + std::to_string(sum->peers) +
                                             " peers failed (logs in " + sum->run_dir + "):" + names),
           1);
    }
  });
}

}  // namespace mycel::cli
