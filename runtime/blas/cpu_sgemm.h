// One f32 GEMM on the calling CPU thread, row-major (issue 14):
//   C[m, n] = alpha op(A) op(B) + beta C, op(X) = X or X^T, lda/ldb/ldc the row strides;
//   beta == 0: C is not read (stale NaN does not leak); m, n, k >= 1.
// The CPU backend of every GEMM (runtime/blas/gemm.h) and of the attention core. It runs on one
// thread: parallel work is split by the callers, in the CPU thread pool
// (runtime/core/thread_pool.h).
//
// Library: oneDNN's dnnl_sgemm in a build that found it (MOE_WITH_ONEDNN; its JIT kernels ran the
// tiny preset's GEMM mix 1.19x faster than OpenBLAS single-threaded: README, "Benchmarks"),
// otherwise OpenBLAS's cblas_sgemm. Deterministic: the same inputs give the same bits.
#pragma once

#include <cstdint>

namespace smoe {

void CpuSgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc);

// "onednn" or "openblas": the library CpuSgemm calls.
const char* CpuGemmLibrary();

}  // namespace smoe
