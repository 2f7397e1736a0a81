#include "kernels/cpu/cpu_kernels.h"

namespace mycel {

const KernelTable& cpu_kernels() {
  static const KernelTable table{
      cpu::weighted_sum,   cpu::mix,         cpu::l2_norm,     cpu::l2_distance,
      cpu::count_nonfinite, cpu::encode_body, cpu::validate_body, cpu::decode_body,
      cpu::decode_merge_body,
  };
  return table;
}

}  // namespace mycel
