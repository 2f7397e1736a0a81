#include "runtime/driver/swarm.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/log.h"
#include "models/data/cache.h"
#include "runtime/control/client.h"
#include "runtime/control/server.h"
#include "transport/transport.h"

namespace mycel::runtime {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // summary.json keeps its key order, per_peer last
using Clock = std::chrono::steady_clock;

// Ports for n peers: the OS picks free ones; the sockets stay bound until all are chosen so
// no port is handed out twice.
Result<std::vector<int>> pick_ports(const std::string& host, int n, int base) {
  std::vector<int> ports;
  if (base > 0) {
    for (int i = 0; i < n; ++i) ports.push_back(base + i);
    if (ports.back() > 65535) return Error(Code::kInvalidArgument, "peers.base_port + peers.count exceeds 65535");
    return ports;
  }
  std::vector<int> fds;
  Status err;
  for (int i = 0; i < n && err.is_ok(); ++i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = 0;
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) {
      err = Error(Code::kInvalidArgument, "peers.host '" + host + "' is not an IPv4 address");
    } else if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      err = Error(Code::kIo, std::string("cannot bind a port on ") + host + ": " + std::strerror(errno));
    } else {
      socklen_t len = sizeof a;
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
      ports.push_back(ntohs(a.sin_port));
    }
    if (fd >= 0) fds.push_back(fd);
  }
  for (int fd : fds) close(fd);
  if (!err.is_ok()) return err;
  return ports;
}

// The header and the last row of a peer's CSV, as name -> field (the columns come from the
// metric table, runtime/control/metrics.h; they are looked up by name, not by position).
std::map<std::string, std::string> last_csv_row(const std::string& path) {
  std::ifstream f(path);
  std::string header, line, last;
  if (!std::getline(f, header)) return {};
  while (std::getline(f, line))
    if (!line.empty()) last = line;
  std::map<std::string, std::string> row;
  if (last.empty()) return row;
  auto split = [](const std::string& l) {
    std::vector<std::string> out;
    std::string cur;
    bool q = false;
    for (size_t i = 0; i < l.size(); ++i) {
      char c = l[i];
      if (q) {
        if (c == '"' && i + 1 < l.size() && l[i + 1] == '"') cur += '"', ++i;
        else if (c == '"') q = false;
        else cur += c;
      } else if (c == '"') {
        q = true;
      } else if (c == ',') {
        out.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    out.push_back(cur);
    return out;
  };
  auto h = split(header), v = split(last);
  if (v.size() != h.size()) return {};  // a row being written
  for (size_t i = 0; i < h.size(); ++i) row[h[i]] = v[i];
  return row;
}

// A peer's result file (peer-ID.json, one JSON object): parsed, or why it is not a result.
Result<json> read_peer_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error(Code::kNotFound, "no " + fs::path(path).filename().string());
  std::stringstream ss;
  ss << f.rdbuf();
  if (ss.str().empty()) return Error(Code::kCorrupt, fs::path(path).filename().string() + " is empty");
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return Error(Code::kCorrupt, fs::path(path).filename().string() + " is not a JSON object");
  return j;
}

double num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}
uint64_t count(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return 0;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  double d = it->get<double>();
  return d > 0 ? static_cast<uint64_t>(d) : 0;
}

// The Prometheus file_sd target list of the run (control::file_sd_targets), rewritten when
// it changes.
void write_prometheus_targets(const std::string& run_dir, std::string* last) {
  std::string text = control::file_sd_targets(run_dir);
  if (text == *last) return;
  const std::string path = run_dir + "/prometheus-targets.json", tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  if (std::rename(tmp.c_str(), path.c_str()) == 0) *last = text;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, units[u]);
  return buf;
}

struct Child {
  pid_t pid = -1;
  bool running = false;
  int status = 0;
  bool overdue = false;  // still running long after run.duration_s: stopped by mycel run
};

}  // namespace

Result<SwarmSummary> run_swarm(const SwarmOptions& opt, const std::atomic<bool>* stop) {
  const auto& cfg = opt.cfg;
  if (cfg.peers.transport != "ucx")
    return Error(Code::kInvalidArgument, "mycel run starts one process per peer, which needs peers.transport: ucx "
                                         "(inproc connects peers of one process only)");
  if (!cfg.peers.addresses.empty())
    return Error(Code::kInvalidArgument, "peers.addresses is for deployments (mycel peer on each host); "
                                         "mycel run starts local peers on peers.host");
  const int n = cfg.peers.count;
  MYCEL_ASSIGN_OR_RETURN(auto ports, pick_ports(cfg.peers.host, n, cfg.peers.base_port));

  char stamp[32];
  std::time_t now_t = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now_t));
  SwarmSummary sum;
  sum.peers = n;
  const bool resume = !opt.resume_dir.empty();
  sum.run_dir = resume ? opt.resume_dir : cfg.output + "/" + cfg.name + "-" + stamp;
  std::error_code ec;
  if (resume) {
    if (!fs::is_directory(sum.run_dir, ec)) return Error(Code::kNotFound, "no run folder " + sum.run_dir + " to resume");
    // The results of the run that stopped are not this run's: a peer that fails now must not
    // be counted finished from its old peer-ID.json.
    for (int i = 0; i < n; ++i) fs::remove(sum.run_dir + "/peer-" + std::to_string(i) + ".json", ec);
  } else {
    fs::create_directories(sum.run_dir, ec);
    if (ec) return Error(Code::kIo, "cannot create " + sum.run_dir + ": " + ec.message());
    // What `mycel run --resume RUN_DIR` restarts with: the config and the overrides.
    fs::copy_file(opt.config_path, sum.run_dir + "/config.yaml", fs::copy_options::overwrite_existing, ec);
    if (ec) return Error(Code::kIo, "cannot copy " + opt.config_path + " into " + sum.run_dir + ": " + ec.message());
    std::ofstream ov(sum.run_dir + "/overrides.txt");
    for (const auto& o : opt.overrides) ov << o << "\n";
    if (!ov.flush()) return Error(Code::kIo, "cannot write " + sum.run_dir + "/overrides.txt");
  }
  {
    std::ofstream resolved(sum.run_dir + "/config.resolved.txt");
    for (const auto& [k, v] : cfg.flat) resolved << k << ": " << v << "\n";
  }
  // Authenticated by default (docs/security.md): without a configured transport.key_file, a
  // fresh key for this run only (mode 0600, in the run folder), handed to every peer.
  std::vector<std::string> key_set;
  if (cfg.transport.key_file.empty()) {
    const std::string key = fs::absolute(sum.run_dir + "/swarm.key").string();
    if (!(resume && fs::exists(key, ec))) MYCEL_CHECK(transport::make_key_file(key, 1));
    key_set = {"--set", "transport.key_file=" + key};
  }

  std::vector<std::string> addrs;
  for (int p : ports) addrs.push_back("ucx://" + cfg.peers.host + ":" + std::to_string(p));
  // The per-host data cache is built here, once, before the peers start: each peer then reads
  // only its own rows (models/data/cache.h), and none of them converts the whole set.
  {
    data::LoadOptions lo = load_options(cfg.data, cfg.seed);
    auto cache = data::ensure_cache(cfg.data.dataset, lo);
    if (!cache) {
      if (cache.status().code() != Code::kUnavailable) return cache.status();
      MYCEL_LOG_WARN("runtime", "{}: every peer loads the data set itself", cache.status().message());
    }
  }
  std::string seeds, all;
  for (int i = 0; i < std::min(n, 3); ++i) seeds += (i ? "," : "") + addrs[i];
  for (int i = 0; i < n; ++i) all += (i ? "," : "") + addrs[i];
  int threads = opt.threads_per_peer > 0
                    ? opt.threads_per_peer
                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / n);
  std::string exe = opt.exe.empty() ? "/proc/self/exe" : opt.exe;
  // The control endpoints: one bearer token for the run (mode 0600), each peer on a free
  // loopback port it records as control-ID.json (runtime/control/server.h).
  std::vector<std::string> control_sets;
  if (opt.control) {
    std::string token_path;
    MYCEL_ASSIGN_OR_RETURN(auto token, control::load_or_create_token(cfg.control.token_file, sum.run_dir, &token_path));
    (void)token;
    control_sets = {"control.enabled=true", "control.token_file=" + fs::absolute(token_path).string()};
  }

  std::vector<Child> kids(n);
  std::vector<std::string> why_stopped(n);  // a peer that exited non-zero or was killed
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> args = {exe, "--log-level", opt.log_level, "--threads", std::to_string(threads),
                                     "peer", "--config", opt.config_path, "--id", std::to_string(i),
                                     "--listen", addrs[i], "--seeds", seeds, "--peers", all, "--out", sum.run_dir};
    for (const auto& o : opt.overrides) {
      args.push_back("--set");
      args.push_back(o);
    }
    for (const auto& o : control_sets) {
      args.push_back("--set");
      args.push_back(o);
    }
    if (resume) {
      args.push_back("--resume");
      args.push_back(cfg.checkpoint.dir.empty() ? sum.run_dir : cfg.checkpoint.dir);
    }
    args.insert(args.end(), key_set.begin(), key_set.end());
    std::string log = sum.run_dir + "/peer-" + std::to_string(i) + ".log";
    pid_t pid = fork();
    if (pid < 0) return Error(Code::kIo, std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | (resume ? O_APPEND : O_TRUNC), 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
      setenv("OPENBLAS_NUM_THREADS", std::to_string(threads).c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      std::fprintf(stderr, "exec %s failed: %s\n", argv[0], std::strerror(errno));
      _exit(127);
    }
    kids[i] = Child{pid, true, 0};
  }
  std::fprintf(stderr, "mycel run: %s%d peers (%s, %s, %s) -> %s\n", resume ? "resuming " : "", n, cfg.protocol.name.c_str(), cfg.model.c_str(),
               cfg.params.codec.c_str(), sum.run_dir.c_str());

  const bool tty = isatty(2);
  auto t0 = Clock::now();
  double last_print = -1e9, last_merges_t = 0;
  uint64_t last_merges = 0;
  bool stopping = false;
  Clock::time_point stop_at;
  int running = n;
  std::string targets_text;
  // A peer that outlives its run.duration_s by this much is hung (a peer stops by itself at
  // the end of its duration, its start-up wait included): it is stopped and counted failed,
  // so that one stuck peer never keeps `mycel run` (and whatever waits for it) forever.
  const double overdue_s = std::max(30.0, 0.25 * cfg.duration_s) + cfg.protocol.startup_timeout_s;
  while (running > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    double el = std::chrono::duration<double>(Clock::now() - t0).count();
    // Reap.
    for (int i = 0; i < n; ++i) {
      if (!kids[i].running) continue;
      int st = 0;
      struct rusage ru {};
      pid_t r = wait4(kids[i].pid, &st, WNOHANG, &ru);
      if (r == kids[i].pid) {
        kids[i].running = false;
        kids[i].status = st;
        // What the peer process cost: its peak resident set and its CPU time (user + sys).
        sum.peer_rss_bytes.push_back(static_cast<uint64_t>(ru.ru_maxrss) * 1024);
        sum.peer_cpu_s.push_back(static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                                 1e-6 * static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec));
        --running;
        bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && !kids[i].overdue;
        if (!ok) {
          ++sum.crashed;
          std::string why = kids[i].overdue ? "did not stop by itself " + std::to_string(static_cast<int>(overdue_s)) +
                                                  " s after run.duration_s; stopped by mycel run"
                            : WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st)) + " (" +
                                                  strsignal(WTERMSIG(st)) + ")"
                                            : "exit code " + std::to_string(WEXITSTATUS(st));
          why_stopped[i] = why;
          std::fprintf(stderr, "%speer %d stopped (%s); see %s/peer-%d.log; the others go on\n", tty ? "\n" : "",
                       i, why.c_str(), sum.run_dir.c_str(), i);
        } else {
          ++sum.finished;
        }
      }
    }
    // Ctrl-C: every peer stops cleanly (SIGTERM), stragglers are killed after 15 s.
    if (stop && stop->load() && !stopping) {
      stopping = true;
      stop_at = Clock::now();
      for (auto& k : kids)
        if (k.running) kill(k.pid, SIGTERM);
      std::fprintf(stderr, "\nmycel run: stopping %d peers\n", running);
    }
    if (!stopping && cfg.duration_s > 0 && el > cfg.duration_s + overdue_s) {
      stopping = true;
      stop_at = Clock::now();
      for (auto& k : kids)
        if (k.running) {
          k.overdue = true;
          kill(k.pid, SIGTERM);
        }
      std::fprintf(stderr, "\nmycel run: %d peer(s) still running %.0f s after run.duration_s (%.0f s); stopping them\n",
                   running, overdue_s, cfg.duration_s);
    }
    if (stopping && Clock::now() - stop_at > std::chrono::seconds(15)) {
      for (auto& k : kids)
        if (k.running) kill(k.pid, SIGKILL);
    }
    // Progress from the peers' CSVs.
    if (opt.control) write_prometheus_targets(sum.run_dir, &targets_text);
    if (el - last_print >= (tty ? 1.0 : 10.0)) {
      last_print = el;
      double lo = 1, hi = 0, tot = 0;
      int cnt = 0;
      uint64_t bytes = 0, merges = 0;
      for (int i = 0; i < n; ++i) {
        auto row = last_csv_row(sum.run_dir + "/peer-" + std::to_string(i) + ".csv");
        if (!row.count("test_accuracy") || !row.count("bytes_sent") || !row.count("merges")) continue;
        double acc = std::atof(row["test_accuracy"].c_str());
        lo = std::min(lo, acc);
        hi = std::max(hi, acc);
        tot += acc;
        ++cnt;
        bytes += std::strtoull(row["bytes_sent"].c_str(), nullptr, 10);
        merges += std::strtoull(row["merges"].c_str(), nullptr, 10);
      }
      double mps = el > last_merges_t ? (merges - std::min(merges, last_merges)) / (el - last_merges_t) : 0;
      last_merges = merges;
      last_merges_t = el;
      if (cnt > 0)
        std::fprintf(stderr, "%s[%6.1fs] peers %d/%d  acc mean %.4f min %.4f max %.4f  sent %s  merges/s %.1f%s",
                     tty ? "\r" : "", el, running, n, tot / cnt, lo, hi, human_bytes(bytes).c_str(), mps,
                     tty ? "   " : "\n");
      else
        std::fprintf(stderr, "%s[%6.1fs] peers %d/%d starting...%s", tty ? "\r" : "", el, running, n, tty ? "" : "\n");
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  sum.seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  // Summary from the peers' result files (nlohmann-json). A peer that was killed, exited
  // non-zero, or left no readable result is a failure, named in sum.failed.
  std::vector<double> accs;
  json per_peer = json::array();
  for (int i = 0; i < n; ++i) {
    auto j = read_peer_json(sum.run_dir + "/peer-" + std::to_string(i) + ".json");
    std::string why = why_stopped[i];
    if (!j) why += (why.empty() ? "" : ", ") + j.status().message();
    if (!why.empty()) sum.failed.push_back("peer " + std::to_string(i) + " (" + why + ")");
    if (!j) continue;
    accs.push_back(num(*j, "test_accuracy"));
    sum.bytes_sent += count(*j, "bytes_sent");
    sum.model_bytes_sent += count(*j, "model_bytes_sent");
    sum.fp32_bytes_equivalent += count(*j, "fp32_bytes_equivalent");
    sum.merges += count(*j, "merges");
    per_peer.push_back(std::move(j).value());
  }
  if (!accs.empty()) {
    sum.acc_min = *std::min_element(accs.begin(), accs.end());
    sum.acc_max = *std::max_element(accs.begin(), accs.end());
    double t = 0;
    for (double a : accs) t += a;
    sum.acc_mean = t / accs.size();
  }
  sum.bytes_per_peer_per_s = sum.seconds > 0 ? sum.bytes_sent / (sum.seconds * n) : 0;
  sum.rounds = cfg.rounds;
  json js = {{"name", cfg.name},
             {"peers", n},
             {"finished", sum.finished},
             {"crashed", sum.crashed},
             {"failed", sum.failed},
             {"seconds", sum.seconds},
             {"protocol", cfg.protocol.name},
             {"model", cfg.model},
             {"codec", cfg.params.codec},
             {"dataset", cfg.data.dataset},
             {"partition", cfg.data.partition},
             {"accuracy_mean", sum.acc_mean},
             {"accuracy_min", sum.acc_min},
             {"accuracy_max", sum.acc_max},
             {"bytes_sent", sum.bytes_sent},
             {"model_bytes_sent", sum.model_bytes_sent},
             {"fp32_bytes_equivalent", sum.fp32_bytes_equivalent},
             {"merges", sum.merges},
             {"bytes_per_peer_per_s", sum.bytes_per_peer_per_s},
             {"peer_rss_bytes", sum.peer_rss_bytes},
             {"peer_cpu_s", sum.peer_cpu_s},
             {"per_peer", std::move(per_peer)}};
  {
    std::ofstream f(sum.run_dir + "/summary.json");
    f << js.dump() << "\n";
    f.close();
    if (!f) return Error(Code::kIo, "cannot write " + sum.run_dir + "/summary.json");
  }
  if (accs.empty()) {
    std::string names;
    for (const auto& f : sum.failed) names += "\n  " + f;
    return Error(Code::kInternal, "no peer finished; see the logs in " + sum.run_dir + names);
  }
  return sum;
}

std::string format_summary(const SwarmSummary& s) {
  std::ostringstream os;
  char line[256];
  os << "\n";
  // (failures are listed by mycel run on stderr, from SwarmSummary::failed)
  std::snprintf(line, sizeof line, "  %-34s %s\n", "run folder", s.run_dir.c_str());
  os << line;
  std::snprintf(line, sizeof line, "  %-34s %d finished, %d stopped early, %.1f s\n", "peers", s.finished,
                s.crashed, s.seconds);
  os << line;
  std::snprintf(line, sizeof line, "  %-34s mean %.4f  min %.4f  max %.4f\n", "peer test accuracy", s.acc_mean,
                s.acc_min, s.acc_max);
  os << line;
  std::snprintf(line, sizeof line, "  %-34s %s (%s of models)\n", "bytes sent", human_bytes(s.bytes_sent).c_str(),
                human_bytes(s.model_bytes_sent).c_str());
  os << line;
  std::snprintf(line, sizeof line, "  %-34s %s/s\n", "per peer", human_bytes(s.bytes_per_peer_per_s).c_str());
  os << line;
  double ratio = s.model_bytes_sent ? static_cast<double>(s.fp32_bytes_equivalent) / s.model_bytes_sent : 0;
  std::snprintf(line, sizeof line, "  %-34s %s (%.2fx what was sent)\n", "fp32 would have sent",
                human_bytes(s.fp32_bytes_equivalent).c_str(), ratio);
  os << line;
  std::snprintf(line, sizeof line, "  %-34s %llu\n", "merges", static_cast<unsigned long long>(s.merges));
  os << line;
  if (!s.peer_rss_bytes.empty()) {
    std::vector<uint64_t> rss = s.peer_rss_bytes;
    std::sort(rss.begin(), rss.end());
    double cpu = 0;
    for (double c : s.peer_cpu_s) cpu += c;
    std::snprintf(line, sizeof line, "  %-34s median %s  max %s\n", "peak RSS per peer process",
                  human_bytes(static_cast<double>(rss[rss.size() / 2])).c_str(),
                  human_bytes(static_cast<double>(rss.back())).c_str());
    os << line;
    std::snprintf(line, sizeof line, "  %-34s %.2f s", "CPU time of the peers (user+sys)", cpu);
    os << line;
    if (s.rounds > 0)
      os << fmt::format(" ({:.3f} ms per node-round)", 1e3 * cpu / (static_cast<double>(s.rounds) * rss.size()));
    os << "\n";
  }
  return os.str();
}

}  // namespace mycel::runtime
