// File readers behind data::load(): IDX (MNIST, Fashion-MNIST; gzipped or not) and numeric CSV
// (Spambase, UCI Pendigits, UCI Letter Recognition). Every length and count is checked against
// the bytes actually present before anything is indexed: a truncated or corrupt file is a
// kCorrupt error that names the file, never an out-of-bounds read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "models/data/dataset.h"

namespace mycel::data {

// Whole file into memory; gzip is detected by its magic bytes (1f 8b) and inflated with zlib,
// anything else is returned as is. A decompressed size over `max_bytes` is kCorrupt (guards
// against a gzip bomb). Missing file: kNotFound; read error: kIo; bad gzip stream: kCorrupt.
Result<std::vector<uint8_t>> read_file(const std::string& path, size_t max_bytes = size_t{1} << 31);

// One IDX array: unsigned-byte data (type 0x08), big-endian dimensions.
struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;  // product(dims) bytes, row-major
};

// Parses an IDX buffer. `what` names the source in error messages (usually the path).
// Checks: magic 00 00 08 NDIMS with 1 <= NDIMS <= 4, every dimension > 0, the product of the
// dimensions without overflow, and header + data == buffer length exactly.
Result<IdxArray> parse_idx(std::span<const uint8_t> bytes, std::string_view what);
Result<IdxArray> read_idx(const std::string& path);

// An image file (NDIMS 3: n x rows x cols) and a label file (NDIMS 1: n) into a data set with
// pixels scaled to [0, 1]. The counts must agree and every label must be < classes.
Result<Dataset> read_idx_dataset(const std::string& images_path, const std::string& labels_path,
                                 std::string_view name, int classes = 10);

// A numeric CSV table with one label column (first or last) and `features` other columns.
// Fields are trimmed of spaces and tabs; CRLF line ends and blank lines are accepted; no header.
struct CsvFormat {
  enum class Label { kInteger, kLetter };  // "3" -> 3; "A".."Z" -> 0..25
  size_t features = 0;
  bool label_first = false;
  Label label = Label::kInteger;
  int classes = 0;  // every label must lie in [0, classes)
};
// `what` names the source in messages; errors give the 1-based line number.
Result<Dataset> parse_csv(std::string_view text, const CsvFormat& fmt, std::string_view what,
                          std::string_view name);
Result<Dataset> read_csv(const std::string& path, const CsvFormat& fmt, std::string_view name);

}  // namespace mycel::data
