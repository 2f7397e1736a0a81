#include "runtime/control/client.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "runtime/config/config.h"
#include "runtime/control/server.h"

namespace mycel::control {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

Result<Endpoint> parse_address(std::string a) {
  if (a.starts_with("http://")) a = a.substr(7);
  while (!a.empty() && a.back() == '/') a.pop_back();
  if (a.size() > 2 && a.front() == '[') {  // [::1]:PORT
    auto close = a.find(']');
    if (close == std::string::npos || close + 1 >= a.size() || a[close + 1] != ':')
      return Error(Code::kInvalidArgument, "bad address '" + a + "'");
    Endpoint e;
    e.host = a.substr(1, close - 1);
    try {
      e.port = std::stoi(a.substr(close + 2));
    } catch (...) {
      return Error(Code::kInvalidArgument, "bad port in '" + a + "'");
    }
    return e;
  }
  MYCEL_ASSIGN_OR_RETURN(auto hp, runtime::parse_host_port(a));
  if (hp.second == 0) return Error(Code::kInvalidArgument, "address '" + a + "' has port 0");
  Endpoint e;
  e.host = hp.first;
  e.port = hp.second;
  return e;
}

}  // namespace

std::string Endpoint::label() const {
  return peer >= 0 ? "peer " + std::to_string(peer) : host + ":" + std::to_string(port);
}

Result<std::vector<Endpoint>> find_endpoints(const std::string& target, const std::string& token_override) {
  std::vector<Endpoint> out;
  std::error_code ec;
  if (fs::is_directory(target, ec)) {
    for (const auto& d : fs::directory_iterator(target, ec)) {
      const std::string n = d.path().filename().string();
      if (!n.starts_with("control-") || !n.ends_with(".json")) continue;
      std::ifstream f(d.path());
      std::stringstream ss;
      ss << f.rdbuf();
      json j = json::parse(ss.str(), nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("url") || !j["url"].is_string()) continue;
      auto e = parse_address(j["url"].get<std::string>());
      if (!e) continue;
      e->peer = j.value("peer", -1);
      if (!token_override.empty()) {
        e->token = token_override;
      } else if (j.contains("token_file") && j["token_file"].is_string() && !j["token_file"].get<std::string>().empty()) {
        auto t = load_or_create_token(j["token_file"].get<std::string>(), "");
        if (t) e->token = *t;
      } else if (auto t = load_or_create_token(target + "/control.token", ""); t) {
        e->token = *t;
      }
      out.push_back(std::move(e).value());
    }
    std::sort(out.begin(), out.end(), [](const Endpoint& a, const Endpoint& b) { return a.peer < b.peer; });
    if (out.empty())
      return Error(Code::kNotFound, "no control-ID.json in " + target +
                                        " (is it a run folder of `mycel run` whose peers serve a control endpoint?)");
    return out;
  }
  MYCEL_ASSIGN_OR_RETURN(auto e, parse_address(target));
  e.token = token_override;
  out.push_back(std::move(e));
  return out;
}

std::string file_sd_targets(const std::string& run_dir) {
  json targets = json::array();
  if (auto eps = find_endpoints(run_dir); eps) {
    const std::string run = fs::path(run_dir).filename().empty() ? fs::path(run_dir).parent_path().filename().string()
                                                                  : fs::path(run_dir).filename().string();
    for (const auto& e : *eps) {
      std::string host = e.host.find(':') != std::string::npos ? "[" + e.host + "]" : e.host;
      targets.push_back({{"targets", {host + ":" + std::to_string(e.port)}},
                         {"labels", {{"mycel_peer", std::to_string(e.peer)}, {"mycel_run", run}}}});
    }
  }
  return targets.dump(2) + "\n";
}

std::string Reply::why() const {
  if (status == 0) return error.empty() ? "no answer" : error;
  json j = json::parse(body, nullptr, false);
  std::string msg = !j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string()
                        ? j["error"].get<std::string>()
                        : body.substr(0, 200);
  return "HTTP " + std::to_string(status) + (msg.empty() ? "" : ": " + msg);
}

Reply request(const Endpoint& e, const std::string& method, const std::string& path, const std::string& body,
              double timeout_s) {
  httplib::Client cli(e.host, e.port);
  const auto sec = static_cast<time_t>(timeout_s);
  const auto usec = static_cast<time_t>((timeout_s - static_cast<double>(sec)) * 1e6);
  cli.set_connection_timeout(sec, usec);
  cli.set_read_timeout(sec, usec);
  cli.set_write_timeout(sec, usec);
  httplib::Headers h;
  if (!e.token.empty()) h.emplace("Authorization", "Bearer " + e.token);
  if (method != "GET" && method != "PUT" && method != "POST") return Reply{0, "", "unknown method " + method};
  httplib::Result r = method == "GET" ? cli.Get(path, h)
                      : method == "PUT" ? cli.Put(path, h, body, "application/json")
                                        : cli.Post(path, h, body, "application/json");
  Reply out;
  if (!r) {
    out.error = "cannot reach " + e.host + ":" + std::to_string(e.port) + " (" + httplib::to_string(r.error()) + ")";
    return out;
  }
  out.status = r->status;
  out.body = r->body;
  return out;
}

}  // namespace mycel::control
