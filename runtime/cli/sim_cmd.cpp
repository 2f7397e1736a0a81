// `mycel sim CONFIG`: the experiment with simulated peers in virtual time (runtime/sim/).
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "runtime/cli/commands.h"
#include "runtime/config/config.h"
#include "runtime/sim/simulator.h"

namespace mycel::cli {

void add_sim_command(CLI::App& app, Common& common) {
  struct SimOpts {
    std::string config, out;
    std::vector<std::string> sets;
    bool quiet = false;
  };
  auto so = std::make_shared<SimOpts>();
  auto* sim = app.add_subcommand("sim", "simulate the experiment with peers in virtual time: the live peer's "
                                        "protocol engine over modelled links and churn (network.*, churn.*, sim.*)");
  sim->add_option("config", so->config, "experiment config (YAML)")->required();
  sim->add_option("--set", so->sets, "KEY=VALUE config overrides, e.g. --set peers.count=10000");
  sim->add_option("--out", so->out, "run folder (default: OUTPUT/NAME-sim-TIMESTAMP)");
  sim->add_flag("--quiet", so->quiet, "no progress line");
  sim->callback([so, &common] {
    auto cfg = runtime::load_config(so->config);
    if (cfg && !so->sets.empty()) cfg = runtime::apply_overrides(*cfg, so->sets);
    auto die = [](const Status& s) {
      std::fprintf(stderr, "mycel sim: %s\n", s.message().c_str());
      throw CLI::RuntimeError(2);
    };
    if (!cfg) die(cfg.status());
    if (Status s = runtime::check_experiment(*cfg); !s.is_ok()) die(s);
    runtime::sim::SimOptions opt;
    opt.threads = common.threads;
    opt.progress = !so->quiet;
    opt.out_dir = so->out;
    if (opt.out_dir.empty()) {
      char stamp[32];
      std::time_t now_t = std::time(nullptr);
      std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now_t));
      opt.out_dir = cfg->output + "/" + cfg->name + "-sim-" + stamp;
    }
    std::error_code ec;
    std::filesystem::create_directories(opt.out_dir, ec);
    if (ec) die(Error(Code::kIo, "cannot create " + opt.out_dir + ": " + ec.message()));
    {
      std::ofstream resolved(opt.out_dir + "/config.resolved.txt");
      for (const auto& [k, v] : cfg->flat) resolved << k << ": " << v << "\n";
    }
    auto r = runtime::sim::run_simulation(*cfg, opt);
    if (!r) {
      std::fprintf(stderr, "mycel sim: %s\n", r.status().message().c_str());
      throw CLI::RuntimeError(1);
    }
    std::printf("simulated %zu peers for %.0f s in %.2f s wall (%d threads): %.3g node-rounds/s, %.3g events/s\n",
                r->peers, r->sim_time_s, r->wall_s, r->threads,
                static_cast<double>(r->node_rounds) / std::max(r->wall_s, 1e-9),
                static_cast<double>(r->events) / std::max(r->wall_s, 1e-9));
    std::printf("final mean accuracy %.4f over %zu evaluated of %zu online peers; %llu bytes sent; results in %s\n",
                r->final_accuracy(), r->curve.empty() ? size_t(0) : r->curve.back().evaluated,
                r->curve.empty() ? size_t(0) : r->curve.back().online,
                static_cast<unsigned long long>(r->bytes_sent), opt.out_dir.c_str());
  });
}

// `mycel bench sim`: the simulator's scale points (issue 11), one row each: node-rounds per
// second, memory per peer, and the split of wall time between training and the rest.
void add_bench_sim(CLI::App& bench, Common& common) {
  struct BenchOpts {
    std::string point = "all";
    double scale = 1.0;
    int threads = 0;
  };
  auto bo = std::make_shared<BenchOpts>();
  auto* b = bench.add_subcommand("sim", "the simulator at scale: 10,000 and 100,000 logistic-regression peers on "
                                        "Spambase, 1,000 MLP peers on Fashion-MNIST");
  b->add_option("--point", bo->point, "spambase-10k | spambase-100k | mlp-1k | all")->capture_default_str();
  b->add_option("--scale", bo->scale, "fraction of each point's cycles to run (quick checks)")->capture_default_str();
  b->callback([bo, &common] {
    struct Point {
      const char* name;
      size_t peers;
      int cycles;
      const char* yaml;
    };
    // Full model exchange (fp32), a view of 8, one local step per period and per merge,
    // evaluation of 100 sampled online peers every 10 cycles.
    const char* kLogreg = R"(name: bench-sim
data: {dataset: spambase, partition: iid}
model: logreg
train: {batch: 10, lr: 0.1, local_steps: 1}
protocol: {name: gossip, period_s: 1, view_size: 8}
codec: {spec: fp32}
network: {latency: 100ms}
eval: {every_s: 10, max_test: 0}
sim: {eval_peers: 100, csv_peers: 0}
run: {duration_s: 0, rounds: 1}
)";
    const char* kMlp = R"(name: bench-sim
data: {dataset: fashion-mnist, partition: iid}
model: mlp:200,200
train: {batch: 32, lr: 0.1, local_steps: 1}
protocol: {name: gossip, period_s: 1, view_size: 8}
codec: {spec: fp32}
network: {latency: 100ms}
eval: {every_s: 10, max_test: 1000}
sim: {eval_peers: 100, csv_peers: 0}
run: {duration_s: 0, rounds: 1}
)";
    const std::vector<Point> points = {{"spambase-10k", 10000, 1000, kLogreg},
                                       {"spambase-100k", 100000, 100, kLogreg},
                                       {"mlp-1k", 1000, 200, kMlp}};
    std::printf("%-14s %8s %7s %9s %9s %12s %10s %10s %10s %9s %8s\n", "point", "peers", "cycles", "wall_s", "setup_s",
                "node-rounds/s", "us/nr/core", "cpu_us/nr", "B/peer", "arena/peer", "train%");
    bool any = false;
    for (const auto& p : points) {
      if (bo->point != "all" && bo->point != p.name) continue;
      any = true;
      auto cfg = runtime::parse_config(p.yaml, "bench sim");
      if (!cfg) throw CLI::ValidationError("bench sim", cfg.status().message());
      const int cycles = std::max(1, static_cast<int>(p.cycles * bo->scale));
      cfg = runtime::apply_overrides(*cfg, {"peers.count=" + std::to_string(p.peers), "run.rounds=" + std::to_string(cycles)});
      if (!cfg) throw CLI::ValidationError("bench sim", cfg.status().message());
      runtime::sim::SimOptions opt;
      opt.threads = common.threads;
      auto r = runtime::sim::run_simulation(*cfg, opt);
      if (!r) {
        std::fprintf(stderr, "mycel bench sim: %s: %s\n", p.name, r.status().message().c_str());
        throw CLI::RuntimeError(1);
      }
      const double nrps = static_cast<double>(r->node_rounds) / std::max(r->wall_s, 1e-9);
      const double us_core = 1e6 * r->wall_s * r->threads / std::max<double>(1, static_cast<double>(r->node_rounds));
      // CPU time per node-round: what a node-round costs whatever else the cores were doing.
      const double cpu_us = 1e6 * r->cpu_s / std::max<double>(1, static_cast<double>(r->node_rounds));
      std::printf("%-14s %8zu %7d %9.2f %9.2f %12.4g %10.2f %10.2f %10zu %9zu %7.1f%%\n", p.name, r->peers, cycles,
                  r->wall_s, r->setup_s, nrps, us_core, cpu_us, r->bytes_per_peer, r->arena_bytes_per_peer,
                  100.0 * r->train_wall_s / std::max(1e-9, r->wall_s * r->threads));
      std::printf("  %s: %llu events, %llu node-rounds, %zu windows, final mean accuracy %.4f; gossipy's 0.84 ms "
                  "per node-round (issue 11, same machine kind) / ours per core = %.0fx (by CPU time: %.0fx)\n",
                  p.name, static_cast<unsigned long long>(r->events), static_cast<unsigned long long>(r->node_rounds),
                  r->windows, r->final_accuracy(), 840.0 / std::max(us_core, 1e-9), 840.0 / std::max(cpu_us, 1e-9));
      std::fflush(stdout);
    }
    if (!any) throw CLI::ValidationError("--point", "unknown point '" + bo->point + "'");
  });
}

}  // namespace mycel::cli
