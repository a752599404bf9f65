// CUDA backend of experts.h's internal::AddWeightGrads: one grid-stride launch over the three
// weight gradients of a bf16 expert backward, adding each bf16 product into its f32 gradient.
#include <cuda_runtime.h>

#include "moe/experts/experts.h"
#include "runtime/device/cuda_error.h"

namespace smoe::internal {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

struct Parts {
  const BF16* part[3];
  float* grad[3];
  int64_t end[3];  // cumulative sizes: element i of the launch is in the first part with i < end
};

// Vectorizing is left to the compiler: the three tensors are large and contiguous, so this runs at
// memory bandwidth either way (6 bytes read and 4 written per element, 10 when accumulating).
__global__ void AddWeightGradsKernel(Parts p, bool accumulate) {
  const int64_t total = p.end[2];
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int t = i < p.end[0] ? 0 : (i < p.end[1] ? 1 : 2);
    const int64_t j = i - (t == 0 ? 0 : p.end[t - 1]);
    const float v = BF16ToFloat(p.part[t][j]);
    p.grad[t][j] = accumulate ? p.grad[t][j] + v : v;
  }
}

}  // namespace

Status AddWeightGradsCuda(ExecContext& ctx, const std::array<const BF16*, 3>& parts,
                          const std::array<float*, 3>& grads, const std::array<int64_t, 3>& sizes,
                          bool accumulate) {
  Parts p;
  int64_t end = 0;
  for (int i = 0; i < 3; ++i) {
    p.part[i] = parts[i];
    p.grad[i] = grads[i];
    end += sizes[i];
    p.end[i] = end;
  }
  if (end == 0) return absl::OkStatus();
  const int64_t blocks = (end + kThreads - 1) / kThreads;
  AddWeightGradsKernel<<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads,
                         0, ctx.stream()>>>(p, accumulate);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("AddWeightGradsKernel");
  return absl::OkStatus();
}

}  // namespace smoe::internal
