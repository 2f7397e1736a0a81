// The mycel command line: one binary, subcommands (CLI11).
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/log.h"
#include "common/version.h"
#include "kernels/device.h"
#if MYCEL_BLAS_IS_OPENBLAS
#include <cblas.h>
#endif
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

// The global options (--device, --threads, --log-level) are accepted before or after the
// subcommand, at any depth ("mycel bench merge --device cpu" as well as
// "mycel --device cpu bench merge"), and every subcommand's --help lists them. Each
// subcommand gets its own copy of the options, bound to the same variables; a subcommand that
// defines one itself (mycel train --device) keeps its own.
struct Globals {
  std::string* log_level;
  mycel::cli::Common* common;
};

void add_global_options(CLI::App& app, const Globals& g, bool top) {
  auto* grp = app.add_option_group("Global options", "accepted before or after the subcommand");
  if (!app.get_option_no_throw("--log-level")) {
    auto* o = grp->add_option("--log-level", *g.log_level,
                              "log levels: LEVEL or LEVEL,SUBSYSTEM=LEVEL,... (trace debug info warn error "
                              "off); also from MYCEL_LOG");
    if (top) o->envname("MYCEL_LOG");
  }
  if (!app.get_option_no_throw("--device"))
    grp->add_option("--device", g.common->device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  if (!app.get_option_no_throw("--threads"))
    grp->add_option("--threads", g.common->threads, "CPU threads (0: all cores)")->capture_default_str();
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    if (!dynamic_cast<CLI::Option_group*>(sub)) add_global_options(*sub, g, false);
}

}  // namespace

// Debian's OpenBLAS picks its kernels at load time from the CPU model, and on CPUs it does not
// know by model number (virtual machines report a generic "Intel Xeon Processor") it falls back
// to its SSE3 kernels (Prescott) even where AVX-512 or AVX2 are there: 2.6-3x slower GEMMs (MLP
// training on one thread: 0.67-0.80 s of CPU against 0.25 s with the SkylakeX kernels, same
// run). It reads OPENBLAS_CORETYPE only when it loads, before main: so when it chose Prescott,
// the CPU has better, and nobody set OPENBLAS_CORETYPE, set it from the CPU's features and run
// this program again (once; the variable is then set, and peers started by `mycel run` inherit
// it). MYCEL_OPENBLAS_CORE=keep turns this off.
void choose_blas_kernels(char** argv) {
#if defined(__x86_64__) && MYCEL_BLAS_IS_OPENBLAS
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("MYCEL_OPENBLAS_CORE")) return;
  const char* name = openblas_get_corename();
  if (!name || std::string(name) != "Prescott") return;
  __builtin_cpu_init();
  const char* core = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                     : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? "Haswell"
                     : __builtin_cpu_supports("avx") ? "Sandybridge"
                                                     : nullptr;
  if (!core) return;
  setenv("OPENBLAS_CORETYPE", core, 1);
  execv("/proc/self/exe", argv);  // returns only on failure: go on with the kernels we have
#else
  (void)argv;
#endif
}

int main(int argc, char** argv) {
  choose_blas_kernels(argv);
  mycel::log::init_from_env();
  CLI::App app{"mycel: a peer runtime for decentralized learning (gossip learning) on GPUs and CPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text());
  std::string log_level;
  mycel::cli::Common common;
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
  mycel::cli::add_bench_data(*bench, common);
  mycel::cli::add_bench_sim(*bench, common);
  mycel::cli::add_bench_checkpoint(*bench, common);

  mycel::cli::add_config_command(app, common);
  mycel::cli::add_run_commands(app, common);
  mycel::cli::add_keygen_command(app, common);
  mycel::cli::add_data_commands(app, common);
  mycel::cli::add_train_command(app, common);
  mycel::cli::add_deploy_command(app, common);
  mycel::cli::add_sim_command(app, common);
  mycel::cli::add_ctl_command(app, common);
  mycel::cli::add_top_command(app, common);
  add_global_options(app, Globals{&log_level, &common}, true);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
