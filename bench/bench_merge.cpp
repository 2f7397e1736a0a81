// `mycel bench merge`: the merge kernels (weighted_sum over k inputs of fp32/fp16/bf16, mix,
// age_merge) in bytes moved per second, against the peak measured in the same run on the same
// device, thread count and vector length (bench/peak.h). Bytes counted per call (n params):
//   weighted_sum  k inputs of dtype t read, fp32 out written: k*n*sizeof(t) + 4n
//   mix           x and y read, x written:                    12n
//   age_merge     as mix (the ages are two host scalars):     12n
// Every row checks its result against a scalar reference (fp64) at --check positions.
#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/peak.h"
#include "common/log.h"
#include "kernels/ops.h"
#include "runtime/cli/commands.h"

namespace mycel::bench {
namespace {

struct MergeFlags {
  RunFlags run;
  std::string k = "1,2,4,8";
  std::string dtypes = "fp32,fp16,bf16";
  std::string ops = "weighted_sum,mix,age_merge";
  CLI::Option* k_opt = nullptr;
};

constexpr const char* kDefaultSizes = "1M,16M,64M";
constexpr const char* kQuickSizes = "1M";
constexpr const char* kQuickK = "1,2,8";
constexpr int kQuickReps = 2;

// Tolerances against the fp64 reference: the kernels accumulate in fp32 (a few ulps of values
// of magnitude <= 1).
constexpr double kAtol = 2e-6, kRtol = 1e-5;

struct Check {
  int64_t wrong = 0;
  size_t checked = 0;
};

const char* dtype_label(DType t) {
  switch (t) {
    case DType::kF16: return "fp16";
    case DType::kBF16: return "bf16";
    default: return "fp32";
  }
}

Result<DType> parse_dtype(const std::string& s) {
  if (s == "fp32" || s == "f32") return DType::kF32;
  if (s == "fp16" || s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  return Error(Code::kInvalidArgument, "unknown dtype '" + s + "' (fp32, fp16, bf16)");
}

Record base_row(Device& dev, const std::string& op, const std::string& codec, size_t n, int k) {
  Record r;
  r.set("op", op).set("codec", codec).set("params", n).set("size", format_size(n)).set("k", k);
  set_device_fields(r, dev);
  return r;
}

// Times `kernel` against the peak (paired, bench/peak.h), then runs `check` (which may rerun
// the kernel from fresh inputs), and adds the row: an error becomes the row's "error" field.
void run_row(Report& rep, Record r, Device& dev, double bytes, const Peak& peak,
             const RunFlags& f, const std::function<Status()>& kernel,
             const std::function<Result<Check>()>& check) {
  Status ts = time_against_peak(r, dev, peak, bytes, f.warmup, f.reps, f.stat == "min", kernel);
  if (!ts) {
    r.set("error", ts.to_string()).set("wrong", 0);
    rep.add(std::move(r));
    return;
  }
  auto c = check();
  if (!c) {
    r.set("error", "check failed: " + c.status().to_string()).set("wrong", 0);
  } else {
    r.set("wrong", c->wrong).set("checked", c->checked);
  }
  rep.add(std::move(r));
}

void error_row(Report& rep, Device& dev, const std::string& op, const std::string& codec,
               size_t n, int k, const Status& s) {
  Record r = base_row(dev, op, codec, n, k);
  r.set("error", s.to_string()).set("wrong", 0);
  rep.add(std::move(r));
}

// weighted_sum rows for one dtype and every k: the k_max inputs are filled once and shared.
Status bench_weighted_sum(Report& rep, Device& dev, size_t n, DType t, const std::vector<int>& ks,
                          const Peak& peak, const RunFlags& f) {
  int kmax = 0;
  for (int k : ks) kmax = std::max(kmax, k);
  const size_t es = dtype_size(t);
  std::vector<DeviceMem> in;
  for (int j = 0; j < kmax; ++j) {
    MYCEL_ASSIGN_OR_RETURN(DeviceMem m, DeviceMem::make(dev, n * es));
    MYCEL_CHECK(fill(dev, m.as(), t, n, 100 + j));
    in.push_back(std::move(m));
  }
  MYCEL_ASSIGN_OR_RETURN(DeviceMem out, DeviceMem::make(dev, n * sizeof(float)));
  const std::vector<size_t> pos = sample_positions(n, f.check, 0x5eed);
  std::vector<uint8_t> storage;
  for (int k : ks) {
    std::vector<MergeInput> inputs(k);
    const double wsum = 0.5 * k * (k + 1);
    for (int j = 0; j < k; ++j)
      inputs[j] = {in[j].as(), t, static_cast<float>((j + 1) / wsum)};
    auto kernel = [&]() -> Status {
      return weighted_sum(dev, out.as<float>(), std::span<const MergeInput>(inputs), n);
    };
    // out is not an input, so the timed calls leave the result of one call.
    auto check = [&]() -> Result<Check> {
      MYCEL_ASSIGN_OR_RETURN(const uint8_t* h, host_view(dev, out.as(), out.bytes(), &storage));
      const float* o = reinterpret_cast<const float*>(h);
      Check c;
      for (size_t i : pos) {
        double want = 0;
        for (int j = 0; j < k; ++j)
          want += static_cast<double>(inputs[j].weight) * stored_value(t, 100 + j, i);
        if (!close_enough(o[i], want, kAtol, kRtol)) ++c.wrong;
      }
      c.checked = pos.size();
      return c;
    };
    const double bytes = static_cast<double>(k) * n * es + 4.0 * n;
    run_row(rep, base_row(dev, "weighted_sum", dtype_label(t), n, k), dev, bytes, peak, f, kernel,
            check);
  }
  return Ok();
}

// mix and age_merge: x = (1-a) x + a y in place. The timed calls move x, so the check refills x
// and runs the kernel once more.
Status bench_mix(Report& rep, Device& dev, size_t n, bool age, const Peak& peak,
                 const RunFlags& f) {
  constexpr uint64_t kSeedX = 1, kSeedY = 2;
  constexpr float kA = 0.25f;
  constexpr uint64_t kAge = 10, kAgeY = 30;  // age_weight(10, 30) = 0.75
  MYCEL_ASSIGN_OR_RETURN(DeviceMem x, DeviceMem::make(dev, n * sizeof(float)));
  MYCEL_ASSIGN_OR_RETURN(DeviceMem y, DeviceMem::make(dev, n * sizeof(float)));
  MYCEL_CHECK(fill(dev, x.as(), DType::kF32, n, kSeedX));
  MYCEL_CHECK(fill(dev, y.as(), DType::kF32, n, kSeedY));
  uint64_t model_age = kAge;
  auto kernel = [&]() -> Status {
    if (!age) return mix(dev, x.as<float>(), y.as<float>(), kA, n);
    model_age = kAge;  // every call merges with the same weight
    return age_merge(dev, x.as<float>(), &model_age, y.as<float>(), kAgeY, n);
  };
  const std::vector<size_t> pos = sample_positions(n, f.check, 0x3ee);
  std::vector<uint8_t> storage;
  auto check = [&]() -> Result<Check> {
    MYCEL_CHECK(fill(dev, x.as(), DType::kF32, n, kSeedX));
    MYCEL_CHECK(kernel());
    MYCEL_ASSIGN_OR_RETURN(const uint8_t* h, host_view(dev, x.as(), x.bytes(), &storage));
    const float* o = reinterpret_cast<const float*>(h);
    const double a = age ? static_cast<double>(kAgeY) / (kAge + kAgeY) : kA;
    Check c;
    for (size_t i : pos) {
      double want = (1 - a) * test_value(kSeedX, i) + a * test_value(kSeedY, i);
      if (!close_enough(o[i], want, kAtol, kRtol)) ++c.wrong;
    }
    c.checked = pos.size();
    if (age) {
      ++c.checked;
      if (model_age != kAgeY) ++c.wrong;  // the merged age is the max of the two
    }
    return c;
  };
  run_row(rep, base_row(dev, age ? "age_merge" : "mix", "fp32", n, 2), dev, 12.0 * n, peak, f,
          kernel, check);
  return Ok();
}

int run_merge(const MergeFlags& mf, const cli::Common& common) {
  RunFlags f = mf.run;
  std::string sizes_text = f.sizes.empty() ? (f.quick ? kQuickSizes : kDefaultSizes) : f.sizes;
  std::string k_text = mf.k;
  if (f.quick) {
    if (!f.reps_opt || f.reps_opt->count() == 0) f.reps = kQuickReps;
    if (!mf.k_opt || mf.k_opt->count() == 0) k_text = kQuickK;
  }
  auto sizes = parse_sizes(sizes_text);
  if (!sizes) throw CLI::ValidationError("--sizes", sizes.status().message());
  auto ks = parse_ints(k_text, 1, kMaxMergeInputs);
  if (!ks) throw CLI::ValidationError("--k", ks.status().message());
  std::vector<DType> dtypes;
  for (const auto& d : split(mf.dtypes, ',')) {
    auto t = parse_dtype(d);
    if (!t) throw CLI::ValidationError("--dtypes", t.status().message());
    dtypes.push_back(*t);
  }
  bool do_ws = false, do_mix = false, do_age = false;
  for (const auto& op : split(mf.ops, ',')) {
    if (op == "weighted_sum") do_ws = true;
    else if (op == "mix") do_mix = true;
    else if (op == "age_merge") do_age = true;
    else
      throw CLI::ValidationError("--ops", "unknown op '" + op + "' (weighted_sum, mix, age_merge)");
  }
  auto devices = bench_devices(common.device, common.threads);
  if (!devices) {
    MYCEL_LOG_ERROR("bench", "{}", devices.status().to_string());
    return 2;
  }

  Report rep(f.json, standard_columns());
  for (auto& devp : *devices) {
    Device& dev = *devp;
    rep.note("# " + dev.name());
    for (size_t n : *sizes) {
      auto peak = measure_peak(dev, n, f.warmup, f.reps, f.check, f.stat == "min");
      if (!peak) {
        error_row(rep, dev, "peak", "fp32", n, 0, peak.status());
        continue;
      }
      for (auto& r : peak->rows) rep.add(r);
      if (do_ws) {
        for (DType t : dtypes) {
          Status s = bench_weighted_sum(rep, dev, n, t, *ks, *peak, f);
          if (!s) error_row(rep, dev, "weighted_sum", dtype_label(t), n, 0, s);
        }
      }
      if (do_mix) {
        Status s = bench_mix(rep, dev, n, false, *peak, f);
        if (!s) error_row(rep, dev, "mix", "fp32", n, 2, s);
      }
      if (do_age) {
        Status s = bench_mix(rep, dev, n, true, *peak, f);
        if (!s) error_row(rep, dev, "age_merge", "fp32", n, 2, s);
      }
    }
  }
  return rep.finish();
}

}  // namespace
}  // namespace mycel::bench

namespace mycel::cli {

void add_bench_merge(CLI::App& bench, Common& common) {
  auto flags = std::make_shared<bench::MergeFlags>();
  auto* cmd = bench.add_subcommand(
      "merge",
      "merge kernels (weighted_sum, mix, age_merge): GB/s read+written against the peak "
      "(best of copy, triad, in-place update) measured in the same run; --device auto or all "
      "runs every device present");
  bench::add_run_flags(*cmd, flags->run, bench::kDefaultSizes);
  flags->k_opt = cmd->add_option("--k", flags->k, "weighted_sum input counts, 1..8")
                     ->capture_default_str();
  cmd->add_option("--dtypes", flags->dtypes, "weighted_sum input dtypes")->capture_default_str();
  cmd->add_option("--ops", flags->ops, "ops to run")->capture_default_str();
  cmd->callback([flags, &common] {
    int rc = bench::run_merge(*flags, common);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
