// CUDA backend of gemm.h: cublasGemmEx / cublasGemmStridedBatchedEx with fp32 compute.
//
// cuBLAS is column-major. A row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T,
// and a row-major matrix read as column-major is its transpose, so we call cuBLAS with the
// operands swapped (B first), m and n swapped, and the same transpose flags.
//
// Two cases cuBLAS does not take as they are:
//   - k == 0: the contract (and the CPU backend) define C = beta * C, but cuBLAS rejects the
//     leading dimension 0 of a [m, 0] operand; we scale C ourselves.
//   - f32 A and B with a bf16 C: cublasGemmEx has no (32F, 32F, 16BF) combination
//     (CUBLAS_STATUS_NOT_SUPPORTED), so we run it into an f32 copy of C and round that once.
//
// Grouped GEMMs (the MoE experts) go to cublasGemmGroupedBatchedEx, one group of size 1 per
// expert, so each matrix product of an expert pass is one cuBLAS call. Its pointer arrays must be
// in device memory: a tiny kernel writes them from a by-value argument, which needs no
// host-to-device copy (a copy from pageable memory may synchronize the stream). A dtype
// combination the grouped API rejects falls back to one cublasGemmEx per group, and is logged once:
// CUBLAS_STATUS_NOT_SUPPORTED for any pair, and also CUBLAS_STATUS_INVALID_VALUE for the mixed
// bf16 x bf16 -> f32 pair, whose support the cuBLAS documentation does not list (both statuses
// are returned before any work is enqueued). cuBLAS cannot check the alignment of pointers it
// reads from device memory, and its bf16 kernels fault on misaligned ones: a group whose
// host-known pointers or leading dimensions are not 16-byte aligned goes to cublasGemmEx too
// (RouteGroup in gemm.h; a shape with M, H or H/r not a multiple of 8 does that).
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "runtime/blas/gemm.h"
#include "runtime/core/logging.h"
#include "runtime/device/cuda_error.h"
#include "runtime/tensor/tensor.h"

namespace smoe::internal {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;

cudaDataType_t CudaType(DType dtype) { return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

__device__ __forceinline__ float Load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float Load(const BF16* p, int64_t i) { return BF16ToFloat(p[i]); }
__device__ __forceinline__ void Store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void Store(BF16* p, int64_t i, float v) { p[i] = FloatToBF16(v); }

// Offset of element i of the `batch` x [m, n] matrices C (leading dimension ldc, stride_c).
__device__ __forceinline__ int64_t COffset(int64_t i, int64_t m, int64_t n, int64_t ldc,
                                           int64_t stride_c) {
  const int64_t item = i / (m * n), rest = i % (m * n);
  return item * stride_c + (rest / n) * ldc + rest % n;
}

// C = beta * C; beta == 0 writes zeros (stale NaN ignored), like the CPU backend.
template <typename T>
__global__ void ScaleKernel(T* c, int64_t total, int64_t m, int64_t n, int64_t ldc,
                            int64_t stride_c, float beta) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t o = COffset(i, m, n, ldc, stride_c);
    Store(c, o, beta == 0.0f ? 0.0f : beta * Load(c, o));
  }
}

// Between C (bf16, strided) and a dense f32 [batch, m, n] copy, in either direction.
__global__ void WidenCKernel(const BF16* c, float* dense, int64_t total, int64_t m, int64_t n,
                             int64_t ldc, int64_t stride_c) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    dense[i] = BF16ToFloat(c[COffset(i, m, n, ldc, stride_c)]);
  }
}

__global__ void NarrowCKernel(const float* dense, BF16* c, int64_t total, int64_t m, int64_t n,
                              int64_t ldc, int64_t stride_c) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    c[COffset(i, m, n, ldc, stride_c)] = FloatToBF16(dense[i]);
  }
}

unsigned Blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

Status ScaleC(ExecContext& ctx, const GemmProblem& p) {
  const int64_t total = p.batch * p.m * p.n;
  if (p.c_dtype == DType::kF32) {
    ScaleKernel<<<Blocks(total), kThreads, 0, ctx.stream()>>>(static_cast<float*>(p.c), total, p.m,
                                                              p.n, p.ldc, p.stride_c, p.beta);
  } else {
    ScaleKernel<<<Blocks(total), kThreads, 0, ctx.stream()>>>(static_cast<BF16*>(p.c), total, p.m,
                                                              p.n, p.ldc, p.stride_c, p.beta);
  }
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("ScaleKernel");
  return absl::OkStatus();
}

Status CallCublas(ExecContext& ctx, const GemmProblem& p) {
  cublasHandle_t handle = ctx.cublas();
  const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  // fp32 inputs: CUBLAS_COMPUTE_32F is true fp32 (no TF32), matching the contract.
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  const int m = static_cast<int>(p.n), n = static_cast<int>(p.m), k = static_cast<int>(p.k);
  if (p.batch == 1) {
    MOE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
        handle, op_b, op_a, m, n, k, &p.alpha, p.b, CudaType(p.ab_dtype), static_cast<int>(p.ldb),
        p.a, CudaType(p.ab_dtype), static_cast<int>(p.lda), &p.beta, p.c, CudaType(p.c_dtype),
        static_cast<int>(p.ldc), compute, CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  MOE_CUBLAS_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
      handle, op_b, op_a, m, n, k, &p.alpha, p.b, CudaType(p.ab_dtype), static_cast<int>(p.ldb),
      p.stride_b, p.a, CudaType(p.ab_dtype), static_cast<int>(p.lda), p.stride_a, &p.beta, p.c,
      CudaType(p.c_dtype), static_cast<int>(p.ldc), p.stride_c, static_cast<int>(p.batch), compute,
      CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

// Groups per cublasGemmGroupedBatchedEx call: three pointers each, passed by value to
// WriteGroupPointers, which keeps the kernel argument under the portable 4 KB limit.
constexpr int kMaxGroupsPerCall = 128;

struct GroupPointers {
  const void* a[kMaxGroupsPerCall];
  const void* b[kMaxGroupsPerCall];
  void* c[kMaxGroupsPerCall];
};

__global__ void WriteGroupPointers(GroupPointers in, int count, const void** a, const void** b,
                                   void** c) {
  const int i = threadIdx.x;
  if (i < count) {
    a[i] = in.a[i];
    b[i] = in.b[i];
    c[i] = in.c[i];
  }
}

// Set once the grouped API has rejected a (A/B, C) dtype pair: index ab * 2 + c, f32 = 0, bf16 = 1.
std::atomic<bool> grouped_unsupported[4];

int DTypePairIndex(const GemmProblem& p) {
  return (p.ab_dtype == DType::kBF16 ? 2 : 0) + (p.c_dtype == DType::kBF16 ? 1 : 0);
}

// One cublasGemmGroupedBatchedEx call over `groups` (same dtypes, each with m, n, k > 0, at most
// kMaxGroupsPerCall). Sets *unsupported instead of failing when cuBLAS rejects the combination.
Status CallGroupedCublas(ExecContext& ctx, std::span<const GemmProblem> groups, bool* unsupported) {
  const int count = static_cast<int>(groups.size());
  GroupPointers pointers;
  // Row-major to column-major as in CallCublas: cuBLAS's A is our B and its B is our A.
  std::vector<cublasOperation_t> trans_a(count), trans_b(count);
  std::vector<int> m(count), n(count), k(count), lda(count), ldb(count), ldc(count);
  std::vector<int> group_size(count, 1);
  std::vector<float> alpha(count), beta(count);
  for (int i = 0; i < count; ++i) {
    const GemmProblem& p = groups[i];
    pointers.a[i] = p.b;
    pointers.b[i] = p.a;
    pointers.c[i] = p.c;
    trans_a[i] = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    trans_b[i] = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    m[i] = static_cast<int>(p.n);
    n[i] = static_cast<int>(p.m);
    k[i] = static_cast<int>(p.k);
    lda[i] = static_cast<int>(p.ldb);
    ldb[i] = static_cast<int>(p.lda);
    ldc[i] = static_cast<int>(p.ldc);
    alpha[i] = p.alpha;
    beta[i] = p.beta;
  }
  MOE_ASSIGN_OR_RETURN(Tensor arrays, Tensor::Empty({3 * int64_t{kMaxGroupsPerCall}}, DType::kI64,
                                                    ctx.device(), ctx.allocator()));
  auto** slots = static_cast<void**>(arrays.data());
  const void** a = const_cast<const void**>(slots);
  const void** b = const_cast<const void**>(slots + kMaxGroupsPerCall);
  void** c = slots + 2 * kMaxGroupsPerCall;
  WriteGroupPointers<<<1, kMaxGroupsPerCall, 0, ctx.stream()>>>(pointers, count, a, b, c);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("WriteGroupPointers");
  const GemmProblem& p = groups[0];
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      ctx.cublas(), trans_a.data(), trans_b.data(), m.data(), n.data(), k.data(), alpha.data(), a,
      CudaType(p.ab_dtype), lda.data(), b, CudaType(p.ab_dtype), ldb.data(), beta.data(), c,
      CudaType(p.c_dtype), ldc.data(), count, group_size.data(), CUBLAS_COMPUTE_32F);
  const bool mixed = p.ab_dtype != p.c_dtype;
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (mixed && status == CUBLAS_STATUS_INVALID_VALUE)) {
    *unsupported = true;
    return absl::OkStatus();
  }
  return CublasStatus(status, "cublasGemmGroupedBatchedEx");
}

}  // namespace

Status GroupedGemmCuda(ExecContext& ctx, std::span<const GemmProblem> groups) {
  // Groups with nothing to multiply are skipped; k == 0, f32 x f32 -> bf16 (see the top of this
  // file) and bf16 groups whose pointers or leading dimensions are not 16-byte aligned go alone.
  std::vector<GemmProblem> batch;
  batch.reserve(groups.size());
  for (const GemmProblem& p : groups) {
    switch (RouteGroup(p, groups[0], grouped_unsupported[DTypePairIndex(p)])) {
      case GroupRoute::kSkip:
        break;
      case GroupRoute::kAlone:
        MOE_RETURN_IF_ERROR(GemmCuda(ctx, p));
        break;
      case GroupRoute::kGrouped:
        batch.push_back(p);
        break;
    }
  }
  for (size_t begin = 0; begin < batch.size(); begin += kMaxGroupsPerCall) {
    const size_t count = std::min<size_t>(kMaxGroupsPerCall, batch.size() - begin);
    const std::span<const GemmProblem> chunk(batch.data() + begin, count);
    bool unsupported = false;
    MOE_RETURN_IF_ERROR(CallGroupedCublas(ctx, chunk, &unsupported));
    if (!unsupported) continue;
    if (!grouped_unsupported[DTypePairIndex(chunk[0])].exchange(true)) {
      MOE_LOG(WARNING) << "cublasGemmGroupedBatchedEx does not take A/B "
                       << DTypeName(chunk[0].ab_dtype) << " with C " << DTypeName(chunk[0].c_dtype)
                       << "; running those grouped GEMMs one cublasGemmEx per group";
    }
    for (const GemmProblem& p : chunk) MOE_RETURN_IF_ERROR(GemmCuda(ctx, p));
  }
  return absl::OkStatus();
}

Status GemmCuda(ExecContext& ctx, const GemmProblem& p) {
  if (p.k == 0) return ScaleC(ctx, p);
  if (p.ab_dtype == DType::kBF16 || p.c_dtype == DType::kF32) return CallCublas(ctx, p);

  // f32 inputs, bf16 output: through a dense f32 C (freed in stream order, see allocator.h).
  const int64_t total = p.batch * p.m * p.n;
  MOE_ASSIGN_OR_RETURN(Tensor dense,
                       Tensor::Empty({total}, DType::kF32, ctx.device(), ctx.allocator()));
  auto* c = static_cast<BF16*>(p.c);
  if (p.beta != 0.0f) {
    WidenCKernel<<<Blocks(total), kThreads, 0, ctx.stream()>>>(c, dense.data<float>(), total, p.m,
                                                               p.n, p.ldc, p.stride_c);
    MOE_CUDA_RETURN_IF_LAUNCH_ERROR("WidenCKernel");
  }
  GemmProblem q = p;
  q.c = dense.data();
  q.c_dtype = DType::kF32;
  q.ldc = p.n;
  q.stride_c = p.m * p.n;
  MOE_RETURN_IF_ERROR(CallCublas(ctx, q));
  NarrowCKernel<<<Blocks(total), kThreads, 0, ctx.stream()>>>(dense.data<float>(), c, total, p.m,
                                                              p.n, p.ldc, p.stride_c);
  MOE_CUDA_RETURN_IF_LAUNCH_ERROR("NarrowCKernel");
  return absl::OkStatus();
}

}  // namespace smoe::internal
