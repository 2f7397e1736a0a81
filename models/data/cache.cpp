// The per-host cache of loaded data sets (models/data/cache.h): file layout, atomic build under
// an flock, validation, and the reads of one peer's rows.
#include "models/data/cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/log.h"

namespace mycel::data {
namespace {

constexpr std::array<char, 8> kMagic = {'M', 'Y', 'C', 'E', 'L', 'D', 'C', '1'};
constexpr uint32_t kFormatVersion = 1;
// Bump when data::load's preprocessing changes what it returns for the same files and options
// (a fix to standardize, say): older cache files then stop matching instead of serving stale
// values.
constexpr uint32_t kContentsVersion = 1;
constexpr uint64_t kAlign = 64;
constexpr uint32_t kMaxKeyBytes = 1u << 20;

struct SectionHeader {
  uint64_t n = 0, dim = 0;
  int32_t channels = 0, height = 0, width = 0, classes = 0;
  uint64_t labels_offset = 0, features_offset = 0;
};

struct FileHeader {
  std::array<char, 8> magic{};
  uint32_t version = 0;
  uint32_t key_bytes = 0;
  uint64_t header_bytes = 0;  // this struct + the key, rounded up to kAlign
  uint64_t file_bytes = 0;
  SectionHeader train, test;
  uint64_t checksum = 0;  // FNV-1a of this struct (checksum 0) and the key
};
static_assert(sizeof(SectionHeader) == 48 && sizeof(FileHeader) == 136, "no padding bytes");

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t header_checksum(FileHeader h, const std::string& key) {
  h.checksum = 0;
  return fnv1a(key.data(), key.size(), fnv1a(&h, sizeof h));
}

bool add_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool align_ok(uint64_t v, uint64_t* out) {
  return add_ok(v, kAlign - 1, out) && ((*out &= ~(kAlign - 1)), true);
}

// Fills in the offsets and the file size from the counts; false on overflow.
bool lay_out(FileHeader& h) {
  uint64_t off = 0, len = 0;
  if (!add_ok(sizeof(FileHeader), h.key_bytes, &off) || !align_ok(off, &off)) return false;
  h.header_bytes = off;
  for (SectionHeader* s : {&h.train, &h.test}) {
    s->labels_offset = off;
    if (!mul_ok(s->n, sizeof(int32_t), &len) || !add_ok(off, len, &off) || !align_ok(off, &off))
      return false;
  }
  for (SectionHeader* s : {&h.train, &h.test}) {
    s->features_offset = off;
    if (!mul_ok(s->n, s->dim, &len) || !mul_ok(len, sizeof(float), &len) ||
        !add_ok(off, len, &off) || !align_ok(off, &off))
      return false;
  }
  h.file_bytes = off;
  return true;
}

Status sys_error(const std::string& what, const std::string& path, int err) {
  return Error(Code::kIo, what + " " + path + ": " + std::strerror(err));
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

Status write_all(int fd, const void* p, size_t n, const std::string& path) {
  const auto* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, b, std::min<size_t>(n, size_t{1} << 24));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return sys_error("write", path, w < 0 ? errno : EIO);
    b += w;
    n -= static_cast<size_t>(w);
  }
  return Ok();
}

// Exactly n bytes at off, or kCorrupt (the file is shorter than its header says: it was
// truncated after it was opened and checked).
Status read_at(int fd, void* p, size_t n, uint64_t off, const std::string& path) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::pread(fd, b, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return sys_error("read", path, errno);
    if (r == 0) return Error(Code::kCorrupt, path + ": shorter than its header says");
    b += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return Ok();
}

std::string data_dir(const LoadOptions& opt) {
  std::string dir = opt.dir.empty() ? default_data_dir() : opt.dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

// "name size mtime_ns" for every regular, non-hidden file of <dir>/<name>/, sorted by name.
std::string source_fingerprint(const std::string& dir, std::string_view name);

// One file (or every file of a folder): name, size, mtime.
std::string file_fingerprint(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return "source=" + path + " missing\n";
  if (S_ISDIR(st.st_mode)) {
    const auto slash = path.find_last_of('/');
    return source_fingerprint(slash == std::string::npos ? "." : path.substr(0, slash),
                              slash == std::string::npos ? path : path.substr(slash + 1));
  }
  const long long ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  return "source=" + path + " " + std::to_string(st.st_size) + " " + std::to_string(ns) + "\n";
}

std::string source_fingerprint(const std::string& dir, std::string_view name) {
  const std::string folder = dir + "/" + std::string(name);
  std::vector<std::string> lines;
  if (DIR* d = ::opendir(folder.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      struct stat st {};
      if (::stat((folder + "/" + e->d_name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      const long long ns =
          static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
      lines.push_back(std::string(e->d_name) + " " + std::to_string(st.st_size) + " " +
                      std::to_string(ns));
    }
    ::closedir(d);
  }
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const auto& l : lines) out += "source=" + l + "\n";
  return out;
}

// An open, checked cache file.
struct CacheFile {
  Fd fd;
  FileHeader h;
  std::string path;
  dev_t dev = 0;
  ino_t ino = 0;
};

struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
};

// kNotFound when there is no file; kCorrupt with the reason when it is not a complete cache
// file for `key`.
Result<CacheFile> open_cache(const std::string& path, const std::string& key) {
  CacheFile c;
  c.path = path;
  c.fd = Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!c.fd.ok()) {
    if (errno == ENOENT) return Error(Code::kNotFound, path + ": no cache file");
    return sys_error("open", path, errno);
  }
  struct stat st {};
  if (::fstat(c.fd.get(), &st) != 0) return sys_error("stat", path, errno);
  c.dev = st.st_dev;
  c.ino = st.st_ino;
  const auto size = static_cast<uint64_t>(st.st_size);
  auto corrupt = [&](const std::string& why) { return Error(Code::kCorrupt, path + ": " + why); };
  if (size < sizeof(FileHeader)) return corrupt("truncated (" + std::to_string(size) + " bytes)");
  MYCEL_CHECK(read_at(c.fd.get(), &c.h, sizeof c.h, 0, path));
  const FileHeader& h = c.h;
  if (h.magic != kMagic) return corrupt("wrong magic");
  if (h.version != kFormatVersion) return corrupt("format version " + std::to_string(h.version));
  if (h.key_bytes != key.size() || h.key_bytes > kMaxKeyBytes) return corrupt("different key");
  if (size < sizeof(FileHeader) + h.key_bytes) return corrupt("truncated in the key");
  std::string stored(h.key_bytes, '\0');
  MYCEL_CHECK(read_at(c.fd.get(), stored.data(), stored.size(), sizeof(FileHeader), path));
  if (header_checksum(h, stored) != h.checksum) return corrupt("header checksum mismatch");
  if (stored != key) return corrupt("different key");
  FileHeader want = h;
  for (const SectionHeader* s : {&h.train, &h.test}) {
    if (s->classes <= 0 || s->dim == 0) return corrupt("bad shape");
    if (s->channels > 0 && static_cast<uint64_t>(s->channels) *
                                   static_cast<uint64_t>(std::max(s->height, 0)) *
                                   static_cast<uint64_t>(std::max(s->width, 0)) !=
                               s->dim)
      return corrupt("bad image shape");
  }
  if (!lay_out(want)) return corrupt("sizes overflow");
  if (std::memcmp(&want, &h, sizeof h) != 0) return corrupt("section layout mismatch");
  if (h.file_bytes != size)
    return corrupt("length " + std::to_string(size) + ", header says " +
                   std::to_string(h.file_bytes));
  return c;
}

Status write_cache(const std::string& path, const std::string& key, const Split& s) {
  FileHeader h;
  h.magic = kMagic;
  h.version = kFormatVersion;
  h.key_bytes = static_cast<uint32_t>(key.size());
  auto fill = [](SectionHeader& sh, const Dataset& d) {
    sh.n = d.n;
    sh.dim = d.dim;
    sh.channels = d.channels;
    sh.height = d.height;
    sh.width = d.width;
    sh.classes = d.classes;
  };
  fill(h.train, s.train);
  fill(h.test, s.test);
  if (key.size() > kMaxKeyBytes || !lay_out(h))
    return Error(Code::kInvalidArgument, path + ": data set too large for the cache format");
  h.checksum = header_checksum(h, key);

  const auto slash = path.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : path.substr(0, slash);
  std::string tmp = folder + "/." + path.substr(slash + 1) + ".tmp.XXXXXX";
  Fd fd(::mkstemp(tmp.data()));
  if (!fd.ok()) return sys_error("create", tmp, errno);
  auto fail = [&](Status st) {
    ::unlink(tmp.c_str());
    return st;
  };
  if (::fchmod(fd.get(), 0644) != 0) return fail(sys_error("chmod", tmp, errno));
  uint64_t at = 0;
  static const std::array<char, kAlign> kZeros{};
  auto put = [&](uint64_t off, const void* p, size_t n) -> Status {
    MYCEL_CHECK(write_all(fd.get(), kZeros.data(), static_cast<size_t>(off - at), tmp));
    MYCEL_CHECK(write_all(fd.get(), p, n, tmp));
    at = off + n;
    return Ok();
  };
  Status st = put(0, &h, sizeof h);
  if (st) st = put(sizeof h, key.data(), key.size());
  if (st) st = put(h.train.labels_offset, s.train.y.data(), s.train.y.size() * sizeof(int32_t));
  if (st) st = put(h.test.labels_offset, s.test.y.data(), s.test.y.size() * sizeof(int32_t));
  if (st) st = put(h.train.features_offset, s.train.x.data(), s.train.x.size() * sizeof(float));
  if (st) st = put(h.test.features_offset, s.test.x.data(), s.test.x.size() * sizeof(float));
  if (st) st = put(h.file_bytes, nullptr, 0);
  if (!st) return fail(st);
  if (::fsync(fd.get()) != 0) return fail(sys_error("fsync", tmp, errno));
  fd.reset();
  // String labels (csv:): their names, in class order, beside the file (written first, so a
  // complete cache file always has them).
  if (!s.train.class_names.empty()) {
    std::string names;
    for (const auto& n : s.train.class_names) names += n + "\n";
    const std::string ctmp = tmp + ".classes";
    Fd cf(::open(ctmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!cf.ok()) return fail(sys_error("create", ctmp, errno));
    Status cs = write_all(cf.get(), names.data(), names.size(), ctmp);
    if (cs && ::fsync(cf.get()) != 0) cs = sys_error("fsync", ctmp, errno);
    cf.reset();
    if (cs && ::rename(ctmp.c_str(), (path + ".classes").c_str()) != 0) cs = sys_error("rename", ctmp, errno);
    if (!cs) {
      ::unlink(ctmp.c_str());
      return fail(cs);
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(sys_error("rename", tmp, errno));
  Fd dir(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.ok()) (void)::fsync(dir.get());  // the rename itself durable; best effort
  return Ok();
}

// Creates `folder` if needed; a private fallback folder must be a real directory of ours.
Status make_folder(const std::string& folder, bool private_folder) {
  std::string partial;
  for (size_t i = 0; i <= folder.size(); ++i) {
    if (i < folder.size() && folder[i] != '/') continue;
    partial = folder.substr(0, i);
    if (partial.empty()) continue;
    if (::mkdir(partial.c_str(), private_folder && i == folder.size() ? 0700 : 0755) != 0 &&
        errno != EEXIST)
      return sys_error("mkdir", partial, errno);
  }
  struct stat st {};
  if (::lstat(folder.c_str(), &st) != 0) return sys_error("stat", folder, errno);
  if (!S_ISDIR(st.st_mode)) return Error(Code::kIo, folder + ": not a directory");
  if (private_folder && st.st_uid != ::geteuid())
    return Error(Code::kIo, folder + ": owned by another user");
  if (::access(folder.c_str(), W_OK) != 0) return sys_error("write to", folder, errno);
  return Ok();
}

struct Folder {
  std::string path;
  bool private_folder = false;
};

std::vector<Folder> candidate_folders(const std::string& dir, const CacheOptions& copt) {
  std::vector<Folder> f;
  f.push_back({copt.dir.empty() ? dir + "/.cache" : copt.dir, false});
  if (!copt.fallback.empty()) {
    f.push_back({copt.fallback, false});
  } else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    f.push_back({std::string(x) + "/mycel", false});
  } else {
    f.push_back({"/tmp/mycel-cache-" + std::to_string(::geteuid()), true});
  }
  if (f[1].path == f[0].path) f.pop_back();
  return f;
}

LoadOptions without_prefixes(const LoadOptions& opt) {
  LoadOptions o = opt;
  o.max_train = 0;
  o.max_test = 0;
  return o;
}

// A valid cache file for (name, opt), built if needed; `bad` names a file found corrupt after
// it was opened (its data, not its header), which is rebuilt unless another process already
// replaced it. When no folder is writable, the loaded split is handed back in `*loaded` and the
// status is kUnavailable.
Result<CacheFile> acquire(std::string_view name, const LoadOptions& opt, const CacheOptions& copt,
                          std::optional<FileId> bad, std::optional<Split>* loaded) {
  const std::string key = cache_key(name, opt);
  const auto folders = candidate_folders(data_dir(opt), copt);
  auto is_bad = [&](const CacheFile& c) { return bad && bad->dev == c.dev && bad->ino == c.ino; };
  for (const Folder& f : folders) {  // already there (a read-only folder is fine for this)
    auto c = open_cache(cache_path(f.path, name, key), key);
    if (c && !is_bad(*c)) return c;
  }
  std::string why;
  for (const Folder& f : folders) {
    const std::string path = cache_path(f.path, name, key);
    if (Status st = make_folder(f.path, f.private_folder); !st) {
      MYCEL_LOG_DEBUG("models", "data cache: cannot use {}: {}", f.path, st.message());
      why += (why.empty() ? "" : "; ") + st.message();
      continue;
    }
    const std::string lock_path = path + ".lock";
    Fd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!lock.ok()) {
      const Status st = sys_error("open", lock_path, errno);
      MYCEL_LOG_DEBUG("models", "data cache: {}", st.message());
      why += (why.empty() ? "" : "; ") + st.message();
      continue;
    }
    int rc;
    while ((rc = ::flock(lock.get(), LOCK_EX)) != 0 && errno == EINTR) {
    }
    if (rc != 0) {  // ENOLCK on some network file systems: try the next folder
      const Status st = sys_error("lock", lock_path, errno);
      MYCEL_LOG_DEBUG("models", "data cache: {}", st.message());
      why += (why.empty() ? "" : "; ") + st.message();
      continue;
    }
    // Under the lock: another process may have built it while this one waited.
    auto c = open_cache(path, key);
    if (c && !is_bad(*c)) return c;                    // the lock is released when `lock` closes
    if (!c && c.status().code() != Code::kNotFound) {  // (a `bad` file was logged by the caller)
      MYCEL_LOG_WARN("models", "data cache {}; rebuilding", c.status().message());
    }
    if (!loaded->has_value()) {
      MYCEL_ASSIGN_OR_RETURN(Split s, load(name, without_prefixes(opt)));
      *loaded = std::move(s);
    }
    if (Status st = write_cache(path, key, **loaded); !st) {
      MYCEL_LOG_DEBUG("models", "data cache: {}", st.message());
      why += (why.empty() ? "" : "; ") + st.message();
      continue;
    }
    MYCEL_LOG_INFO("models", "data cache: wrote {}", path);
    auto made = open_cache(path, key);
    if (made) return made;
    why += (why.empty() ? "" : "; ") + made.status().message();
  }
  if (!loaded->has_value()) {
    MYCEL_ASSIGN_OR_RETURN(Split s, load(name, without_prefixes(opt)));
    *loaded = std::move(s);
  }
  return Error(Code::kUnavailable, "no writable data cache folder (" + why + ")");
}

// Gives d the section's shape with room for n rows (its buffers reused).
void shape_like(const SectionHeader& s, std::string_view name, size_t n, Dataset& d) {
  d.name = std::string(name);
  d.n = n;
  d.dim = s.dim;
  d.channels = s.channels;
  d.height = s.height;
  d.width = s.width;
  d.classes = s.classes;
  d.x.resize(n * s.dim);
  d.y.resize(n);
}

Dataset empty_like(const SectionHeader& s, std::string_view name, size_t n) {
  Dataset d;
  shape_like(s, name, n, d);
  return d;
}

Status check_features(const Dataset& d, const std::string& path) {
  for (float v : d.x)
    if (!std::isfinite(v)) return Error(Code::kCorrupt, path + ": a feature is not finite");
  return Ok();
}

Status check_labels(std::span<const int32_t> y, int classes, const std::string& path) {
  for (int32_t v : y)
    if (v < 0 || v >= classes) return Error(Code::kCorrupt, path + ": a label is out of range");
  return Ok();
}

// Rows `idx` (ascending or not) of a section: runs of consecutive indices are one pread each.
Status read_rows(const CacheFile& c, const SectionHeader& s, std::span<const int32_t> labels,
                 std::span<const size_t> idx, Dataset& out) {
  const size_t row_bytes = s.dim * sizeof(float);
  for (size_t i = 0; i < idx.size();) {
    size_t j = i + 1;
    while (j < idx.size() && idx[j] == idx[j - 1] + 1) ++j;
    MYCEL_CHECK(read_at(c.fd.get(), out.x.data() + i * s.dim, (j - i) * row_bytes,
                        s.features_offset + idx[i] * row_bytes, c.path));
    for (size_t k = i; k < j; ++k) out.y[k] = labels[idx[k]];
    i = j;
  }
  return check_features(out, c.path);
}

// The shard through a sink, a block of rows at a time (the shape first).
Status sink_rows(const Dataset& shape, const RowSink& sink,
                 const std::function<Status(size_t row0, Dataset& block)>& read_block) {
  MYCEL_CHECK(sink.begin(shape));
  const size_t step = std::max<size_t>(1, sink.block_rows);
  Dataset block = shape;
  for (size_t r = 0; r < shape.n; r += step) {
    const size_t n = std::min(step, shape.n - r);
    block.n = n;
    block.x.resize(n * shape.dim);
    block.y.resize(n);
    MYCEL_CHECK(read_block(r, block));
    MYCEL_CHECK(sink.rows(r, block));
  }
  return Ok();
}

Result<PeerData> read_peer_data(const CacheFile& c, std::string_view name, const LoadOptions& opt,
                                const PartitionSpec& spec, size_t holders,
                                std::optional<size_t> shard, uint64_t partition_seed,
                                const RowSink* sink = nullptr) {
  const FileHeader& h = c.h;
  const size_t train_n = opt.max_train ? std::min<size_t>(opt.max_train, h.train.n) : h.train.n;
  const size_t test_n = opt.max_test ? std::min<size_t>(opt.max_test, h.test.n) : h.test.n;
  std::vector<int32_t> train_y(train_n);
  MYCEL_CHECK(read_at(c.fd.get(), train_y.data(), train_n * sizeof(int32_t), h.train.labels_offset,
                      c.path));
  MYCEL_CHECK(check_labels(train_y, h.train.classes, c.path));
  MYCEL_ASSIGN_OR_RETURN(Partition part,
                         partition(train_y, h.train.classes, holders, spec, partition_seed));
  PeerData pd;
  pd.train_n = train_n;
  pd.classes = h.train.classes;
  pd.cache_file = c.path;
  if (std::ifstream names(c.path + ".classes"); names) {
    for (std::string line; std::getline(names, line);) pd.class_names.push_back(line);
    if (pd.class_names.size() != static_cast<size_t>(h.train.classes)) pd.class_names.clear();
  }
  pd.test = empty_like(h.test, name, test_n);
  MYCEL_CHECK(read_at(c.fd.get(), pd.test.y.data(), test_n * sizeof(int32_t), h.test.labels_offset,
                      c.path));
  MYCEL_CHECK(check_labels(pd.test.y, h.test.classes, c.path));
  MYCEL_CHECK(read_at(c.fd.get(), pd.test.x.data(), pd.test.x.size() * sizeof(float),
                      h.test.features_offset, c.path));
  MYCEL_CHECK(check_features(pd.test, c.path));
  if (!shard) {
    pd.shard = pd.test;
    if (sink) {
      Dataset shape = empty_like(h.test, name, 0);
      shape.n = pd.shard.n;
      MYCEL_CHECK(sink_rows(shape, *sink, [&](size_t r0, Dataset& b) {
        std::copy_n(pd.shard.x.begin() + static_cast<std::ptrdiff_t>(r0 * shape.dim), b.x.size(), b.x.begin());
        std::copy_n(pd.shard.y.begin() + static_cast<std::ptrdiff_t>(r0), b.n, b.y.begin());
        return Ok();
      }));
      pd.shard = shape;
    }
    return pd;
  }
  if (*shard >= part.peers.size()) {
    return Error(Code::kOutOfRange, "peer " + std::to_string(*shard) + " not below " +
                                        std::to_string(part.peers.size()) + " peers");
  }
  const auto& idx = part.peers[*shard];
  if (sink) {
    Dataset shape = empty_like(h.train, name, 0);
    shape.n = idx.size();
    MYCEL_CHECK(sink_rows(shape, *sink, [&](size_t r0, Dataset& b) {
      return read_rows(c, h.train, train_y, std::span<const size_t>(idx).subspan(r0, b.n), b);
    }));
    pd.shard = std::move(shape);
    return pd;
  }
  pd.shard = empty_like(h.train, name, idx.size());
  MYCEL_CHECK(read_rows(c, h.train, train_y, idx, pd.shard));
  return pd;
}

// Without a cache: the old path, from a split already in memory.
Result<PeerData> from_split(Split s, const LoadOptions& opt, const PartitionSpec& spec,
                            size_t holders, std::optional<size_t> shard, uint64_t partition_seed) {
  auto prefix = [](Dataset& d, size_t max) {
    if (max == 0 || max >= d.n) return;
    d.n = max;
    d.x.resize(max * d.dim);
    d.y.resize(max);
    d.x.shrink_to_fit();
    d.y.shrink_to_fit();
  };
  prefix(s.train, opt.max_train);
  prefix(s.test, opt.max_test);
  MYCEL_ASSIGN_OR_RETURN(Partition part,
                         partition(s.train.y, s.train.classes, holders, spec, partition_seed));
  PeerData pd;
  pd.train_n = s.train.n;
  pd.classes = s.train.classes;
  pd.class_names = s.train.class_names;
  if (shard) {
    MYCEL_ASSIGN_OR_RETURN(pd.shard, peer_dataset(s.train, part, *shard));
  } else {
    pd.shard = s.test;
  }
  pd.test = std::move(s.test);
  return pd;
}

}  // namespace

std::string cache_key(std::string_view name, const LoadOptions& opt) {
  char frac[64];
  std::snprintf(frac, sizeof frac, "%.17g", opt.test_fraction);
  std::string k = "mycel data cache\n";
  k += "contents_version=" + std::to_string(kContentsVersion) + "\n";
  k += "name=" + std::string(name) + "\n";
  k += "seed=" + std::to_string(opt.seed) + "\n";
  k += "test_fraction=" + std::string(frac) + "\n";
  k += "normalize_images=" + std::to_string(opt.normalize_images ? 1 : 0) + "\n";
  k += "header=" + std::to_string(static_cast<int>(opt.header)) + "\n";
  k += "label=" + opt.label + "\n";
  k += "test=" + opt.test + "\n";
  k += "normalize=" + std::to_string(static_cast<int>(opt.normalize)) + "\n";
  // New LoadOptions fields that change the loaded contents go here.
  // The sources: a built-in set's folder, or the files a csv:/npy:/idx: spec names (and data.test).
  const auto colon = name.find(':');
  if (colon == std::string_view::npos) {
    k += source_fingerprint(data_dir(opt), name);
  } else {
    std::string paths(name.substr(colon + 1));
    if (!opt.test.empty()) paths += "," + opt.test;
    for (size_t b = 0; b <= paths.size();) {
      size_t e = paths.find(',', b);
      if (e == std::string::npos) e = paths.size();
      k += file_fingerprint(paths.substr(b, e - b));
      b = e + 1;
    }
  }
  return k;
}

std::string cache_path(const std::string& folder, std::string_view name, const std::string& key) {
  std::string safe(name);
  for (char& ch : safe) {
    const bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
    if (!keep) ch = '_';
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(fnv1a(key.data(), key.size())));
  return folder + "/" + safe + "-" + hex + ".bin";
}

Result<std::string> ensure_cache(std::string_view name, const LoadOptions& opt,
                                 const CacheOptions& copt) {
  std::optional<Split> loaded;
  MYCEL_ASSIGN_OR_RETURN(CacheFile c, acquire(name, opt, copt, std::nullopt, &loaded));
  return c.path;
}

Result<PeerData> load_peer_data_impl(std::string_view name, const LoadOptions& opt,
                                     const PartitionSpec& spec, size_t holders,
                                     std::optional<size_t> shard, uint64_t partition_seed,
                                     const RowSink* sink, const CacheOptions& copt);

Result<PeerData> load_peer_data(std::string_view name, const LoadOptions& opt,
                                const PartitionSpec& spec, size_t holders,
                                std::optional<size_t> shard, uint64_t partition_seed,
                                const CacheOptions& copt) {
  return load_peer_data_impl(name, opt, spec, holders, shard, partition_seed, nullptr, copt);
}

Result<PeerData> load_peer_data(std::string_view name, const LoadOptions& opt,
                                const PartitionSpec& spec, size_t holders,
                                std::optional<size_t> shard, uint64_t partition_seed,
                                const RowSink& sink, const CacheOptions& copt) {
  if (!sink.begin || !sink.rows) return Error(Code::kInvalidArgument, "load_peer_data: incomplete row sink");
  return load_peer_data_impl(name, opt, spec, holders, shard, partition_seed, &sink, copt);
}

Result<PeerData> load_peer_data_impl(std::string_view name, const LoadOptions& opt,
                                     const PartitionSpec& spec, size_t holders,
                                     std::optional<size_t> shard, uint64_t partition_seed,
                                     const RowSink* sink, const CacheOptions& copt) {
  std::optional<Split> loaded;
  std::optional<FileId> bad;
  for (int attempt = 0;; ++attempt) {
    auto c = acquire(name, opt, copt, bad, &loaded);
    if (!c) {
      if (c.status().code() != Code::kUnavailable || !loaded) return c.status();
      MYCEL_LOG_WARN("models", "{}: loading {} in memory", c.status().message(), name);
      MYCEL_ASSIGN_OR_RETURN(PeerData pd, from_split(std::move(*loaded), opt, spec, holders, shard, partition_seed));
      if (sink) {  // in memory already: one block
        Dataset shape = pd.shard;
        shape.x.clear();
        shape.y.clear();
        MYCEL_CHECK(sink->begin(shape));
        MYCEL_CHECK(sink->rows(0, pd.shard));
        pd.shard = std::move(shape);
      }
      return pd;
    }
    auto pd = read_peer_data(*c, name, opt, spec, holders, shard, partition_seed, sink);
    if (pd || pd.status().code() != Code::kCorrupt || attempt > 0) return pd;
    // The header was fine but the data is not (a label out of range, a NaN, a file cut short
    // since it was opened): rebuild this one file, once.
    MYCEL_LOG_WARN("models", "data cache {}; rebuilding", pd.status().message());
    bad = FileId{c->dev, c->ino};
  }
}

struct TestChunks::File {
  CacheFile c;
  std::string name;
};

Result<TestChunks> TestChunks::open(const std::string& cache_file, std::string_view name,
                                    const LoadOptions& opt) {
  if (cache_file.empty()) return Error(Code::kUnavailable, "no data cache file to read test rows from");
  auto f = std::make_shared<File>();
  MYCEL_ASSIGN_OR_RETURN(f->c, open_cache(cache_file, cache_key(name, opt)));
  f->name = std::string(name);
  TestChunks t;
  t.rows_ = opt.max_test ? std::min<size_t>(opt.max_test, f->c.h.test.n) : f->c.h.test.n;
  t.file_ = std::move(f);
  return t;
}

Status TestChunks::read(size_t begin, size_t n, Dataset& out) const {
  if (!file_) return Error(Code::kInvalidArgument, "test chunks: not open");
  const CacheFile& c = file_->c;
  const SectionHeader& s = c.h.test;
  if (begin > rows_) return Error(Code::kOutOfRange, "test chunk starts past the test rows");
  n = std::min(n, rows_ - begin);
  shape_like(s, file_->name, n, out);
  MYCEL_CHECK(read_at(c.fd.get(), out.y.data(), n * sizeof(int32_t),
                      s.labels_offset + begin * sizeof(int32_t), c.path));
  MYCEL_CHECK(check_labels(out.y, s.classes, c.path));
  MYCEL_CHECK(read_at(c.fd.get(), out.x.data(), out.x.size() * sizeof(float),
                      s.features_offset + begin * s.dim * sizeof(float), c.path));
  return check_features(out, c.path);
}

}  // namespace mycel::data
