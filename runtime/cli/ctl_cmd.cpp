// `mycel ctl RUN_DIR|ADDR status|get|set K=V ...|stop|checkpoint|events`: the control endpoints
// of one peer, some peers or every peer of a run (docs/control.md).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/cli/commands.h"
#include "runtime/config/config.h"
#include "runtime/control/client.h"
#include "runtime/control/server.h"

namespace mycel::cli {
namespace {

using json = nlohmann::ordered_json;
std::atomic<bool> g_ctl_stop{false};
extern "C" void on_ctl_signal(int) { g_ctl_stop.store(true); }

struct CtlOpts {
  std::string target, command;
  std::vector<std::string> args;
  std::string peers;   // "0,2,5" (default: every peer of the run)
  std::string token, token_file;
  double timeout_s = 5;
  bool follow = false;
};

int run_ctl(const CtlOpts& o) {
  std::string token = o.token;
  if (token.empty() && !o.token_file.empty()) {
    auto t = control::load_or_create_token(o.token_file, "");
    if (!t) {
      std::fprintf(stderr, "mycel ctl: %s\n", t.status().message().c_str());
      return 2;
    }
    token = *t;
  }
  if (o.command == "targets") {  // the Prometheus file_sd list (docs/control.md)
    std::fputs(control::file_sd_targets(o.target).c_str(), stdout);
    return 0;
  }
  auto eps = control::find_endpoints(o.target, token);
  if (!eps) {
    std::fprintf(stderr, "mycel ctl: %s\n", eps.status().message().c_str());
    return 2;
  }
  if (!o.peers.empty()) {
    std::set<int> want;
    for (const auto& p : runtime::split_list(o.peers)) {
      try {
        want.insert(std::stoi(p));
      } catch (...) {
        std::fprintf(stderr, "mycel ctl: --peer '%s' is not a peer id\n", p.c_str());
        return 2;
      }
    }
    std::vector<control::Endpoint> keep;
    for (auto& e : *eps)
      if (want.count(e.peer)) keep.push_back(e);
    for (int w : want) {
      bool found = false;
      for (auto& e : keep) found |= e.peer == w;
      if (!found) {
        std::fprintf(stderr, "mycel ctl: peer %d has no control endpoint in %s\n", w, o.target.c_str());
        return 2;
      }
    }
    *eps = keep;
  }
  const bool many = eps->size() > 1;
  int failures = 0;
  auto refused = [&](const control::Endpoint& e, const control::Reply& r) {
    std::fprintf(stderr, "mycel ctl: %s refused: %s\n", e.label().c_str(), r.why().c_str());
    ++failures;
  };
  const std::string& c = o.command;
  if (c == "status") {
    json all = json::object();
    for (const auto& e : *eps) {
      auto r = control::request(e, "GET", "/status", "", o.timeout_s);
      if (!r.ok()) { refused(e, r); continue; }
      json j = json::parse(r.body, nullptr, false);
      if (!many) { std::printf("%s\n", j.dump(2).c_str()); continue; }
      all[std::to_string(e.peer)] = j;
    }
    if (many) std::printf("%s\n", all.dump(2).c_str());
  } else if (c == "get") {
    std::set<std::string> keys(o.args.begin(), o.args.end());
    for (const auto& e : *eps) {
      auto r = control::request(e, "GET", "/params", "", o.timeout_s);
      if (!r.ok()) { refused(e, r); continue; }
      json j = json::parse(r.body, nullptr, false);
      if (j.is_discarded() || !j.contains("params")) { refused(e, r); continue; }
      std::string pre = many ? e.label() + ": " : "";
      std::printf("%sversion %s\n", pre.c_str(), j["version"].dump().c_str());
      for (const auto& [k, v] : j["params"].items())
        if (keys.empty() || keys.count(k)) std::printf("%s%s=%s\n", pre.c_str(), k.c_str(), v.get<std::string>().c_str());
    }
  } else if (c == "set") {
    if (o.args.empty()) {
      std::fprintf(stderr, "mycel ctl set: give KEY=VALUE ..., e.g. codec.spec=topk:0.01 protocol.period_s=2\n");
      return 2;
    }
    json body = json::object();
    for (const auto& a : o.args) {
      auto eq = a.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "mycel ctl set: '%s': expected KEY=VALUE\n", a.c_str());
        return 2;
      }
      body[a.substr(0, eq)] = a.substr(eq + 1);
    }
    for (const auto& e : *eps) {
      auto r = control::request(e, "PUT", "/params", body.dump(), o.timeout_s);
      if (!r.ok()) { refused(e, r); continue; }
      json j = json::parse(r.body, nullptr, false);
      std::printf("%s: parameters version %s\n", e.label().c_str(),
                  j.is_discarded() ? "?" : j.value("version", json()).dump().c_str());
    }
  } else if (c == "stop" || c == "checkpoint") {
    for (const auto& e : *eps) {
      auto r = control::request(e, "POST", "/" + c, "", o.timeout_s);
      if (!r.ok()) { refused(e, r); continue; }
      std::printf("%s: %s\n", e.label().c_str(), r.body.c_str());
    }
  } else if (c == "events") {
    struct sigaction sa {};
    sa.sa_handler = on_ctl_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    std::vector<uint64_t> after(eps->size(), 0);
    do {
      for (size_t i = 0; i < eps->size() && !g_ctl_stop; ++i) {
        const auto& e = (*eps)[i];
        double wait = o.follow ? (many ? 0.2 : 2.0) : 0;
        auto r = control::request(e, "GET", "/events?after=" + std::to_string(after[i]) + "&wait_s=" + std::to_string(wait),
                                  "", o.timeout_s + wait);
        if (!r.ok()) {
          if (!o.follow) refused(e, r);
          continue;
        }
        json j = json::parse(r.body, nullptr, false);
        if (j.is_discarded() || !j.contains("events")) continue;
        if (j.value("dropped", 0) > 0)
          std::printf("%s: (%llu events dropped from the ring)\n", e.label().c_str(),
                      static_cast<unsigned long long>(j.value("dropped", 0ull)));
        for (const auto& ev : j["events"])
          std::printf("%s #%llu %.3f %s: %s\n", e.label().c_str(), static_cast<unsigned long long>(ev.value("seq", 0ull)),
                      ev.value("t", 0.0), ev.value("kind", std::string()).c_str(),
                      ev.value("message", std::string()).c_str());
        after[i] = j.value("next", after[i]);
        std::fflush(stdout);
      }
    } while (o.follow && !g_ctl_stop);
  } else {
    std::fprintf(stderr, "mycel ctl: unknown command '%s' (status, get, set, stop, checkpoint, events, targets)\n", c.c_str());
    return 2;
  }
  return failures ? 1 : 0;
}

}  // namespace

void add_ctl_command(CLI::App& app, Common&) {
  auto o = std::make_shared<CtlOpts>();
  auto* ctl = app.add_subcommand("ctl", "talk to running peers' control endpoints: status, get, set KEY=VALUE ..., "
                                        "stop, checkpoint, events (docs/control.md)");
  ctl->add_option("target", o->target, "a run folder (every peer's control-ID.json) or a peer's HOST:PORT")->required();
  ctl->add_option("command", o->command, "status | get [KEY...] | set KEY=VALUE ... | stop | checkpoint | events | targets")
      ->required();
  ctl->add_option("args", o->args, "keys (get) or KEY=VALUE changes (set)");
  ctl->add_option("--peer", o->peers, "only these peers of the run (ids, comma separated)");
  ctl->add_option("--token", o->token, "bearer token (default: the run folder's token file)")->envname("MYCEL_CONTROL_TOKEN");
  ctl->add_option("--token-file", o->token_file, "file holding the bearer token (mode 0600)");
  ctl->add_option("--timeout", o->timeout_s, "seconds to wait for each peer")->capture_default_str();
  ctl->add_flag("-f,--follow", o->follow, "events: keep following until Ctrl-C");
  ctl->callback([o] {
    int rc = run_ctl(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
