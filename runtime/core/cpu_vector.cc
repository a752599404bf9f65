#include "runtime/core/cpu_vector.h"

namespace smoe {

MOE_CPU_CLONES double ExpShiftedSum(const float* x, float shift, int64_t n, float* y) {
  double lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) {
      y[i + l] = ExpF(x[i + l] - shift);
      lanes[l] += y[i + l];
    }
  }
  for (; i < n; ++i) {
    y[i] = ExpF(x[i] - shift);
    lanes[i % 8] += y[i];
  }
  return SumLanes(lanes);
}

}  // namespace smoe
