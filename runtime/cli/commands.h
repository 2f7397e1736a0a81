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

}  // namespace mycel::cli
