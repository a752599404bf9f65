#include "runtime/blas/cpu_sgemm.h"

#include <cstdio>
#include <cstdlib>

#if MOE_WITH_ONEDNN
#include <dnnl.h>
#include <signal.h>

// The OpenMP runtime oneDNN was built with (Debian's is), loaded with it.
extern "C" void omp_set_num_threads(int) __attribute__((weak));
#else
#include <cblas.h>
#endif

namespace smoe {

#if MOE_WITH_ONEDNN

void CpuSgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc) {
  // oneDNN would start an OpenMP team of every core inside each calling thread: one thread here,
  // the pool provides the parallelism. omp_set_num_threads is per thread, so once per thread.
  thread_local const bool single = [] {
    if (omp_set_num_threads != nullptr) omp_set_num_threads(1);
    return true;
  }();
  (void)single;
  // No signal handler may run on this thread inside the call: with Debian's oneDNN 2.6, a handler
  // that ran in the middle of dnnl_sgemm (SIGTERM's, which only sets a flag) corrupted the heap
  // about once in 50 stops (caught by sigma_moe_train_fault_sigterm; never without a signal). So
  // asynchronous signals wait, for the microseconds of one product, and are taken right after.
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &before);
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k,
                                          alpha, a, lda, b, ldb, beta, c, ldc);
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  if (status != dnnl_success) {
    // Only invalid arguments fail, and the callers have validated them: a bug, not an input error.
    std::fprintf(stderr, "CpuSgemm: dnnl_sgemm failed (status %d) for m=%lld n=%lld k=%lld\n",
                 static_cast<int>(status), static_cast<long long>(m), static_cast<long long>(n),
                 static_cast<long long>(k));
    std::abort();
  }
}

const char* CpuGemmLibrary() { return "onednn"; }

#else

void CpuSgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
              const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
              int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

const char* CpuGemmLibrary() { return "openblas"; }

#endif

}  // namespace smoe
