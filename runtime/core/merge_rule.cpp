#include "runtime/core/merge_rule.h"

#include <algorithm>
#include <map>
#include <mutex>

namespace mycel::runtime {
namespace {

struct Entry {
  std::string help;
  MergeRuleFactory factory;
};

std::map<std::string, Entry, std::less<>>& registry() {
  static std::map<std::string, Entry, std::less<>> r;
  return r;
}
std::mutex& registry_mu() {
  static std::mutex mu;
  return mu;
}

}  // namespace

bool register_merge_rule(std::string name, std::string help, MergeRuleFactory factory) {
  std::lock_guard lk(registry_mu());
  return registry().emplace(std::move(name), Entry{std::move(help), std::move(factory)}).second;
}

Result<std::unique_ptr<MergeRule>> make_merge_rule(std::string_view name) {
  std::lock_guard lk(registry_mu());
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& [n, _] : registry()) known += (known.empty() ? "" : ", ") + n;
    return Error(Code::kInvalidArgument,
                 "unknown merge rule '" + std::string(name) + "' (known: " + known + ")");
  }
  return it->second.factory();
}

std::vector<std::pair<std::string, std::string>> merge_rules() {
  std::lock_guard lk(registry_mu());
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [n, e] : registry()) out.emplace_back(n, e.help);
  return out;
}

}  // namespace mycel::runtime
