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
#include <cublas_v2.h>

#include "runtime/blas/gemm.h"
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
    ScaleKernel<<<Blocks(total), kThreads, 0, ctx.stream()>>>(
        static_cast<float*>(p.c), total, p.m, p.n, p.ldc, p.stride_c, p.beta);
  } else {
    ScaleKernel<<<Blocks(total), kThreads, 0, ctx.stream()>>>(
        static_cast<BF16*>(p.c), total, p.m, p.n, p.ldc, p.stride_c, p.beta);
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

}  // namespace

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
