#include "runtime/control/server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "common/log.h"

namespace mycel::control {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Connections beyond the cap go to one rejecting thread, which answers 503 (the pre-routing
// handler sees this flag): the serving threads are never held by the excess.
thread_local bool t_rejecting = false;

class CappedPool : public httplib::TaskQueue {
 public:
  CappedPool(size_t n, std::atomic<uint64_t>* rejected) : pool_(n), reject_(1), cap_(n), rejected_(rejected) {}
  void enqueue(std::function<void()> fn) override {
    if (busy_.fetch_add(1) >= cap_) {
      busy_.fetch_sub(1);
      ++*rejected_;
      reject_.enqueue([fn = std::move(fn)] {
        t_rejecting = true;
        fn();
        t_rejecting = false;
      });
      return;
    }
    pool_.enqueue([this, fn = std::move(fn)] {
      fn();
      busy_.fetch_sub(1);
    });
  }
  void shutdown() override {
    pool_.shutdown();
    reject_.shutdown();
  }

 private:
  httplib::ThreadPool pool_, reject_;
  size_t cap_;
  std::atomic<size_t> busy_{0};
  std::atomic<uint64_t>* rejected_;
};

bool same_token(const std::string& a, const std::string& b) {  // constant time in the length of b
  unsigned char d = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) d |= static_cast<unsigned char>(i < a.size() ? a[i] ^ b[i] : 1);
  return d == 0;
}

void answer(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}
void fail(httplib::Response& res, int status, const std::string& why, const std::string& key = "") {
  json j = {{"error", why}};
  if (!key.empty()) j["key"] = key;
  answer(res, status, j);
}

std::string random_token() {
  std::random_device rd;  // /dev/urandom on Linux
  std::string t;
  static const char* hex = "0123456789abcdef";
  for (int i = 0; i < 32; ++i) {
    unsigned v = rd() & 0xff;
    t += hex[v >> 4];
    t += hex[v & 15];
  }
  return t;
}

json params_json(const runtime::RuntimeParams& p) {
  json o = json::object();
  for (const auto& [k, v] : runtime::live_param_values(p)) o[k] = v;
  return o;
}

}  // namespace

// ---- EventRing ----
uint64_t EventRing::push(std::string kind, std::string message) {
  const double t = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  uint64_t seq;
  {
    std::lock_guard lk(mu_);
    seq = next_++;
    ev_.push_back(Event{seq, t, std::move(kind), std::move(message)});
    while (ev_.size() > cap_) ev_.pop_front();
  }
  cv_.notify_all();
  return seq;
}

uint64_t EventRing::last_seq() const {
  std::lock_guard lk(mu_);
  return next_ - 1;
}

std::vector<Event> EventRing::since(uint64_t after, double wait_s, const std::atomic<bool>* cancel,
                                    uint64_t* dropped) const {
  std::unique_lock lk(mu_);
  auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait_s));
  while (next_ - 1 <= after && Clock::now() < until && !(cancel && cancel->load()))
    cv_.wait_until(lk, std::min(until, Clock::now() + std::chrono::milliseconds(100)));
  std::vector<Event> out;
  for (const auto& e : ev_)
    if (e.seq > after) out.push_back(e);
  if (dropped) {
    uint64_t first = ev_.empty() ? next_ : ev_.front().seq;
    *dropped = first > after + 1 ? first - after - 1 : 0;
  }
  return out;
}

// ---- PUT /params, without the socket ----
ParamsUpdate parse_params_update(std::string_view body_text, const runtime::RuntimeParams& current) {
  ParamsUpdate u;
  json body = json::parse(body_text.begin(), body_text.end(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    u.error = "the body is not JSON";
    return u;
  }
  if (!body.is_object() || body.empty()) {
    u.error = "expected a JSON object of live keys, e.g. {\"codec.spec\": \"topk:0.01\"}";
    return u;
  }
  for (const auto& [k, v] : body.items()) {
    std::string text;
    if (v.is_string()) text = v.get<std::string>();
    else if (v.is_boolean()) text = v.get<bool>() ? "true" : "false";
    else if (v.is_number()) text = v.dump();
    else {
      u.error = "key '" + k + "': expected a string, number or boolean";
      u.key = k;
      return u;
    }
    u.changes.emplace_back(k, std::move(text));
  }
  runtime::RuntimeParams next = current;
  for (const auto& c : u.changes) {  // one at a time, so the error names its key
    auto r = runtime::apply_param_changes(next, {c});
    if (!r) {
      u.error = r.status().message();
      u.key = c.first;
      return u;
    }
    next = std::move(r).value();
  }
  u.params = std::move(next);
  u.ok = true;
  return u;
}

// ---- hooks, options, tokens ----
ControlHooks ControlHooks::for_param_store(runtime::ParamStore& store, std::atomic<bool>* stop_flag) {
  ControlHooks h;
  h.get_params = [&store] { return std::make_pair(*store.get(), store.version()); };
  h.set_params = [&store](const runtime::RuntimeParams& p) -> Result<uint64_t> {
    MYCEL_CHECK(store.replace(p));
    return store.version();
  };
  if (stop_flag) h.stop = [stop_flag] { stop_flag->store(true); };
  return h;
}

bool is_loopback_host(const std::string& h) {
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}

Result<std::string> load_or_create_token(const std::string& token_file, const std::string& out_dir,
                                         std::string* path_out) {
  std::string path = token_file;
  if (path.empty()) {
    if (out_dir.empty()) return Error(Code::kInvalidArgument, "control: no control.token_file and no output folder");
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    path = out_dir + "/control.token";
    // Written whole to a private temporary file, then linked into place: link() never replaces
    // an existing file, so the peers of one run that start together all read one complete token
    // (an O_EXCL create followed by a write let a second peer read it half written).
    const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + random_token().substr(0, 8);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return Error(Code::kIo, "cannot create " + tmp + ": " + std::strerror(errno));
    std::string t = random_token() + "\n";
    bool ok = ::write(fd, t.data(), t.size()) == static_cast<ssize_t>(t.size());
    ok = (::fsync(fd) == 0) && ok;
    ok = (::close(fd) == 0) && ok;
    if (!ok) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return Error(Code::kIo, "cannot write " + tmp + ": " + std::strerror(err));
    }
    const int rc = ::link(tmp.c_str(), path.c_str());
    const int err = errno;
    ::unlink(tmp.c_str());
    if (rc != 0 && err != EEXIST) return Error(Code::kIo, "cannot create " + path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Error(Code::kNotFound, "control token file " + path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return Error(Code::kInvalidArgument, "control token file " + path + " is not a regular file");
  if (st.st_mode & 077)
    return Error(Code::kInvalidArgument, "control token file " + path + " may be read by others (mode " +
                                             fmt::format("{:o}", st.st_mode & 0777) + "); chmod 600 it");
  std::ifstream f(path);
  std::string tok;
  std::getline(f, tok);
  while (!tok.empty() && (tok.back() == '\r' || tok.back() == ' ' || tok.back() == '\t')) tok.pop_back();
  if (tok.size() < 16) return Error(Code::kInvalidArgument, "control token file " + path + ": the token is empty or under 16 characters");
  if (path_out) *path_out = path;
  return tok;
}

Result<ServerOptions> ServerOptions::from_config(const runtime::ExperimentConfig::Control& c, const std::string& out_dir) {
  ServerOptions o;
  MYCEL_ASSIGN_OR_RETURN(auto hp, runtime::parse_host_port(c.listen));
  o.host = hp.first;
  o.port = hp.second;
  MYCEL_ASSIGN_OR_RETURN(o.token, load_or_create_token(c.token_file, out_dir));
  o.max_body_bytes = static_cast<size_t>(c.max_body_bytes);
  o.max_connections = c.max_connections;
  o.timeout_s = c.timeout_s;
  return o;
}

// ---- the server ----
struct ControlServer::Impl {
  ServerOptions opt;
  ControlHooks hooks;
  const SnapshotBox* box = nullptr;
  EventRing* events = nullptr;
  httplib::Server svr;
  std::thread th;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::atomic<bool> listener_done{false};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> listen_restarts{0};
  std::atomic<uint64_t> refused{0};
  std::mutex set_mu;  // one PUT /params at a time
  bool open_reads = true;

  // "" when allowed; else the status was set.
  bool authorized(const httplib::Request& req, httplib::Response& res) const {
    std::string h = req.get_header_value("Authorization");
    if (h.empty()) {
      res.set_header("WWW-Authenticate", "Bearer");
      fail(res, 401, "this request needs 'Authorization: Bearer TOKEN' (the token is in the run folder's control.token)");
      return false;
    }
    if (h.rfind("Bearer ", 0) != 0 || !same_token(h.substr(7), opt.token)) {
      fail(res, 403, "wrong token");
      return false;
    }
    return true;
  }
  bool may_read(const httplib::Request& req, httplib::Response& res) const {
    return open_reads || authorized(req, res);
  }
  std::shared_ptr<const PeerSnapshot> snapshot(httplib::Response& res) const {
    auto s = box ? box->get() : nullptr;
    if (!s) fail(res, 503, "the peer has published no snapshot yet");
    return s;
  }

  void routes() {
    svr.set_pre_routing_handler([this](const httplib::Request&, httplib::Response& res) {
      if (!t_rejecting) return httplib::Server::HandlerResponse::Unhandled;
      res.set_header("Connection", "close");
      res.set_header("Retry-After", "1");
      fail(res, 503, "too many connections to the control endpoint (control.max_connections = " +
                         std::to_string(opt.max_connections) + ")");
      return httplib::Server::HandlerResponse::Handled;
    });
    svr.Get("/status", [this](const httplib::Request& req, httplib::Response& res) {
      if (!may_read(req, res)) return;
      auto s = snapshot(res);
      if (!s) return;
      res.status = 200;
      res.set_content(summary_json(*s).dump(), "application/json");
    });
    svr.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (!may_read(req, res)) return;
      auto s = snapshot(res);
      if (!s) return;
      res.status = 200;
      res.set_content(prometheus_text(*s), std::string(kPrometheusContentType).c_str());
    });
    svr.Get("/params", [this](const httplib::Request& req, httplib::Response& res) {
      if (!may_read(req, res)) return;
      if (!hooks.get_params) return fail(res, 501, "this peer exposes no parameters");
      auto [p, v] = hooks.get_params();
      answer(res, 200, {{"version", v}, {"params", params_json(p)}});
    });
    svr.Put("/params", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req, res)) return;
      if (!hooks.get_params || !hooks.set_params) return fail(res, 501, "this peer's parameters cannot be changed");
      std::lock_guard lk(set_mu);
      auto [cur, ver] = hooks.get_params();
      ParamsUpdate u = parse_params_update(req.body, cur);
      if (!u.ok) return fail(res, 400, u.error, u.key);
      const runtime::RuntimeParams& next = u.params;
      const auto& changes = u.changes;
      auto v = hooks.set_params(next);
      if (!v) return fail(res, 400, v.status().message());
      std::string what;
      for (const auto& c : changes) what += (what.empty() ? "" : " ") + c.first + "=" + c.second;
      if (events) events->push("params", "version " + std::to_string(*v) + ": " + what);
      answer(res, 200, {{"version", *v}, {"previous_version", ver}, {"params", params_json(next)}});
    });
    svr.Post("/checkpoint", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req, res)) return;
      if (!hooks.checkpoint) return fail(res, 501, "this peer keeps no checkpoints");
      auto r = hooks.checkpoint();
      if (!r) return fail(res, r.status().code() == Code::kUnavailable ? 503 : 500, r.status().message());
      answer(res, 200, {{"checkpoint", *r}});
    });
    svr.Post("/stop", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req, res)) return;
      if (!hooks.stop) return fail(res, 501, "this peer cannot be stopped from here");
      hooks.stop();
      if (events) events->push("stop", "stop requested over the control endpoint");
      answer(res, 202, {{"stopping", true}});
    });
    // Server-sent events: GET /events/stream (or /events with Accept: text/event-stream), from
    // after=SEQ (default: from now). One serving thread per stream, until the client goes or
    // the server stops; an idle stream gets a comment line every second (a dead client shows).
    auto stream = [this](const httplib::Request& req, httplib::Response& res) {
      if (!events) return fail(res, 404, "this peer has no events");
      uint64_t from = events->last_seq();
      try {
        if (req.has_param("after")) from = std::stoull(req.get_param_value("after"));
      } catch (const std::exception&) {
        return fail(res, 400, "after must be an integer");
      }
      auto next = std::make_shared<uint64_t>(from);
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream", [this, next](size_t, httplib::DataSink& sink) {
        if (stopping) return false;
        uint64_t dropped = 0;
        auto ev = events->since(*next, 1.0, &stopping, &dropped);
        std::string out;
        if (dropped) out += ": " + std::to_string(dropped) + " events dropped from the ring\n\n";
        for (const auto& e : ev) {
          json d = {{"seq", e.seq}, {"t", e.t}, {"kind", e.kind}, {"message", e.message}};
          out += "id: " + std::to_string(e.seq) + "\nevent: " + e.kind + "\ndata: " + d.dump() + "\n\n";
          *next = e.seq;
        }
        if (out.empty()) out = ": idle\n\n";
        if (!sink.write(out.data(), out.size())) return false;
        return !stopping.load();
      });
    };
    svr.Get("/events/stream", [this, stream](const httplib::Request& req, httplib::Response& res) {
      if (!may_read(req, res)) return;
      stream(req, res);
    });
    svr.Get("/events", [this, stream](const httplib::Request& req, httplib::Response& res) {
      if (!may_read(req, res)) return;
      if (req.get_header_value("Accept").find("text/event-stream") != std::string::npos) return stream(req, res);
      if (!events) return answer(res, 200, {{"events", json::array()}, {"next", 0}, {"dropped", 0}});
      uint64_t after = 0;
      double wait = 0;
      try {
        if (req.has_param("after")) after = std::stoull(req.get_param_value("after"));
        if (req.has_param("wait_s")) wait = std::stod(req.get_param_value("wait_s"));
      } catch (const std::exception&) {
        return fail(res, 400, "after must be an integer and wait_s a number");
      }
      if (!(wait >= 0)) wait = 0;
      wait = std::min(wait, std::min(opt.max_event_wait_s, opt.timeout_s * 0.8));
      uint64_t dropped = 0;
      auto ev = events->since(after, wait, &stopping, &dropped);
      json arr = json::array();
      uint64_t next = after;
      for (const auto& e : ev) {
        arr.push_back({{"seq", e.seq}, {"t", e.t}, {"kind", e.kind}, {"message", e.message}});
        next = e.seq;
      }
      answer(res, 200, {{"events", arr}, {"next", next}, {"dropped", dropped}});
    });
  }
};

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ControlServer>> ControlServer::start(ServerOptions opt, ControlHooks hooks, const SnapshotBox* box,
                                                            EventRing* events) {
  if (opt.token.empty()) return Error(Code::kInvalidArgument, "control: the bearer token is empty");
  if (opt.max_connections < 1) return Error(Code::kInvalidArgument, "control: max_connections must be at least 1");
  auto im = std::make_unique<Impl>();
  im->opt = std::move(opt);
  im->hooks = std::move(hooks);
  im->box = box;
  im->events = events;
  im->open_reads = is_loopback_host(im->opt.host);
  Impl* p = im.get();
  const auto sec = static_cast<time_t>(p->opt.timeout_s);
  const auto usec = static_cast<time_t>((p->opt.timeout_s - static_cast<double>(sec)) * 1e6);
  p->svr.set_read_timeout(sec, usec);
  p->svr.set_write_timeout(sec, usec);
  p->svr.set_keep_alive_timeout(std::max<time_t>(1, sec));
  p->svr.set_keep_alive_max_count(100);
  p->svr.set_payload_max_length(p->opt.max_body_bytes);
  // Without it a keep-alive client (Prometheus, `mycel top`) waits out the delayed ACK on every
  // answer written in two parts: 40 ms a request on Linux loopback (measured: 22 requests/s).
  p->svr.set_tcp_nodelay(true);
  // Called before every answer of status 400 and above is written (cpp-httplib's own 400, 413
  // and 414 included), so the count is up to date when the client reads the answer.
  p->svr.set_error_handler(httplib::Server::HandlerWithResponse(
      [p](const httplib::Request&, httplib::Response& res) {
        if (res.status >= 400 && res.status < 500) ++p->refused;
        return httplib::Server::HandlerResponse::Unhandled;
      }));
  p->svr.new_task_queue = [p] { return new CappedPool(static_cast<size_t>(p->opt.max_connections), &p->rejected); };
  p->routes();
  if (p->opt.port == 0) {
    p->port = p->svr.bind_to_any_port(p->opt.host);
    if (p->port <= 0) return Error(Code::kIo, "control: cannot bind a port on " + p->opt.host);
  } else {
    if (!p->svr.bind_to_port(p->opt.host, p->opt.port))
      return Error(Code::kIo, "control: cannot listen on " + p->opt.host + ":" + std::to_string(p->opt.port) + ": " +
                                  std::strerror(errno));
    p->port = p->opt.port;
  }
  // cpp-httplib 0.11 (Debian 12) stops listening, and closes its socket, on any accept() error
  // but EMFILE (ECONNABORTED from a client that gave up, ENOBUFS, ...): a peer's endpoint would
  // then refuse every connection for the rest of the run. So the listening thread listens again
  // on the same port, counting the restarts (ControlServer::listen_restarts()).
  p->th = std::thread([p] {
    while (!p->svr.listen_after_bind() && !p->stopping.load()) {
      const uint64_t n = ++p->listen_restarts;
      MYCEL_LOG_WARN("control", "the control endpoint's listening socket failed (accept: {}); listening again on "
                     "port {} (restart {})", std::strerror(errno), p->port, n);
      bool bound = false;
      for (int i = 0; i < 100 && !bound && !p->stopping.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(i == 0 ? 1 : 50));
        bound = p->svr.bind_to_port(p->opt.host, p->port);
      }
      if (!bound) {
        if (!p->stopping.load())
          MYCEL_LOG_ERROR("control", "cannot listen again on {}:{}: {}; the control endpoint is down", p->opt.host,
                          p->port, std::strerror(errno));
        break;
      }
    }
    p->listener_done = true;
  });
  MYCEL_LOG_INFO("control", "control endpoint on http://{}:{}", p->opt.host, p->port);
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(im)));
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::stop() {
  if (!impl_) return;
  impl_->stopping = true;
  // svr.stop() does nothing while the listening thread is between two listens (a restart):
  // asked again until that thread has ended.
  while (impl_->th.joinable() && !impl_->listener_done.load()) {
    impl_->svr.stop();
    if (!impl_->listener_done.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (impl_->th.joinable()) impl_->th.join();
}

int ControlServer::port() const { return impl_->port; }
uint64_t ControlServer::rejected_connections() const { return impl_->rejected.load(); }
uint64_t ControlServer::listen_restarts() const { return impl_->listen_restarts.load(); }
uint64_t ControlServer::refused_requests() const { return impl_->refused.load(); }

std::string ControlServer::url() const {
  const std::string& h = impl_->opt.host;
  std::string host = h == "0.0.0.0" ? "127.0.0.1" : h;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "http://" + host + ":" + std::to_string(impl_->port);
}

Status ControlServer::write_endpoint_file(const std::string& out_dir, int peer, const std::string& token_file) const {
  json j = {{"peer", peer}, {"url", url()}, {"pid", static_cast<int64_t>(::getpid())}, {"token_file", token_file}};
  const std::string path = out_dir + "/control-" + std::to_string(peer) + ".json";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << j.dump() << "\n";
    f.close();
    if (!f) return Error(Code::kIo, "cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return Error(Code::kIo, "cannot write " + path + ": " + std::strerror(errno));
  }
  return Ok();
}

}  // namespace mycel::control
