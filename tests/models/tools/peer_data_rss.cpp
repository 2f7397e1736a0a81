// Peak memory of a peer's data, old path against the cache: forks one process per peer (as
// `mycel run` starts them) and has each load its shard and its evaluation subset, either as
// LivePeer::setup does today (data::load of the whole set, partition, peer_dataset) or through
// data::load_peer_data. Each child reports its peak RSS (VmHWM), its RSS once loaded (VmRSS),
// and a checksum of what it loaded; the checksums of the two paths must agree (a mismatch is
// counted as wrong and the exit code is 1).
//
//   peer_data_rss [--data DIR] [--sets fashion-mnist,mnist] [--peers 16] [--partition iid]
//                 [--max-test 2000] [--old-jobs 4] [--cache-dir DIR]
//
// The old path runs --old-jobs children at a time (each holds the whole data set); the new one
// runs all peers at once, first on a cold cache (the file removed: one child converts, the
// others wait on the lock) and then on a warm one.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "models/data/cache.h"
#include "models/data/dataset.h"
#include "models/data/partition.h"

namespace {

using namespace mycel::data;

struct Report {
  int ok = 0;
  long peak_kb = 0, rss_kb = 0, minflt = 0;
  double sys_ms = 0;
  uint64_t shard_n = 0, test_n = 0, checksum = 0;
  double ms = 0;
};

long status_kb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0) return std::atol(line.c_str() + n + 1);
  return -1;
}

uint64_t fnv(const void* p, size_t n, uint64_t h) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

uint64_t checksum(const Dataset& a, const Dataset& b) {
  uint64_t h = 1469598103934665603ull;
  for (const Dataset* d : {&a, &b}) {
    h = fnv(d->x.data(), d->x.size() * sizeof(float), h);
    h = fnv(d->y.data(), d->y.size() * sizeof(int32_t), h);
  }
  return h;
}

struct Job {
  std::string name;
  LoadOptions lo;
  PartitionSpec spec;
  size_t peers = 16;
  CacheOptions copt;
};

// What one child does; the datasets stay alive until RSS is read, as a peer keeps them.
Report child(const Job& j, size_t shard, bool use_cache) {
  Report r;
  const auto t0 = std::chrono::steady_clock::now();
  Dataset keep_shard, keep_test;
  if (use_cache) {
    auto pd = load_peer_data(j.name, j.lo, j.spec, j.peers, shard, 1, j.copt);
    if (!pd) {
      std::fprintf(stderr, "child %zu: %s\n", shard, pd.status().to_string().c_str());
      return r;
    }
    keep_shard = std::move(pd->shard);
    keep_test = std::move(pd->test);
  } else {
    auto split = load(j.name, j.lo);
    if (!split) {
      std::fprintf(stderr, "child %zu: %s\n", shard, split.status().to_string().c_str());
      return r;
    }
    auto part = partition(split->train.y, split->train.classes, j.peers, j.spec, 1);
    if (!part) return r;
    auto d = peer_dataset(split->train, *part, shard);
    if (!d) return r;
    keep_shard = std::move(*d);
    keep_test = std::move(split->test);
  }  // the split is freed here, as at the end of LivePeer::setup
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  r.peak_kb = status_kb("VmHWM:");
  r.rss_kb = status_kb("VmRSS:");
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  r.minflt = ru.ru_minflt;
  r.sys_ms = static_cast<double>(ru.ru_stime.tv_sec) * 1e3 +
             static_cast<double>(ru.ru_stime.tv_usec) / 1e3;
  r.shard_n = keep_shard.n;
  r.test_n = keep_test.n;
  r.checksum = checksum(keep_shard, keep_test);
  r.ok = 1;
  return r;
}

// Runs `peers` children, at most `jobs` at a time; reports in shard order.
std::vector<Report> run(const Job& j, bool use_cache, size_t jobs) {
  std::vector<Report> out(j.peers);
  std::vector<std::pair<pid_t, int>> live;  // pid, read end
  std::vector<size_t> live_shard;
  auto reap = [&](size_t k) {
    Report r;
    const ssize_t got = ::read(live[k].second, &r, sizeof r);
    ::close(live[k].second);
    int st = 0;
    ::waitpid(live[k].first, &st, 0);
    if (got == static_cast<ssize_t>(sizeof r)) out[live_shard[k]] = r;
    live.erase(live.begin() + static_cast<ptrdiff_t>(k));
    live_shard.erase(live_shard.begin() + static_cast<ptrdiff_t>(k));
  };
  for (size_t s = 0; s < j.peers; ++s) {
    while (live.size() >= jobs) reap(0);
    int fds[2];
    if (::pipe(fds) != 0) std::abort();
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      const Report r = child(j, s, use_cache);
      (void)!::write(fds[1], &r, sizeof r);
      ::_exit(0);
    }
    ::close(fds[1]);
    live.emplace_back(pid, fds[0]);
    live_shard.push_back(s);
  }
  while (!live.empty()) reap(0);
  return out;
}

// An empty child: what a forked process of this program holds before it loads anything.
long baseline_kb() {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const long kb = status_kb("VmHWM:");
    (void)!::write(fds[1], &kb, sizeof kb);
    ::_exit(0);
  }
  ::close(fds[1]);
  long kb = 0;
  (void)!::read(fds[0], &kb, sizeof kb);
  ::close(fds[0]);
  ::waitpid(pid, nullptr, 0);
  return kb;
}

void print(const char* label, const std::vector<Report>& r) {
  std::vector<long> peak, rss, flt;
  std::vector<double> sys;
  double ms = 0;
  for (const auto& x : r) {
    peak.push_back(x.peak_kb);
    rss.push_back(x.rss_kb);
    flt.push_back(x.minflt);
    sys.push_back(x.sys_ms);
    ms = std::max(ms, x.ms);
  }
  std::printf("  %-10s peak RSS (VmHWM) MiB per child:", label);
  for (long v : peak) std::printf(" %.1f", static_cast<double>(v) / 1024.0);
  std::sort(peak.begin(), peak.end());
  std::sort(rss.begin(), rss.end());
  std::sort(flt.begin(), flt.end());
  std::sort(sys.begin(), sys.end());
  std::printf(
      "\n  %-10s peak min %.1f median %.1f max %.1f MiB; RSS once loaded median %.1f MiB;"
      " slowest child %.0f ms\n",
      label, static_cast<double>(peak.front()) / 1024.0,
      static_cast<double>(peak[peak.size() / 2]) / 1024.0,
      static_cast<double>(peak.back()) / 1024.0, static_cast<double>(rss[rss.size() / 2]) / 1024.0,
      ms);
  std::printf("  %-10s median minor page faults %ld, system time %.0f ms\n", label,
              flt[flt.size() / 2], sys[sys.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = default_data_dir(), sets = "fashion-mnist,mnist", part = "iid";
  std::string cache_dir = (std::filesystem::temp_directory_path() / "peer_data_rss-cache").string();
  size_t peers = 16, max_test = 2000, old_jobs = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--data")
      data = v;
    else if (k == "--sets")
      sets = v;
    else if (k == "--peers")
      peers = std::stoul(v);
    else if (k == "--partition")
      part = v;
    else if (k == "--max-test")
      max_test = std::stoul(v);
    else if (k == "--old-jobs")
      old_jobs = std::stoul(v);
    else if (k == "--cache-dir")
      cache_dir = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  auto spec = parse_partition_spec(part);
  if (!spec) {
    std::fprintf(stderr, "%s\n", spec.status().to_string().c_str());
    return 2;
  }
  std::printf("peer_data_rss: %zu peers, partition %s, max_test %zu, data %s, cache %s\n", peers,
              part.c_str(), max_test, data.c_str(), cache_dir.c_str());
  std::printf("  baseline (an empty forked child): %.1f MiB\n",
              static_cast<double>(baseline_kb()) / 1024.0);
  int wrong = 0;
  std::stringstream ss(sets);
  for (std::string name; std::getline(ss, name, ',');) {
    Job j;
    j.name = name;
    j.lo.dir = data;
    j.lo.max_test = max_test;
    j.spec = *spec;
    j.peers = peers;
    j.copt.dir = cache_dir;
    const std::string file = cache_path(cache_dir, name, cache_key(name, j.lo));
    std::printf("%s:\n", name.c_str());
    const auto old_r = run(j, false, old_jobs);
    if (!old_r[0].ok) {
      std::printf("  skipped: cannot load %s (run scripts/fetch-data.sh %s)\n", name.c_str(),
                  name.c_str());
      continue;
    }
    std::filesystem::remove(file);
    const auto cold = run(j, true, peers);
    const auto warm = run(j, true, peers);
    for (size_t s = 0; s < peers; ++s) {
      for (const auto* r : {&cold[s], &warm[s]}) {
        if (!old_r[s].ok || !r->ok || r->checksum != old_r[s].checksum ||
            r->shard_n != old_r[s].shard_n || r->test_n != old_r[s].test_n)
          ++wrong;
      }
    }
    std::printf("  shard %llu rows, test %llu rows; cache file %.1f MiB\n",
                static_cast<unsigned long long>(old_r[0].shard_n),
                static_cast<unsigned long long>(old_r[0].test_n),
                static_cast<double>(std::filesystem::file_size(file)) / (1 << 20));
    print("old", old_r);
    print("cache cold", cold);
    print("cache warm", warm);
  }
  std::printf("wrong: %d\n", wrong);
  return wrong ? 1 : 0;
}
