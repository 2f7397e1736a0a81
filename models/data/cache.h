// A converted copy of a loaded Split on disk, written once per host, from which a peer reads only
// its own rows. Without it every peer process of `mycel run` calls data::load() for the whole
// data set (MNIST: 188 MB of float32) only to keep 1/N of it.
//
// The file, <data dir>/.cache/<name>-<hash of key>.bin (see cache_path), holds the whole Split as
// data::load(name, opt) gives it with no max_train / max_test prefix:
//   header (64-byte multiple): magic "MYCELDC1", format version, header and file sizes,
//     train and test n / dim / channels / height / width / classes, the offset of each section,
//     the key string, and an FNV-1a checksum of the header and key;
//   train labels (int32), test labels, train features (float32, row-major), test features,
//     each section starting on a 64-byte boundary.
// Host byte order and layout (it is a per-host cache, not an exchange format).
//
// Writing is atomic (a temporary file in the same folder, written, fsync'ed, renamed) and
// serialised on an flock of <file>.lock, so peers starting together convert once: one builds,
// the others wait on the lock and then read the finished file. A file whose magic, version,
// key, checksum, section layout or length is wrong, or whose labels are out of range or whose
// copied features are not finite, is rebuilt with one warning. When the data folder is not
// writable the cache goes to $XDG_CACHE_HOME/mycel, else /tmp/mycel-cache-<uid>; when nothing is
// writable, the data set is loaded in memory as before (one warning).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "models/data/dataset.h"
#include "models/data/partition.h"

namespace mycel::data {

// Where the cache lives; empty fields take the defaults above (tests point them elsewhere).
struct CacheOptions {
  std::string dir;       // empty: <data dir>/.cache
  std::string fallback;  // empty: $XDG_CACHE_HOME/mycel, else /tmp/mycel-cache-<uid>
};

// The one place that says what a cached file depends on: the data set name, every field of
// LoadOptions that changes the contents of the loaded Split before any prefix (seed,
// test_fraction, normalize_images), a version of the loader's preprocessing, and the name, size
// and mtime (ns) of every regular file in <data dir>/<name>/ (the sources). max_train and
// max_test are not in it: they only cut a prefix after everything else, so they are applied on
// read and one file serves every prefix. A new LoadOptions field that changes the contents must
// be added here.
std::string cache_key(std::string_view name, const LoadOptions& opt);

// The file cache_key() maps to in `folder`: <folder>/<name, sanitised>-<16 hex digits>.bin.
std::string cache_path(const std::string& folder, std::string_view name, const std::string& key);

// Makes sure a valid cache file for (name, opt) exists, building it if needed, and returns its
// path. Errors of data::load (a missing data set: kNotFound) are returned as they are.
Result<std::string> ensure_cache(std::string_view name, const LoadOptions& opt,
                                 const CacheOptions& copt = {});

// What one peer needs: its shard and its evaluation subset, nothing else.
struct PeerData {
  Dataset shard;       // the rows data::peer_dataset(train, partition, shard) gives, in that order;
                       // without a shard (the FedAvg server): a copy of `test`
  Dataset test;        // the first opt.max_test rows of the test split (all when 0), as data::load
  size_t train_n = 0;  // samples of the training split that was partitioned (after max_train)
  int classes = 0;
  std::string cache_file;  // the file read; empty when it was loaded without a cache
  std::vector<std::string> class_names;  // string labels (csv:): class i's name; else empty
};

// The same Datasets as
//   split = data::load(name, opt);
//   part  = data::partition(split.train.y, split.train.classes, holders, spec, partition_seed);
//   shard ? data::peer_dataset(split.train, part, *shard) : split.test;   and split.test,
// byte for byte, but reading from the cache only the labels, this peer's rows and the test
// prefix (pread, never a mapping of the other peers' rows), so the process holds a few MiB
// instead of the whole data set. Errors: those of data::load and data::partition, and
// kOutOfRange for a shard not below `holders`.
Result<PeerData> load_peer_data(std::string_view name, const LoadOptions& opt,
                                const PartitionSpec& spec, size_t holders,
                                std::optional<size_t> shard, uint64_t partition_seed,
                                const CacheOptions& copt = {});

// Where the shard's rows go a block at a time instead of into PeerData::shard: `begin` gets the
// shard's shape (n, dim, classes... with x and y empty) once, then `rows` gets consecutive blocks
// (rows [row0, row0 + block.n) of the shard, in shard order). A caller puts them straight into
// device memory, and the process never holds the shard twice. PeerData::shard then has the shape
// and empty x, y.
struct RowSink {
  std::function<Status(const Dataset& shape)> begin;
  std::function<Status(size_t row0, const Dataset& block)> rows;
  size_t block_rows = 1024;
};
Result<PeerData> load_peer_data(std::string_view name, const LoadOptions& opt,
                                const PartitionSpec& spec, size_t holders,
                                std::optional<size_t> shard, uint64_t partition_seed,
                                const RowSink& sink, const CacheOptions& copt = {});

// The test split of a cache file, read a chunk at a time: a peer evaluates on a test set larger
// than what it keeps in memory (MNIST's 10,000 test images are 31 MB of float32) without ever
// holding it whole. Rows are those of PeerData::test (max_test applied).
class TestChunks {
 public:
  // Opens the cache file load_peer_data read (PeerData::cache_file) for (name, opt); an empty
  // path (no cache was usable) is kUnavailable.
  static Result<TestChunks> open(const std::string& cache_file, std::string_view name,
                                 const LoadOptions& opt);
  size_t rows() const { return rows_; }
  // Rows [begin, begin + n) (cut at rows()) into out, whose buffers are reused.
  Status read(size_t begin, size_t n, Dataset& out) const;

 private:
  struct File;
  std::shared_ptr<const File> file_;
  size_t rows_ = 0;
};

}  // namespace mycel::data
