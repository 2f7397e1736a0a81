// Readers for the user's own data sets behind data::load("csv:PATH" | "idx:DIR" |
// "npy:X.npy,Y.npy"): a CSV table with a detected header, a label column chosen by name or
// index and labels of any text; NumPy .npy arrays as numpy.save writes them; and the mapping
// of label texts to classes 0..C-1. Every error names the file (and, for CSV, the 1-based line)
// and what was expected; nothing is dropped silently.
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

// A table whose labels are not classes yet: d.x, d.n, d.dim (and image shape) are final; d.y[i]
// indexes `labels`, the distinct label texts in first-seen order. d.classes is 0.
struct RawTable {
  Dataset d;
  std::vector<std::string> labels;
  std::vector<std::string> columns;  // csv with a header: the feature columns' names
};

struct UserCsvOptions {
  HeaderMode header = HeaderMode::kAuto;
  std::string label;  // header name or 0-based index; empty: the last column
};

// One pass over the bytes: comma-separated fields, trimmed of spaces and tabs; CRLF and blank
// lines accepted; a field may be wrapped in double quotes (no commas inside). Features are
// finite numbers (std::from_chars); the label field is any non-empty text.
// Header detection (kAuto): the first row is a header when one of its feature fields is not
// a number, or when its label field is not a number while the next row's is; a label given by
// name implies a header. `what` names the text in messages ("PATH:LINE: ...").
Result<RawTable> parse_user_csv(std::string_view text, const UserCsvOptions& opt,
                                std::string_view what);
Result<RawTable> read_user_csv(const std::string& path, const UserCsvOptions& opt);

// The reader's fast path for plain decimals (exposed for the fuzzer): parses [-]DIGITS[.DIGITS]
// from [p, e) into *out, giving exactly the float std::from_chars gives, and returns the end of
// the number; nullptr when the text is not of that simple form (then use std::from_chars).
const char* parse_float_fast(const char* p, const char* e, float* out);

// One .npy array (format 1.0, 2.0 or 3.0, C order, little-endian).
struct NpyArray {
  char kind = 0;        // 'f', 'i' or 'u'
  size_t itemsize = 0;  // bytes per element
  std::vector<size_t> shape;
  std::span<const uint8_t> data;  // points into the buffer given to parse_npy
};
Result<NpyArray> parse_npy(std::span<const uint8_t> bytes, std::string_view what);

// Features X (float32/float64/uint8, shape (n, d) or (n, h, w); uint8 is scaled to [0, 1] as
// IDX pixels are) and labels Y (int8..int64, uint8..uint64, shape (n,)).
Result<RawTable> read_user_npy(const std::string& x_path, const std::string& y_path);

// The four MNIST-style IDX files in `dir` (each optionally .gz), labels as texts "0".."255".
Result<RawTable> read_user_idx_part(const std::string& dir, bool train);

// Maps the label texts of train (and test, when given) to classes 0..C-1 over their union, in
// sorted order: numerically when every text is a number, else by bytes. Fewer than 2 classes is
// kInvalidArgument naming `what`. Fills classes and class_names of both sides.
Result<Split> assign_classes(RawTable train, RawTable* test, std::string_view what);

}  // namespace mycel::data
