// Thin wrapper over spdlog: one logger per subsystem ("core", "kernels", "models",
// "transport", "runtime", "bench"), levels settable by flag (--log-level) and by the
// environment (MYCEL_LOG="info" or "warn,transport=debug"). Messages are lower case.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mycel::log {

// The logger of one subsystem, created on first use with the configured level.
spdlog::logger& get(std::string_view subsystem);

// Apply a level spec: "debug" sets every logger; "info,transport=trace" sets the default and
// one subsystem. Returns false (and changes nothing) on a malformed spec.
bool set_levels(std::string_view spec);

// Reads MYCEL_LOG once; called by the command line before anything logs.
void init_from_env();

// Test helper: while alive, every message of every subsystem is also kept in memory.
class Capture {
 public:
  Capture();
  ~Capture();
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;
  std::vector<std::string> lines() const;
  bool contains(std::string_view needle) const;

 private:
  std::shared_ptr<void> sink_;
};

}  // namespace mycel::log

#define MYCEL_LOG_TRACE(sub, ...) ::mycel::log::get(sub).trace(__VA_ARGS__)
#define MYCEL_LOG_DEBUG(sub, ...) ::mycel::log::get(sub).debug(__VA_ARGS__)
#define MYCEL_LOG_INFO(sub, ...) ::mycel::log::get(sub).info(__VA_ARGS__)
#define MYCEL_LOG_WARN(sub, ...) ::mycel::log::get(sub).warn(__VA_ARGS__)
#define MYCEL_LOG_ERROR(sub, ...) ::mycel::log::get(sub).error(__VA_ARGS__)
