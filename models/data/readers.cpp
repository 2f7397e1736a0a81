#include "models/data/readers.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

namespace mycel::data {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

Result<std::vector<uint8_t>> inflate_gzip(const std::vector<uint8_t>& in, const std::string& path,
                                          size_t max_bytes) {
  z_stream zs{};
  // 15 + 16: gzip wrapper only (we got here on its magic); zlib checks the CRC32 and length
  // in the trailer, so a flipped bit in the data is an error, not silently wrong pixels.
  if (inflateInit2(&zs, 15 + 16) != Z_OK)
    return Error(Code::kInternal, "zlib: inflateInit2 failed");
  std::unique_ptr<z_stream, void (*)(z_stream*)> guard(&zs, [](z_stream* z) { inflateEnd(z); });

  std::vector<uint8_t> out;
  // The trailer's ISIZE (size mod 2^32) is a good first guess for one-member files; it is
  // bounded by 8x the input, since in a truncated file those 4 bytes are anything.
  size_t guess = in.size() * 4;
  if (in.size() >= 18) {
    const uint8_t* t = in.data() + in.size() - 4;
    guess = size_t{t[0]} | size_t{t[1]} << 8 | size_t{t[2]} << 16 | size_t{t[3]} << 24;
    guess = std::min(guess, in.size() * 8);
  }
  out.resize(std::min(std::max<size_t>(guess, 1024), max_bytes) + 1);

  zs.next_in = const_cast<Bytef*>(in.data());
  size_t in_left = in.size();
  size_t produced = 0;
  for (;;) {
    if (produced == out.size()) {
      if (out.size() > max_bytes) {
        return Error(Code::kCorrupt, path + ": gzip data inflates to more than " +
                                         std::to_string(max_bytes) + " bytes");
      }
      out.resize(std::min(out.size() * 2, max_bytes + 1));
    }
    const uInt in_chunk = static_cast<uInt>(std::min<size_t>(in_left, 1u << 30));
    const uInt out_chunk = static_cast<uInt>(std::min<size_t>(out.size() - produced, 1u << 30));
    zs.avail_in = in_chunk;
    zs.next_out = out.data() + produced;
    zs.avail_out = out_chunk;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    in_left -= in_chunk - zs.avail_in;
    produced += out_chunk - zs.avail_out;
    if (rc == Z_STREAM_END) {
      // Concatenated gzip members are legal (gzip -c a b): go on with the next one, but
      // ignore trailing zero padding as gzip(1) does.
      bool rest_zero = true;
      for (size_t i = in.size() - in_left; i < in.size(); ++i) rest_zero &= in[i] == 0;
      if (in_left == 0 || rest_zero) break;
      if (inflateReset(&zs) != Z_OK) return Error(Code::kInternal, "zlib: inflateReset failed");
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && zs.avail_out != 0 && in_left == 0) {
      return Error(Code::kCorrupt, path + ": truncated gzip stream (ends before its trailer)");
    }
    if (rc == Z_BUF_ERROR) continue;  // output full: grow and go on
    if (rc == Z_MEM_ERROR) return Error(Code::kInternal, path + ": zlib out of memory");
    return Error(Code::kCorrupt, path + ": corrupt gzip data (" +
                                     std::string(zs.msg ? zs.msg : "zlib error") + ")");
  }
  if (produced > max_bytes) {
    return Error(Code::kCorrupt, path + ": gzip data inflates to more than " +
                                     std::to_string(max_bytes) + " bytes");
  }
  out.resize(produced);
  return out;
}

uint32_t be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

Result<std::vector<uint8_t>> read_file(const std::string& path, size_t max_bytes) {
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    const int e = errno;
    if (e == ENOENT) return Error(Code::kNotFound, path + ": no such file");
    return Error(Code::kIo, path + ": cannot open: " + std::strerror(e));
  }
  std::vector<uint8_t> raw;
  // Reserve the file's size up front: growing by doubling would copy a 100 MB CSV twice over.
  struct stat st {};
  if (::fstat(::fileno(f.get()), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
      static_cast<uint64_t>(st.st_size) <= max_bytes) {
    raw.reserve(static_cast<size_t>(st.st_size) + 1);
  }
  uint8_t buf[1 << 16];
  for (;;) {
    const size_t got = std::fread(buf, 1, sizeof buf, f.get());
    raw.insert(raw.end(), buf, buf + got);
    if (raw.size() > max_bytes) {
      return Error(Code::kCorrupt,
                   path + ": file larger than " + std::to_string(max_bytes) + " bytes");
    }
    if (got < sizeof buf) {
      if (std::ferror(f.get())) {
        return Error(Code::kIo, path + ": read failed: " + std::strerror(errno));
      }
      break;
    }
  }
  if (raw.size() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b)
    return inflate_gzip(raw, path, max_bytes);
  return raw;
}

// Checks the header and length of an IDX buffer; fills a.dims and returns the header length.
static Result<size_t> check_idx(std::span<const uint8_t> b, std::string_view what, IdxArray& a) {
  const std::string w(what);
  if (b.size() < 4) {
    return Error(Code::kCorrupt, w + ": not an IDX file (" + std::to_string(b.size()) +
                                     " bytes, shorter than the 4-byte magic)");
  }
  if (b[0] != 0 || b[1] != 0) {
    return Error(Code::kCorrupt, w + ": bad IDX magic (first two bytes must be 0)");
  }
  if (b[2] != 0x08) {
    char t[8];
    std::snprintf(t, sizeof t, "0x%02x", b[2]);
    return Error(Code::kCorrupt,
                 w + ": IDX data type " + t + " not supported (only unsigned bytes, 0x08)");
  }
  const size_t ndims = b[3];
  if (ndims < 1 || ndims > 4) {
    return Error(Code::kCorrupt,
                 w + ": IDX dimension count " + std::to_string(ndims) + " out of range [1, 4]");
  }
  const size_t header = 4 + 4 * ndims;
  if (b.size() < header) {
    return Error(Code::kCorrupt, w + ": truncated IDX header (" + std::to_string(b.size()) +
                                     " bytes, need " + std::to_string(header) + ")");
  }
  size_t count = 1;
  for (size_t i = 0; i < ndims; ++i) {
    const uint32_t d = be32(b.data() + 4 + 4 * i);
    if (d == 0) return Error(Code::kCorrupt, w + ": IDX dimension " + std::to_string(i) + " is 0");
    if (count > std::numeric_limits<size_t>::max() / d) {
      return Error(Code::kCorrupt, w + ": IDX dimensions overflow");
    }
    count *= d;
    a.dims.push_back(d);
  }
  const size_t have = b.size() - header;
  if (have != count) {
    std::string dims;
    for (uint32_t d : a.dims) {
      if (!dims.empty()) dims += 'x';
      dims += std::to_string(d);
    }
    return Error(Code::kCorrupt, w + ": IDX size mismatch: header says " + dims + " = " +
                                     std::to_string(count) + " bytes of data, file has " +
                                     std::to_string(have) +
                                     (have < count ? " (truncated)" : " (trailing bytes)"));
  }
  return header;
}

Result<IdxArray> parse_idx(std::span<const uint8_t> b, std::string_view what) {
  IdxArray a;
  MYCEL_ASSIGN_OR_RETURN(const size_t header, check_idx(b, what, a));
  a.data.assign(b.begin() + static_cast<ptrdiff_t>(header), b.end());
  return a;
}

Result<IdxArray> read_idx(const std::string& path) {
  MYCEL_ASSIGN_OR_RETURN(auto bytes, read_file(path));
  IdxArray a;
  MYCEL_ASSIGN_OR_RETURN(const size_t header, check_idx(bytes, path, a));
  // Reuse the file's buffer (47 MB for the MNIST training images) instead of copying it.
  bytes.erase(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(header));
  a.data = std::move(bytes);
  return a;
}

Result<Dataset> read_idx_dataset(const std::string& images_path, const std::string& labels_path,
                                 std::string_view name, int classes) {
  MYCEL_ASSIGN_OR_RETURN(IdxArray img, read_idx(images_path));
  if (img.dims.size() != 3) {
    return Error(Code::kCorrupt, images_path +
                                     ": expected an image file with 3 dimensions "
                                     "(count x rows x cols), found " +
                                     std::to_string(img.dims.size()));
  }
  MYCEL_ASSIGN_OR_RETURN(IdxArray lab, read_idx(labels_path));
  if (lab.dims.size() != 1) {
    return Error(Code::kCorrupt, labels_path + ": expected a label file with 1 dimension, found " +
                                     std::to_string(lab.dims.size()));
  }
  if (img.dims[0] != lab.dims[0]) {
    return Error(Code::kCorrupt, images_path + " has " + std::to_string(img.dims[0]) +
                                     " images but " + labels_path + " has " +
                                     std::to_string(lab.dims[0]) + " labels");
  }
  Dataset d;
  d.name = std::string(name);
  d.n = img.dims[0];
  d.channels = 1;
  d.height = static_cast<int>(img.dims[1]);
  d.width = static_cast<int>(img.dims[2]);
  d.dim = size_t{img.dims[1]} * img.dims[2];
  d.classes = classes;
  d.y.resize(d.n);
  for (size_t i = 0; i < d.n; ++i) {
    if (lab.data[i] >= classes) {
      return Error(Code::kCorrupt, labels_path + ": label " + std::to_string(lab.data[i]) +
                                       " at index " + std::to_string(i) + " is not below " +
                                       std::to_string(classes));
    }
    d.y[i] = lab.data[i];
  }
  d.x.resize(img.data.size());
  constexpr float kScale = 1.0f / 255.0f;
  for (size_t i = 0; i < img.data.size(); ++i) d.x[i] = static_cast<float>(img.data[i]) * kScale;
  return d;
}

Result<Dataset> parse_csv(std::string_view text, const CsvFormat& fmt, std::string_view what,
                          std::string_view name) {
  const std::string w(what);
  if (fmt.features == 0 || fmt.classes <= 0) {
    return Error(Code::kInvalidArgument, w + ": csv format needs features > 0 and classes > 0");
  }
  Dataset d;
  d.name = std::string(name);
  d.dim = fmt.features;
  d.classes = fmt.classes;
  const size_t fields = fmt.features + 1;
  std::vector<float> row(fmt.features);
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = trim(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    const std::string at = w + ":" + std::to_string(line_no) + ": ";
    const size_t got = static_cast<size_t>(std::count(line.begin(), line.end(), ',')) + 1;
    if (got != fields) {
      return Error(Code::kCorrupt, at + "expected " + std::to_string(fields) + " fields, got " +
                                       std::to_string(got));
    }
    size_t field = 0, f = 0;
    int32_t label = -1;
    size_t start = 0;
    for (;;) {
      size_t comma = line.find(',', start);
      std::string_view tok = trim(line.substr(
          start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
      const bool is_label = fmt.label_first ? field == 0 : field == fields - 1;
      if (tok.empty()) {
        return Error(Code::kCorrupt, at + "empty field " + std::to_string(field + 1));
      }
      if (is_label) {
        if (fmt.label == CsvFormat::Label::kLetter) {
          if (tok.size() != 1 || tok[0] < 'A' || tok[0] > 'Z') {
            return Error(Code::kCorrupt,
                         at + "label '" + std::string(tok) + "' is not a capital letter");
          }
          label = tok[0] - 'A';
        } else {
          int v = 0;
          auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
          if (ec != std::errc() || p != tok.data() + tok.size()) {
            return Error(Code::kCorrupt, at + "label '" + std::string(tok) + "' is not an integer");
          }
          label = v;
        }
        if (label < 0 || label >= fmt.classes) {
          return Error(Code::kCorrupt, at + "label '" + std::string(tok) + "' outside [0, " +
                                           std::to_string(fmt.classes) + ")");
        }
      } else {
        float v = 0;
        auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
        if (ec != std::errc() || p != tok.data() + tok.size() || !std::isfinite(v)) {
          return Error(Code::kCorrupt, at + "field " + std::to_string(field + 1) + " '" +
                                           std::string(tok) + "' is not a finite number");
        }
        row[f++] = v;
      }
      ++field;
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
    d.x.insert(d.x.end(), row.begin(), row.end());
    d.y.push_back(label);
    ++d.n;
  }
  if (d.n == 0) return Error(Code::kCorrupt, w + ": no data rows");
  return d;
}

Result<Dataset> read_csv(const std::string& path, const CsvFormat& fmt, std::string_view name) {
  MYCEL_ASSIGN_OR_RETURN(auto bytes, read_file(path, size_t{1} << 30));
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return parse_csv(text, fmt, path, name);
}

}  // namespace mycel::data
