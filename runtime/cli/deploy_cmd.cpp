// `mycel deploy e2clab CONFIG --out DIR`: writes the E2Clab scenario of an experiment
// (runtime/deploy/e2clab.h; docs/grid5000.md walks through a run).
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/cli/commands.h"
#include "runtime/config/config.h"
#include "runtime/deploy/e2clab.h"

namespace mycel::cli {
namespace {

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "mycel deploy e2clab: %s\n", msg.c_str());
  throw CLI::RuntimeError(2);
}

}  // namespace

void add_deploy_command(CLI::App& app, Common&) {
  auto* deploy = app.add_subcommand("deploy", "deployment descriptions for testbeds");
  deploy->require_subcommand(1);
  struct Opts {
    std::string config, out;
    std::vector<std::string> sets;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* e2 = deploy->add_subcommand(
      "e2clab", "write an E2Clab scenario for Grid'5000 (layers_services.yaml, network.yaml, workflow.yaml, "
                "workflow_env.yaml, artifacts/) from the config's deploy: section");
  e2->add_option("config", o->config, "experiment config (YAML) with a deploy: section")->required();
  e2->add_option("--out", o->out, "scenario folder to write")->required();
  e2->add_option("--set", o->sets, "KEY=VALUE experiment overrides (also passed to every peer)");
  e2->add_flag("--force", o->force, "overwrite the scenario files in a folder that has them");
  e2->callback([o] {
    std::ifstream f(o->config);
    if (!f) fail("cannot open config '" + o->config + "'");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    auto cfg = runtime::parse_config(text, o->config);
    if (cfg && !o->sets.empty()) cfg = runtime::apply_overrides(*cfg, o->sets);
    if (!cfg) fail(cfg.status().message());
    auto spec = runtime::deploy::parse_deploy(text, o->config);
    if (!spec) fail(spec.status().message());
    auto files = runtime::deploy::make_scenario(*cfg, *spec, text, o->sets);
    if (!files) fail(o->config + ": " + files.status().message());

    namespace fs = std::filesystem;
    const fs::path out(o->out);
    if (!o->force && fs::exists(out / "layers_services.yaml"))
      fail(o->out + " has a scenario already (layers_services.yaml); --force overwrites it");
    std::error_code ec;
    fs::create_directories(out / "artifacts", ec);
    if (ec) fail("cannot create " + (out / "artifacts").string() + ": " + ec.message());
    for (const auto& file : *files) {
      const fs::path p = out / file.path;
      std::ofstream w(p, std::ios::binary | std::ios::trunc);
      w << file.text;
      w.close();
      if (!w) fail("cannot write " + p.string());
      if (file.executable) ::chmod(p.c_str(), 0755);
      std::printf("wrote %s\n", p.string().c_str());
    }
    const auto placed = runtime::deploy::place_peers(*spec, cfg->peers.count);
    const auto per = runtime::deploy::peers_per_layer(*spec, cfg->peers.count);
    for (size_t i = 0; i < spec->layers.size(); ++i) {
      const auto& l = spec->layers[i];
      std::printf("layer %s: %d peers on %d %s node(s), %d per node, ports %d-%d\n", l.name.c_str(), per[i],
                  l.nodes, l.cluster.empty() ? "listed" : l.cluster.c_str(), l.peers_per_node, spec->base_port,
                  spec->base_port + l.peers_per_node - 1);
    }
    std::printf("%zu peers. Next: put mycel-src.tar.gz in %s/artifacts, then e2clab deploy %s %s/artifacts "
                "(docs/grid5000.md)\n",
                placed.size(), o->out.c_str(), o->out.c_str(), o->out.c_str());
  });
}

}  // namespace mycel::cli
