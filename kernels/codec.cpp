// Codec front end: codec text, payload headers, the boundary checks of the device-level calls
// (then dispatch to the device's backend), and CodecContext for whole host payloads with the
// optional zstd stage.
#include "kernels/codec.h"

#include <fmt/format.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#include "common/half.h"
#include "kernels/backend.h"
#include "kernels/codec_math.h"

namespace mycel {
namespace {

constexpr uint32_t kMaxBlock = 65536;
// Far above any model and far below where byte counts could overflow.
constexpr uint64_t kMaxParams = uint64_t{1} << 48;

Result<const KernelTable*> table_for(Device& dev) {
  if (dev.kind() == DeviceKind::kCpu) return &cpu_kernels();
  const KernelTable* t = cuda_kernels();
  if (!t) return Error(Code::kUnavailable, "no cuda kernels in this build");
  return t;
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return an > 0 && bn > 0 && pa < pb + bn && pb < pa + an;
}

std::string hdr_str(const PayloadHeader& h) {
  return fmt::format("{} n={} block={} k={} body={}", codec_name(h.codec), h.n, h.block, h.k,
                     h.body_bytes);
}

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void put_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

bool parse_u64(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// Shared by the device-level calls: a raw body of the header's size at an aligned address.
Status check_raw_body(const PayloadHeader& h, const void* body, size_t raw, const char* who) {
  if (h.flags & kPayloadFlagZstd)
    return Error(Code::kInvalidArgument, std::string(who) +
                                             " takes a raw body; the zstd stage is undone by "
                                             "CodecContext before it");
  if (raw > 0 && !body) return Error(Code::kInvalidArgument, std::string(who) + ": body is null");
  if (reinterpret_cast<uintptr_t>(body) % 4 != 0)
    return Error(Code::kInvalidArgument, std::string(who) + ": body must be 4-byte aligned");
  return Ok();
}

}  // namespace

std::string_view codec_name(CodecId id) {
  switch (id) {
    case CodecId::kFp32: return "fp32";
    case CodecId::kFp16: return "fp16";
    case CodecId::kBf16: return "bf16";
    case CodecId::kInt8: return "int8";
    case CodecId::kInt4: return "int4";
    case CodecId::kTopK: return "topk";
    case CodecId::kRandK: return "randk";
  }
  return "unknown";
}
bool codec_is_sparse(CodecId id) { return id == CodecId::kTopK || id == CodecId::kRandK; }
bool codec_is_lossy(CodecId id) { return id != CodecId::kFp32; }

Result<CodecSpec> parse_codec(std::string_view text) {
  const std::string quoted = fmt::format("'{}'", text);
  CodecSpec spec;
  std::string_view base = text, stage;
  if (size_t plus = text.find('+'); plus != std::string_view::npos) {
    base = text.substr(0, plus);
    stage = text.substr(plus + 1);
    if (stage == "zstd") {
      spec.zstd = true;
    } else if (stage.substr(0, 5) == "zstd=") {
      std::string_view lv = stage.substr(5);
      int level = 0;
      auto r = std::from_chars(lv.data(), lv.data() + lv.size(), level);
      if (lv.empty() || r.ec != std::errc() || r.ptr != lv.data() + lv.size() ||
          level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
        return Error(Code::kInvalidArgument,
                     fmt::format("codec {}: zstd level must be an integer in [{}, {}]", quoted,
                                 ZSTD_minCLevel(), ZSTD_maxCLevel()));
      spec.zstd = true;
      spec.zstd_level = level;
    } else {
      return Error(Code::kInvalidArgument,
                   "codec " + quoted + ": unknown stage after '+' (expected zstd or zstd=LEVEL)");
    }
  }
  std::string_view name = base, param;
  bool has_param = false;
  if (size_t colon = base.find(':'); colon != std::string_view::npos) {
    name = base.substr(0, colon);
    param = base.substr(colon + 1);
    has_param = true;
  }
  bool found = false;
  for (int i = 0; i < kCodecCount; ++i)
    if (codec_name(static_cast<CodecId>(i)) == name) {
      spec.id = static_cast<CodecId>(i);
      found = true;
    }
  if (!found)
    return Error(Code::kInvalidArgument,
                 "unknown codec " + quoted + " (expected fp32, fp16, bf16, int8[:block=N], "
                 "int4[:block=N], topk[:FRACTION] or randk[:FRACTION], optionally +zstd[=LEVEL])");
  switch (spec.id) {
    case CodecId::kInt8:
    case CodecId::kInt4:
      if (has_param) {
        uint64_t b = 0;
        if (param.substr(0, 6) != "block=" || !parse_u64(param.substr(6), &b) || b < 1 ||
            b > kMaxBlock)
          return Error(Code::kInvalidArgument,
                       "codec " + quoted + ": expected block=N with N in [1, 65536]");
        spec.block = static_cast<uint32_t>(b);
      }
      break;
    case CodecId::kTopK:
    case CodecId::kRandK:
      if (has_param) {
        double f = 0;
        auto r = std::from_chars(param.data(), param.data() + param.size(), f);
        if (param.empty() || r.ec != std::errc() || r.ptr != param.data() + param.size() ||
            !(f > 0.0 && f <= 1.0))
          return Error(Code::kInvalidArgument,
                       "codec " + quoted + ": expected a fraction in (0, 1], e.g. topk:0.01");
        spec.fraction = f;
      }
      break;
    default:
      if (has_param)
        return Error(Code::kInvalidArgument, "codec " + quoted + " takes no parameter");
  }
  return spec;
}

std::string to_string(const CodecSpec& spec) {
  std::string s(codec_name(spec.id));
  if (spec.id == CodecId::kInt8 || spec.id == CodecId::kInt4)
    s += fmt::format(":block={}", spec.block);
  else if (codec_is_sparse(spec.id))
    s += fmt::format(":{}", spec.fraction);
  if (spec.zstd) s += spec.zstd_level == 1 ? "+zstd" : fmt::format("+zstd={}", spec.zstd_level);
  return s;
}

Result<PayloadHeader> make_header(const CodecSpec& spec, size_t n, uint64_t seed) {
  if (static_cast<int>(spec.id) >= kCodecCount)
    return Error(Code::kInvalidArgument, "unknown codec id " + std::to_string(int(spec.id)));
  if (n > kMaxParams)
    return Error(Code::kInvalidArgument, fmt::format("{} parameters is too many", n));
  PayloadHeader h;
  h.codec = spec.id;
  h.n = n;
  switch (spec.id) {
    case CodecId::kInt8:
    case CodecId::kInt4:
      if (spec.block < 1 || spec.block > kMaxBlock)
        return Error(Code::kInvalidArgument,
                     fmt::format("block {} is outside [1, 65536]", spec.block));
      h.block = spec.block;
      break;
    case CodecId::kTopK:
    case CodecId::kRandK: {
      if (!(spec.fraction > 0.0 && spec.fraction <= 1.0))
        return Error(Code::kInvalidArgument,
                     fmt::format("fraction {} is outside (0, 1]", spec.fraction));
      if (n == 0 || n > UINT32_MAX)
        return Error(Code::kInvalidArgument,
                     fmt::format("{} needs 1 <= n <= 2^32-1 parameters, got {}",
                                 codec_name(spec.id), n));
      double k = std::round(spec.fraction * static_cast<double>(n));
      h.k = static_cast<uint64_t>(std::clamp(k, 1.0, static_cast<double>(n)));
      if (spec.id == CodecId::kRandK) h.seed = seed;
      break;
    }
    default:
      break;
  }
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  h.body_bytes = raw;
  return h;
}

Result<size_t> raw_body_bytes(const PayloadHeader& h) {
  if (static_cast<int>(h.codec) >= kCodecCount)
    return Error(Code::kCorrupt, fmt::format("unknown codec id {}", int(h.codec)));
  if (h.reserved != 0) return Error(Code::kCorrupt, "header reserved field is not zero");
  if (h.flags & ~kPayloadFlagZstd)
    return Error(Code::kCorrupt, fmt::format("unknown header flags {:#x}", h.flags));
  if (h.n > kMaxParams) return Error(Code::kCorrupt, fmt::format("n={} is too large", h.n));
  const bool quant = h.codec == CodecId::kInt8 || h.codec == CodecId::kInt4;
  const bool sparse = codec_is_sparse(h.codec);
  if (quant && (h.block < 1 || h.block > kMaxBlock))
    return Error(Code::kCorrupt, fmt::format("block {} is outside [1, 65536]", h.block));
  if (!quant && h.block != 0)
    return Error(Code::kCorrupt, fmt::format("block must be 0 for {}", codec_name(h.codec)));
  if (sparse) {
    if (h.n > UINT32_MAX)
      return Error(Code::kCorrupt, fmt::format("{} payload with n={} over 2^32-1",
                                               codec_name(h.codec), h.n));
    if (h.k < 1 || h.k > h.n)
      return Error(Code::kCorrupt, fmt::format("k={} is outside [1, n={}]", h.k, h.n));
  } else if (h.k != 0) {
    return Error(Code::kCorrupt, fmt::format("k must be 0 for {}", codec_name(h.codec)));
  }
  if (h.codec != CodecId::kRandK && h.seed != 0)
    return Error(Code::kCorrupt, fmt::format("seed must be 0 for {}", codec_name(h.codec)));
  const size_t n = h.n;
  switch (h.codec) {
    case CodecId::kFp32: return n * 4;
    case CodecId::kFp16:
    case CodecId::kBf16: return n * 2;
    case CodecId::kInt8: return (n + h.block - 1) / h.block * 4 + n;
    case CodecId::kInt4: return (n + h.block - 1) / h.block * 4 + (n + 1) / 2;
    case CodecId::kTopK: return static_cast<size_t>(h.k) * 8;
    case CodecId::kRandK: return static_cast<size_t>(h.k) * 4;
  }
  return Error(Code::kCorrupt, "unknown codec");
}

size_t max_payload_bytes(const CodecSpec& spec, size_t n) {
  auto h = make_header(spec, n, 0);
  if (!h) return 0;
  size_t raw = h->body_bytes;
  return kPayloadHeaderBytes + (spec.zstd ? std::max(raw, ZSTD_compressBound(raw)) : raw);
}

void write_header(const PayloadHeader& h, uint8_t* out) {
  out[0] = static_cast<uint8_t>(h.codec);
  out[1] = h.flags;
  put_le(out + 2, h.reserved, 2);
  put_le(out + 4, h.block, 4);
  put_le(out + 8, h.n, 8);
  put_le(out + 16, h.k, 8);
  put_le(out + 24, h.seed, 8);
  put_le(out + 32, h.body_bytes, 8);
}

Result<PayloadHeader> read_header(const uint8_t* p, size_t len, uint64_t max_n) {
  if (!p || len < kPayloadHeaderBytes)
    return Error(Code::kCorrupt, fmt::format("payload of {} bytes is shorter than its {}-byte "
                                             "header", p ? len : 0, kPayloadHeaderBytes));
  PayloadHeader h;
  if (p[0] >= kCodecCount) return Error(Code::kCorrupt, fmt::format("unknown codec id {}", p[0]));
  h.codec = static_cast<CodecId>(p[0]);
  h.flags = p[1];
  h.reserved = static_cast<uint16_t>(get_le(p + 2, 2));
  h.block = static_cast<uint32_t>(get_le(p + 4, 4));
  h.n = get_le(p + 8, 8);
  h.k = get_le(p + 16, 8);
  h.seed = get_le(p + 24, 8);
  h.body_bytes = get_le(p + 32, 8);
  if (h.n > max_n)
    return Error(Code::kOutOfRange,
                 fmt::format("payload has n={} parameters, over the limit {}", h.n, max_n));
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  if (h.flags & kPayloadFlagZstd) {
    if (h.body_bytes == 0 || h.body_bytes > std::max(raw, ZSTD_compressBound(raw)))
      return Error(Code::kCorrupt, fmt::format("zstd body of {} bytes cannot hold a raw body of "
                                               "{} bytes", h.body_bytes, raw));
  } else if (h.body_bytes != raw) {
    return Error(Code::kCorrupt, fmt::format("header says body of {} bytes, {} needs {}",
                                             h.body_bytes, hdr_str(h), raw));
  }
  if (len - kPayloadHeaderBytes != h.body_bytes)
    return Error(Code::kCorrupt, fmt::format("payload of {} bytes, header says {} + {}", len,
                                             kPayloadHeaderBytes, h.body_bytes));
  return h;
}

// ---- device level ----

Status encode_body(Device& dev, PayloadHeader& h, const float* x, float* residual, uint8_t* body,
                   size_t cap, Stream* s) {
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  MYCEL_CHECK(check_raw_body(h, body, raw, "encode_body"));
  if (cap < raw)
    return Error(Code::kOutOfRange,
                 fmt::format("encode needs {} bytes of body, the buffer has {}", raw, cap));
  const size_t n = h.n;
  if (n > 0 && !x) return Error(Code::kInvalidArgument, "encode_body: x is null");
  if (overlaps(body, raw, x, n * 4) || overlaps(body, raw, residual, residual ? n * 4 : 0) ||
      overlaps(x, n * 4, residual, residual ? n * 4 : 0))
    return Error(Code::kInvalidArgument, "encode_body: x, residual and body must not overlap");
  if (n > 0) {
    MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
    MYCEL_CHECK(t->encode_body(dev, h, x, residual, body, s));
  }
  h.body_bytes = raw;
  return Ok();
}

Status validate_body(Device& dev, const PayloadHeader& h, const uint8_t* body, size_t len,
                     Stream* s) {
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  MYCEL_CHECK(check_raw_body(h, body, raw, "validate_body"));
  if (len != raw)
    return Error(Code::kCorrupt,
                 fmt::format("body of {} bytes, {} needs {}", len, hdr_str(h), raw));
  if (raw == 0) return Ok();
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  return t->validate_body(dev, h, body, s);
}

Status decode_body(Device& dev, const PayloadHeader& h, const uint8_t* body, size_t len,
                   float* out, Stream* s) {
  if (h.n > 0 && !out) return Error(Code::kInvalidArgument, "decode_body: out is null");
  if (overlaps(body, len, out, h.n * 4))
    return Error(Code::kInvalidArgument, "decode_body: out overlaps the body");
  MYCEL_CHECK(validate_body(dev, h, body, len, s));
  if (h.n == 0) return Ok();
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  return t->decode_body(dev, h, body, out, s);
}

Status decode_merge_body(Device& dev, const PayloadHeader& h, const uint8_t* body, size_t len,
                         float* x, float a, Stream* s) {
  if (!std::isfinite(a)) return Error(Code::kInvalidArgument, "merge weight is not finite");
  if (h.n > 0 && !x) return Error(Code::kInvalidArgument, "decode_merge_body: x is null");
  if (overlaps(body, len, x, h.n * 4))
    return Error(Code::kInvalidArgument, "decode_merge_body: x overlaps the body");
  MYCEL_CHECK(validate_body(dev, h, body, len, s));
  if (h.n == 0) return Ok();
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  return t->decode_merge_body(dev, h, body, x, a, s);
}

// ---- receive-side bound on decoded magnitudes (host memory, any backend) ----

namespace {

// Index of the first v[i] whose magnitude is above lim_bits (as fp32 bits without the sign:
// the order of magnitudes is the order of those bits; NaN and Inf are above any finite bound),
// or SIZE_MAX. Two passes, the first one branch-free so that it vectorises; the magnitudes are
// compared as signed integers (both are below 2^31), which SSE2 has (an unsigned max is
// SSE4.1).
size_t first_above_f32(const float* v, size_t n, uint32_t lim_bits) {
  const int32_t* u = reinterpret_cast<const int32_t*>(v);
  const int32_t lim = static_cast<int32_t>(lim_bits);
  int32_t any = 0;
  for (size_t i = 0; i < n; ++i) any |= (u[i] & 0x7fffffff) > lim;
  if (!any) return SIZE_MAX;
  for (size_t i = 0; i < n; ++i)
    if ((u[i] & 0x7fffffff) > lim) return i;
  return SIZE_MAX;
}

// The same for fp16 / bf16 codes: lim16 is the largest magnitude code not above the bound.
size_t first_above_16(const uint16_t* v, size_t n, uint16_t lim16) {
  const int16_t* u = reinterpret_cast<const int16_t*>(v);
  const int16_t lim = static_cast<int16_t>(lim16);
  int16_t any = 0;
  for (size_t i = 0; i < n; ++i) any |= static_cast<int16_t>((u[i] & 0x7fff) > lim);
  if (!any) return SIZE_MAX;
  for (size_t i = 0; i < n; ++i)
    if ((u[i] & 0x7fff) > lim) return i;
  return SIZE_MAX;
}

// Largest 15-bit magnitude code whose value (by `to_f32`) is <= lim (finite codes only).
template <typename ToF32>
uint16_t largest_code_within(float lim, ToF32 to_f32) {
  uint32_t lo = 0, hi = 0x7fff;  // invariant: code lo is within (0 is), codes > hi are not
  while (lo < hi) {
    uint32_t mid = (lo + hi + 1) / 2;
    float f = to_f32(static_cast<uint16_t>(mid));
    if (std::isfinite(f) && f <= lim) lo = mid;
    else hi = mid - 1;
  }
  return static_cast<uint16_t>(lo);
}

Status too_large(const PayloadHeader& h, size_t i, double v, float lim) {
  return Error(Code::kOutOfRange,
               fmt::format("{} value {} is {:g}, above the bound {:g} (trust.max_abs_param)",
                           codec_name(h.codec), i, v, lim));
}

}  // namespace

Status check_magnitude(const PayloadHeader& h, const uint8_t* body, size_t len, float lim) {
  if (!(lim > 0)) return Ok();
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  if (len != raw)
    return Error(Code::kCorrupt, fmt::format("body of {} bytes, {} needs {}", len, hdr_str(h), raw));
  if (raw == 0) return Ok();
  const auto l = codec_math::body_layout(h.n, h.k, h.block,
                                         h.codec == CodecId::kInt8 || h.codec == CodecId::kInt4,
                                         h.codec == CodecId::kTopK, body);
  const uint32_t lim_bits = f32_bits(lim) & 0x7fffffffu;
  switch (h.codec) {
    case CodecId::kFp32:
    case CodecId::kTopK:
    case CodecId::kRandK: {
      const size_t count = h.codec == CodecId::kFp32 ? l.n : l.k;
      const float* v = reinterpret_cast<const float*>(l.data);
      size_t i = first_above_f32(v, count, lim_bits);
      if (i != SIZE_MAX) return too_large(h, i, v[i], lim);
      return Ok();
    }
    case CodecId::kFp16:
    case CodecId::kBf16: {
      const bool f16 = h.codec == CodecId::kFp16;
      const uint16_t lim16 = f16 ? largest_code_within(lim, [](uint16_t c) { return f16_to_f32(c); })
                                 : largest_code_within(lim, [](uint16_t c) { return bf16_to_f32(c); });
      const uint16_t* v = reinterpret_cast<const uint16_t*>(l.data);
      size_t i = first_above_16(v, l.n, lim16);
      if (i != SIZE_MAX) return too_large(h, i, f16 ? f16_to_f32(v[i]) : bf16_to_f32(v[i]), lim);
      return Ok();
    }
    case CodecId::kInt8:
    case CodecId::kInt4: {
      // |x| <= scale * qmax: a block is refused when its largest possible value is above the
      // bound (an encoder's scale is absmax / qmax, so an honest block passes exactly).
      const float qmax = h.codec == CodecId::kInt8 ? 127.f : 7.f;
      const uint32_t sbits = f32_bits(lim / qmax) & 0x7fffffffu;
      size_t j = first_above_f32(l.scales, l.nblocks, sbits);
      if (j != SIZE_MAX) return too_large(h, j * l.block, static_cast<double>(l.scales[j]) * qmax, lim);
      return Ok();
    }
  }
  return Error(Code::kCorrupt, "unknown codec");
}

// ---- CodecContext ----

struct CodecContext::Impl {
  explicit Impl(Device& d) : dev(d) {}
  ~Impl() {
    dev.free(dbody);
    dev.free_host(hstage);
    ZSTD_freeCCtx(cctx);
    ZSTD_freeDCtx(dctx);
  }

  // Device scratch for a body (CUDA only: on the CPU the body is used where it lies).
  Result<uint8_t*> device_body(size_t bytes) {
    return grow(&dbody, &dcap, bytes, &Device::alloc, &Device::free);
  }
  // Host staging (page-locked on CUDA), 64-byte aligned.
  Result<uint8_t*> host_stage(size_t bytes) {
    return grow(&hstage, &hcap, bytes, &Device::alloc_host, &Device::free_host);
  }
  // A scratch buffer of at least `bytes` (its contents are not kept when it grows).
  Result<uint8_t*> grow(uint8_t** buf, size_t* cap, size_t bytes,
                        Result<void*> (Device::*alloc)(size_t), void (Device::*release)(void*)) {
    if (bytes > *cap) {
      (dev.*release)(*buf);
      *buf = nullptr;
      *cap = 0;
      MYCEL_ASSIGN_OR_RETURN(void* p, (dev.*alloc)(bytes));
      *buf = static_cast<uint8_t*>(p);
      *cap = bytes;
    }
    return *buf;
  }

  Status decode(std::span<const uint8_t> payload, float* x, size_t expected_n, bool merge,
                float a, Stream* s);

  Device& dev;
  uint8_t* dbody = nullptr;
  size_t dcap = 0;
  uint8_t* hstage = nullptr;
  size_t hcap = 0;
  std::vector<uint8_t> out;  // the payload being built; swapped into the caller's on success
  ZSTD_CCtx* cctx = nullptr;
  ZSTD_DCtx* dctx = nullptr;
  float max_abs = 0;  // decode refuses payloads with a value above it (0: no bound)
};

CodecContext::CodecContext(Device& dev) : dev_(dev), impl_(new Impl(dev)) {}
CodecContext::~CodecContext() { delete impl_; }

Result<PayloadHeader> CodecContext::encode(const CodecSpec& spec, const float* x, size_t n,
                                           float* residual, uint64_t seed,
                                           std::vector<uint8_t>* payload, Stream* s) {
  if (!payload) return Error(Code::kInvalidArgument, "encode: payload is null");
  std::vector<uint8_t>& out = impl_->out;
  out.resize(max_payload_bytes(spec, n));
  MYCEL_ASSIGN_OR_RETURN(PayloadHeader h, encode_into(spec, x, n, residual, seed, out, s));
  out.resize(kPayloadHeaderBytes + h.body_bytes);
  payload->swap(out);
  return h;
}

Result<PayloadHeader> CodecContext::encode_into(const CodecSpec& spec, const float* x, size_t n,
                                                float* residual, uint64_t seed,
                                                std::span<uint8_t> dst, Stream* s) {
  MYCEL_ASSIGN_OR_RETURN(PayloadHeader h, make_header(spec, n, seed));
  const size_t raw = h.body_bytes;
  if (dst.size() < kPayloadHeaderBytes + raw && !(spec.zstd && raw > 0))
    return Error(Code::kOutOfRange, fmt::format("encode: {} bytes cannot hold a payload of {}",
                                                dst.size(), kPayloadHeaderBytes + raw));
  if (dst.size() < kPayloadHeaderBytes)
    return Error(Code::kOutOfRange, "encode: output shorter than a payload header");
  uint8_t* body = dst.data() + kPayloadHeaderBytes;
  const size_t cap = dst.size() - kPayloadHeaderBytes;
  const bool cpu = dev_.kind() == DeviceKind::kCpu;
  if (!spec.zstd || raw == 0) {
    if (cpu) {
      MYCEL_CHECK(encode_body(dev_, h, x, residual, body, raw, s));
    } else {
      // Only the encoded body crosses to the host, straight into its place in the payload.
      MYCEL_ASSIGN_OR_RETURN(uint8_t* dbody, impl_->device_body(std::max<size_t>(raw, 1)));
      MYCEL_CHECK(encode_body(dev_, h, x, residual, dbody, raw, s));
      MYCEL_CHECK(dev_.copy(body, dbody, raw, CopyKind::kDeviceToHost, s));
      MYCEL_CHECK(dev_.sync(s));
    }
    write_header(h, dst.data());
    return h;
  }
  // zstd: the raw body is staged on the host, then compressed into place.
  MYCEL_ASSIGN_OR_RETURN(uint8_t* stage, impl_->host_stage(raw));
  if (cpu) {
    MYCEL_CHECK(encode_body(dev_, h, x, residual, stage, raw, s));
  } else {
    MYCEL_ASSIGN_OR_RETURN(uint8_t* dbody, impl_->device_body(raw));
    MYCEL_CHECK(encode_body(dev_, h, x, residual, dbody, raw, s));
    MYCEL_CHECK(dev_.copy(stage, dbody, raw, CopyKind::kDeviceToHost, s));
    MYCEL_CHECK(dev_.sync(s));
  }
  if (!impl_->cctx && !(impl_->cctx = ZSTD_createCCtx()))
    return Error(Code::kNoResource, "zstd: cannot create a compression context");
  size_t c = ZSTD_compressCCtx(impl_->cctx, body, cap, stage, raw, spec.zstd_level);
  if (!ZSTD_isError(c) && c < raw) {
    h.flags |= kPayloadFlagZstd;
    h.body_bytes = c;
  } else if (ZSTD_isError(c) && ZSTD_getErrorCode(c) != ZSTD_error_dstSize_tooSmall) {
    return Error(Code::kInternal, fmt::format("zstd compression failed: {}", ZSTD_getErrorName(c)));
  } else {
    // Incompressible (or no room for the compressed form): send the raw body; the flag tells
    // the receiver which it got.
    if (cap < raw)
      return Error(Code::kOutOfRange, fmt::format("encode: {} bytes cannot hold a payload of {}",
                                                  dst.size(), kPayloadHeaderBytes + raw));
    std::memcpy(body, stage, raw);
  }
  write_header(h, dst.data());
  return h;
}

Status CodecContext::Impl::decode(std::span<const uint8_t> payload, float* x, size_t expected_n,
                                  bool merge, float a, Stream* s) {
  if (merge && !std::isfinite(a))
    return Error(Code::kInvalidArgument, "merge weight is not finite");
  if (expected_n > 0 && !x) return Error(Code::kInvalidArgument, "decode: output is null");
  MYCEL_ASSIGN_OR_RETURN(PayloadHeader h, read_header(payload.data(), payload.size(), expected_n));
  if (h.n != expected_n)
    return Error(Code::kOutOfRange,
                 fmt::format("payload has n={} parameters, expected {}", h.n, expected_n));
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  const uint8_t* body = payload.data() + kPayloadHeaderBytes;
  const bool cpu = dev.kind() == DeviceKind::kCpu;
  if (h.flags & kPayloadFlagZstd) {
    if (!dctx && !(dctx = ZSTD_createDCtx()))
      return Error(Code::kNoResource, "zstd: cannot create a decompression context");
    MYCEL_ASSIGN_OR_RETURN(uint8_t* stage, host_stage(std::max<size_t>(raw, 1)));
    // Bounded by the raw size the header implies, whatever the frame claims.
    size_t d = ZSTD_decompressDCtx(dctx, stage, raw, body, h.body_bytes);
    if (ZSTD_isError(d))
      return Error(Code::kCorrupt, fmt::format("zstd body of {}: {}", hdr_str(h),
                                               ZSTD_getErrorName(d)));
    if (d != raw)
      return Error(Code::kCorrupt,
                   fmt::format("zstd body decompresses to {} bytes, {} needs {}", d, hdr_str(h),
                               raw));
    body = stage;
  } else if (cpu && reinterpret_cast<uintptr_t>(body) % 4 != 0) {
    // The kernels read whole floats: realign a body that sits at an odd address.
    MYCEL_ASSIGN_OR_RETURN(uint8_t* stage, host_stage(std::max<size_t>(raw, 1)));
    std::memcpy(stage, body, raw);
    body = stage;
  }
  PayloadHeader hr = h;
  hr.flags = 0;
  hr.body_bytes = raw;
  if (max_abs > 0) {
    // On the host, before the body reaches the device: the same check for every backend.
    MYCEL_CHECK(check_magnitude(hr, body, raw, max_abs));
  }
  if (!cpu && raw > 0) {
    // Only the compressed representation goes to the device, never an fp32 copy of the model.
    MYCEL_ASSIGN_OR_RETURN(uint8_t* dbody, device_body(raw));
    MYCEL_CHECK(dev.copy(dbody, body, raw, CopyKind::kHostToDevice, s));
    MYCEL_CHECK(dev.sync(s));  // the host source (payload or staging) may be reused right away
    body = dbody;
  }
  if (merge) return decode_merge_body(dev, hr, body, raw, x, a, s);
  return decode_body(dev, hr, body, raw, x, s);
}

void CodecContext::set_max_abs(float bound) { impl_->max_abs = bound > 0 ? bound : 0; }
float CodecContext::max_abs() const { return impl_->max_abs; }

Status CodecContext::decode(std::span<const uint8_t> payload, float* out, size_t expected_n,
                            Stream* s) {
  return impl_->decode(payload, out, expected_n, false, 0.f, s);
}

Status CodecContext::decode_merge(std::span<const uint8_t> payload, float* x, size_t expected_n,
                                  float a, Stream* s) {
  return impl_->decode(payload, x, expected_n, true, a, s);
}

}  // namespace mycel
