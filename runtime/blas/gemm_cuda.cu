// CUDA backend of gemm.h: cublasGemmEx / cublasGemmStridedBatchedEx with fp32 compute.
//
// cuBLAS is column-major. A row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T,
// and a row-major matrix read as column-major is its transpose, so we call cuBLAS with the
// operands swapped (B first), m and n swapped, and the same transpose flags.
#include <cublas_v2.h>

#include "runtime/blas/gemm.h"
#include "runtime/device/cuda_error.h"

namespace smoe::internal {
namespace {

cudaDataType_t CudaType(DType dtype) { return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

Status GemmCuda(ExecContext& ctx, const GemmProblem& p) {
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

}  // namespace smoe::internal
