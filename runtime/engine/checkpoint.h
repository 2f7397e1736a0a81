// Checkpoints of one peer: everything it needs to go on as if it had not stopped (the model,
// the optimizer's velocity, the error-feedback residual, the protocol core's state, the trainer's
// position in its data order, the live parameter set), in one file with a checksum, written
// atomically. docs/checkpoints.md has the format and the rules.
//
// File (little-endian):
//   preamble   magic "MYCELCKP" (8 bytes), u32 format version, u32 section count,
//              u64 body length (bytes between the preamble and the trailer)
//   body       sections, each: u32 id, u32 reserved (0), u64 length, then `length` bytes
//   trailer    u32 CRC32C of the preamble and the body
// Sections (each exactly once, in this order): 1 header (what the checkpoint is compatible
// with), 2 parameters, 3 optimizer velocity, 4 error-feedback residual, 5 protocol state,
// 6 trainer position, 7 live parameter set, 8 the peer's counters (bytes, frames, merges...). Reading checks the magic, the version, the length,
// the checksum, then every length against what is left before it allocates; a refusal is an
// error naming the field, never a crash.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"

namespace mycel::runtime::ckpt {

constexpr uint32_t kFormatVersion = 1;
constexpr size_t kPreambleBytes = 24, kTrailerBytes = 4;
// The largest file a reader accepts (a CNN of 1.7 M parameters is ~20 MB with its velocity and
// residual): a size over this is refused before anything is read.
constexpr uint64_t kMaxFileBytes = uint64_t(4) << 30;

// What a checkpoint is compatible with: a peer refuses one whose fields differ from its own.
struct Header {
  std::string protocol;      // protocol.name
  std::string model;         // the model spec (canonical text)
  uint64_t num_params = 0;
  uint32_t partitions = 1;   // protocol.partitions (1 outside gossip)
  int32_t peer_id = 0;
  // The config keys that must match (data set, partition, seed, peer count, model, protocol,
  // training), as key=value, and their hash (FNV-1a 64).
  std::vector<std::pair<std::string, std::string>> config;
  uint64_t config_hash = 0;
  // Informational.
  uint64_t sequence = 0;     // the peer's checkpoint number (file names sort by it)
  double peer_seconds = 0;   // seconds into the peer's run when it was taken
  double unix_time = 0;
  uint64_t age = 0;          // the protocol's age (or round) when it was taken
};

// Where the trainer stands in its data order (models::Trainer::Position).
struct TrainerPos {
  uint64_t orders_drawn = 0, cursor = 0, sgd_steps = 0;
  int64_t epoch = 0;
};

struct Checkpoint {
  Header header;
  std::vector<float> params;    // num_params
  std::vector<float> velocity;  // num_params, or empty (no momentum)
  std::vector<float> residual;  // num_params, or empty (no error feedback)
  std::string residual_codec;   // the codec the residual belongs to ("" : none yet)
  std::vector<uint8_t> protocol_state;  // Protocol::save_state()
  TrainerPos trainer;
  std::vector<std::pair<std::string, std::string>> live_params;  // live_param_values()
  uint64_t params_version = 1;
  std::vector<std::pair<std::string, uint64_t>> counters;  // the peer's counters by name
};

// The config keys a checkpoint must agree on, with their values, from a resolved config.
std::vector<std::pair<std::string, std::string>> must_match_keys(const ExperimentConfig& c);
uint64_t hash_keys(const std::vector<std::pair<std::string, std::string>>& kv);

// Serialises (the checksum last).
std::vector<uint8_t> encode(const Checkpoint& c);
// Parses and validates a whole file's bytes; errors are kCorrupt (damage: a bad magic, length,
// checksum or section) or kUnimplemented (another format version), naming the field.
Result<Checkpoint> decode(std::span<const uint8_t> bytes);
// A checkpoint's header against the expected one: the first field that differs is an error
// (kInvalidArgument) naming it and both values.
Status check_compatible(const Header& got, const Header& want);

// Writes bytes to `path` atomically (checkpoints, and the live peer's result files): a temporary file in the same folder, every write checked,
// fsync, rename over `path`, fsync of the folder. On any failure the temporary file is removed,
// and whatever was at `path` is untouched.
Status write_atomic(const std::string& path, std::span<const uint8_t> bytes);
// Reads a whole checkpoint file (regular files only, at most kMaxFileBytes) and decodes it.
Result<Checkpoint> read_file(const std::string& path);

// Checkpoint files of one peer in a folder: DIR/peer-ID-SEQ.ckpt (SEQ zero-padded, 10 digits).
std::string file_name(int peer_id, uint64_t sequence);
struct Entry {
  std::string path;
  uint64_t sequence = 0;
};
// This peer's checkpoint files in `dir`, the newest (highest sequence) first.
std::vector<Entry> list(const std::string& dir, int peer_id);

// The newest checkpoint of peer `want.peer_id` in `dir` that reads back whole and is compatible
// with `want`; the ones skipped on the way (damaged or incompatible) in *skipped, with why. No
// usable one: kNotFound naming the folder (and the reasons, when files were there).
struct Loaded {
  std::string path;
  Checkpoint ckpt;
};
Result<Loaded> load_latest(const std::string& dir, const Header& want, std::vector<std::string>* skipped = nullptr);

// Removes this peer's checkpoints beyond the `keep` newest (and stale temporary files of it).
void prune(const std::string& dir, int peer_id, int keep);

}  // namespace mycel::runtime::ckpt
