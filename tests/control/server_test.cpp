// The control endpoint through a real HTTP client (cpp-httplib's, as `mycel ctl` uses it), on
// loopback, with a snapshot the test publishes and a ParamStore as the peer's live set.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include <httplib.h>

#include "runtime/control/client.h"
#include "runtime/control/server.h"
#include "tests/control/test_util.h"

namespace mycel::control {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string kToken = "0123456789abcdef0123456789abcdef";

struct Fixture : ::testing::Test {
  runtime::ParamStore store{runtime::RuntimeParams{}};
  std::atomic<bool> stop{false};
  SnapshotBox box;
  EventRing events{8};
  std::unique_ptr<ControlServer> srv;
  Endpoint ep, anon, wrong;

  void start(ServerOptions o = {}) {
    o.token = kToken;
    box.publish(std::make_shared<const PeerSnapshot>(testing::sample_snapshot()));
    auto s = ControlServer::start(o, ControlHooks::for_param_store(store, &stop), &box, &events);
    ASSERT_TRUE(s) << s.status().to_string();
    srv = std::move(s).value();
    ep = Endpoint{7, "127.0.0.1", srv->port(), kToken};
    anon = ep;
    anon.token = "";
    wrong = ep;
    wrong.token = "not-the-token-at-all";
  }
};

using ControlServerTest = Fixture;

TEST_F(ControlServerTest, StatusMetricsAndParams) {
  start();
  auto r = request(anon, "GET", "/status");  // reads are open on loopback
  ASSERT_EQ(r.status, 200) << r.why();
  json j = json::parse(r.body);
  EXPECT_EQ(j["peer"], 7);
  EXPECT_DOUBLE_EQ(j["test_accuracy"].get<double>(), 0.875);
  EXPECT_EQ(j["links"].size(), 2u);
  EXPECT_EQ(j["params"]["codec.spec"], "topk:0.01");

  r = request(anon, "GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("# TYPE mycel_sent_bytes_total counter"), std::string::npos);
  EXPECT_NE(r.body.find("mycel_merges_total{peer=\"7\"} 9"), std::string::npos);

  r = request(anon, "GET", "/params");
  ASSERT_EQ(r.status, 200);
  j = json::parse(r.body);
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["params"]["codec.spec"], "int8");  // the store's, not the snapshot's

  // A newer snapshot is what the next read sees.
  auto s2 = testing::sample_snapshot();
  s2.merges = 10;
  box.publish(std::make_shared<const PeerSnapshot>(s2));
  r = request(anon, "GET", "/status");
  EXPECT_EQ(json::parse(r.body)["merges"], 10);
  EXPECT_EQ(request(anon, "GET", "/nope").status, 404);
}

TEST_F(ControlServerTest, SetParamsValidInvalidAndWithoutToken) {
  start();
  const std::string body = R"({"codec.spec": "topk:0.01", "protocol.period_s": 2})";
  auto r = request(anon, "PUT", "/params", body);
  EXPECT_EQ(r.status, 401) << r.body;
  r = request(wrong, "PUT", "/params", body);
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_EQ(store.version(), 1u);

  // Each bad change: 400 naming the key, nothing applied (the valid key beside it neither).
  struct Bad {
    std::string body, key;
  } bad[] = {
      {R"({"codec.spec": "topk:0.01", "protocol.period_s": -1})", "protocol.period_s"},
      {R"({"codec.spec": "int9"})", "codec.spec"},
      {R"({"codec.sepc": "fp16"})", "codec.sepc"},
      {R"({"peers.count": 4})", "peers.count"},
      {R"({"protocol.fanout": 2.5})", "protocol.fanout"},
      {R"({"protocol.fanout": [1]})", "protocol.fanout"},
  };
  for (const auto& b : bad) {
    r = request(ep, "PUT", "/params", b.body);
    EXPECT_EQ(r.status, 400) << b.body << " -> " << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.body;
    EXPECT_EQ(j.value("key", ""), b.key) << r.body;
    EXPECT_NE(j.value("error", "").find(b.key), std::string::npos) << r.body;
  }
  for (const char* junk : {"{not json", "[1,2]", "{}", ""}) {
    r = request(ep, "PUT", "/params", junk);
    EXPECT_EQ(r.status, 400) << junk << " -> " << r.body;
  }
  EXPECT_EQ(store.version(), 1u);
  // Each refusal counted (401, 403, six bad changes, four junk bodies), reads not.
  EXPECT_EQ(srv->refused_requests(), 12u);
  EXPECT_EQ(request(anon, "GET", "/status").status, 200);
  EXPECT_EQ(srv->refused_requests(), 12u);
  EXPECT_EQ(store.get()->codec, "int8");

  r = request(ep, "PUT", "/params", body);
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(store.version(), 2u);
  EXPECT_EQ(store.get()->codec, "topk:0.01");
  EXPECT_DOUBLE_EQ(store.get()->period_s, 2.0);
  EXPECT_EQ(store.get()->lr, runtime::RuntimeParams{}.lr);  // untouched keys stay
  // The change is an event.
  uint64_t dropped = 0;
  auto ev = events.since(0, 0, nullptr, &dropped);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back().kind, "params");
  EXPECT_NE(ev.back().message.find("codec.spec=topk:0.01"), std::string::npos);
}

TEST_F(ControlServerTest, BodyOverTheLimitIs413AndChangesNothing) {
  ServerOptions o;
  o.max_body_bytes = 1024;
  start(o);
  std::string big = R"({"codec.spec": "fp16", "pad": ")" + std::string(4096, 'x') + "\"}";
  auto r = request(ep, "PUT", "/params", big);
  EXPECT_EQ(r.status, 413) << r.why();
  EXPECT_EQ(store.version(), 1u);
  EXPECT_EQ(srv->refused_requests(), 1u);  // cpp-httplib's own 413 is counted too
  EXPECT_EQ(request(ep, "PUT", "/params", R"({"codec.spec": "fp16"})").status, 200);
}

TEST_F(ControlServerTest, StopAndCheckpoint) {
  start();
  EXPECT_EQ(request(anon, "POST", "/stop").status, 401);
  EXPECT_FALSE(stop.load());
  EXPECT_EQ(request(ep, "POST", "/checkpoint").status, 501);
  auto r = request(ep, "POST", "/stop");
  EXPECT_EQ(r.status, 202) << r.body;
  EXPECT_TRUE(stop.load());
}

TEST_F(ControlServerTest, EventsLongPollWaitsForAPush) {
  start();
  events.push("peer_up", "ucx://127.0.0.1:1");
  auto r = request(anon, "GET", "/events?after=0");
  ASSERT_EQ(r.status, 200);
  json j = json::parse(r.body);
  ASSERT_EQ(j["events"].size(), 1u);
  EXPECT_EQ(j["events"][0]["kind"], "peer_up");
  const uint64_t next = j["next"];
  std::thread pusher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    events.push("decision", "codec int8 -> topk:0.01 (budget)");
  });
  auto t0 = Clock::now();
  r = request(anon, "GET", "/events?after=" + std::to_string(next) + "&wait_s=3", "", 5);
  double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  pusher.join();
  ASSERT_EQ(r.status, 200);
  j = json::parse(r.body);
  ASSERT_EQ(j["events"].size(), 1u) << r.body;
  EXPECT_EQ(j["events"][0]["kind"], "decision");
  EXPECT_GT(waited, 0.2);
  EXPECT_LT(waited, 2.5);
  // The ring holds 8: the oldest are dropped, and a reader from 0 is told how many.
  for (int i = 0; i < 20; ++i) events.push("x", std::to_string(i));
  j = json::parse(request(anon, "GET", "/events?after=0").body);
  EXPECT_EQ(j["events"].size(), 8u);
  EXPECT_EQ(j["dropped"], 14);
  EXPECT_EQ(request(anon, "GET", "/events?after=zz").status, 400);
}

// Two silent clients hold both serving threads; a third connection is answered 503 at once
// (not queued behind them), and once the silent ones time out the endpoint serves again.
TEST_F(ControlServerTest, ConnectionCapAndSlowClients) {
  ServerOptions o;
  o.max_connections = 2;
  o.timeout_s = 1;
  start(o);
  std::vector<int> silent;
  for (int i = 0; i < 2; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(srv->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(write(fd, "GET /status HTTP/1.1\r\n", 22), 22);  // and never the rest
    silent.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto t0 = Clock::now();
  auto r = request(anon, "GET", "/status", "", 3);
  double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(r.status, 503) << r.why();
  EXPECT_LT(took, 0.9);
  EXPECT_GE(srv->rejected_connections(), 1u);
  // The silent ones time out (the wait for a request, then the read of it: about 2 s).
  t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(6)) {
    r = request(anon, "GET", "/status", "", 3);
    if (r.status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(r.status, 200) << r.why();
  std::printf("served again %.2f s after the silent clients' 200 ms\n",
              std::chrono::duration<double>(Clock::now() - t0).count() + took);
  for (int fd : silent) close(fd);
}

TEST(ControlToken, GeneratedWithMode0600AndRefusedWhenReadable) {
  fs::path dir = fs::temp_directory_path() / ("mycel-token-" + std::to_string(getpid()));
  fs::remove_all(dir);
  std::string path;
  auto t = load_or_create_token("", dir.string(), &path);
  ASSERT_TRUE(t) << t.status().to_string();
  EXPECT_EQ(t->size(), 64u);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto again = load_or_create_token("", dir.string());  // the peers of a run share it
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *t);
  chmod(path.c_str(), 0644);
  auto bad = load_or_create_token(path, "");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("chmod 600"), std::string::npos);
  fs::remove_all(dir);
}

TEST(ControlEndpoints, RunFolderListsEveryPeerWithItsToken) {
  fs::path dir = fs::temp_directory_path() / ("mycel-eps-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string tok_path;
  auto tok = load_or_create_token("", dir.string(), &tok_path);
  ASSERT_TRUE(tok);
  SnapshotBox box;
  ServerOptions o;
  o.token = *tok;
  std::vector<std::unique_ptr<ControlServer>> srvs;
  for (int i = 0; i < 2; ++i) {
    auto s = ControlServer::start(o, ControlHooks{}, &box, nullptr);
    ASSERT_TRUE(s);
    ASSERT_TRUE((*s)->write_endpoint_file(dir.string(), i, tok_path).is_ok());
    srvs.push_back(std::move(s).value());
  }
  auto eps = find_endpoints(dir.string());
  ASSERT_TRUE(eps) << eps.status().to_string();
  ASSERT_EQ(eps->size(), 2u);
  EXPECT_EQ((*eps)[1].peer, 1);
  EXPECT_EQ((*eps)[1].port, srvs[1]->port());
  EXPECT_EQ((*eps)[1].token, *tok);
  // No snapshot yet: 503, said so.
  auto r = request((*eps)[0], "GET", "/status");
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(r.why().find("no snapshot"), std::string::npos);
  json t = json::parse(file_sd_targets(dir.string()));
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0]["labels"]["mycel_peer"], "0");
  EXPECT_EQ(t[1]["targets"][0], "127.0.0.1:" + std::to_string(srvs[1]->port()));
  EXPECT_FALSE(find_endpoints((dir / "none").string()));
  fs::remove_all(dir);
}

TEST(ControlServerOptions, FromConfigAndNonLoopbackReadsNeedTheToken) {
  auto cfg = runtime::parse_config("control:\n  enabled: true\n  listen: 127.0.0.1:0\n  max_connections: 3\n");
  ASSERT_TRUE(cfg) << cfg.status().to_string();
  EXPECT_TRUE(cfg->control.enabled);
  EXPECT_EQ(cfg->control.max_connections, 3);
  EXPECT_FALSE(runtime::parse_config("control:\n  max_connections: 0\n"));
  auto bad = runtime::parse_config("control:\n  listen: 127.0.0.1:99999\n");
  ASSERT_TRUE(bad);  // a string in the schema; the form is checked with the experiment
  Status s = runtime::check_experiment(*bad);
  EXPECT_NE(s.message().find("control.listen"), std::string::npos) << s.to_string();
  // Bound off loopback, reads need the token too.
  SnapshotBox box;
  box.publish(std::make_shared<const PeerSnapshot>(testing::sample_snapshot()));
  ServerOptions o;
  o.host = "0.0.0.0";
  o.token = kToken;
  auto srv = ControlServer::start(o, ControlHooks{}, &box, nullptr);
  ASSERT_TRUE(srv) << srv.status().to_string();
  Endpoint e{0, "127.0.0.1", (*srv)->port(), ""};
  EXPECT_EQ(request(e, "GET", "/status").status, 401);
  EXPECT_EQ(request(e, "GET", "/metrics").status, 401);
  e.token = kToken;
  EXPECT_EQ(request(e, "GET", "/status").status, 200);
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(is_loopback_host("10.0.0.1"));
}

}  // namespace
}  // namespace mycel::control

namespace mycel::control {
namespace {

// Junk: random bodies to PUT /params (each a 400, nothing applied) and random bytes straight
// onto the socket; the endpoint answers correctly afterwards. Fixed seed.
TEST_F(ControlServerTest, RandomBodiesAndRawJunkChangeNothing) {
  start();
  std::mt19937 rng(1234);
  const std::string alphabet = "{}[]\":,.0123456789eE+-truefalsnl \\codec.spec protocol.period_s\x01\xff";
  for (int i = 0; i < 300; ++i) {
    std::string body;
    const size_t n = rng() % 64;
    for (size_t k = 0; k < n; ++k)
      body += (i % 2) ? static_cast<char>(rng() & 0xff) : alphabet[rng() % alphabet.size()];
    auto r = request(ep, "PUT", "/params", body);
    ASSERT_EQ(r.status, 400) << "body #" << i << ": " << r.body;
  }
  EXPECT_EQ(store.version(), 1u);
  for (int i = 0; i < 20; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(srv->port()));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    std::string junk;
    for (int k = 0; k < 512; ++k) junk += static_cast<char>(rng() & 0xff);
    if (i % 3 == 0) junk = "PUT /params HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n" + junk;
    ssize_t w = write(fd, junk.data(), junk.size());
    (void)w;
    close(fd);
  }
  auto r = request(ep, "PUT", "/params", R"({"train.lr": 0.01})");
  EXPECT_EQ(r.status, 200) << r.why();
  EXPECT_EQ(store.version(), 2u);
}

// Not a benchmark with a peer behind it: how many sequential GET /metrics one client gets
// from this endpoint (printed, not asserted).
TEST_F(ControlServerTest, SequentialRequestRatePrinted) {
  start();
  const int n = 300;
  auto t0 = Clock::now();
  int ok = 0;
  for (int i = 0; i < n; ++i) ok += request(anon, "GET", "/metrics").status == 200;
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(ok, n);
  std::printf("%d GET /metrics (new connection each) in %.3f s: %.0f requests/s\n", n, s, n / s);
}

}  // namespace
}  // namespace mycel::control

namespace mycel::control {
namespace {

// Server-sent events: the stream delivers events pushed after it opened, as id/event/data.
TEST_F(ControlServerTest, ServerSentEventsStreamPushedEvents) {
  start();
  events.push("old", "before the stream");  // not sent: a stream starts from now
  std::thread pusher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    events.push("peer_down", "ucx://127.0.0.1:9");
    events.push("decision", "period 1 -> 2");
  });
  httplib::Client cli("127.0.0.1", srv->port());
  cli.set_read_timeout(5, 0);
  std::string got;
  auto r = cli.Get("/events/stream", [&](const char* data, size_t n) {
    got.append(data, n);
    return got.find("event: decision") == std::string::npos;  // stop once both came
  });
  pusher.join();
  EXPECT_NE(got.find("event: peer_down\ndata: "), std::string::npos) << got;
  EXPECT_NE(got.find("id: 3\nevent: decision"), std::string::npos) << got;
  EXPECT_EQ(got.find("before the stream"), std::string::npos) << got;
  // The endpoint still serves (the stream's thread went back when the client left).
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(request(anon, "GET", "/status").status, 200);
}

// The listening socket fails (here: shut down under the server, so accept() answers EINVAL, as
// it may answer ECONNABORTED or ENOBUFS under load): cpp-httplib 0.11 then stops listening, and
// the endpoint listens again on the same port rather than refusing every later connection.
TEST_F(ControlServerTest, ListeningAgainAfterAnAcceptError) {
  start();
  ASSERT_EQ(request(anon, "GET", "/status").status, 200);
  int lfd = -1;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
    int fd = std::atoi(e.path().filename().c_str());
    sockaddr_in a{};
    socklen_t len = sizeof a;
    int acc = 0;
    socklen_t alen = sizeof acc;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0 && a.sin_family == AF_INET &&
        ntohs(a.sin_port) == srv->port() && ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) == 0 && acc)
      lfd = fd;
  }
  ASSERT_GE(lfd, 0) << "no listening socket on port " << srv->port();
  ASSERT_EQ(::shutdown(lfd, SHUT_RDWR), 0);
  const auto until = Clock::now() + std::chrono::seconds(20);
  while (srv->listen_restarts() == 0 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(srv->listen_restarts(), 1u);
  int status = 0;
  while (status != 200 && Clock::now() < until) {
    status = request(anon, "GET", "/status").status;
    if (status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status, 200);
  auto r = request(ep, "PUT", "/params", R"({"codec.spec": "fp16"})");
  EXPECT_EQ(r.status, 200) << r.why();
  srv->stop();  // and it still stops
  EXPECT_NE(request(anon, "GET", "/status").status, 200);
}

}  // namespace
}  // namespace mycel::control
