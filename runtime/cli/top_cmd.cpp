// `mycel top RUN_DIR`: a live terminal view of a running swarm, from each peer's control
// endpoint (GET /status), refreshed every second: one row per peer, sortable, the swarm's
// mean/min/max and total traffic. Peers that die show as down with their last figures; peers
// that join (a new control-ID.json) appear. q or Ctrl-C quits and restores the terminal.
#include <poll.h>
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/cli/commands.h"
#include "runtime/control/client.h"
#include "runtime/control/metrics.h"

namespace mycel::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
std::atomic<bool> g_top_stop{false};
extern "C" void on_top_signal(int) { g_top_stop.store(true); }

struct TopOpts {
  std::string run_dir;
  double interval_s = 1;
  std::string sort = "peer";
  bool reverse = false;
  bool once = false;
  double timeout_s = 0.5;
};

// One peer as top knows it: its last status, and the counters of the status before, for rates.
struct PeerView {
  control::Endpoint ep;
  bool up = false, ever = false;
  std::string why;  // why it is down
  json status;
  double t = 0, t_prev = 0;
  double out_Bps = NAN, in_Bps = NAN, merges_ps = NAN;
  uint64_t prev_out = 0, prev_in = 0, prev_merges = 0;
  bool have_prev = false;
};

double jnum(const json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_number() ? it->get<double>() : NAN;
}
uint64_t jcount(const json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}
std::string jparam(const json& j, const char* k) {
  auto p = j.find("params");
  if (p == j.end() || !p->is_object() || !p->contains(k) || !(*p)[k].is_string()) return "-";
  return (*p)[k].get<std::string>();
}
double slowest_link(const json& j) {
  double best = NAN;
  auto it = j.find("links");
  if (it == j.end() || !it->is_array()) return best;
  for (const auto& l : *it) {
    double b = jnum(l, "bandwidth_Bps");
    if (b > 0 && !(b >= best)) best = b;
  }
  return best;
}

std::string human(double v, const char* unit) {
  if (std::isnan(v)) return "-";
  const char* pre[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (std::fabs(v) >= 1000 && u < 4) v /= 1000, ++u;
  return fmt::format("{:.1f}{}{}", v, pre[u], unit);
}

// The columns: a title, the metric of the table it shows (its name there), and the value.
struct Column {
  const char* title;
  const char* metric;  // "" for derived columns
  int width;
  double (*num)(const PeerView&);       // the sort key (NaN last)
  std::string (*text)(const PeerView&);
};

const std::vector<Column>& columns() {
  static const std::vector<Column> cols = {
      {"peer", "", 5, [](const PeerView& p) { return double(p.ep.peer); },
       [](const PeerView& p) { return p.ep.peer >= 0 ? std::to_string(p.ep.peer) : p.ep.label(); }},
      {"state", "", 8, [](const PeerView& p) { return p.up ? 0.0 : 1.0; },
       [](const PeerView& p) { return p.up ? p.status.value("state", std::string("?")) : std::string("down"); }},
      {"acc", "test_accuracy", 7, [](const PeerView& p) { return jnum(p.status, "test_accuracy"); },
       [](const PeerView& p) {
         double a = jnum(p.status, "test_accuracy");
         return std::isnan(a) ? std::string("-") : fmt::format("{:.4f}", a);
       }},
      {"age", "age", 8, [](const PeerView& p) { return jnum(p.status, "age"); },
       [](const PeerView& p) { return p.status.contains("age") ? std::to_string(jcount(p.status, "age")) : "-"; }},
      {"codec", "codec", 14, [](const PeerView&) { return 0.0; },
       [](const PeerView& p) { return jparam(p.status, "codec.spec"); }},
      {"period", "", 7, [](const PeerView& p) {
         try { return std::stod(jparam(p.status, "protocol.period_s")); } catch (...) { return double(NAN); }
       },
       [](const PeerView& p) { return jparam(p.status, "protocol.period_s"); }},
      {"out/s", "bytes_sent", 9, [](const PeerView& p) { return p.out_Bps; },
       [](const PeerView& p) { return human(p.out_Bps, "B"); }},
      {"in/s", "bytes_received", 9, [](const PeerView& p) { return p.in_Bps; },
       [](const PeerView& p) { return human(p.in_Bps, "B"); }},
      {"slow link", "bandwidth_Bps", 10, [](const PeerView& p) { return slowest_link(p.status); },
       [](const PeerView& p) { return human(slowest_link(p.status), "B/s"); }},
      {"merges/s", "merges", 9, [](const PeerView& p) { return p.merges_ps; },
       [](const PeerView& p) { return std::isnan(p.merges_ps) ? std::string("-") : fmt::format("{:.2f}", p.merges_ps); }},
      {"rejected", "rejected_frames", 9,
       [](const PeerView& p) { return double(jcount(p.status, "rejected_frames") + jcount(p.status, "rejected_payloads")); },
       [](const PeerView& p) {
         return p.ever ? std::to_string(jcount(p.status, "rejected_frames") + jcount(p.status, "rejected_payloads"))
                       : std::string("-");
       }},
  };
  return cols;
}

void refresh(const TopOpts& o, std::map<std::string, PeerView>& peers) {
  // Peers that joined since (a new control-ID.json); those that left keep their row.
  if (auto eps = control::find_endpoints(o.run_dir); eps) {
    for (const auto& e : *eps) {
      std::string key = e.host + ":" + std::to_string(e.port);
      if (!peers.count(key)) peers[key].ep = e;
    }
  }
  for (auto& [key, p] : peers) {
    auto r = control::request(p.ep, "GET", "/status", "", o.timeout_s);
    double now = std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
    json j = r.ok() ? json::parse(r.body, nullptr, false) : json();
    if (!r.ok() || j.is_discarded() || !j.is_object()) {
      p.up = false;
      p.why = r.why();
      p.out_Bps = p.in_Bps = p.merges_ps = NAN;
      p.have_prev = false;
      continue;
    }
    p.up = p.ever = true;
    p.status = std::move(j);
    uint64_t out = jcount(p.status, "bytes_sent"), in = jcount(p.status, "bytes_received"),
             mg = jcount(p.status, "merges");
    if (p.have_prev && now > p.t) {
      double dt = now - p.t;
      p.out_Bps = static_cast<double>(out - std::min(out, p.prev_out)) / dt;
      p.in_Bps = static_cast<double>(in - std::min(in, p.prev_in)) / dt;
      p.merges_ps = static_cast<double>(mg - std::min(mg, p.prev_merges)) / dt;
    }
    p.prev_out = out, p.prev_in = in, p.prev_merges = mg, p.t = now, p.have_prev = true;
  }
}

std::string render(const TopOpts& o, const std::map<std::string, PeerView>& peers, size_t sort_col, bool reverse) {
  const auto& cols = columns();
  std::vector<const PeerView*> rows;
  for (const auto& [k, p] : peers) rows.push_back(&p);
  const Column& sc = cols[sort_col];
  std::stable_sort(rows.begin(), rows.end(), [&](const PeerView* a, const PeerView* b) {
    if (sc.num == cols[4].num) return sc.text(*a) < sc.text(*b);  // codec: by text
    double x = sc.num(*a), y = sc.num(*b);
    if (std::isnan(x) != std::isnan(y)) return std::isnan(y);  // NaN last, either way
    return reverse ? x > y : x < y;
  });
  std::string out = fmt::format("mycel top  {}  (every {:g} s)\n\n", o.run_dir, o.interval_s);
  for (size_t c = 0; c < cols.size(); ++c) {
    std::string t = cols[c].title;
    if (c == sort_col) t += reverse ? "v" : "^";
    out += fmt::format("{:>{}} ", t, cols[c].width);
  }
  out += "\n";
  std::vector<double> acc, age;
  double tot_out = 0, tot_in = 0;
  int up = 0;
  for (const PeerView* p : rows) {
    for (const auto& c : cols) {
      std::string t = c.text(*p);
      if (static_cast<int>(t.size()) > c.width) t = t.substr(0, c.width);
      out += fmt::format("{:>{}} ", t, c.width);
    }
    out += "\n";
    if (!p->up) continue;
    ++up;
    if (double a = jnum(p->status, "test_accuracy"); !std::isnan(a)) acc.push_back(a);
    if (double a = jnum(p->status, "age"); !std::isnan(a)) age.push_back(a);
    if (!std::isnan(p->out_Bps)) tot_out += p->out_Bps;
    if (!std::isnan(p->in_Bps)) tot_in += p->in_Bps;
  }
  auto stats = [](const std::vector<double>& v, const char* f) {
    if (v.empty()) return std::string("-");
    double s = 0;
    for (double x : v) s += x;
    return fmt::format(fmt::runtime(std::string("mean {") + f + "} min {" + f + "} max {" + f + "}"),
                       s / static_cast<double>(v.size()), *std::min_element(v.begin(), v.end()),
                       *std::max_element(v.begin(), v.end()));
  };
  out += fmt::format("\nswarm: {}/{} peers up   acc {}   age {}\n", up, rows.size(), stats(acc, ":.4f"),
                     stats(age, ":.0f"));
  out += fmt::format("traffic: out {} in {}\n", human(tot_out, "B/s"), human(tot_in, "B/s"));
  for (const PeerView* p : rows)
    if (!p->up) out += fmt::format("{} down: {}\n", p->ep.label(), p->why);
  out += "\nkeys: s sort by next column, r reverse, q quit\n";
  return out;
}

struct RawTerminal {
  bool on = false;
  termios saved{};
  void enter() {
    if (!isatty(0) || tcgetattr(0, &saved) != 0) return;
    termios t = saved;
    t.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));  // ISIG stays: Ctrl-C is SIGINT
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    tcsetattr(0, TCSANOW, &t);
    std::fputs("\x1b[?1049h\x1b[?25l", stdout);  // alternate screen, no cursor
    on = true;
  }
  ~RawTerminal() {
    if (!on) return;
    std::fputs("\x1b[?25h\x1b[?1049l", stdout);
    std::fflush(stdout);
    tcsetattr(0, TCSANOW, &saved);
  }
};

int run_top(const TopOpts& o) {
  const auto& cols = columns();
  size_t sort_col = 0;
  for (size_t c = 0; c < cols.size(); ++c)
    if (o.sort == cols[c].title || o.sort == cols[c].metric) sort_col = c;
  bool reverse = o.reverse;
  if (auto eps = control::find_endpoints(o.run_dir); !eps) {
    std::fprintf(stderr, "mycel top: %s\n", eps.status().message().c_str());
    return 2;
  }
  std::map<std::string, PeerView> peers;
  if (o.once) {  // two samples, so that the rates exist
    refresh(o, peers);
    poll(nullptr, 0, static_cast<int>(1000 * o.interval_s));
    refresh(o, peers);
    std::fputs(render(o, peers, sort_col, reverse).c_str(), stdout);
    return 0;
  }
  struct sigaction sa {};
  sa.sa_handler = on_top_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  RawTerminal term;
  term.enter();
  auto next = Clock::now();
  bool redraw = true;
  while (!g_top_stop) {
    if (Clock::now() >= next) {
      refresh(o, peers);
      next = Clock::now() + std::chrono::milliseconds(static_cast<int>(1000 * o.interval_s));
      redraw = true;
    }
    if (redraw) {
      std::string frame = render(o, peers, sort_col, reverse);
      std::string screen = "\x1b[H\x1b[2J";
      for (char c : frame) screen += c == '\n' ? std::string("\x1b[K\r\n") : std::string(1, c);
      std::fputs(screen.c_str(), stdout);
      std::fflush(stdout);
      redraw = false;
    }
    pollfd pf{0, POLLIN, 0};
    int ms = static_cast<int>(std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count()));
    if (poll(&pf, 1, std::min(ms, 200)) > 0 && (pf.revents & POLLIN)) {
      char ch = 0;
      if (read(0, &ch, 1) != 1) {
        if (!isatty(0)) break;  // stdin closed
        continue;
      }
      if (ch == 'q' || ch == 'Q' || ch == 3) break;
      if (ch == 's') sort_col = (sort_col + 1) % cols.size(), redraw = true;
      if (ch == 'r') reverse = !reverse, redraw = true;
    }
  }
  return 0;
}

}  // namespace

void add_top_command(CLI::App& app, Common&) {
  auto o = std::make_shared<TopOpts>();
  auto* top = app.add_subcommand("top", "a live view of a running swarm from its peers' control endpoints "
                                        "(q or Ctrl-C quits; docs/control.md)");
  top->add_option("run_dir", o->run_dir, "the run folder (mycel run prints it)")->required();
  top->add_option("--interval", o->interval_s, "seconds between refreshes")->capture_default_str()->check(
      CLI::Range(0.05, 3600.0));
  top->add_option("--sort", o->sort, "column to sort by: peer state acc age codec period out/s in/s 'slow link' "
                                     "merges/s rejected")->capture_default_str();
  top->add_flag("--reverse", o->reverse, "sort in decreasing order");
  top->add_flag("--once", o->once, "print one view (two samples, --interval apart) and exit");
  top->add_option("--timeout", o->timeout_s, "seconds to wait for each peer")->capture_default_str();
  top->callback([o] {
    int rc = run_top(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
