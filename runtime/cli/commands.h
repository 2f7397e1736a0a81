// Each subcommand is added by a function in the folder that owns it; main.cpp calls them.
#pragma once

#include <CLI/CLI.hpp>

namespace mycel::cli {

// Options every subcommand shares.
struct Common {
  std::string device = "auto";   // --device auto|cpu|cuda[:N]
  int threads = 0;               // --threads (0: all cores)
};

// bench/: `mycel bench merge`, `mycel bench codec`.
void add_bench_merge(CLI::App& bench, Common& common);
void add_bench_codec(CLI::App& bench, Common& common);
// bench/bench_transport.cpp: `mycel bench transport` (UCX vs ucx_perftest).
void add_bench_transport(CLI::App& bench, Common& common);

// runtime/cli/run_cmd.cpp: `mycel peer`, `mycel run`.
void add_run_commands(CLI::App& app, Common& common);

// runtime/cli/config_cmd.cpp: `mycel config`.
void add_config_command(CLI::App& app, Common& common);

// runtime/cli/keygen_cmd.cpp: `mycel keygen --out FILE [--id N]`.
void add_keygen_command(CLI::App& app, Common& common);

// runtime/cli/data_cmd.cpp: `mycel data info`, `mycel data partition`.
void add_data_commands(CLI::App& app, Common& common);

// runtime/cli/train_cmd.cpp: `mycel train`.
void add_train_command(CLI::App& app, Common& common);

// runtime/cli/deploy_cmd.cpp: `mycel deploy e2clab`.
void add_deploy_command(CLI::App& app, Common& common);

// runtime/cli/sim_cmd.cpp: `mycel sim`.
void add_sim_command(CLI::App& app, Common& common);
void add_bench_sim(CLI::App& bench, Common& common);
// runtime/cli/bench_ckpt_cmd.cpp: `mycel bench checkpoint` (checkpoint size and write time).
void add_bench_checkpoint(CLI::App& bench, Common& common);
// runtime/cli/ctl_cmd.cpp: `mycel ctl` (a run's control endpoints).
void add_ctl_command(CLI::App& app, Common& common);

// runtime/cli/top_cmd.cpp: `mycel top` (a live view of a running swarm).
void add_top_command(CLI::App& app, Common& common);

// bench/bench_train.cpp: `mycel bench train`.
void add_bench_train(CLI::App& bench, Common& common);

// bench/bench_data.cpp: `mycel bench data` (CSV loading speed).
void add_bench_data(CLI::App& bench, Common& common);

}  // namespace mycel::cli
