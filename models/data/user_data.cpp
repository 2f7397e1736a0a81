#include "models/data/user_data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <unordered_map>

#include "models/data/readers.h"

namespace mycel::data {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t'; }

std::string_view trim_field(std::string_view s) {
  while (!s.empty() && (is_space(s.front()))) s.remove_prefix(1);
  while (!s.empty() && (is_space(s.back()) || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::string_view unquote(std::string_view s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
  return s;
}

// A whole field as a finite number (a leading '+' allowed).
bool parse_number(std::string_view s, double* out) {
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty() || s.front() == '+') return false;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool is_number(std::string_view s) {
  double v;
  return parse_number(unquote(s), &v);
}

// Splits one line (no '\n') into trimmed fields.
std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> f;
  size_t start = 0;
  for (;;) {
    size_t c = line.find(',', start);
    f.push_back(trim_field(line.substr(start, c == std::string_view::npos ? c : c - start)));
    if (c == std::string_view::npos) break;
    start = c + 1;
  }
  return f;
}

std::string shorten(std::string_view s) {
  if (s.size() <= 40) return std::string(s);
  return std::string(s.substr(0, 37)) + "...";
}

}  // namespace

// Clinger's fast path for the common field shapes ("12", "-0.375", "3.25"): when the digits,
// read as an integer m, fit float's 24-bit mantissa and there are at most 10 fraction digits,
// m and 10^k are both exact floats and one IEEE division rounds m / 10^k correctly: the same
// float std::from_chars gives (csv_fuzz checks that). Anything else (exponents, long mantissas,
// "inf", ".5", "1.") returns nullptr and goes to std::from_chars.
const char* parse_float_fast(const char* p, const char* e, float* out) {
  static constexpr float kPow10[] = {1e0f, 1e1f, 1e2f, 1e3f, 1e4f, 1e5f,
                                     1e6f, 1e7f, 1e8f, 1e9f, 1e10f};
  const bool neg = p < e && *p == '-';
  if (neg) ++p;
  uint64_t m = 0;
  int digits = 0, frac = 0;
  while (p < e && static_cast<unsigned>(*p - '0') < 10 && digits < 19) {
    m = m * 10 + static_cast<unsigned>(*p++ - '0');
    ++digits;
  }
  if (digits == 0) return nullptr;
  if (p < e && *p == '.') {
    ++p;
    while (p < e && static_cast<unsigned>(*p - '0') < 10 && digits < 19) {
      m = m * 10 + static_cast<unsigned>(*p++ - '0');
      ++digits;
      ++frac;
    }
    if (frac == 0) return nullptr;
  }
  if (p < e && (static_cast<unsigned>(*p - '0') < 10 || *p == 'e' || *p == 'E')) return nullptr;
  if (m > (uint64_t{1} << 24) || frac > 10) return nullptr;
  float v = static_cast<float>(m);
  if (frac) v /= kPow10[frac];
  *out = neg ? -v : v;
  return p;
}

namespace {

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Lines of a text: [begin, end) of each, 1-based numbers, the '\n' excluded.
class LineCursor {
 public:
  explicit LineCursor(std::string_view t) : t_(t) {}
  // Next non-blank line (after trimming spaces, tabs and '\r'); false at the end.
  bool next(std::string_view* line) {
    while (pos_ < t_.size()) {
      const char* b = t_.data() + pos_;
      const void* nl = std::memchr(b, '\n', t_.size() - pos_);
      const size_t len = nl ? static_cast<size_t>(static_cast<const char*>(nl) - b) : t_.size() - pos_;
      pos_ += len + 1;
      ++line_no_;
      std::string_view l(b, len);
      while (!l.empty() && (l.back() == '\r' || is_space(l.back()))) l.remove_suffix(1);
      size_t i = 0;
      while (i < l.size() && is_space(l[i])) ++i;
      if (i == l.size()) continue;
      *line = l.substr(i);
      return true;
    }
    return false;
  }
  size_t line_no() const { return line_no_; }
  size_t pos() const { return pos_; }

 private:
  std::string_view t_;
  size_t pos_ = 0;
  size_t line_no_ = 0;
};

}  // namespace

Result<RawTable> parse_user_csv(std::string_view text, const UserCsvOptions& opt,
                                std::string_view what) {
  const std::string w(what);
  auto at = [&](size_t line) { return w + ":" + std::to_string(line) + ": "; };
  LineCursor cur(text);
  std::string_view first;
  if (!cur.next(&first)) {
    return Error(Code::kCorrupt, w + ": empty file (no rows); expected comma-separated rows of "
                                     "numeric features and a label");
  }
  const size_t first_line = cur.line_no();
  const std::vector<std::string_view> f0 = split_fields(first);
  const size_t nf = f0.size();
  if (nf < 2) {
    return Error(Code::kCorrupt, at(first_line) + "expected at least 2 comma-separated fields "
                                                  "(features and a label), got 1");
  }

  // The label column: by index, by header name, or the last one.
  int64_t label_index = -1;
  bool label_by_name = false;
  if (!opt.label.empty()) {
    int64_t v = -1;
    auto [p, ec] = std::from_chars(opt.label.data(), opt.label.data() + opt.label.size(), v);
    const bool numeric = ec == std::errc() && p == opt.label.data() + opt.label.size();
    bool matches_header = false;
    for (auto f : f0) matches_header |= unquote(f) == opt.label;
    if (numeric && !(matches_header && opt.header != HeaderMode::kNo)) {
      if (v < 0 || static_cast<size_t>(v) >= nf) {
        return Error(Code::kInvalidArgument,
                     at(first_line) + "label column " + opt.label + " does not exist (rows have " +
                         std::to_string(nf) + " fields, columns 0.." + std::to_string(nf - 1) + ")");
      }
      label_index = v;
    } else {
      label_by_name = true;
      if (opt.header == HeaderMode::kNo) {
        return Error(Code::kInvalidArgument, w + ": label column '" + opt.label +
                                                 "' is a name, but the header is off "
                                                 "(data.header: no); give a 0-based index");
      }
    }
  }
  if (label_by_name) {
    for (size_t i = 0; i < nf; ++i)
      if (unquote(f0[i]) == opt.label) label_index = static_cast<int64_t>(i);
    if (label_index < 0) {
      std::string cols;
      for (auto f : f0) cols += (cols.empty() ? "" : ", ") + shorten(unquote(f));
      return Error(Code::kInvalidArgument, at(first_line) + "label column '" + opt.label +
                                               "' not in the header (columns: " + cols + ")");
    }
  }
  const size_t lab = label_index < 0 ? nf - 1 : static_cast<size_t>(label_index);

  // Is the first row a header?
  bool header = false;
  if (opt.header == HeaderMode::kYes || label_by_name) {
    header = true;
  } else if (opt.header == HeaderMode::kAuto) {
    for (size_t i = 0; i < nf; ++i)
      if (i != lab && !is_number(f0[i])) header = true;
    if (!header && !is_number(f0[lab])) {
      // Only the label is text: a header when the next row's label is a number.
      LineCursor peek = cur;
      std::string_view second;
      if (peek.next(&second)) {
        auto f1 = split_fields(second);
        if (f1.size() == nf && is_number(f1[lab])) header = true;
      }
    }
  }

  RawTable t;
  t.d.name = w;
  t.d.dim = nf - 1;
  const size_t dim = nf - 1;
  if (header) {
    for (size_t i = 0; i < nf; ++i)
      if (i != lab) t.columns.emplace_back(unquote(f0[i]));
  }
  // Rewind to parse the first row as data unless it is the header.
  LineCursor rows(text);
  if (header) {
    std::string_view skip;
    rows.next(&skip);
  }
  {
    // Reserve from the first row's length (a guess; the vectors still grow if it is short).
    const size_t est = text.size() / (first.size() + 1) + 1;
    const size_t cap = text.size() / 2 + dim;  // every feature takes at least 2 bytes ("0,")
    t.d.x.reserve(std::min(est * dim + dim, cap));
    t.d.y.reserve(std::min(est + 1, text.size() / 2 + 1));
  }

  std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>> ids;
  std::string_view last_label;
  int32_t last_id = -1;
  std::string_view line;
  while (rows.next(&line)) {
    const size_t ln = rows.line_no();
    const char* p = line.data();
    const char* const e = line.data() + line.size();
    // A row with the wrong field count is reported as such, whatever field failed first.
    auto fail = [&](const std::string& why) -> Status {
      const size_t got = static_cast<size_t>(std::count(line.begin(), line.end(), ',')) + 1;
      if (got != nf) {
        return Error(Code::kCorrupt, at(ln) + "expected " + std::to_string(nf) +
                                         " fields (as on line " + std::to_string(first_line) +
                                         "), got " + std::to_string(got));
      }
      return Error(Code::kCorrupt, at(ln) + why);
    };
    const size_t base = t.d.x.size();
    t.d.x.resize(base + dim);
    float* out = t.d.x.data() + base;
    for (size_t f = 0; f < nf; ++f) {
      while (p < e && is_space(*p)) ++p;
      const char* fs = p;
      if (f == lab) {
        const char* c = static_cast<const char*>(std::memchr(p, ',', static_cast<size_t>(e - p)));
        const char* fe = c ? c : e;
        std::string_view tok = trim_field(std::string_view(fs, static_cast<size_t>(fe - fs)));
        tok = unquote(tok);
        if (tok.empty()) {
          return fail("label (field " + std::to_string(f + 1) + ") is empty; expected a class label");
        }
        int32_t id;
        if (last_id >= 0 && tok == last_label) {
          id = last_id;
        } else {
          auto it = ids.find(tok);
          if (it == ids.end()) {
            id = static_cast<int32_t>(t.labels.size());
            t.labels.emplace_back(tok);
            ids.emplace(std::string(tok), id);
          } else {
            id = it->second;
          }
          last_label = tok;
          last_id = id;
        }
        t.d.y.push_back(id);
        p = fe;
      } else {
        const char* q = p;
        if (q < e && *q == '+' && q + 1 < e && q[1] != '-') ++q;
        float v = 0;
        const char* fast = parse_float_fast(q, e, &v);
        auto [np, ec] = fast ? std::from_chars_result{fast, std::errc()} : std::from_chars(q, e, v);
        if (ec == std::errc::result_out_of_range) {
          // Below float's range (1e-50) is 0; above it (1e50) is refused below as Inf.
          double dv = 0;
          auto r = std::from_chars(q, e, dv);
          if (r.ec == std::errc()) {
            v = static_cast<float>(dv);
            np = r.ptr;
            ec = std::errc();
          }
        }
        const char* after = np;
        while (after < e && is_space(*after)) ++after;
        const bool at_end = after == e || *after == ',';
        if (ec != std::errc() || np == q || !at_end || !std::isfinite(v)) {
          const char* c = static_cast<const char*>(std::memchr(fs, ',', static_cast<size_t>(e - fs)));
          const std::string_view tok =
              trim_field(std::string_view(fs, static_cast<size_t>((c ? c : e) - fs)));
          if (tok.empty()) {
            return fail("field " + std::to_string(f + 1) + " is empty; expected a number");
          }
          return fail("field " + std::to_string(f + 1) + " '" + shorten(tok) +
                      "' is not a finite number (NaN, Inf and text are refused)");
        }
        *out++ = v;
        p = after;
      }
      // Between fields: a comma; after the last: the end of the line.
      while (p < e && is_space(*p)) ++p;
      if (f + 1 < nf) {
        if (p == e) return fail("");
        ++p;  // the comma (a label field ends at one; a number was checked to)
      } else if (p != e) {
        return fail("unexpected text after the last field");
      }
    }
    ++t.d.n;
  }
  if (t.d.n == 0) {
    return Error(Code::kCorrupt, w + ": no data rows (only a header" +
                                     (header ? std::string(" on line ") + std::to_string(first_line)
                                             : std::string()) +
                                     ")");
  }
  return t;
}

Result<RawTable> read_user_csv(const std::string& path, const UserCsvOptions& opt) {
  // A plain file is parsed where it lies, mapped from the page cache: reading it into a buffer
  // would cost a copy and, above all, the kernel zeroing every fresh page of that buffer (a
  // third of the load time of a 100 MB file). A gzipped one is inflated by read_file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st {};
    unsigned char magic[2] = {0, 0};
    const bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    const bool gz = ok && st.st_size >= 2 && ::pread(fd, magic, 2, 0) == 2 && magic[0] == 0x1f &&
                    magic[1] == 0x8b;
    if (ok && !gz && st.st_size > 0) {
      const size_t len = static_cast<size_t>(st.st_size);
      void* m = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
      ::close(fd);
      if (m != MAP_FAILED) {
        ::madvise(m, len, MADV_SEQUENTIAL);
        auto r = parse_user_csv(std::string_view(static_cast<const char*>(m), len), opt, path);
        ::munmap(m, len);
        return r;
      }
    } else {
      ::close(fd);
    }
  }
  // gzip, an empty file, or a path mmap cannot take: read_file (which also names the error).
  MYCEL_ASSIGN_OR_RETURN(auto bytes, read_file(path));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return parse_user_csv(text, opt, path);
}

// ---- .npy ----

Result<NpyArray> parse_npy(std::span<const uint8_t> b, std::string_view what) {
  const std::string w(what);
  auto bad = [&](const std::string& why) { return Error(Code::kCorrupt, w + ": " + why); };
  static constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (b.size() < 10 || std::memcmp(b.data(), kMagic, 6) != 0) {
    return bad(b.size() < 10 ? "not a .npy file (truncated before the header)"
                             : "not a .npy file (bad magic; expected \\x93NUMPY)");
  }
  const uint8_t major = b[6];
  size_t hlen = 0, hstart = 0;
  if (major == 1) {
    hlen = size_t{b[8]} | size_t{b[9]} << 8;
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) return bad("truncated .npy header");
    hlen = size_t{b[8]} | size_t{b[9]} << 8 | size_t{b[10]} << 16 | size_t{b[11]} << 24;
    hstart = 12;
  } else {
    return bad(".npy format version " + std::to_string(major) + "." + std::to_string(b[7]) +
               " not supported (1.0, 2.0, 3.0)");
  }
  if (hlen > b.size() - hstart) {
    return bad("truncated .npy header (says " + std::to_string(hlen) + " bytes, file has " +
               std::to_string(b.size() - hstart) + ")");
  }
  const std::string_view h(reinterpret_cast<const char*>(b.data() + hstart), hlen);
  auto value_of = [&](std::string_view key) -> std::string_view {
    size_t k = h.find(key);
    if (k == std::string_view::npos) return {};
    size_t c = h.find(':', k + key.size());
    if (c == std::string_view::npos) return {};
    size_t v = c + 1;
    while (v < h.size() && h[v] == ' ') ++v;
    return h.substr(v);
  };
  NpyArray a;
  // descr: '<f4'
  std::string_view d = value_of("'descr'");
  if (d.size() < 2 || (d[0] != '\'' && d[0] != '"')) return bad(".npy header has no 'descr'");
  const size_t dq = d.find(d[0], 1);
  if (dq == std::string_view::npos) return bad(".npy header: unterminated 'descr'");
  const std::string descr(d.substr(1, dq - 1));
  if (descr.size() < 3 || (descr[1] != 'f' && descr[1] != 'i' && descr[1] != 'u')) {
    return bad("dtype '" + descr + "' not supported (expected float32/float64/uint8 features, "
                                   "integer labels)");
  }
  a.kind = descr[1];
  int isz = 0;
  auto [ip, iec] = std::from_chars(descr.data() + 2, descr.data() + descr.size(), isz);
  if (iec != std::errc() || ip != descr.data() + descr.size() ||
      !(isz == 1 || isz == 2 || isz == 4 || isz == 8) || (a.kind == 'f' && isz < 4)) {
    return bad("dtype '" + descr + "' not supported");
  }
  a.itemsize = static_cast<size_t>(isz);
  if (descr[0] == '>' && a.itemsize > 1) {
    return bad("big-endian dtype '" + descr + "' not supported (save little-endian arrays)");
  }
  if (descr[0] != '<' && descr[0] != '|' && descr[0] != '=' && descr[0] != '>') {
    return bad("dtype '" + descr + "' not supported");
  }
  std::string_view fo = value_of("'fortran_order'");
  if (fo.substr(0, 4) == "True") {
    return Error(Code::kInvalidArgument,
                 w + ": Fortran-order arrays are not supported; save a C-order array "
                     "(numpy.save(path, numpy.ascontiguousarray(a)))");
  }
  if (fo.substr(0, 5) != "False") return bad(".npy header has no 'fortran_order'");
  std::string_view sh = value_of("'shape'");
  if (sh.empty() || sh[0] != '(') return bad(".npy header has no 'shape'");
  const size_t close = sh.find(')');
  if (close == std::string_view::npos) return bad(".npy header: unterminated 'shape'");
  std::string_view dims = sh.substr(1, close - 1);
  size_t count = 1;
  while (!dims.empty()) {
    while (!dims.empty() && (dims.front() == ' ' || dims.front() == ',')) dims.remove_prefix(1);
    if (dims.empty()) break;
    size_t v = 0;
    auto [p, ec] = std::from_chars(dims.data(), dims.data() + dims.size(), v);
    if (ec != std::errc() || p == dims.data()) return bad(".npy header: bad 'shape'");
    dims.remove_prefix(static_cast<size_t>(p - dims.data()));
    if (v != 0 && count > std::numeric_limits<size_t>::max() / v) {
      return bad(".npy shape overflows");
    }
    count *= v;
    a.shape.push_back(v);
  }
  const size_t have = b.size() - hstart - hlen;
  if (count > std::numeric_limits<size_t>::max() / a.itemsize || count * a.itemsize != have) {
    std::string s;
    for (size_t v : a.shape) s += (s.empty() ? "" : "x") + std::to_string(v);
    const bool overflow = count > std::numeric_limits<size_t>::max() / a.itemsize;
    const size_t need = overflow ? 0 : count * a.itemsize;
    return bad(".npy size mismatch: header says shape (" + s + ") of " + descr + " = " +
               (overflow ? std::string("too many") : std::to_string(need)) +
               " bytes of data, file has " + std::to_string(have) +
               (overflow || have < need ? " (truncated)" : " (trailing bytes)"));
  }
  a.data = b.subspan(hstart + hlen);
  return a;
}

namespace {

template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);  // little-endian host (x86-64, aarch64)
  return v;
}

// Distinct integer labels into texts, y as indices into them.
void int_labels(RawTable& t, std::span<const int64_t> vals) {
  std::unordered_map<int64_t, int32_t> ids;
  t.d.y.resize(vals.size());
  for (size_t i = 0; i < vals.size(); ++i) {
    auto [it, fresh] = ids.emplace(vals[i], static_cast<int32_t>(t.labels.size()));
    if (fresh) t.labels.push_back(std::to_string(vals[i]));
    t.d.y[i] = it->second;
  }
}

}  // namespace

Result<RawTable> read_user_npy(const std::string& x_path, const std::string& y_path) {
  MYCEL_ASSIGN_OR_RETURN(auto xb, read_file(x_path));
  MYCEL_ASSIGN_OR_RETURN(NpyArray x, parse_npy(xb, x_path));
  MYCEL_ASSIGN_OR_RETURN(auto yb, read_file(y_path));
  MYCEL_ASSIGN_OR_RETURN(NpyArray y, parse_npy(yb, y_path));
  if (x.shape.size() != 2 && x.shape.size() != 3) {
    return Error(Code::kInvalidArgument, x_path + ": features must have shape (n, d) or (n, h, w), "
                                                  "found " + std::to_string(x.shape.size()) +
                                                  " dimensions");
  }
  if (!(x.kind == 'f' || (x.kind == 'u' && x.itemsize == 1))) {
    return Error(Code::kInvalidArgument,
                 x_path + ": features must be float32, float64 or uint8");
  }
  if (y.shape.size() != 1 || y.kind == 'f') {
    return Error(Code::kInvalidArgument,
                 y_path + ": labels must be integers of shape (n,), found " +
                     std::string(y.kind == 'f' ? "floats" : "integers") + " with " +
                     std::to_string(y.shape.size()) + " dimensions");
  }
  if (x.shape[0] != y.shape[0]) {
    return Error(Code::kInvalidArgument, x_path + " has " + std::to_string(x.shape[0]) +
                                             " rows but " + y_path + " has " +
                                             std::to_string(y.shape[0]) + " labels");
  }
  RawTable t;
  Dataset& d = t.d;
  d.name = "npy:" + x_path + "," + y_path;
  d.n = x.shape[0];
  d.dim = 1;
  for (size_t i = 1; i < x.shape.size(); ++i) d.dim *= x.shape[i];
  if (d.n == 0 || d.dim == 0) {
    return Error(Code::kInvalidArgument, x_path + ": no samples or no features (shape has a 0)");
  }
  if (x.shape.size() == 3) {
    d.channels = 1;
    d.height = static_cast<int>(x.shape[1]);
    d.width = static_cast<int>(x.shape[2]);
  }
  const size_t total = d.n * d.dim;
  d.x.resize(total);
  const uint8_t* px = x.data.data();
  for (size_t i = 0; i < total; ++i) {
    double v;
    if (x.kind == 'u') {
      v = px[i] * (1.0 / 255.0);
    } else if (x.itemsize == 4) {
      v = load_le<float>(px + 4 * i);
    } else {
      v = load_le<double>(px + 8 * i);
    }
    const float fv = static_cast<float>(v);
    if (!std::isfinite(fv)) {
      return Error(Code::kCorrupt, x_path + ": element " + std::to_string(i % d.dim) + " of row " +
                                       std::to_string(i / d.dim) +
                                       " is NaN or Inf (or beyond float32); expected finite values");
    }
    d.x[i] = fv;
  }
  std::vector<int64_t> vals(d.n);
  const uint8_t* py = y.data.data();
  for (size_t i = 0; i < d.n; ++i) {
    const uint8_t* p = py + i * y.itemsize;
    int64_t v = 0;
    if (y.kind == 'i') {
      switch (y.itemsize) {
        case 1: v = load_le<int8_t>(p); break;
        case 2: v = load_le<int16_t>(p); break;
        case 4: v = load_le<int32_t>(p); break;
        default: v = load_le<int64_t>(p); break;
      }
    } else {
      uint64_t u = 0;
      switch (y.itemsize) {
        case 1: u = load_le<uint8_t>(p); break;
        case 2: u = load_le<uint16_t>(p); break;
        case 4: u = load_le<uint32_t>(p); break;
        default: u = load_le<uint64_t>(p); break;
      }
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(Code::kInvalidArgument,
                     y_path + ": label " + std::to_string(u) + " at index " + std::to_string(i) +
                         " is too large");
      }
      v = static_cast<int64_t>(u);
    }
    vals[i] = v;
  }
  int_labels(t, vals);
  return t;
}

Result<RawTable> read_user_idx_part(const std::string& dir, bool train) {
  auto find = [&](const std::string& base) -> std::string {
    struct stat st {};
    for (const std::string& p : {dir + "/" + base, dir + "/" + base + ".gz"})
      if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return p;
    return {};
  };
  const std::string pre = train ? "train" : "t10k";
  const std::string img = find(pre + "-images-idx3-ubyte");
  const std::string lab = find(pre + "-labels-idx1-ubyte");
  if (img.empty() || lab.empty()) {
    return Error(Code::kNotFound,
                 "idx:" + dir + ": " + dir + "/" + pre + (img.empty() ? "-images-idx3" : "-labels-idx1") +
                     "-ubyte[.gz] is missing (expected the four MNIST-style files "
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                     "t10k-labels-idx1-ubyte, each optionally .gz)");
  }
  RawTable t;
  MYCEL_ASSIGN_OR_RETURN(t.d, read_idx_dataset(img, lab, "idx:" + dir, 256));
  std::vector<int64_t> vals(t.d.y.begin(), t.d.y.end());
  int_labels(t, vals);
  t.d.classes = 0;
  return t;
}

Result<Split> assign_classes(RawTable train, RawTable* test, std::string_view what) {
  // The union of label texts, then the sort order.
  std::vector<std::string> all = train.labels;
  if (test) all.insert(all.end(), test->labels.begin(), test->labels.end());
  std::vector<double> num(all.size());
  bool numeric = true;
  for (size_t i = 0; i < all.size() && numeric; ++i) numeric = parse_number(all[i], &num[i]);
  std::vector<size_t> order(all.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (numeric) {
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return num[a] < num[b]; });
  } else {
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return all[a] < all[b]; });
  }
  // Equal labels (the same text, or the same number written two ways: "1" and "1.0") are one
  // class, named by its first text in sorted order.
  std::vector<int32_t> cls(all.size());
  std::vector<std::string> names;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t i = order[k];
    const bool same = k > 0 && (numeric ? num[order[k - 1]] == num[i] : all[order[k - 1]] == all[i]);
    if (!same) names.push_back(all[i]);
    cls[i] = static_cast<int32_t>(names.size() - 1);
  }
  if (names.size() < 2) {
    return Error(Code::kInvalidArgument,
                 std::string(what) + ": only one class (label '" + (names.empty() ? "" : names[0]) +
                     "'); a classifier needs at least 2 distinct labels");
  }
  const int classes = static_cast<int>(names.size());
  Split s;
  auto finish = [&](RawTable& t, size_t offset, Dataset& out) {
    for (int32_t& y : t.d.y) y = cls[offset + static_cast<size_t>(y)];
    out = std::move(t.d);
    out.classes = classes;
    out.class_names = names;
  };
  finish(train, 0, s.train);
  if (test) finish(*test, train.labels.size(), s.test);
  return s;
}

}  // namespace mycel::data
