#include <charconv>

#include "common/log.h"
#include "kernels/device.h"
#include "kernels/device_impl.h"

namespace mycel {

std::string_view device_kind_name(DeviceKind k) {
  return k == DeviceKind::kCuda ? "cuda" : "cpu";
}

int cuda_device_count(std::string* why_none) { return cuda_device_count_impl(why_none); }
bool cuda_compiled() { return cuda_compiled_impl(); }

Result<std::shared_ptr<Device>> make_device(std::string_view spec, int cpu_threads) {
  if (spec == "cpu") return make_cpu_device(cpu_threads);
  if (spec == "auto" || spec.empty()) {
    std::string why;
    if (cuda_device_count(&why) > 0) {
      auto d = make_cuda_device(0);
      if (d) return d;
      why = d.status().to_string();
    }
    if (cuda_compiled())
      MYCEL_LOG_INFO("kernels", "no usable gpu ({}): falling back to the cpu", why);
    return make_cpu_device(cpu_threads);
  }
  if (spec.substr(0, 4) == "cuda") {
    int ordinal = 0;
    if (spec.size() > 4) {
      if (spec[4] != ':') return Error(Code::kInvalidArgument, "bad device '" + std::string(spec) + "'");
      auto r = std::from_chars(spec.data() + 5, spec.data() + spec.size(), ordinal);
      if (r.ec != std::errc() || r.ptr != spec.data() + spec.size() || ordinal < 0)
        return Error(Code::kInvalidArgument, "bad device '" + std::string(spec) + "'");
    }
    std::string why;
    int n = cuda_device_count(&why);
    if (n == 0) return Error(Code::kUnavailable, "device 'cuda' requested but " + why);
    if (ordinal >= n)
      return Error(Code::kInvalidArgument, "cuda:" + std::to_string(ordinal) + " requested but only " +
                                               std::to_string(n) + " gpu(s) present");
    return make_cuda_device(ordinal);
  }
  return Error(Code::kInvalidArgument,
               "unknown device '" + std::string(spec) + "' (expected auto, cpu, cuda or cuda:N)");
}

}  // namespace mycel
