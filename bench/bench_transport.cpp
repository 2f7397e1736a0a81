// `mycel bench transport`: the UCX transport between two processes on loopback, against
// ucx_perftest (Debian's ucx-utils) run in the same invocation with the same sizes, iteration
// counts and UCX environment (UCX_TLS etc. are inherited by both).
//   bw    throughput against frame size: the client keeps a window of frames in flight; the
//         clock runs from the first send to the server's "all received" reply. Compared with
//         `ucx_perftest -t ucp_am_bw` (our transport is built on UCP active messages), overall
//         bandwidth. ratio = ours / theirs (target >= 0.90 for frames >= 1 MiB).
//   bwreg the same with the window's frames in one block registered with the transport
//         (register_memory: ucp_mem_map) and sent by send_region, read in place.
//   bwpool the same with frames in the transport's own send buffers (acquire_send_buffer:
//         pooled, registered with ucp_mem_map) sent by send_buffer, the runtime's path for
//         model frames; encode-free: a frame is written into a buffer once, when the pool
//         hands out that buffer for the first time at this size, and sent from it again after.
//   bwdev the same block in --device memory, registered as kCuda: staged through pinned
//         host memory (Debian's UCX) or read by UCX directly. Not in the default tests; on
//         the CPU device it measures the staging path's own cost (a host-to-host copy).
//         theirs: ucx_perftest from host memory.
//   lat   ping-pong: a real wire-format frame (64-byte header, CRC32C sealed by the client,
//         checked by the server, echoed, checked again by the client) of SIZE bytes in total;
//         median of round trip / 2, against `ucx_perftest -t ucp_am_lat`'s median.
//         ratio = ours / theirs (target <= 1.5 at 64 B).
//   idle  a server with 16 connections, idle: its CPU time (getrusage) over a few seconds of
//         waiting in poll(), in % of one core (target < 1%).
// Frame sizes count the whole frame (header included), so both sides move SIZE bytes per
// message. The server is this binary re-executed with --role server.
//
// Method (bw and lat): on a shared machine one ~1 s trial moves by tens of percent from run
// to run, more than the differences we look for. So a row is --repeat N trials of each side,
// alternating (ours, theirs, ours, theirs, ...) so that a slow drift of the machine (a build
// starting, the CPU clocking down) hits both sides alike, and each side reports the median of
// its N trials (one trial spoiled by a burst of load moves the mean, not the median). A bw
// trial gives one throughput; a lat trial the median half round trip of its ping-pongs (for
// ucx_perftest its 50th percentile). ours, theirs: the medians of each side's trials; ratio:
// the median of the N per-trial ratios (ours_i / theirs_i), which cancels a shift of the
// machine's speed between trials better than the ratio of the two medians. `spread` =
// (max - min) / median of our N trials, in %: the same code timed N times moves that much, so
// a ratio that differs from another run's, or from the target, by less than that is noise.
// Warm-up: one untimed bw run of ours before a row's first trial (connection and buffer pools
// stay warm between trials); a lat trial starts with its own warm-up pings (a tenth of its
// count, cheap); ucx_perftest is a fresh process each trial and warms up with -w each time.
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench/harness.h"
#include "common/log.h"
#include "kernels/device.h"
#include "runtime/cli/commands.h"
#include "runtime/driver/device_ops.h"
#include "transport/frame.h"
#include "transport/transport.h"

#if MYCEL_HAVE_UCX
#include "transport/ucx/ucx_transport.h"
#endif

extern char** environ;

namespace mycel::bench {
namespace {

struct TransportFlags {
  std::string tests = "bw,bwreg,bwpool,lat,idle";
  std::string bw_sizes = "4K,64K,1M,16M,256M";
  std::string lat_sizes = "64,4K,64K,1M";
  // Bytes moved per bw trial (iterations = this / size, at least 8). Still 1 GiB with 5 trials:
  // most of the run goes to starting ucx_perftest processes, 512 MiB saved only 7% of it.
  double bw_bytes = double(size_t(1) << 30);
  int lat_iters = 10000;                       // at 64 B; fewer for larger frames
  double window_mib = 64;  // bw: bytes in flight (at least 2 frames, at most 256)
  int idle_conns = 16;
  double idle_s = 3;
  int repeat = 5;  // trials per bw / lat row, each side; --quick: 2 unless --repeat is given
  bool json = false, quick = false, no_perftest = false;
  std::string perftest = "ucx_perftest";
  std::string device = "auto";  // bwdev: the global --device
  std::string role = "client";
  std::string listen = "ucx://127.0.0.1:0";
};

#if MYCEL_HAVE_UCX

using transport::Event;
using transport::EventKind;
using transport::FrameHeader;
using transport::MessageType;
using transport::Transport;
using transport::kFrameHeaderBytes;

constexpr const char* kLog = "bench";
constexpr size_t kMaxFrame = (size_t(1) << 30) + (size_t(1) << 20);

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double cpu_s() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// A frame of `total` bytes (header included, at least 64) of the given type, sealed.
std::vector<uint8_t> make_frame(MessageType type, uint64_t seq, size_t total) {
  size_t payload = total > kFrameHeaderBytes ? total - kFrameHeaderBytes : 0;
  std::vector<uint8_t> f = transport::make_frame_buffer(payload);
  for (size_t i = 0; i < payload; ++i) f[kFrameHeaderBytes + i] = uint8_t(i * 131 + seq);
  FrameHeader h;
  h.type = type;
  h.seq = seq;
  (void)transport::seal_frame(h, f);
  return f;
}

std::vector<uint8_t> control_frame(const std::string& text) {
  FrameHeader h;
  h.type = MessageType::kControl;
  auto r = transport::encode_frame(
      h, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  return r.is_ok() ? std::move(r).value() : std::vector<uint8_t>{};
}

// The control text of a frame, or "" when it is not a valid control frame.
std::string control_text(const std::vector<uint8_t>& bytes) {
  transport::FrameView v;
  if (transport::decode_frame(bytes, {}, &v) != transport::FrameError::kOk) return {};
  if (v.header.type != MessageType::kControl) return {};
  return std::string(v.payload.begin(), v.payload.end());
}

MessageType peek_type(const std::vector<uint8_t>& bytes) {
  return bytes.size() >= kFrameHeaderBytes ? MessageType(bytes[6]) : MessageType(0);
}

// Sends, waiting through back-pressure; events that arrive meanwhile are kept in q.
Status send_wait(Transport& t, const transport::Address& to, std::vector<uint8_t> bytes,
                 std::deque<Event>& q, size_t budget) {
  const double end = now_s() + 60;
  for (;;) {
    size_t inflight = 0;
    for (auto& s : t.stats()) {
      if (s.peer == to) inflight = s.inflight_bytes;
    }
    if (inflight == 0 || inflight + bytes.size() <= budget) return t.send(to, std::move(bytes), nullptr);
    if (now_s() > end) return Status(Code::kTimeout, "send to " + to + " stuck");
    for (Event& e : t.poll(0.01)) q.push_back(std::move(e));
  }
}

// --- server ---------------------------------------------------------------------------------

int run_server(const TransportFlags& f) {
  transport::Options opt;
  opt.max_frame_bytes = kMaxFrame;
  opt.max_inflight_bytes = size_t(1) << 30;
  auto tr = transport::make_ucx_transport(f.listen, opt);
  if (!tr.is_ok()) {
    std::fprintf(stderr, "server: %s\n", tr.status().to_string().c_str());
    return 2;
  }
  Transport& t = **tr;
  (void)transport::ucx_set_buffer_reuse(t, true, size_t(1) << 30);
  std::printf("%s\n", t.local_address().c_str());
  std::fflush(stdout);
  uint64_t bw_expect = 0, bw_got = 0, bw_bad = 0;
  std::deque<Event> q;
  const pid_t parent = getppid();
  for (;;) {
    if (q.empty()) {
      for (Event& e : t.poll(1.0)) q.push_back(std::move(e));
      if (getppid() != parent) return 0;  // the client is gone
      if (q.empty() && bw_got < bw_expect) {
        MYCEL_LOG_DEBUG(kLog, "server: {} of {} bw frames after a quiet second", bw_got,
                        bw_expect);
      }
    }
    if (q.empty()) continue;
    Event e = std::move(q.front());
    q.pop_front();
    if (e.kind == EventKind::kSendComplete || e.kind == EventKind::kSendFailed) {
      transport::ucx_recycle_buffer(t, std::move(e.frame.bytes));
      continue;
    }
    if (e.kind != EventKind::kFrame) continue;
    std::vector<uint8_t>& b = e.frame.bytes;
    MessageType type = peek_type(b);
    MYCEL_LOG_TRACE(kLog, "server: frame of {} bytes, type {}", b.size(), int(type));
    if (type == MessageType::kModel) {
      // Bandwidth frames: the first and last of a run are checked in full (CRC included), the
      // rest by length, so the check does not slow the receiver down.
      bool full = bw_got == 0 || bw_got + 1 == bw_expect;
      if (full ? transport::decode_frame(b, {}, nullptr) != transport::FrameError::kOk
               : b.size() < kFrameHeaderBytes) {
        bw_bad++;
      }
      transport::ucx_recycle_buffer(t, std::move(b));
      if (++bw_got == bw_expect) {
        (void)send_wait(t, e.frame.from, control_frame("done " + std::to_string(bw_bad)), q,
                        opt.max_inflight_bytes);
      }
    } else if (type == MessageType::kPing) {
      if (transport::decode_frame(b, {}, nullptr) != transport::FrameError::kOk) {
        b = control_frame("bad");  // the client counts it as a wrong result
      }
      (void)send_wait(t, e.frame.from, std::move(b), q, opt.max_inflight_bytes);
    } else if (type == MessageType::kControl) {
      std::istringstream in(control_text(b));
      std::string cmd;
      in >> cmd;
      if (cmd == "bw") {
        in >> bw_expect;
        bw_got = bw_bad = 0;
      } else if (cmd == "idle") {
        double secs = 3;
        in >> secs;
        const double c0 = cpu_s(), t0 = now_s();
        while (now_s() - t0 < secs) {
          for (Event& x : t.poll(std::max(0.0, std::min(1.0, secs - (now_s() - t0))))) {
            q.push_back(std::move(x));
          }
        }
        double share = (cpu_s() - c0) / (now_s() - t0);
        (void)send_wait(t, e.frame.from, control_frame("idle " + std::to_string(share)), q,
                        opt.max_inflight_bytes);
      } else if (cmd == "quit") {
        return 0;
      }
    }
  }
}

// --- subprocesses ---------------------------------------------------------------------------

// Runs argv, returns its exit status and (when out is given) its stdout; kills it after
// timeout_s.
Result<int> run_capture(const std::vector<std::string>& argv, std::string* out,
                        double timeout_s) {
  int fds[2];
  if (pipe(fds) != 0) return Status(Code::kIo, std::string("pipe: ") + std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return Status(Code::kUnavailable, "cannot run " + argv[0] + ": " + std::strerror(rc));
  }
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  const double end = now_s() + timeout_s;
  int status = 0;
  for (;;) {
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) {
      if (out) out->append(buf, size_t(n));
    }
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (now_s() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ::close(fds[0]);
      return Status(Code::kTimeout, argv[0] + " did not finish in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) {
    if (out) out->append(buf, size_t(n));
  }
  ::close(fds[0]);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// ucx_perftest server + client on loopback; returns the numbers of its final result line
// (iterations, overhead 50%ile / average / overall in usec, bandwidth average / overall in
// MB/s = 2^20 B/s, message rate average / overall).
Result<std::vector<double>> run_perftest(const std::string& exe, const std::string& test,
                                         size_t size, long iters, long warmup) {
  Status last(Code::kUnavailable, "ucx_perftest did not run");
  for (int attempt = 0; attempt < 3; ++attempt) {
    const std::string port = std::to_string(free_port());
    pid_t srv = -1;
    std::vector<std::string> sargv = {exe, "-p", port, "-e", "-I", "-E", "sleep"};
    std::vector<char*> sa;
    for (auto& a : sargv) sa.push_back(const_cast<char*>(a.c_str()));
    sa.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    int rc = posix_spawnp(&srv, sa[0], &fa, nullptr, sa.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return Status(Code::kUnavailable, "cannot run " + exe + ": " + std::strerror(rc));
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + 300 * attempt));
    std::string out;
    // -e: endpoints with error handling, -I: a context with the wakeup feature, -E sleep: wait
    // on the event fd; the settings our transport runs with, so UCP picks the same transports.
    auto r = run_capture({exe, "127.0.0.1", "-p", port, "-t", test, "-s", std::to_string(size),
                          "-n", std::to_string(iters), "-w", std::to_string(warmup), "-e", "-I",
                          "-E", "sleep", "-f"},
                         &out, 300);
    kill(srv, SIGKILL);
    waitpid(srv, nullptr, 0);
    if (!r.is_ok()) {
      last = r.status();
      continue;
    }
    if (*r != 0) {
      last = Status(Code::kUnavailable, exe + " exited with " + std::to_string(*r));
      continue;
    }
    // The last line of (at least 8) numbers is the final result.
    std::vector<double> best;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      std::istringstream in(line);
      std::vector<double> nums;
      // The leading numbers (ucx_perftest -e appends the request's description after them).
      for (std::string tok; in >> tok;) {
        char* endp = nullptr;
        double v = std::strtod(tok.c_str(), &endp);
        if (endp == tok.c_str() || *endp != 0) break;
        nums.push_back(v);
      }
      if (nums.size() >= 8) best = nums;
    }
    if (best.empty()) {
      last = Status(Code::kCorrupt, "no result line in ucx_perftest's output");
      continue;
    }
    return best;
  }
  return last;
}

// --- client ---------------------------------------------------------------------------------

struct Server {
  pid_t pid = -1;
  std::string addr;
};

Result<Server> start_server() {
  int fds[2];
  if (pipe(fds) != 0) return Status(Code::kIo, std::string("pipe: ") + std::strerror(errno));
  pid_t pid = fork();
  if (pid < 0) return Status(Code::kIo, std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    execl("/proc/self/exe", "mycel", "bench", "transport", "--role", "server",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(fds[1]);
  // The first line that is an address (UCX may print warnings on stdout before it).
  std::string line;
  for (char ch; read(fds[0], &ch, 1) == 1;) {
    if (ch != '\n') {
      line.push_back(ch);
    } else if (line.starts_with("ucx://")) {
      break;
    } else {
      line.clear();
    }
  }
  ::close(fds[0]);
  if (!line.starts_with("ucx://")) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return Status(Code::kUnavailable, "the server process did not start");
  }
  return Server{pid, line};
}

class Client {
 public:
  Client(Transport& t, std::string server) : t_(t), srv_(std::move(server)) {}

  Status send(std::vector<uint8_t> b) { return send_wait(t_, srv_, std::move(b), q_, kBudget); }

  // Waits for a control reply from the server.
  Result<std::string> wait_control(double timeout_s) {
    const double end = now_s() + timeout_s;
    for (;;) {
      while (!q_.empty()) {
        Event e = std::move(q_.front());
        q_.pop_front();
        if (e.kind == EventKind::kFrame) {
          std::string s = control_text(e.frame.bytes);
          if (!s.empty()) return s;
        } else if (e.kind == EventKind::kPeerDown || e.kind == EventKind::kSendFailed) {
          return Status(Code::kUnavailable, "server: " + e.status.to_string());
        }
      }
      if (now_s() > end) return Status(Code::kTimeout, "no reply from the server");
      for (Event& e : t_.poll(0.1)) q_.push_back(std::move(e));
    }
  }

  // Seconds to move iters frames of `size` bytes with a window of frames in flight.
  // Where bw's frames come from. kVectors: vectors moved through send() and given back at
  // completion. kRegistered: one host block registered with the transport (ucp_mem_map), sent
  // by send_region and read in place. kDevice: the same block in the device's memory (dev_),
  // registered as kCuda: staged through pinned host memory, or read directly by a UCX with
  // CUDA support.
  // kPool: the transport's send buffers (acquire_send_buffer / send_buffer).
  enum class Source { kVectors, kRegistered, kDevice, kPool };

  Result<double> bw(size_t size, long iters, int64_t* wrong, Source src = Source::kVectors) {
    const bool registered = src == Source::kRegistered || src == Source::kDevice;
    const bool pooled = src == Source::kPool;
    size_t window = std::clamp<size_t>(size_t(window_mib_ * double(1 << 20)) / size, 2, 256);
    std::vector<std::vector<uint8_t>> free;
    std::vector<size_t> free_slots;
    std::unordered_map<uint64_t, size_t> slot_of;  // token -> slot of the block
    const size_t stride = (size + 63) / 64 * 64;
    transport::MemoryRegion reg;
    if (registered) {
      // Kept until the client goes: a failed row may leave sends reading it.
      blocks_.emplace_back(window * stride);
      std::vector<uint8_t>& block = blocks_.back();
      for (size_t i = 0; i < window; ++i) {
        auto f = make_frame(MessageType::kModel, i, size);
        std::memcpy(block.data() + i * stride, f.data(), f.size());
        free_slots.push_back(i);
      }
      void* base = block.data();
      auto type = transport::MemoryType::kHost;
      if (src == Source::kDevice) {
        if (dev_ == nullptr) return Status(Code::kInvalidArgument, "bwdev: no device");
        MYCEL_ASSIGN_OR_RETURN(base, dev_->alloc(block.size()));
        dev_blocks_.push_back(base);  // freed when no send reads it (below), else never
        MYCEL_CHECK(dev_->copy(base, block.data(), block.size(), CopyKind::kHostToDevice));
        MYCEL_CHECK(dev_->sync());
        type = transport::MemoryType::kCuda;
      }
      MYCEL_ASSIGN_OR_RETURN(reg, t_.register_memory(base, block.size(), type));
    } else if (pooled) {
      if (pool_frame_.size() != size) pool_frame_ = make_frame(MessageType::kModel, 0, size);
    } else {
      for (size_t i = 0; i < window; ++i) free.push_back(make_frame(MessageType::kModel, i, size));
    }
    size_t inflight = 0;
    bool pool_dry = false;  // the pool said kNoResource: wait for a completion
    auto have_free = [&] {
      if (pooled) return inflight < window && !pool_dry;
      return registered ? !free_slots.empty() : !free.empty();
    };
    uint64_t ctl = 0;
    MYCEL_CHECK(t_.send(srv_, control_frame("bw " + std::to_string(iters)), &ctl));
    const double t0 = now_s();
    long sent = 0;
    for (;;) {
      while (sent < iters && have_free()) {
        Status s;
        if (pooled) {
          auto buf = t_.acquire_send_buffer(size);
          if (!buf.is_ok() && buf.status().code() == Code::kNoResource) {
            pool_dry = true;
            break;
          }
          if (!buf.is_ok()) return buf.status();
          size_t& have = pool_filled_[buf->data()];  // what this buffer already holds
          if (have != size) {
            std::memcpy(buf->data(), pool_frame_.data(), size);
            have = size;
          }
          s = t_.send_buffer(srv_, std::move(buf).value(), size, /*tclass=*/1, nullptr);
        } else if (registered) {
          uint64_t tok = 0;
          s = t_.send_region(srv_, reg, free_slots.back() * stride, size, &tok);
          slot_of[tok] = free_slots.back();
          free_slots.pop_back();
        } else {
          s = t_.send(srv_, std::move(free.back()), nullptr);
          free.pop_back();
        }
        if (!s.is_ok()) return s;
        sent++;
        inflight++;
      }
      for (Event& e : t_.poll(sent < iters && have_free() ? 0 : 1.0)) {
        if (e.kind == EventKind::kSendComplete && e.token == ctl) continue;
        if (e.kind == EventKind::kSendComplete) {
          inflight--;
          pool_dry = false;
          if (pooled) {
          } else if (registered) {
            free_slots.push_back(slot_of[e.token]);
            slot_of.erase(e.token);
          } else {
            free.push_back(std::move(e.frame.bytes));
          }
        } else if (e.kind == EventKind::kFrame) {
          std::string s = control_text(e.frame.bytes);
          if (s.starts_with("done")) {
            double dt = now_s() - t0;
            *wrong += std::atoll(s.c_str() + 5);
            // Drain the last completions so the next row starts empty.
            const double end = now_s() + 10;
            while (inflight > 0 && now_s() < end) {
              for (Event& x : t_.poll(0.1)) {
                inflight -= x.kind == EventKind::kSendComplete && x.token != ctl;
              }
            }
            if (registered && inflight == 0 && t_.deregister_memory(reg).is_ok()) {
              blocks_.pop_back();
              if (src == Source::kDevice) {
                dev_->free(dev_blocks_.back());
                dev_blocks_.pop_back();
              }
            }
            return dt;
          }
        } else if (e.kind == EventKind::kSendFailed || e.kind == EventKind::kPeerDown) {
          return Status(Code::kUnavailable, "bw: " + e.status.to_string());
        }
      }
      if (now_s() - t0 > 600) return Status(Code::kTimeout, "bw row took too long");
    }
  }

  // Round-trip / 2 in seconds of each ping-pong.
  Result<std::vector<double>> lat(size_t size, long iters, long warmup, int64_t* wrong) {
    std::vector<double> half;
    std::vector<uint8_t> buf = make_frame(MessageType::kPing, 0, size);
    for (long i = 0; i < warmup + iters; ++i) {
      FrameHeader h;
      h.type = MessageType::kPing;
      h.seq = uint64_t(i);
      MYCEL_CHECK(transport::seal_frame(h, buf));  // the checksum is part of the cost
      const double t0 = now_s();
      MYCEL_CHECK(t_.send(srv_, std::move(buf), nullptr));
      bool got = false;
      while (!got) {
        for (Event& e : t_.poll(0)) {
          if (e.kind == EventKind::kFrame) {
            transport::FrameView v;
            if (transport::decode_frame(e.frame.bytes, {}, &v) != transport::FrameError::kOk ||
                v.header.seq != uint64_t(i) || e.frame.bytes.size() != size) {
              (*wrong)++;
            }
            buf = std::move(e.frame.bytes);
            got = true;
          } else if (e.kind == EventKind::kSendFailed || e.kind == EventKind::kPeerDown) {
            return Status(Code::kUnavailable, "lat: " + e.status.to_string());
          }
        }
        if (now_s() - t0 > 30) return Status(Code::kTimeout, "no pong in 30 s");
      }
      if (i >= warmup) half.push_back((now_s() - t0) / 2);
      if (buf.size() != size) buf = make_frame(MessageType::kPing, 0, size);
    }
    return half;
  }

  Transport& t_;
  std::string srv_;
  std::deque<Event> q_;
  std::list<std::vector<uint8_t>> blocks_;  // registered bw windows (stable addresses)
  std::shared_ptr<Device> dev_;             // bwdev: where the window lives
  std::vector<void*> dev_blocks_;
  std::vector<uint8_t> pool_frame_;                        // bwpool: the frame written
  std::unordered_map<const uint8_t*, size_t> pool_filled_;  // bwpool: buffer -> frame size in it
  double window_mib_ = 64;
  static constexpr size_t kBudget = size_t(1) << 30;
};

std::vector<Column> columns() {
  return {{"test", "test", 5, 0, true},   {"size_text", "size", 6},
          {"iters", "iters", 7},          {"unit", "unit", 5, 0, true},
          {"ours", "ours", 9, 3},         {"theirs", "theirs", 9, 3},
          {"ratio", "ratio", 6, 3},       {"spread", "spread", 6, 1},
          {"target", "target", 7, 0, true}, {"wrong", "wrong", 5}};
}

// The N trials of one side of a row. The median is the figure reported; min and max show how
// far the trials scattered.
struct Trials {
  std::vector<double> v;
  int failed = 0;     // ucx_perftest runs that gave no figure
  std::string error;  // the last of their errors

  double mid() const { return v.empty() ? NAN : median(v); }
  double lo() const { return v.empty() ? NAN : *std::min_element(v.begin(), v.end()); }
  double hi() const { return v.empty() ? NAN : *std::max_element(v.begin(), v.end()); }
  // (max - min) / median in %: the noise of this machine for this row.
  double spread_pct() const { return mid() > 0 ? 100 * (hi() - lo()) / mid() : NAN; }

  // ours / theirs of each trial whose two halves both gave a figure (kept on our side).
  std::vector<double> ratios;

  // Takes field `field` (times scale) of a ucx_perftest result line.
  // Pairs it with our trial just run (ours.ratios) when it gave a figure.
  void take(Result<std::vector<double>> r, int field, double scale, Trials* ours) {
    if (r.is_ok() && int(r->size()) > field) {
      v.push_back((*r)[size_t(field)] * scale);
      if (v.back() > 0 && !ours->v.empty()) ours->ratios.push_back(ours->v.back() / v.back());
      return;
    }
    failed++;
    error = r.is_ok() ? "a result line with too few numbers" : r.status().to_string();
  }
};

int run_client(const TransportFlags& f) {
  Report report(f.json, columns());
  auto tests = split(f.tests, ',');
  auto has = [&](const char* t) { return std::find(tests.begin(), tests.end(), t) != tests.end(); };
  auto bw_sizes = parse_sizes(f.quick ? "64K,1M,16M" : f.bw_sizes);
  auto lat_sizes = parse_sizes(f.quick ? "64,64K" : f.lat_sizes);
  if (!bw_sizes.is_ok() || !lat_sizes.is_ok()) {
    std::fprintf(stderr, "bad --bw-sizes or --lat-sizes\n");
    return 2;
  }
  const double bw_bytes = f.quick ? std::min(f.bw_bytes, double(size_t(512) << 20)) : f.bw_bytes;
  const int lat_iters = f.quick ? std::min(f.lat_iters, 1000) : f.lat_iters;
  const int repeat = f.repeat;

  // The transport's UCX defaults, given to ucx_perftest too (and to our server, which would
  // apply them anyway): both sides of the comparison run with the same UCX settings.
  std::string applied;
  for (const auto& [var, value] : transport::ucx_config_defaults()) {
    if (std::getenv(var.c_str()) == nullptr) setenv(var.c_str(), value.c_str(), 0);
    applied += " " + var + "=" + std::getenv(var.c_str());
  }
  auto srv = start_server();
  if (!srv.is_ok()) {
    std::fprintf(stderr, "%s\n", srv.status().to_string().c_str());
    return 1;
  }
  auto stop = [&] {
    kill(srv->pid, SIGKILL);
    waitpid(srv->pid, nullptr, 0);
  };
  transport::Options opt;
  opt.max_frame_bytes = kMaxFrame;
  opt.max_inflight_bytes = Client::kBudget;
  opt.max_send_buffer_bytes = size_t(1) << 30;  // bwpool: the whole bw window
  // bwdev: the window lives on --device (the CPU device stands in where there is no GPU: the
  // staging path then copies host to host) and the transport stages it with the device's ops.
  Result<std::shared_ptr<Device>> dev = Status(Code::kCancelled, "bwdev not requested");
  if (has("bwdev")) {
    dev = make_device(f.device);
    if (dev.is_ok()) {
      auto ops = runtime::device_memory_ops(*dev);
      if (ops.is_ok()) {
        opt.device_ops = *ops;
        opt.max_staging_bytes = size_t(1) << 30;  // the whole bw window
      } else {
        dev = ops.status();
      }
    }
  }
  auto tr = transport::make_ucx_transport("ucx://127.0.0.1:0", opt);
  if (!tr.is_ok()) {
    std::fprintf(stderr, "%s\n", tr.status().to_string().c_str());
    stop();
    return 1;
  }
  Transport& t = **tr;
  (void)transport::ucx_set_buffer_reuse(t, true, 0);
  Client c(t, srv->addr);
  c.window_mib_ = f.window_mib;
  if (dev.is_ok()) {
    c.dev_ = *dev;
    report.note("  bwdev: frames in " + (*dev)->name() +
                " memory, sent as a kCuda region (staged through pinned host memory unless UCX "
                "reads CUDA memory itself); theirs: ucx_perftest from host memory");
  }
  // Connect and show which UCX transports carry the endpoint (ucx_perftest inherits the same
  // environment, so UCP picks the same ones for it).
  if (Status s = c.send(control_frame("hello")); !s.is_ok()) {
    std::fprintf(stderr, "%s\n", s.to_string().c_str());
    stop();
    return 1;
  }
  for (int i = 0; i < 50; ++i) t.poll(0.01);
  const char* tls = std::getenv("UCX_TLS");
  report.note(std::string("server ") + srv->addr + ", UCX_TLS=" + (tls ? tls : "(default: all)") +
              applied + "; ucx_perftest runs with the same environment");
  if (auto d = transport::ucx_describe_endpoint(t, srv->addr); d.is_ok()) {
    std::istringstream in(*d);
    for (std::string line; std::getline(in, line);) {
      if (line.find("lane[") != std::string::npos) report.note("  " + line);
    }
  }

  if (has("bw") || has("lat")) {
    report.note("  bw, lat: " + std::to_string(repeat) + " trials per row" +
                (f.no_perftest ? "" : ", ours and ucx_perftest alternating") +
                "; ours, theirs: medians of the trials; ratio: median of the per-trial ratios; "
                "spread: (max - min) / median of our trials, %");
  }

  auto add = [&](const char* test, size_t size, long iters, const char* unit, const Trials& ours,
                 const Trials& theirs, const char* target, int64_t wrong) {
    Record r;
    r.set("test", test).set("size", size).set("size_text", format_size(size)).set("iters", iters);
    r.set("unit", unit).set("ours", ours.mid()).set("target", target).set("wrong", wrong);
    const double th = theirs.mid();
    // The median of the trials' own ratios: a shift of the machine's speed between two trials
    // moves both halves of a pair, so it cancels in the pair's ratio, not always in the
    // ratio of the two medians.
    const double ratio = !ours.ratios.empty() ? median(ours.ratios) : NAN;
    r.set("theirs", th).set("ratio", ratio);
    r.set("spread", ours.spread_pct()).set("repeat", int64_t(ours.v.size()));
    r.set("ours_min", ours.lo()).set("ours_max", ours.hi());
    r.set("theirs_min", theirs.lo()).set("theirs_max", theirs.hi());
    if (theirs.failed > 0) {
      report.note("  ucx_perftest: " + std::to_string(theirs.failed) + " of " +
                  std::to_string(theirs.failed + theirs.v.size()) + " runs failed, last: " +
                  theirs.error);
    }
    report.add(std::move(r));
  };
  auto error_row = [&](const char* test, size_t size, const Status& s) {
    Record err;
    err.set("test", test).set("size", size).set("size_text", format_size(size));
    err.set("error", s.to_string());
    report.add(std::move(err));
  };

  for (const char* mode : {"bw", "bwreg", "bwpool", "bwdev"}) {
    if (!has(mode)) continue;
    const std::string_view m(mode);
    const auto src = m == "bwreg"    ? Client::Source::kRegistered
                     : m == "bwdev"  ? Client::Source::kDevice
                     : m == "bwpool" ? Client::Source::kPool
                                     : Client::Source::kVectors;
    if (src == Client::Source::kDevice && c.dev_ == nullptr) {
      error_row(mode, 0, dev.status());
      continue;
    }
    for (size_t size : *bw_sizes) {
      if (size < kFrameHeaderBytes || size > kMaxFrame) continue;
      long iters = std::clamp<long>(long(bw_bytes / double(size)), 8, 1000000);
      long warm = std::max<long>(2, iters / 10);
      int64_t wrong = 0;
      Trials ours, theirs;
      // Warm-up, untimed, once per row: the pools and the connection stay warm between trials.
      Status st = c.bw(size, warm, &wrong, src).status();
      for (int i = 0; i < repeat && st.is_ok(); ++i) {
        auto r = c.bw(size, iters, &wrong, src);
        if (!r.is_ok()) {
          st = r.status();
          break;
        }
        ours.v.push_back(double(size) * double(iters) / *r / 1e9);
        // ucx_perftest reports MB/s of 2^20 B/s (field 5: overall bandwidth).
        if (!f.no_perftest) {
          theirs.take(run_perftest(f.perftest, "ucp_am_bw", size, iters, warm), 5,
                      1048576.0 / 1e9, &ours);
        }
      }
      if (!st.is_ok()) {
        error_row(mode, size, st);
        break;
      }
      // The target is for frames in host memory; bwdev shows what device memory costs.
      const bool target = size >= (size_t(1) << 20) && src != Client::Source::kDevice;
      add(mode, size, iters, "GB/s", ours, theirs, target ? ">=0.90" : "-", wrong);
    }
  }
  if (has("lat")) {
    for (size_t size : *lat_sizes) {
      if (size < kFrameHeaderBytes || size > kMaxFrame) continue;
      long iters = std::max<long>(20, long(lat_iters / (1 + double(size) / 16384)));
      long warm = std::max<long>(5, iters / 10);
      int64_t wrong = 0;
      Trials ours, theirs;
      Status st = Ok();
      for (int i = 0; i < repeat; ++i) {
        auto r = c.lat(size, iters, warm, &wrong);
        if (!r.is_ok()) {
          st = r.status();
          break;
        }
        ours.v.push_back(median(*r) * 1e6);
        // Field 1: the 50th percentile of the overhead, usec (half a round trip for a lat test).
        if (!f.no_perftest) {
          theirs.take(run_perftest(f.perftest, "ucp_am_lat", size, iters, warm), 1, 1.0, &ours);
        }
      }
      if (!st.is_ok()) {
        error_row("lat", size, st);
        break;
      }
      add("lat", size, iters, "us", ours, theirs, size <= 64 ? "<=1.50" : "-", wrong);
    }
  }
  if (has("idle")) {
    // idle_conns connections to the server: ours plus idle_conns - 1 more transports.
    std::vector<std::unique_ptr<Transport>> extra;
    Status st = Ok();
    for (int i = 1; i < f.idle_conns && st.is_ok(); ++i) {
      auto x = transport::make_ucx_transport("ucx://127.0.0.1:0", opt);
      if (!x.is_ok()) {
        st = x.status();
        break;
      }
      st = (*x)->send(srv->addr, control_frame("hello"), nullptr);
      extra.push_back(std::move(x).value());
    }
    // Let every connection finish its handshake before the quiet period.
    for (int round = 0; round < 100 && st.is_ok(); ++round) {
      for (auto& x : extra) x->poll(0);
      t.poll(0.01);
    }
    Result<std::string> reply = Status(Code::kCancelled, "");
    if (st.is_ok()) st = c.send(control_frame("idle " + std::to_string(f.idle_s)));
    if (st.is_ok()) reply = c.wait_control(f.idle_s + 30);
    Record r;
    r.set("test", "idle").set("size", int64_t(f.idle_conns)).set("size_text",
                                                                  std::to_string(f.idle_conns));
    if (st.is_ok() && reply.is_ok() && reply->starts_with("idle ")) {
      double pct = std::atof(reply->c_str() + 5) * 100;
      r.set("iters", int64_t(0)).set("unit", "%core").set("ours", pct).set("theirs", 1.0);
      r.set("ratio", pct / 1.0).set("target", "<=1.00").set("wrong", int64_t(0));
      report.note("  idle: server CPU over " + std::to_string(f.idle_s) +
                  " s with " + std::to_string(f.idle_conns) +
                  " connections; theirs = the 1% target, not a ucx_perftest figure");
    } else {
      r.set("error", !st.is_ok() ? st.to_string() : reply.status().to_string());
    }
    report.add(std::move(r));
  }
  (void)c.send(control_frame("quit"));
  for (int i = 0; i < 20; ++i) t.poll(0.01);
  stop();
  return report.finish();
}

#endif  // MYCEL_HAVE_UCX

}  // namespace
}  // namespace mycel::bench

namespace mycel::cli {

void add_bench_transport(CLI::App& bench, Common& common) {
  auto f = std::make_shared<bench::TransportFlags>();
  auto* cmd = bench.add_subcommand(
      "transport",
      "UCX transport between two processes on loopback: bandwidth against frame size, ping-pong "
      "latency and idle CPU, next to ucx_perftest (ucp_am_bw / ucp_am_lat) run with the same "
      "sizes and UCX environment");
  cmd->add_option("--tests", f->tests, "tests to run: bw, bwreg, bwpool, bwdev, lat, idle")->capture_default_str();
  cmd->add_option("--bw-sizes", f->bw_sizes, "frame sizes for bw (bytes; K M G suffixes)")
      ->capture_default_str();
  cmd->add_option("--lat-sizes", f->lat_sizes, "frame sizes for lat (bytes, >= 64)")
      ->capture_default_str();
  cmd->add_option("--bw-bytes", f->bw_bytes,
                  "bytes moved per bw trial (iterations = this / size, at least 8)")
      ->capture_default_str();
  auto* repeat = cmd->add_option("--repeat", f->repeat,
                                 "trials per bw and lat row, ours and ucx_perftest alternating; "
                                 "the medians are reported, spread = (max - min) / median of "
                                 "ours (default 5; 2 with --quick)")
                     ->check(CLI::Range(1, 1000));
  cmd->add_option("--lat-iters", f->lat_iters, "ping-pongs at small sizes (fewer for large)")
      ->capture_default_str();
  cmd->add_option("--window-mib", f->window_mib,
                  "bw: MiB in flight (at least 2 and at most 256 frames)")
      ->capture_default_str();
  cmd->add_option("--idle-conns", f->idle_conns, "connections to the idle server")
      ->capture_default_str();
  cmd->add_option("--idle-seconds", f->idle_s, "length of the idle measurement")
      ->capture_default_str();
  cmd->add_option("--perftest", f->perftest, "the ucx_perftest executable")->capture_default_str();
  cmd->add_flag("--no-perftest", f->no_perftest, "do not run ucx_perftest");
  cmd->add_flag("--json", f->json, "print a JSON array of rows");
  cmd->add_flag("--quick", f->quick, "a short run (fewer sizes, iterations and trials)");
  cmd->add_option("--role", f->role, "client (default) or server (started by the client)")
      ->check(CLI::IsMember({"client", "server"}));
  cmd->add_option("--listen", f->listen, "server: listen address")->capture_default_str();
  cmd->callback([f, &common, repeat] {
    f->device = common.device;
    // --quick is a smoke run: two trials still show a spread, at twice a single run's time.
    if (f->quick && repeat->count() == 0) f->repeat = 2;
#if MYCEL_HAVE_UCX
    // glibc returns freed memory at the top of the heap to the kernel (trim) and takes it back
    // on the next allocation: at hundreds of thousands of frames per second that churn of
    // page faults costs more than the transfers themselves (seen with perf). Keep it.
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    int rc = f->role == "server" ? bench::run_server(*f) : bench::run_client(*f);
#else
    std::fprintf(stderr, "mycel bench transport: this build has no UCX (install libucx-dev)\n");
    int rc = 2;
#endif
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
