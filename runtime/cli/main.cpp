// The mycel command line: one binary, subcommands (CLI11).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "common/log.h"
#include "common/version.h"
#include "kernels/device.h"
#include "runtime/cli/commands.h"

namespace {

std::string version_text() {
  std::string v = std::string("mycel ") + MYCEL_VERSION + " (commit " + MYCEL_GIT_COMMIT + ")\nbackends: cpu";
  if (MYCEL_BUILD_CUDA) v += std::string(", cuda (sm ") + MYCEL_CUDA_ARCHS + ")";
  if (MYCEL_BUILD_CUBLAS) v += ", cublas";
  if (MYCEL_BUILD_NCCL) v += ", nccl";
  v += MYCEL_BUILD_UCX ? "\ntransports: inproc, ucx" : "\ntransports: inproc";
  std::string why;
  int gpus = mycel::cuda_device_count(&why);
  v += "\ngpus visible: " + std::to_string(gpus);
  if (gpus == 0) v += " (" + why + ")";
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  mycel::log::init_from_env();
  CLI::App app{"mycel: a peer runtime for decentralized learning (gossip learning) on GPUs and CPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text());
  std::string log_level;
  app.add_option("--log-level", log_level,
                 "log levels: LEVEL or LEVEL,SUBSYSTEM=LEVEL,... (trace debug info warn error off); "
                 "also from MYCEL_LOG")
      ->envname("MYCEL_LOG");
  mycel::cli::Common common;
  app.add_option("--device", common.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--threads", common.threads, "CPU threads (0: all cores)")->capture_default_str();
  app.parse_complete_callback([&] {
    if (!log_level.empty() && !mycel::log::set_levels(log_level))
      throw CLI::ValidationError("--log-level", "malformed level spec '" + log_level + "'");
  });

  auto* bench = app.add_subcommand("bench", "benchmarks: bytes moved per second against a peak measured in the same run");
  bench->require_subcommand(1);
  mycel::cli::add_bench_merge(*bench, common);
  mycel::cli::add_bench_codec(*bench, common);
  mycel::cli::add_bench_transport(*bench, common);
  mycel::cli::add_bench_train(*bench, common);

  mycel::cli::add_config_command(app, common);
  mycel::cli::add_run_commands(app, common);
  mycel::cli::add_data_commands(app, common);
  mycel::cli::add_train_command(app, common);
  mycel::cli::add_deploy_command(app, common);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
