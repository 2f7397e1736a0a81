// `mycel config`: print every experiment key with its default and meaning, or check a file.
#include <cstdio>
#include <iostream>

#include "runtime/cli/commands.h"
#include "runtime/config/config.h"

namespace mycel::cli {

void add_config_command(CLI::App& app, Common&) {
  auto* cmd = app.add_subcommand("config", "experiment configs: list the keys and defaults, or check a file");
  auto defaults = std::make_shared<bool>(false);
  auto markdown = std::make_shared<bool>(false);
  auto check = std::make_shared<std::string>();
  auto sets = std::make_shared<std::vector<std::string>>();
  cmd->add_flag("--defaults", *defaults, "print every key with its default and meaning");
  cmd->add_flag("--markdown", *markdown, "with --defaults: as a markdown table (docs/config.md)");
  auto* check_opt = cmd->add_option("--check", *check, "validate a YAML config and print its resolved values");
  cmd->add_option("--set", *sets, "KEY=VALUE overrides applied after the file (with --check)");
  cmd->callback([=] {
    if (check_opt->count() > 0) {
      auto c = runtime::load_config(*check);
      if (c && !sets->empty()) c = runtime::apply_overrides(*c, *sets);
      if (!c) {
        std::fprintf(stderr, "mycel config: %s\n", c.status().message().c_str());
        throw CLI::RuntimeError(2);
      }
      if (Status s = runtime::check_experiment(*c); !s.is_ok()) {
        std::fprintf(stderr, "mycel config: %s: %s\n", check->c_str(), s.message().c_str());
        throw CLI::RuntimeError(2);
      }
      for (const auto& [k, v] : c->flat) std::printf("%s: %s\n", k.c_str(), v.c_str());
      return;
    }
    if (!*defaults) {
      std::cout << cmd->help();
      return;
    }
    std::cout << runtime::describe_schema(*markdown);
  });
}

}  // namespace mycel::cli
