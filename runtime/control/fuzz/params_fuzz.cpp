// libFuzzer target for the control endpoint's PUT /params path (scripts/fuzz.sh runs it): the
// bytes are a request body given to control::parse_params_update, the function the server's
// handler calls with the live set in force (no socket). Properties checked on every input,
// beyond "no crash, no leak, no UB":
// - a refused body has a reason, and the key it names is one of the body's keys;
// - an accepted body gives a set the ParamStore takes (the same validation as a config file),
//   in which every live key the body did not name keeps its value;
// - the accepted set, written back as text (GET /params) and applied to the base, is the same set
//   (what `mycel ctl get` shows can be sent back with `mycel ctl set`).
// The base alternates between the defaults and a changed set (by the first byte's low bit, which
// is also part of the body), so that "keeps its value" is checked against values that differ.
// With MYCEL_FUZZ_WRITE_CORPUS=DIR set, it writes seed bodies (every live key, valid and
// invalid values, nested and malformed JSON) into DIR and exits instead of fuzzing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/fuzz_seeds.h"
#include "common/log.h"
#include "runtime/config/config.h"
#include "runtime/control/server.h"

namespace mc = mycel::control;
namespace mr = mycel::runtime;

namespace {

mr::RuntimeParams changed_base() {
  mr::RuntimeParams p;
  p.codec = "topk:0.1";
  p.error_feedback = false;
  p.period_s = 0.25;
  p.jitter = 0.3;
  p.fanout = 2;
  p.lr = 0.5;
  p.local_steps = 4;
  return p;
}

int write_corpus(const char* dir) {
  const std::vector<std::string> seeds = {
      R"({"codec.spec": "topk:0.01"})",
      R"({"codec.spec": "int8", "protocol.period_s": 2})",
      R"({"codec.spec": "fp16"})",
      R"({"codec.spec": "fp32"})",
      R"({"codec.error_feedback": false})",
      R"({"codec.error_feedback": "true"})",
      R"({"protocol.period_s": 0.5, "protocol.jitter": 0.2, "protocol.fanout": 3})",
      R"({"protocol.merge": "average"})",
      R"({"train.lr": 1e-3, "train.local_steps": 10})",
      R"({"train.lr": -1})",
      R"({"protocol.fanout": 1.5})",
      R"({"protocol.period_s": "NaN"})",
      R"({"codec.spec": "topk:2"})",
      R"({"seed": 3})",
      R"({"codec.spce": "int8"})",
      R"({"codec.spec": ["int8"]})",
      R"({"codec.spec": null})",
      R"({"codec.spec": {"a": 1}})",
      R"({})",
      R"([])",
      R"("codec.spec")",
      R"({"codec.spec": "int8",)",
      R"({"codec.spec": "int8", "codec.spec": "fp16"})",
      "{\"codec.spec\": \"\\u0000\"}",
      R"({"train.local_steps": 99999999999999999999999})",
  };
  return mycel::fuzz::write_seed_files(dir, seeds);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  return mycel::fuzz::initialize(write_corpus);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mr::RuntimeParams kBases[2] = {mr::RuntimeParams{}, changed_base()};
  const mr::RuntimeParams& base = kBases[size > 0 ? (data[0] & 1) : 0];
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const mc::ParamsUpdate u = mc::parse_params_update(body, base);

  if (!u.ok) {
    if (u.error.empty()) std::abort();
    if (!u.key.empty()) {
      bool named = false;
      for (const auto& c : u.changes) named = named || c.first == u.key;
      // A value of the wrong JSON type is refused before it joins `changes`: its key is then
      // the body's, found by parsing it again.
      if (!named) {
        auto j = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
        named = j.is_object() && j.contains(u.key);
      }
      if (!named) std::abort();
    }
    return 0;
  }
  if (u.changes.empty()) std::abort();
  mr::ParamStore store(base);
  if (!store.replace(u.params).is_ok()) std::abort();

  const auto before = mr::live_param_values(base);
  const auto after = mr::live_param_values(u.params);
  if (before.size() != after.size()) std::abort();
  for (size_t i = 0; i < after.size(); ++i) {
    bool named = false;
    for (const auto& c : u.changes) named = named || c.first == after[i].first;
    if (!named && after[i] != before[i]) std::abort();
  }
  auto again = mr::apply_param_changes(base, after);
  if (!again.is_ok() || mr::live_param_values(*again) != after) std::abort();
  return 0;
}
