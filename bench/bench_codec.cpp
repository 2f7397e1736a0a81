// `mycel bench codec`: encode (with and without the error-feedback residual), decode and the
// fused decode+merge of every codec, in bytes moved per second against the peak measured in
// the same run (bench/peak.h). Bytes counted per call, n params, B = raw body bytes (from
// raw_body_bytes of the header: the exact body layout of kernels/codec.h), k = sparse entries:
//   encode         read x (4n; every entry, if only to reject NaN/Inf), write the body: 4n + B
//   encode_ef      read x and residual, write residual and body:                      12n + B
//   decode         dense: read the body, write out:                                   B + 4n
//                  sparse: read the body, write the k listed entries of out:           B + 4k
//   decode_merge   dense: read the body, read and write x:                            B + 8n
//                  sparse: read the body, read and write the k listed entries of x:    B + 8k
// (topk B = 8k: indices and values; randk B = 4k: values, the indices come from the seed.)
// Sparse rows count useful bytes only: each scattered entry really moves a whole cache line
// (64 B on a CPU, a 32 B sector on a GPU), so their ratio to the streaming peak is low by
// nature. Every row checks its result against a scalar decoder of the body layout.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/peak.h"
#include "common/half.h"
#include "common/log.h"
#include "kernels/codec.h"
#include "kernels/codec_math.h"
#include "runtime/cli/commands.h"

namespace mycel::bench {
namespace {

struct CodecFlags {
  RunFlags run;
  std::string codecs = "fp32,fp16,bf16,int8,int4,topk:0.01,randk:0.01";
  std::string ops = "encode,encode_ef,decode,decode_merge";
};

constexpr const char* kDefaultSizes = "1M,16M,64M";
constexpr const char* kQuickSizes = "1M";
constexpr int kQuickReps = 2;

constexpr uint64_t kSeedX = 21, kSeedR = 22, kSeedOut = 23, kSeedM = 24, kRandKSeed = 0x5eed;
constexpr float kResidualScale = 0.1f;
constexpr float kA = 0.25f;  // decode_merge weight

struct Check {
  int64_t wrong = 0;
  size_t checked = 0;
};

float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}
uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// A scalar reader of a raw body, written from the layout in kernels/codec.h.
class BodyReader {
 public:
  BodyReader(const PayloadHeader& h, const uint8_t* body) : h_(h), b_(body) {
    if (h.codec == CodecId::kInt8 || h.codec == CodecId::kInt4)
      blocks_ = (h.n + h.block - 1) / h.block;
    if (h.codec == CodecId::kRandK) perm_ = codec_math::make_randk_perm(h.n, h.seed);
  }
  bool sparse() const { return h_.codec == CodecId::kTopK || h_.codec == CodecId::kRandK; }
  int qmax() const { return h_.codec == CodecId::kInt8 ? 127 : 7; }
  uint64_t blocks() const { return blocks_; }
  float scale(uint64_t blk) const { return load_f32(b_ + 4 * blk); }
  int q(uint64_t i) const {
    const uint8_t* qs = b_ + 4 * blocks_;
    if (h_.codec == CodecId::kInt8) return static_cast<int8_t>(qs[i]);
    uint8_t byte = qs[i / 2];
    int nib = (i & 1) ? byte >> 4 : byte & 0xf;
    return nib >= 8 ? nib - 16 : nib;
  }
  // Dense codecs: the decoded value at i.
  float dense(uint64_t i) const {
    switch (h_.codec) {
      case CodecId::kFp32: return load_f32(b_ + 4 * i);
      case CodecId::kFp16: return f16_to_f32(load_u16(b_ + 2 * i));
      case CodecId::kBf16: return bf16_to_f32(load_u16(b_ + 2 * i));
      case CodecId::kInt8:
      case CodecId::kInt4: return static_cast<float>(q(i)) * scale(i / h_.block);
      default: return NAN;
    }
  }
  // Sparse codecs: entry j's index and value.
  uint64_t index(uint64_t j) const {
    if (h_.codec == CodecId::kTopK) return load_u32(b_ + 4 * j);
    return codec_math::randk_index(perm_, j);
  }
  float value(uint64_t j) const {
    return h_.codec == CodecId::kTopK ? load_f32(b_ + 4 * h_.k + 4 * j) : load_f32(b_ + 4 * j);
  }

 private:
  const PayloadHeader& h_;
  const uint8_t* b_;
  uint64_t blocks_ = 0;
  codec_math::RandKPerm perm_{};
};

// The sorted (index, entry) pairs of a sparse body, for membership tests at sampled positions.
// Counts topk indices that are out of range or not strictly increasing as wrong.
std::vector<std::pair<uint64_t, uint64_t>> sparse_entries(const PayloadHeader& h,
                                                          const BodyReader& rd, Check* c) {
  std::vector<std::pair<uint64_t, uint64_t>> e(h.k);
  for (uint64_t j = 0; j < h.k; ++j) e[j] = {rd.index(j), j};
  if (h.codec == CodecId::kTopK) {
    for (uint64_t j = 0; j < h.k; ++j) {
      if (e[j].first >= h.n || (j > 0 && e[j].first <= e[j - 1].first)) ++c->wrong;
    }
    c->checked += h.k;
  }
  std::sort(e.begin(), e.end());
  return e;
}

// Entry number of index i in a sparse body, or -1.
int64_t find_entry(const std::vector<std::pair<uint64_t, uint64_t>>& e, uint64_t i) {
  auto it = std::lower_bound(e.begin(), e.end(), std::make_pair(i, uint64_t{0}));
  if (it != e.end() && it->first == i) return static_cast<int64_t>(it->second);
  return -1;
}

// The value the encoder saw at i: x, or x + residual (fp32 add, as the kernels do).
float encoded_input(bool ef, uint64_t i) {
  float x = test_value(kSeedX, i);
  if (!ef) return x;
  return x + stored_value(DType::kF32, kSeedR, i, kResidualScale);
}

// Checks a body against the input it encodes, and (ef) the new residual = v - decode(body).
Check check_encode(const PayloadHeader& h, const uint8_t* body, const float* residual, bool ef,
                   const std::vector<size_t>& pos, size_t check_max) {
  BodyReader rd(h, body);
  Check c;
  auto residual_ok = [&](uint64_t i, double dec) {
    if (!ef) return true;
    double v = encoded_input(true, i);
    return close_enough(residual[i], v - dec, 1e-6, 1e-5);
  };
  switch (h.codec) {
    case CodecId::kFp32:
    case CodecId::kFp16:
    case CodecId::kBf16: {
      const double rtol = h.codec == CodecId::kFp32 ? 0 : h.codec == CodecId::kFp16 ? 0x1p-11 : 0x1p-8;
      const double atol = h.codec == CodecId::kFp16 ? 0x1p-24 : 0;
      for (size_t i : pos) {
        double v = encoded_input(ef, i), d = rd.dense(i);
        if (!close_enough(d, v, atol, rtol) || !residual_ok(i, d)) ++c.wrong;
      }
      c.checked = pos.size();
      break;
    }
    case CodecId::kInt8:
    case CodecId::kInt4: {
      // Whole blocks, so the scale can be checked against the block's absmax.
      size_t want_blocks = check_max == 0 ? 0 : std::max<size_t>(1, check_max / h.block);
      for (size_t blk : sample_positions(rd.blocks(), want_blocks, 0xb10c)) {
        uint64_t lo = blk * h.block, hi = std::min<uint64_t>(h.n, lo + h.block);
        float absmax = 0;
        for (uint64_t i = lo; i < hi; ++i) absmax = std::max(absmax, std::fabs(encoded_input(ef, i)));
        const float scale = rd.scale(blk);
        const float want_scale = absmax / static_cast<float>(rd.qmax());
        if (!close_enough(scale, want_scale, 0, 1e-6)) ++c.wrong;
        for (uint64_t i = lo; i < hi; ++i) {
          const int q = rd.q(i);
          const double v = encoded_input(ef, i), d = static_cast<float>(q) * scale;
          if (std::abs(q) > rd.qmax() || std::fabs(v - d) > 0.5 * scale * (1 + 1e-5) + 1e-30 ||
              !residual_ok(i, d))
            ++c.wrong;
        }
        c.checked += hi - lo + 1;
      }
      break;
    }
    case CodecId::kTopK:
    case CodecId::kRandK: {
      auto entries = sparse_entries(h, rd, &c);
      // Every listed value is the input at its index (sampled entries).
      for (size_t j : sample_positions(h.k, check_max, 0x70b)) {
        uint64_t i = rd.index(j);
        if (i >= h.n || rd.value(j) != encoded_input(ef, i)) ++c.wrong;
        ++c.checked;
      }
      // top-k is exact: no unlisted input is larger in magnitude than the smallest listed one.
      float min_listed = INFINITY;
      if (h.codec == CodecId::kTopK)
        for (uint64_t j = 0; j < h.k; ++j) min_listed = std::min(min_listed, std::fabs(rd.value(j)));
      for (size_t i : pos) {
        const bool listed = find_entry(entries, i) >= 0;
        const float v = encoded_input(ef, i);
        if (h.codec == CodecId::kTopK && !listed && std::fabs(v) > min_listed) ++c.wrong;
        else if (!residual_ok(i, listed ? v : 0.0)) ++c.wrong;
        ++c.checked;
      }
      break;
    }
  }
  return c;
}

// decode: out equals the body's values (dense: everywhere; sparse: at listed entries, and the
// prefilled values elsewhere). decode_merge (merge = true): out is x after one fused call from
// x0 = test_value(kSeedM).
Check check_decode(const PayloadHeader& h, const uint8_t* body, const float* out, bool merge,
                   const std::vector<size_t>& pos, size_t check_max) {
  BodyReader rd(h, body);
  Check c;
  const uint64_t base_seed = merge ? kSeedM : kSeedOut;
  auto want = [&](uint64_t i, double dec) {
    return merge ? (1.0 - kA) * test_value(kSeedM, i) + kA * dec : dec;
  };
  if (!rd.sparse()) {
    for (size_t i : pos)
      if (!close_enough(out[i], want(i, rd.dense(i)), 1e-6, 1e-5)) ++c.wrong;
    c.checked = pos.size();
    return c;
  }
  auto entries = sparse_entries(h, rd, &c);
  for (size_t j : sample_positions(h.k, check_max, 0xdec)) {
    uint64_t i = rd.index(j);
    if (i >= h.n || !close_enough(out[i], want(i, rd.value(j)), 1e-6, 1e-5)) ++c.wrong;
    ++c.checked;
  }
  for (size_t i : pos) {
    if (find_entry(entries, i) < 0 && out[i] != test_value(base_seed, i)) ++c.wrong;
    ++c.checked;
  }
  return c;
}

struct Ctx {
  Report& rep;
  Device& dev;
  const Peak& peak;
  const RunFlags& f;
};

// Times kernel against the peak (paired, bench/peak.h), runs check, and adds the row.
void run_row(Ctx& cx, const CodecSpec& spec, const PayloadHeader& h, const char* op, double bytes,
             const std::function<Status()>& kernel, const std::function<Result<Check>()>& check) {
  Record r;
  r.set("op", op).set("codec", std::string(codec_name(spec.id))).set("spec", to_string(spec));
  r.set("params", h.n).set("size", format_size(h.n)).set("k", 1);
  if (codec_is_sparse(spec.id)) r.set("entries", h.k);
  set_device_fields(r, cx.dev);
  Status ts = time_against_peak(r, cx.dev, cx.peak, bytes, cx.f.warmup, cx.f.reps,
                                cx.f.stat == "min", kernel);
  if (!ts) {
    r.set("error", ts.to_string()).set("wrong", 0);
  } else {
    auto c = check();
    if (!c) {
      r.set("error", "check failed: " + c.status().to_string()).set("wrong", 0);
    } else {
      r.set("wrong", c->wrong).set("checked", c->checked);
    }
  }
  cx.rep.add(std::move(r));
}

struct Ops {
  bool encode = false, encode_ef = false, decode = false, decode_merge = false;
};

// All rows of one codec at one size on one device.
Status bench_codec(Ctx& cx, const CodecSpec& spec, size_t n, const Ops& ops) {
  Device& dev = cx.dev;
  const RunFlags& f = cx.f;
  MYCEL_ASSIGN_OR_RETURN(PayloadHeader h, make_header(spec, n, kRandKSeed));
  MYCEL_ASSIGN_OR_RETURN(size_t raw, raw_body_bytes(h));
  MYCEL_ASSIGN_OR_RETURN(DeviceMem x, DeviceMem::make(dev, n * sizeof(float)));
  MYCEL_ASSIGN_OR_RETURN(DeviceMem body, DeviceMem::make(dev, raw));
  MYCEL_CHECK(fill(dev, x.as(), DType::kF32, n, kSeedX));
  // One untimed encode, so the decode rows have a body whatever --ops says.
  MYCEL_CHECK(encode_body(dev, h, x.as<float>(), nullptr, body.as(), raw));
  MYCEL_CHECK(dev.sync());
  if (h.body_bytes != raw)
    return Error(Code::kInternal, "encode_body wrote " + std::to_string(h.body_bytes) +
                                      " body bytes, raw_body_bytes says " + std::to_string(raw));

  const bool sparse = codec_is_sparse(spec.id);
  const double dn = static_cast<double>(n), dk = static_cast<double>(h.k), db = static_cast<double>(raw);
  const std::vector<size_t> pos = sample_positions(n, f.check, 0xc0de);
  std::vector<uint8_t> st_body, st_vec;

  if (ops.encode) {
    auto kernel = [&]() { return encode_body(dev, h, x.as<float>(), nullptr, body.as(), raw); };
    auto check = [&]() -> Result<Check> {
      MYCEL_ASSIGN_OR_RETURN(const uint8_t* hb, host_view(dev, body.as(), raw, &st_body));
      return check_encode(h, hb, nullptr, false, pos, f.check);
    };
    run_row(cx, spec, h, "encode", 4 * dn + db, kernel, check);
  }

  if (ops.encode_ef) {
    MYCEL_ASSIGN_OR_RETURN(DeviceMem res, DeviceMem::make(dev, n * sizeof(float)));
    MYCEL_CHECK(fill(dev, res.as(), DType::kF32, n, kSeedR, kResidualScale));
    auto kernel = [&]() {
      return encode_body(dev, h, x.as<float>(), res.as<float>(), body.as(), raw);
    };
    // The timed calls moved the residual: the check starts again from the known one.
    auto check = [&]() -> Result<Check> {
      MYCEL_CHECK(fill(dev, res.as(), DType::kF32, n, kSeedR, kResidualScale));
      MYCEL_CHECK(kernel());
      MYCEL_ASSIGN_OR_RETURN(const uint8_t* hb, host_view(dev, body.as(), raw, &st_body));
      MYCEL_ASSIGN_OR_RETURN(const uint8_t* hr,
                             host_view(dev, res.as(), n * sizeof(float), &st_vec));
      return check_encode(h, hb, reinterpret_cast<const float*>(hr), true, pos, f.check);
    };
    run_row(cx, spec, h, "encode_ef", 12 * dn + db, kernel, check);
  }

  if (ops.decode || ops.decode_merge) {
    MYCEL_ASSIGN_OR_RETURN(DeviceMem out, DeviceMem::make(dev, n * sizeof(float)));
    if (ops.decode) {
      // Sparse decode leaves unlisted entries alone: give them known values to check.
      if (sparse) MYCEL_CHECK(fill(dev, out.as(), DType::kF32, n, kSeedOut));
      auto kernel = [&]() { return decode_body(dev, h, body.as(), raw, out.as<float>()); };
      auto check = [&]() -> Result<Check> {
        MYCEL_ASSIGN_OR_RETURN(const uint8_t* hb, host_view(dev, body.as(), raw, &st_body));
        MYCEL_ASSIGN_OR_RETURN(const uint8_t* ho,
                               host_view(dev, out.as(), n * sizeof(float), &st_vec));
        return check_decode(h, hb, reinterpret_cast<const float*>(ho), false, pos, f.check);
      };
      run_row(cx, spec, h, "decode", db + 4 * (sparse ? dk : dn), kernel, check);
    }
    if (ops.decode_merge) {
      MYCEL_CHECK(fill(dev, out.as(), DType::kF32, n, kSeedM));
      auto kernel = [&]() {
        return decode_merge_body(dev, h, body.as(), raw, out.as<float>(), kA);
      };
      // The timed calls moved x: the check starts again from x0 and merges once.
      auto check = [&]() -> Result<Check> {
        MYCEL_CHECK(fill(dev, out.as(), DType::kF32, n, kSeedM));
        MYCEL_CHECK(kernel());
        MYCEL_ASSIGN_OR_RETURN(const uint8_t* hb, host_view(dev, body.as(), raw, &st_body));
        MYCEL_ASSIGN_OR_RETURN(const uint8_t* ho,
                               host_view(dev, out.as(), n * sizeof(float), &st_vec));
        return check_decode(h, hb, reinterpret_cast<const float*>(ho), true, pos, f.check);
      };
      run_row(cx, spec, h, "decode_merge", db + 8 * (sparse ? dk : dn), kernel, check);
    }
  }
  return Ok();
}

int run_codec(const CodecFlags& cf, const cli::Common& common) {
  RunFlags f = cf.run;
  std::string sizes_text = f.sizes.empty() ? (f.quick ? kQuickSizes : kDefaultSizes) : f.sizes;
  if (f.quick && (!f.reps_opt || f.reps_opt->count() == 0)) f.reps = kQuickReps;
  auto sizes = parse_sizes(sizes_text);
  if (!sizes) throw CLI::ValidationError("--sizes", sizes.status().message());
  std::vector<CodecSpec> specs;
  for (const auto& text : split(cf.codecs, ',')) {
    auto spec = parse_codec(text);
    if (!spec) throw CLI::ValidationError("--codecs", spec.status().message());
    if (spec->zstd)
      throw CLI::ValidationError("--codecs", "'" + text + "': the zstd stage runs on the host "
                                             "over whole payloads; bench codec times the kernels");
    specs.push_back(*spec);
  }
  if (specs.empty()) throw CLI::ValidationError("--codecs", "empty codec list");
  Ops ops;
  for (const auto& op : split(cf.ops, ',')) {
    if (op == "encode") ops.encode = true;
    else if (op == "encode_ef") ops.encode_ef = true;
    else if (op == "decode") ops.decode = true;
    else if (op == "decode_merge") ops.decode_merge = true;
    else
      throw CLI::ValidationError(
          "--ops", "unknown op '" + op + "' (encode, encode_ef, decode, decode_merge)");
  }
  auto devices = bench_devices(common.device, common.threads);
  if (!devices) {
    MYCEL_LOG_ERROR("bench", "{}", devices.status().to_string());
    return 2;
  }

  auto cols = standard_columns();
  for (auto& c : cols)
    if (c.key == "codec") c.key = "spec";
  Report rep(f.json, cols);
  for (auto& devp : *devices) {
    Device& dev = *devp;
    rep.note("# " + dev.name());
    for (size_t n : *sizes) {
      auto peak = measure_peak(dev, n, f.warmup, f.reps, f.check, f.stat == "min");
      if (!peak) {
        Record r;
        r.set("op", "peak").set("codec", "fp32").set("params", n).set("size", format_size(n));
        set_device_fields(r, dev);
        r.set("error", peak.status().to_string()).set("wrong", 0);
        rep.add(std::move(r));
        continue;
      }
      for (auto r : peak->rows) {
        r.set("spec", "fp32");
        rep.add(std::move(r));
      }
      Ctx cx{rep, dev, *peak, f};
      for (const auto& spec : specs) {
        Status s = bench_codec(cx, spec, n, ops);
        if (!s) {
          Record r;
          r.set("op", "setup").set("codec", std::string(codec_name(spec.id)));
          r.set("spec", to_string(spec)).set("params", n).set("size", format_size(n)).set("k", 1);
          set_device_fields(r, dev);
          r.set("error", s.to_string()).set("wrong", 0);
          rep.add(std::move(r));
        }
      }
    }
  }
  return rep.finish();
}

}  // namespace
}  // namespace mycel::bench

namespace mycel::cli {

void add_bench_codec(CLI::App& bench, Common& common) {
  auto flags = std::make_shared<bench::CodecFlags>();
  auto* cmd = bench.add_subcommand(
      "codec",
      "codec kernels (encode, encode with error feedback, decode, fused decode+merge): GB/s "
      "read+written against the peak measured in the same run; --device auto or all runs every "
      "device present");
  bench::add_run_flags(*cmd, flags->run, bench::kDefaultSizes);
  cmd->add_option("--codecs", flags->codecs,
                  "codec specs, comma-separated (fp32 fp16 bf16 int8[:block=B] int4[:block=B] "
                  "topk:F randk:F)")
      ->capture_default_str();
  cmd->add_option("--ops", flags->ops, "ops to run")->capture_default_str();
  cmd->callback([flags, &common] {
    int rc = bench::run_codec(*flags, common);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
