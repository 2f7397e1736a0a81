#include "common/log.h"

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace mycel::log {
namespace {

struct State {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<spdlog::logger>, std::less<>> loggers;
  std::map<std::string, spdlog::level::level_enum, std::less<>> levels;
  spdlog::level::level_enum default_level = spdlog::level::info;
  spdlog::sink_ptr console;
  std::vector<spdlog::sink_ptr> extra;
};

State& state() {
  static State* s = [] {
    auto* st = new State;  // leaked on purpose: loggers outlive static destructors
    st->console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    st->console->set_pattern("[%H:%M:%S.%e] [%n] [%^%l%$] %v");
    return st;
  }();
  return *s;
}

bool parse_level(std::string_view s, spdlog::level::level_enum* out) {
  auto lv = spdlog::level::from_str(std::string(s));
  if (lv == spdlog::level::off && s != "off") return false;
  *out = lv;
  return true;
}

}  // namespace

spdlog::logger& get(std::string_view subsystem) {
  State& st = state();
  std::lock_guard lk(st.mu);
  auto it = st.loggers.find(subsystem);
  if (it != st.loggers.end()) return *it->second;
  std::vector<spdlog::sink_ptr> sinks{st.console};
  sinks.insert(sinks.end(), st.extra.begin(), st.extra.end());
  auto lg = std::make_shared<spdlog::logger>(std::string(subsystem), sinks.begin(), sinks.end());
  auto lv = st.levels.find(subsystem);
  lg->set_level(lv != st.levels.end() ? lv->second : st.default_level);
  auto [pos, _] = st.loggers.emplace(std::string(subsystem), lg);
  return *pos->second;
}

bool set_levels(std::string_view spec) {
  spdlog::level::level_enum def = state().default_level;
  std::map<std::string, spdlog::level::level_enum, std::less<>> per;
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string_view::npos) end = spec.size();
    std::string_view item = spec.substr(start, end - start);
    if (!item.empty()) {
      size_t eq = item.find('=');
      spdlog::level::level_enum lv;
      if (eq == std::string_view::npos) {
        if (!parse_level(item, &lv)) return false;
        def = lv;
      } else {
        if (!parse_level(item.substr(eq + 1), &lv) || eq == 0) return false;
        per[std::string(item.substr(0, eq))] = lv;
      }
    }
    start = end + 1;
  }
  State& st = state();
  std::lock_guard lk(st.mu);
  st.default_level = def;
  for (auto& [k, v] : per) st.levels[k] = v;
  for (auto& [name, lg] : st.loggers) {
    auto lv = st.levels.find(name);
    lg->set_level(lv != st.levels.end() ? lv->second : def);
  }
  return true;
}

void init_from_env() {
  if (const char* e = std::getenv("MYCEL_LOG"); e && *e) {
    if (!set_levels(e)) get("core").warn("ignoring malformed MYCEL_LOG='{}'", e);
  }
}

Capture::Capture() {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
  sink->set_pattern("[%n] [%l] %v");
  State& st = state();
  std::lock_guard lk(st.mu);
  st.extra.push_back(sink);
  for (auto& [_, lg] : st.loggers) lg->sinks().push_back(sink);
  sink_ = sink;
}

Capture::~Capture() {
  auto sink = std::static_pointer_cast<spdlog::sinks::sink>(sink_);
  State& st = state();
  std::lock_guard lk(st.mu);
  std::erase(st.extra, sink);
  for (auto& [_, lg] : st.loggers) std::erase(lg->sinks(), sink);
}

std::vector<std::string> Capture::lines() const {
  return std::static_pointer_cast<spdlog::sinks::ringbuffer_sink_mt>(sink_)->last_formatted();
}

bool Capture::contains(std::string_view needle) const {
  for (const auto& l : lines())
    if (l.find(needle) != std::string::npos) return true;
  return false;
}

}  // namespace mycel::log
