// The client side of the control endpoint (runtime/control/server.h), shared by `mycel ctl`,
// `mycel top` and the tests: finding a run's peers (its control-ID.json files) and one
// request to one peer (cpp-httplib's client).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace mycel::control {

struct Endpoint {
  int peer = -1;          // the peer's id (-1: an address given by hand)
  std::string host;
  int port = 0;
  std::string token;      // "" when none is known
  std::string label() const;  // "peer 3" or "127.0.0.1:4242"
};

// TARGET is a run folder (every control-ID.json in it; the token from each one's token_file)
// or an address (http://HOST:PORT or HOST:PORT). A token given (token_override) is used for
// every endpoint. An empty run folder is an error naming it.
Result<std::vector<Endpoint>> find_endpoints(const std::string& target, const std::string& token_override = "");

// The Prometheus file_sd target list of a run folder, as JSON text: one entry per control-ID.json,
// labelled mycel_peer="ID" and mycel_run="FOLDER NAME" ("[]" when there is none yet).
std::string file_sd_targets(const std::string& run_dir);

struct Reply {
  int status = 0;         // the HTTP status; 0 when no answer came (error says why)
  std::string body;
  std::string error;
  bool ok() const { return status >= 200 && status < 300; }
  // "HTTP 400: key 'codec.spec': ..." (the server's "error" field when it sent one) or the
  // transport error.
  std::string why() const;
};

// method: GET, PUT or POST. The token is sent as a bearer token when there is one.
Reply request(const Endpoint& e, const std::string& method, const std::string& path, const std::string& body = "",
              double timeout_s = 5);

}  // namespace mycel::control
