// The data cache (models/data/cache.h): load_peer_data gives byte for byte what data::load +
// data::partition + data::peer_dataset give, reuses its file, rebuilds a bad one, converts once
// when many race on a cold cache, and falls back when the data folder is not writable. First on
// a small pendigits-shaped folder the test writes, then on spambase and fashion-mnist when
// scripts/fetch-data.sh --tests has placed them (skipped with the fetch command if not).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "common/log.h"
#include "data_test_util.h"
#include "models/data/cache.h"

namespace mycel::data {
namespace {

using testing_util::real_data_dir;
using testing_util::ScratchDir;
using testing_util::write_text;

// The path LivePeer::setup takes today.
PeerData old_path(std::string_view name, const LoadOptions& opt, const PartitionSpec& spec,
                  size_t holders, std::optional<size_t> shard, uint64_t seed) {
  PeerData pd;
  auto s = load(name, opt);
  EXPECT_TRUE(s) << s.status().to_string();
  if (!s) return pd;
  auto part = partition(s->train.y, s->train.classes, holders, spec, seed);
  EXPECT_TRUE(part) << part.status().to_string();
  if (!part) return pd;
  if (shard) {
    auto d = peer_dataset(s->train, *part, *shard);
    EXPECT_TRUE(d) << d.status().to_string();
    if (d) pd.shard = std::move(*d);
  } else {
    pd.shard = s->test;
  }
  pd.test = s->test;
  pd.train_n = s->train.n;
  pd.classes = s->train.classes;
  return pd;
}

::testing::AssertionResult same(const Dataset& a, const Dataset& b) {
  if (a.name != b.name || a.n != b.n || a.dim != b.dim || a.channels != b.channels ||
      a.height != b.height || a.width != b.width || a.classes != b.classes)
    return ::testing::AssertionFailure() << "shape differs: " << a.name << " " << a.n << "x"
                                         << a.dim << " vs " << b.name << " " << b.n << "x" << b.dim;
  if (a.x.size() != b.x.size() || a.y.size() != b.y.size())
    return ::testing::AssertionFailure() << "sizes differ";
  if (!a.x.empty() && std::memcmp(a.x.data(), b.x.data(), a.x.size() * sizeof(float)) != 0)
    return ::testing::AssertionFailure() << "features differ";
  if (a.y != b.y) return ::testing::AssertionFailure() << "labels differ";
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same(const PeerData& a, const PeerData& b) {
  if (auto r = same(a.shard, b.shard); !r) return r << " (shard)";
  if (auto r = same(a.test, b.test); !r) return r << " (test)";
  if (a.train_n != b.train_n || a.classes != b.classes)
    return ::testing::AssertionFailure() << "train_n / classes differ";
  return ::testing::AssertionSuccess();
}

// A pendigits folder: 16 integer features and a label, `ntr` train rows, `nte` test rows.
void write_pendigits(const std::string& dir, size_t ntr, size_t nte) {
  auto rows = [](size_t n, size_t salt) {
    std::string s;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < 16; ++j) s += std::to_string((i * 31 + j * 7 + salt) % 101) + ",";
      s += std::to_string((i * 7 + salt) % 10) + "\n";
    }
    return s;
  };
  write_text(dir + "/pendigits/pendigits.tra", rows(ntr, 0));
  write_text(dir + "/pendigits/pendigits.tes", rows(nte, 3));
}

struct FileStamp {
  ino_t ino = 0;
  long long mtime_ns = 0;
  off_t size = 0;
};
FileStamp stamp(const std::string& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return {st.st_ino, st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_size};
}

size_t count_lines(const log::Capture& cap, std::string_view needle) {
  size_t n = 0;
  for (const auto& l : cap.lines()) n += l.find(needle) != std::string::npos;
  return n;
}

class DataCache : public ::testing::Test {
 protected:
  void SetUp() override {
    write_pendigits(dir_.path(), 997, 301);
    opt_.dir = dir_.path();
    copt_.fallback = dir_.file("fallback");
  }
  std::string expected_file() const {
    return cache_path(dir_.path() + "/.cache", "pendigits", cache_key("pendigits", opt_));
  }
  ScratchDir dir_;
  LoadOptions opt_;
  CacheOptions copt_;
  PartitionSpec iid_;
};

TEST_F(DataCache, KeyCoversTheContentsOptionsAndTheSources) {
  const std::string k = cache_key("pendigits", opt_);
  EXPECT_NE(k.find("pendigits.tra"), std::string::npos) << k;
  LoadOptions o = opt_;
  o.max_train = 10;
  o.max_test = 5;  // prefixes are applied on read: the same file serves them
  EXPECT_EQ(cache_key("pendigits", o), k);
  o = opt_;
  o.seed = 2;
  EXPECT_NE(cache_key("pendigits", o), k);
  o = opt_;
  o.test_fraction = 0.25;
  EXPECT_NE(cache_key("pendigits", o), k);
  o = opt_;
  o.normalize_images = true;
  EXPECT_NE(cache_key("pendigits", o), k);
  EXPECT_NE(cache_key("letter", opt_), k);
  write_pendigits(dir_.path(), 998, 301);  // a source file changed
  EXPECT_NE(cache_key("pendigits", opt_), k);
  EXPECT_NE(cache_path("/c", "a/b c", k).find("/c/a_b_c-"), std::string::npos);
}

TEST_F(DataCache, SameBytesAsTheOldPath) {
  auto dir = parse_partition_spec("dirichlet:0.5");
  ASSERT_TRUE(dir);
  for (const PartitionSpec& spec : {iid_, *dir}) {
    for (size_t max_train : {size_t{0}, size_t{600}}) {
      for (size_t max_test : {size_t{0}, size_t{50}, size_t{5000}}) {
        LoadOptions o = opt_;
        o.max_train = max_train;
        o.max_test = max_test;
        for (size_t shard : {size_t{0}, size_t{3}, size_t{6}}) {
          auto got = load_peer_data("pendigits", o, spec, 7, shard, 11, copt_);
          ASSERT_TRUE(got) << got.status().to_string();
          EXPECT_EQ(got->cache_file, expected_file());
          EXPECT_TRUE(same(*got, old_path("pendigits", o, spec, 7, shard, 11)))
              << to_string(spec) << " max_train " << max_train << " max_test " << max_test
              << " shard " << shard;
        }
      }
    }
  }
}

TEST_F(DataCache, WithoutAShardTheTestSetIsTheShard) {
  LoadOptions o = opt_;
  o.max_test = 100;
  auto got = load_peer_data("pendigits", o, iid_, 4, std::nullopt, 1, copt_);
  ASSERT_TRUE(got) << got.status().to_string();
  EXPECT_EQ(got->shard.n, 100u);
  EXPECT_TRUE(same(*got, old_path("pendigits", o, iid_, 4, std::nullopt, 1)));
}

TEST_F(DataCache, ErrorsOfTheOldPathStay) {
  auto r = load_peer_data("pendigits", opt_, iid_, 4, 4, 1, copt_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kOutOfRange);
  r = load_peer_data("pendigits", opt_, iid_, 5000, 0, 1, copt_);  // more peers than samples
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  LoadOptions o = opt_;
  o.dir = dir_.file("empty");
  std::filesystem::create_directories(o.dir);
  r = load_peer_data("letter", o, iid_, 4, 0, 1, copt_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("scripts/fetch-data.sh letter"), std::string::npos);
}

TEST_F(DataCache, SecondCallReadsTheSameFile) {
  log::Capture cap;
  auto a = load_peer_data("pendigits", opt_, iid_, 4, 1, 1, copt_);
  ASSERT_TRUE(a) << a.status().to_string();
  ASSERT_TRUE(std::filesystem::exists(expected_file()));
  const FileStamp before = stamp(expected_file());
  auto b = load_peer_data("pendigits", opt_, iid_, 4, 2, 1, copt_);
  ASSERT_TRUE(b) << b.status().to_string();
  const FileStamp after = stamp(expected_file());
  EXPECT_EQ(before.ino, after.ino);
  EXPECT_EQ(before.mtime_ns, after.mtime_ns);
  EXPECT_EQ(count_lines(cap, "data cache: wrote"), 1u);
  EXPECT_TRUE(same(*b, old_path("pendigits", opt_, iid_, 4, 2, 1)));
}

// Damages the built file with `damage`, then expects a rebuild (a new file, one warning) and the
// same result as the old path.
void expect_rebuilt(DataCache* t, const std::string& path, const LoadOptions& opt,
                    const CacheOptions& copt, void (*damage)(const std::string&),
                    std::string_view what) {
  SCOPED_TRACE(std::string(what));
  PartitionSpec iid;
  ASSERT_TRUE(load_peer_data("pendigits", opt, iid, 4, 0, 1, copt));
  const FileStamp before = stamp(path);
  damage(path);
  log::Capture cap;
  auto r = load_peer_data("pendigits", opt, iid, 4, 3, 1, copt);
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_TRUE(same(*r, old_path("pendigits", opt, iid, 4, 3, 1)));
  EXPECT_EQ(count_lines(cap, "rebuilding"), 1u);
  EXPECT_EQ(count_lines(cap, "data cache: wrote"), 1u);
  EXPECT_NE(stamp(path).ino, before.ino);
  (void)t;
}

void overwrite(const std::string& path, long long at, size_t n, char byte) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  const auto size = static_cast<long long>(std::filesystem::file_size(path));
  if (at < 0) at += size;
  f.seekp(at);
  std::vector<char> b(n, byte);
  f.write(b.data(), static_cast<std::streamsize>(n));
}

TEST_F(DataCache, BadFilesAreRebuilt) {
  const std::string p = expected_file();
  expect_rebuilt(
      this, p, opt_, copt_,
      [](const std::string& f) {
        std::filesystem::resize_file(f, std::filesystem::file_size(f) / 2);
      },
      "truncated");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { std::filesystem::resize_file(f, 100); },
      "truncated inside the header");
  expect_rebuilt(
      this, p, opt_, copt_,
      [](const std::string& f) { std::ofstream(f, std::ios::app) << "trailing"; },
      "trailing bytes");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { overwrite(f, 0, 1, 'X'); }, "magic");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { overwrite(f, 8, 1, 9); }, "version");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { overwrite(f, 40, 1, 3); },
      "a count (checksum)");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { overwrite(f, 140, 1, '#'); }, "the key");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { overwrite(f, 1024, 1024, '\xff'); },
      "labels out of range");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { overwrite(f, -64, 64, '\xff'); },
      "NaN in the test features");
  expect_rebuilt(
      this, p, opt_, copt_, [](const std::string& f) { std::filesystem::resize_file(f, 0); },
      "empty");
}

TEST_F(DataCache, ThreadsRacingOnAColdCacheConvertOnce) {
  log::Capture cap;
  constexpr size_t kThreads = 6;
  std::vector<Result<PeerData>> got(kThreads, Result<PeerData>(Error(Code::kInternal, "not run")));
  std::vector<std::thread> th;
  for (size_t i = 0; i < kThreads; ++i)
    th.emplace_back(
        [&, i] { got[i] = load_peer_data("pendigits", opt_, iid_, kThreads, i, 5, copt_); });
  for (auto& t : th) t.join();
  for (size_t i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(got[i]) << got[i].status().to_string();
    EXPECT_TRUE(same(*got[i], old_path("pendigits", opt_, iid_, kThreads, i, 5))) << i;
  }
  EXPECT_EQ(count_lines(cap, "data cache: wrote"), 1u);
}

TEST_F(DataCache, ProcessesRacingOnAColdCacheAgree) {
  constexpr size_t kProcs = 6;
  std::vector<PeerData> want;
  for (size_t i = 0; i < kProcs; ++i)
    want.push_back(old_path("pendigits", opt_, iid_, kProcs, i, 5));
  std::vector<pid_t> kids;
  for (size_t i = 0; i < kProcs; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto r = load_peer_data("pendigits", opt_, iid_, kProcs, i, 5, copt_);
      ::_exit(!r ? 2 : same(*r, want[i]) ? 0 : 1);
    }
    kids.push_back(pid);
  }
  for (size_t i = 0; i < kProcs; ++i) {
    int status = 0;
    ASSERT_EQ(::waitpid(kids[i], &status, 0), kids[i]);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "child " << i << " status " << status;
  }
  EXPECT_TRUE(std::filesystem::exists(expected_file()));
  // No temporary files left behind.
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path() + "/.cache")) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
    ++files;
  }
  EXPECT_EQ(files, 2u);  // the .bin and its .lock
}

TEST_F(DataCache, UnwritableDataFolderFallsBack) {
  std::ofstream(dir_.file(".cache")) << "a file where the cache folder would be";
  auto r = load_peer_data("pendigits", opt_, iid_, 4, 1, 1, copt_);
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->cache_file, cache_path(copt_.fallback, "pendigits", cache_key("pendigits", opt_)));
  EXPECT_TRUE(std::filesystem::exists(r->cache_file));
  EXPECT_TRUE(same(*r, old_path("pendigits", opt_, iid_, 4, 1, 1)));
  // The default fallback: $XDG_CACHE_HOME/mycel.
  const char* old = std::getenv("XDG_CACHE_HOME");
  const std::string saved = old ? old : "";
  ::setenv("XDG_CACHE_HOME", dir_.file("xdg").c_str(), 1);
  auto x = load_peer_data("pendigits", opt_, iid_, 4, 2, 1, CacheOptions{});
  if (old)
    ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
  else
    ::unsetenv("XDG_CACHE_HOME");
  ASSERT_TRUE(x) << x.status().to_string();
  EXPECT_EQ(x->cache_file.rfind(dir_.file("xdg/mycel/pendigits-"), 0), 0u) << x->cache_file;
  EXPECT_TRUE(same(*x, old_path("pendigits", opt_, iid_, 4, 2, 1)));
}

TEST_F(DataCache, ReadOnlyDataFolderFallsBack) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: a mode 0555 folder is still writable";
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0555), 0);
  auto r = load_peer_data("pendigits", opt_, iid_, 4, 1, 1, copt_);
  ::chmod(dir_.path().c_str(), 0755);
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_EQ(r->cache_file.rfind(copt_.fallback, 0), 0u) << r->cache_file;
  EXPECT_TRUE(same(*r, old_path("pendigits", opt_, iid_, 4, 1, 1)));
}

TEST_F(DataCache, NothingWritableLoadsInMemory) {
  std::ofstream(dir_.file(".cache")) << "x";
  std::ofstream(copt_.fallback) << "x";
  log::Capture cap;
  auto r = load_peer_data("pendigits", opt_, iid_, 4, 1, 1, copt_);
  ASSERT_TRUE(r) << r.status().to_string();
  EXPECT_TRUE(r->cache_file.empty());
  EXPECT_TRUE(same(*r, old_path("pendigits", opt_, iid_, 4, 1, 1)));
  EXPECT_EQ(count_lines(cap, "in memory"), 1u);
}

// --- the real data sets -----------------------------------------------------------------------

void real_equality(std::string_view name, const std::vector<std::string>& specs, size_t peers,
                   size_t max_test) {
  ScratchDir cache;
  CacheOptions copt;
  copt.dir = cache.path();  // a cold cache, away from the data folder
  copt.fallback = cache.file("fallback");
  LoadOptions o;
  o.dir = real_data_dir();
  o.max_test = max_test;
  auto first = load_peer_data(name, o, PartitionSpec{}, peers, 0, 3, copt);
  if (!first && first.status().code() == Code::kNotFound)
    GTEST_SKIP() << name << " not in " << real_data_dir() << ": run scripts/fetch-data.sh --tests ("
                 << first.status().message() << ")";
  ASSERT_TRUE(first) << first.status().to_string();
  const std::string file = first->cache_file;
  ASSERT_EQ(file.rfind(cache.path(), 0), 0u) << file;
  const FileStamp before = stamp(file);
  auto split = load(name, o);
  ASSERT_TRUE(split) << split.status().to_string();
  for (const auto& s : specs) {
    auto spec = parse_partition_spec(s);
    ASSERT_TRUE(spec) << s;
    auto part = partition(split->train.y, split->train.classes, peers, *spec, 3);
    ASSERT_TRUE(part) << part.status().to_string();
    for (size_t shard : {size_t{0}, size_t{1}, peers / 2, peers - 1}) {
      auto got = load_peer_data(name, o, *spec, peers, shard, 3, copt);
      ASSERT_TRUE(got) << got.status().to_string();
      auto want = peer_dataset(split->train, *part, shard);
      ASSERT_TRUE(want);
      EXPECT_TRUE(same(got->shard, *want)) << name << " " << s << " shard " << shard;
      EXPECT_TRUE(same(got->test, split->test)) << name << " " << s << " shard " << shard;
      EXPECT_EQ(got->train_n, split->train.n);
      EXPECT_EQ(got->cache_file, file);
    }
  }
  auto server = load_peer_data(name, o, PartitionSpec{}, peers, std::nullopt, 3, copt);
  ASSERT_TRUE(server) << server.status().to_string();
  EXPECT_TRUE(same(server->shard, split->test));
  const FileStamp after = stamp(file);
  EXPECT_EQ(after.ino, before.ino);
  EXPECT_EQ(after.mtime_ns, before.mtime_ns);
}

TEST(DataCacheReal, Spambase) {
  real_equality("spambase", {"iid", "dirichlet:0.5", "shards:2"}, 16, 0);
  if (HasFatalFailure() || IsSkipped()) return;
  real_equality("spambase", {"iid"}, 16, 200);
}

TEST(DataCacheReal, FashionMnist) {
  real_equality("fashion-mnist", {"iid", "dirichlet:0.5", "one-class"}, 16, 2000);
}

}  // namespace
}  // namespace mycel::data
