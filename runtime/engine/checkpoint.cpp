#include "runtime/engine/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

#include "runtime/core/state_io.h"
#include "transport/crc32c.h"

namespace mycel::runtime::ckpt {
namespace {

namespace fs = std::filesystem;
constexpr char kMagic[8] = {'M', 'Y', 'C', 'E', 'L', 'C', 'K', 'P'};
enum Section : uint32_t {
  kHeader = 1, kParams, kVelocity, kResidual, kProtocol, kTrainer, kLiveParams, kCounters, kSectionCount = kCounters
};
const char* section_name(uint32_t id) {
  switch (id) {
    case kHeader: return "header";
    case kParams: return "parameters";
    case kVelocity: return "optimizer velocity";
    case kResidual: return "error-feedback residual";
    case kProtocol: return "protocol state";
    case kTrainer: return "trainer position";
    case kLiveParams: return "live parameters";
    case kCounters: return "counters";
    default: return "unknown";
  }
}
constexpr size_t kMaxConfigKeys = 256, kMaxLiveKeys = 64;
constexpr uint64_t kMaxProtocolState = uint64_t(64) << 20;

// The keys whose values must be the same in the run that resumes: what decides the model's
// shape, the peer's data and the protocol's meaning of its state.
constexpr const char* kMustMatch[] = {
    "seed", "data.dataset", "data.partition", "data.max_train", "data.label", "data.test", "data.test_fraction",
    "data.normalize", "model", "peers.count", "protocol.name", "protocol.partitions", "protocol.topology",
    "protocol.degree", "train.batch", "train.momentum", "train.weight_decay", "train.schedule",
};

void floats(StateWriter& w, const std::vector<float>& v) {
  w.u64(v.size());
  w.bytes(v.data(), v.size() * sizeof(float));
}

void pairs(StateWriter& w, const std::vector<std::pair<std::string, std::string>>& kv) {
  w.u32(static_cast<uint32_t>(kv.size()));
  for (const auto& [k, v] : kv) {
    w.str(k);
    w.str(v);
  }
}

Status corrupt(const std::string& what) { return Error(Code::kCorrupt, "checkpoint " + what); }

// A float array of `expect` values (or, when may_be_empty, none).
Status read_floats(StateReader& r, uint64_t expect, bool may_be_empty, const char* name, std::vector<float>* out) {
  const uint64_t n = r.u64();
  if (!r.ok()) return corrupt(std::string(name) + ": its count is cut off");
  if (!(n == expect || (may_be_empty && n == 0)))
    return corrupt(std::string(name) + ": " + std::to_string(n) + " values, the header says " + std::to_string(expect));
  if (n * sizeof(float) != r.left())
    return corrupt(std::string(name) + ": " + std::to_string(n) + " values need " + std::to_string(n * 4) +
                   " bytes, the section holds " + std::to_string(r.left()));
  auto b = r.view(n * sizeof(float));
  out->resize(static_cast<size_t>(n));
  if (n) std::memcpy(out->data(), b.data(), b.size());
  return Ok();
}

Status read_pairs(StateReader& r, size_t max, const char* name, std::vector<std::pair<std::string, std::string>>* out) {
  const uint32_t n = r.u32();
  if (!r.ok() || n > max)
    return corrupt(std::string(name) + ": " + std::to_string(n) + " entries (at most " + std::to_string(max) + ")");
  for (uint32_t i = 0; i < n; ++i) {
    std::string k = r.str(256), v = r.str(4096);
    if (!r.ok()) return corrupt(std::string(name) + ": entry " + std::to_string(i) + " is cut off or too long");
    out->emplace_back(std::move(k), std::move(v));
  }
  return Ok();
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

std::vector<std::pair<std::string, std::string>> must_match_keys(const ExperimentConfig& c) {
  std::vector<std::pair<std::string, std::string>> kv;
  for (const char* k : kMustMatch) {
    auto it = c.flat.find(k);
    if (it != c.flat.end()) kv.emplace_back(k, it->second);
  }
  return kv;
}

uint64_t hash_keys(const std::vector<std::pair<std::string, std::string>>& kv) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  auto eat = [&h](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
  };
  for (const auto& [k, v] : kv) {
    eat(k);
    eat("=");
    eat(v);
    eat("\n");
  }
  return h;
}

std::vector<uint8_t> encode(const Checkpoint& c) {
  StateWriter w;
  w.bytes(kMagic, 8);
  w.u32(kFormatVersion);
  w.u32(kSectionCount);
  w.u64(0);  // body length, patched below
  auto section = [&w](uint32_t id, const std::function<void(StateWriter&)>& fill) {
    StateWriter s;
    fill(s);
    w.u32(id);
    w.u32(0);
    w.u64(s.out().size());
    w.bytes(s.out().data(), s.out().size());
  };
  section(kHeader, [&](StateWriter& s) {
    const Header& h = c.header;
    s.str(h.protocol);
    s.str(h.model);
    s.u64(h.num_params);
    s.u32(h.partitions);
    s.u32(static_cast<uint32_t>(h.peer_id));
    pairs(s, h.config);
    s.u64(h.config_hash);
    s.u64(h.sequence);
    s.f64(h.peer_seconds);
    s.f64(h.unix_time);
    s.u64(h.age);
  });
  section(kParams, [&](StateWriter& s) { floats(s, c.params); });
  section(kVelocity, [&](StateWriter& s) { floats(s, c.velocity); });
  section(kResidual, [&](StateWriter& s) {
    s.str(c.residual_codec);
    floats(s, c.residual);
  });
  section(kProtocol, [&](StateWriter& s) { s.bytes(c.protocol_state.data(), c.protocol_state.size()); });
  section(kTrainer, [&](StateWriter& s) {
    s.u64(c.trainer.orders_drawn);
    s.u64(c.trainer.cursor);
    s.u64(c.trainer.sgd_steps);
    s.u64(static_cast<uint64_t>(c.trainer.epoch));
  });
  section(kLiveParams, [&](StateWriter& s) {
    s.u64(c.params_version);
    pairs(s, c.live_params);
  });
  section(kCounters, [&](StateWriter& s) {
    s.u32(static_cast<uint32_t>(c.counters.size()));
    for (const auto& [k, v] : c.counters) {
      s.str(k);
      s.u64(v);
    }
  });
  std::vector<uint8_t> out = w.take();
  const uint64_t body = out.size() - kPreambleBytes;
  std::memcpy(out.data() + 16, &body, 8);
  const uint32_t crc = transport::crc32c(out.data(), out.size());
  const auto* p = reinterpret_cast<const uint8_t*>(&crc);
  out.insert(out.end(), p, p + 4);
  return out;
}

Result<Checkpoint> decode(std::span<const uint8_t> bytes) {
  const size_t size = bytes.size();
  if (size < kPreambleBytes + kTrailerBytes)
    return corrupt("truncated: " + std::to_string(size) + " bytes, less than the " +
                   std::to_string(kPreambleBytes + kTrailerBytes) + " of an empty checkpoint");
  if (std::memcmp(bytes.data(), kMagic, 8) != 0) return corrupt("magic: not a mycel checkpoint file");
  StateReader pre(bytes.subspan(8, kPreambleBytes - 8));
  const uint32_t version = pre.u32(), sections = pre.u32();
  const uint64_t body = pre.u64();
  if (version != kFormatVersion)
    return Error(Code::kUnimplemented, "checkpoint format version " + std::to_string(version) +
                                           ": this mycel reads version " + std::to_string(kFormatVersion));
  if (body != size - kPreambleBytes - kTrailerBytes)
    return corrupt("length: the preamble announces a " + std::to_string(body) + "-byte body, the file holds " +
                   std::to_string(size - kPreambleBytes - kTrailerBytes) + " (truncated or extended)");
  uint32_t stored = 0;
  std::memcpy(&stored, bytes.data() + size - 4, 4);
  const uint32_t crc = transport::crc32c(bytes.data(), size - 4);
  if (crc != stored) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "checksum: stored %08x, computed %08x: the file is damaged", stored, crc);
    return corrupt(buf);
  }
  if (sections != kSectionCount)
    return corrupt("section count: " + std::to_string(sections) + ", expected " + std::to_string(kSectionCount));
  StateReader r(bytes.subspan(kPreambleBytes, static_cast<size_t>(body)));
  Checkpoint c;
  for (uint32_t want = 1; want <= kSectionCount; ++want) {
    const uint32_t id = r.u32(), reserved = r.u32();
    const uint64_t len = r.u64();
    if (!r.ok()) return corrupt(std::string("section ") + section_name(want) + ": its header is cut off");
    if (id != want || reserved != 0)
      return corrupt("section " + std::to_string(id) + " where section " + std::to_string(want) + " (" +
                     section_name(want) + ") was expected");
    if (len > r.left())
      return corrupt(std::string("section ") + section_name(id) + ": " + std::to_string(len) + " bytes, only " +
                     std::to_string(r.left()) + " left in the file");
    StateReader s(r.view(len));
    const std::string name = std::string("section ") + section_name(id);
    switch (id) {
      case kHeader: {
        Header& h = c.header;
        h.protocol = s.str(64);
        h.model = s.str(1024);
        h.num_params = s.u64();
        h.partitions = s.u32();
        h.peer_id = static_cast<int32_t>(s.u32());
        if (!s.ok()) return corrupt(name + ": cut off or a name too long");
        MYCEL_CHECK(read_pairs(s, kMaxConfigKeys, "header config keys", &h.config));
        h.config_hash = s.u64();
        h.sequence = s.u64();
        h.peer_seconds = s.f64();
        h.unix_time = s.f64();
        h.age = s.u64();
        if (!s.done()) return corrupt(name + ": its length disagrees with its fields");
        if (h.num_params == 0 || h.num_params > (uint64_t(1) << 32))
          return corrupt("header num_params: " + std::to_string(h.num_params) + " is out of range");
        if (h.config_hash != hash_keys(h.config)) return corrupt("header config_hash: does not match its keys");
        break;
      }
      case kParams:
        MYCEL_CHECK(read_floats(s, c.header.num_params, false, "parameters", &c.params));
        break;
      case kVelocity:
        MYCEL_CHECK(read_floats(s, c.header.num_params, true, "optimizer velocity", &c.velocity));
        break;
      case kResidual:
        c.residual_codec = s.str(256);
        if (!s.ok()) return corrupt(name + ": the codec name is cut off or too long");
        MYCEL_CHECK(read_floats(s, c.header.num_params, true, "error-feedback residual", &c.residual));
        break;
      case kProtocol: {
        if (len > kMaxProtocolState) return corrupt(name + ": " + std::to_string(len) + " bytes is too large");
        auto b = s.view(len);
        c.protocol_state.assign(b.begin(), b.end());
        break;
      }
      case kTrainer:
        c.trainer.orders_drawn = s.u64();
        c.trainer.cursor = s.u64();
        c.trainer.sgd_steps = s.u64();
        c.trainer.epoch = static_cast<int64_t>(s.u64());
        if (!s.done()) return corrupt(name + ": its length disagrees with its fields");
        break;
      case kLiveParams:
        c.params_version = s.u64();
        MYCEL_CHECK(read_pairs(s, kMaxLiveKeys, "live parameters", &c.live_params));
        if (!s.done()) return corrupt(name + ": its length disagrees with its fields");
        break;
      case kCounters: {
        const uint32_t n = s.u32();
        if (!s.ok() || n > kMaxLiveKeys) return corrupt(name + ": " + std::to_string(n) + " entries is too many");
        for (uint32_t i = 0; i < n; ++i) {
          std::string k = s.str(64);
          const uint64_t v = s.u64();
          if (!s.ok()) return corrupt(name + ": entry " + std::to_string(i) + " is cut off");
          c.counters.emplace_back(std::move(k), v);
        }
        if (!s.done()) return corrupt(name + ": its length disagrees with its fields");
        break;
      }
    }
  }
  if (!r.done()) return corrupt("body: " + std::to_string(r.left()) + " bytes after the last section");
  return c;
}

Status check_compatible(const Header& got, const Header& want) {
  auto differs = [](const std::string& field, const std::string& a, const std::string& b) {
    return Error(Code::kInvalidArgument, "incompatible checkpoint: " + field + " is '" + a + "' in the checkpoint, '" +
                                             b + "' in this run");
  };
  if (got.peer_id != want.peer_id)
    return differs("the peer id", std::to_string(got.peer_id), std::to_string(want.peer_id));
  if (got.protocol != want.protocol) return differs("protocol.name", got.protocol, want.protocol);
  if (got.model != want.model) return differs("the model", got.model, want.model);
  if (got.num_params != want.num_params)
    return differs("the parameter count", std::to_string(got.num_params), std::to_string(want.num_params));
  if (got.partitions != want.partitions)
    return differs("protocol.partitions", std::to_string(got.partitions), std::to_string(want.partitions));
  std::map<std::string, std::string> have(got.config.begin(), got.config.end());
  for (const auto& [k, v] : want.config) {
    auto it = have.find(k);
    if (it == have.end()) return differs("config key " + k, "(absent)", v);
    if (it->second != v) return differs("config key " + k, it->second, v);
  }
  if (got.config_hash != want.config_hash)
    return Error(Code::kInvalidArgument, "incompatible checkpoint: the hash of the config keys that must match differs");
  return Ok();
}

Status write_atomic(const std::string& path, std::span<const uint8_t> bytes) {
  const fs::path p(path);
  const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Error(Code::kIo, "cannot create " + tmp + ": " + errno_text());
  auto fail = [&](const std::string& what) {
    const std::string why = errno_text();
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return Error(Code::kIo, "cannot write " + path + ": " + what + ": " + why);
  };
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, std::min<size_t>(bytes.size() - done, size_t(1) << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = ENOSPC;
      return fail("write after " + std::to_string(done) + " of " + std::to_string(bytes.size()) + " bytes");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail("fsync");
  const int c = ::close(fd);
  fd = -1;
  if (c != 0) return fail("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename");
  // The rename is durable once the folder is: fsync it (a folder that cannot be opened or
  // synced is an error too, the file being in place but perhaps not on disk).
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return Error(Code::kIo, "cannot open folder " + dir + " to sync it: " + errno_text());
  const bool ok = ::fsync(dfd) == 0;
  const std::string why = ok ? std::string() : errno_text();
  ::close(dfd);
  if (!ok) return Error(Code::kIo, "cannot sync folder " + dir + ": " + why);
  return Ok();
}

Result<Checkpoint> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Error(errno == ENOENT ? Code::kNotFound : Code::kIo, "cannot open " + path + ": " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error(Code::kInvalidArgument, path + " is not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    ::close(fd);
    return Error(Code::kCorrupt, path + ": " + std::to_string(st.st_size) + " bytes is over the " +
                                     std::to_string(kMaxFileBytes) + "-byte limit of a checkpoint");
  }
  std::vector<uint8_t> b(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < b.size()) {
    ssize_t n = ::read(fd, b.data() + got, b.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = errno_text();
      ::close(fd);
      return Error(Code::kIo, "cannot read " + path + ": " + why);
    }
    if (n == 0) break;  // shrank while we read: decode says truncated
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  b.resize(got);
  auto c = decode(b);
  if (!c) return Error(c.status().code(), path + ": " + c.status().message());
  return c;
}

std::string file_name(int peer_id, uint64_t sequence) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "peer-%d-%010llu.ckpt", peer_id, static_cast<unsigned long long>(sequence));
  return buf;
}

std::vector<Entry> list(const std::string& dir, int peer_id) {
  std::vector<Entry> out;
  const std::string prefix = "peer-" + std::to_string(peer_id) + "-";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() != prefix.size() + 10 + 5 || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - 5, 5, ".ckpt") != 0)
      continue;
    const std::string digits = name.substr(prefix.size(), 10);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    out.push_back(Entry{it->path().string(), std::stoull(digits)});
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.sequence > b.sequence; });
  return out;
}

Result<Loaded> load_latest(const std::string& dir, const Header& want, std::vector<std::string>* skipped) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Error(Code::kNotFound, "checkpoint folder " + dir + " does not exist");
  std::string why;
  for (const auto& e : list(dir, want.peer_id)) {
    auto c = read_file(e.path);
    if (!c) {  // damaged: the previous one may be whole
      if (skipped) skipped->push_back(c.status().message());
      why += "\n  " + c.status().message();
      continue;
    }
    // Incompatible is not damage: the run's config or model changed, and an older checkpoint of
    // the same run would not be right either.
    if (Status s = check_compatible(c->header, want); !s.is_ok())
      return Error(s.code(), e.path + ": " + s.message());
    return Loaded{e.path, std::move(c).value()};
  }
  return Error(Code::kNotFound, "no usable checkpoint of peer " + std::to_string(want.peer_id) + " in " + dir +
                                    (why.empty() ? std::string(" (no peer-" + std::to_string(want.peer_id) +
                                                               "-*.ckpt file)")
                                                 : ":" + why));
}

void prune(const std::string& dir, int peer_id, int keep) {
  auto all = list(dir, peer_id);
  std::error_code ec;
  for (size_t i = static_cast<size_t>(std::max(1, keep)); i < all.size(); ++i) fs::remove(all[i].path, ec);
  // Temporary files a killed writer of this peer left behind.
  const std::string prefix = "peer-" + std::to_string(peer_id) + "-";
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) == 0 && name.find(".ckpt.tmp.") != std::string::npos) {
      std::error_code ec2;
      fs::remove(it->path(), ec2);
    }
  }
}

}  // namespace mycel::runtime::ckpt
