// Real peer processes in tests: the mycel binary, the data folder, a free loopback port, a child
// process with its output in a log file, a bounded wait for it (a child still running at the
// limit is killed: the test fails, it never hangs), a peer among `mycel run`'s children, and
// reading what the peers wrote. Shared by the swarm, resume and live-vs-sim tests (built with
// MYCEL_SOURCE_DIR and MYCEL_BINARY_DIR defined, as every test binary is).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace mycel::test {

inline std::string mycel_bin() { return std::string(MYCEL_BINARY_DIR) + "/bin/mycel"; }

// The peers run in ctest's working folder: point them (MYCEL_DATA) at the source tree's data
// folder unless it is set; true when spambase is there.
inline bool have_spambase() {
  const char* d = std::getenv("MYCEL_DATA");
  std::filesystem::path dir = d && *d ? std::filesystem::path(d) : std::filesystem::path(MYCEL_SOURCE_DIR) / "data";
  setenv("MYCEL_DATA", dir.c_str(), 1);
  return std::filesystem::exists(dir / "spambase");
}

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The number after "key": in a JSON text (-1 when absent).
inline double json_number(const std::string& text, const std::string& key) {
  auto pos = text.find("\"" + key + "\":");
  if (pos == std::string::npos) return -1;
  return std::strtod(text.c_str() + pos + key.size() + 3, nullptr);
}

// A TCP port free on 127.0.0.1 now (the kernel's choice).
inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// Runs args[0] with args, stdout and stderr to `log`, one OpenBLAS thread; `in_child` (if
// given) runs in the child just before the exec (a resource limit, say).
inline pid_t spawn(const std::vector<std::string>& args, const std::string& log,
                   const std::function<void()>& in_child = {}) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen(log.c_str(), "w");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    if (in_child) in_child();
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// The exit code (128 + signal when killed); -1 when still running after `limit` (then killed).
inline int wait_exit(pid_t pid, std::chrono::seconds limit = std::chrono::seconds(300)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int st = 0;
  while (waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// The child of `parent` (a `mycel run`) started with --id ID, waiting up to 10 s for it; -1 if none.
inline pid_t find_peer_child(pid_t parent, int id) {
  const std::string p = std::to_string(parent);
  const std::string arg = std::string("--id") + '\0' + std::to_string(id) + '\0';
  for (int tries = 0; tries < 100; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::istringstream kids(slurp("/proc/" + p + "/task/" + p + "/children"));
    for (pid_t k; kids >> k;)
      if (slurp("/proc/" + std::to_string(k) + "/cmdline").find(arg) != std::string::npos) return k;
  }
  return -1;
}

}  // namespace mycel::test
