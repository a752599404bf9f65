// CPU backend of gemm.h: OpenBLAS sgemm; bf16 operands are widened to f32 first.
#include <cblas.h>

#include <vector>

#include "runtime/blas/gemm.h"

namespace smoe::internal {
namespace {

// Rows of a row-major matrix with `cols` columns and leading dimension ld, as f32.
std::vector<float> Widen(const void* data, DType dtype, int64_t rows, int64_t ld) {
  std::vector<float> out(static_cast<size_t>(rows * ld));
  if (dtype == DType::kF32) {
    const float* in = static_cast<const float*>(data);
    std::copy(in, in + rows * ld, out.begin());
  } else {
    const BF16* in = static_cast<const BF16*>(data);
    for (int64_t i = 0; i < rows * ld; ++i) out[i] = BF16ToFloat(in[i]);
  }
  return out;
}

void OneGemm(const GemmProblem& p, const float* a, const float* b, float* c) {
  if (p.k == 0) {  // BLAS leaves this case to the implementation; define it: C = beta * C.
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) {
        float& v = c[i * p.ldc + j];
        v = p.beta == 0.0f ? 0.0f : p.beta * v;
      }
    }
    return;
  }
  if (p.beta == 0.0f) {  // write-only C: stale NaN must not leak through 0 * NaN
    for (int64_t i = 0; i < p.m; ++i) std::fill(c + i * p.ldc, c + i * p.ldc + p.n, 0.0f);
  }
  cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans,
              p.trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(p.m), static_cast<int>(p.n),
              static_cast<int>(p.k), p.alpha, a, static_cast<int>(p.lda), b,
              static_cast<int>(p.ldb), p.beta, c, static_cast<int>(p.ldc));
}

}  // namespace

Status GemmCpu(const GemmProblem& p) {
  const int64_t a_rows = p.trans_a ? p.k : p.m;
  const int64_t b_rows = p.trans_b ? p.n : p.k;
  for (int64_t item = 0; item < p.batch; ++item) {
    const int64_t ab_size = static_cast<int64_t>(DTypeSize(p.ab_dtype));
    const int64_t c_size = static_cast<int64_t>(DTypeSize(p.c_dtype));
    const char* a_ptr = static_cast<const char*>(p.a) + item * p.stride_a * ab_size;
    const char* b_ptr = static_cast<const char*>(p.b) + item * p.stride_b * ab_size;
    char* c_ptr = static_cast<char*>(p.c) + item * p.stride_c * c_size;
    if (p.ab_dtype == DType::kF32 && p.c_dtype == DType::kF32) {
      OneGemm(p, reinterpret_cast<const float*>(a_ptr), reinterpret_cast<const float*>(b_ptr),
              reinterpret_cast<float*>(c_ptr));
      continue;
    }
    std::vector<float> a_f, b_f;
    const float* a = reinterpret_cast<const float*>(a_ptr);
    const float* b = reinterpret_cast<const float*>(b_ptr);
    if (p.ab_dtype == DType::kBF16) {
      a_f = Widen(a_ptr, p.ab_dtype, a_rows, p.lda);
      b_f = Widen(b_ptr, p.ab_dtype, b_rows, p.ldb);
      a = a_f.data();
      b = b_f.data();
    }
    if (p.c_dtype == DType::kF32) {
      OneGemm(p, a, b, reinterpret_cast<float*>(c_ptr));
      continue;
    }
    std::vector<float> c_f = Widen(c_ptr, DType::kBF16, p.m, p.ldc);
    OneGemm(p, a, b, c_f.data());
    BF16* c_out = reinterpret_cast<BF16*>(c_ptr);
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) c_out[i * p.ldc + j] = FloatToBF16(c_f[i * p.ldc + j]);
    }
  }
  return absl::OkStatus();
}

}  // namespace smoe::internal
