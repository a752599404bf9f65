// CPU backend of gemm.h: CpuSgemm (oneDNN or OpenBLAS) in the thread pool; bf16 operands are
// widened to f32 first.
#include <algorithm>
#include <vector>

#include "runtime/blas/cpu_sgemm.h"
#include "runtime/blas/gemm.h"
#include "runtime/core/thread_pool.h"

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
  // beta == 0: BLAS (the reference and OpenBLAS) never reads C then, so stale NaN cannot leak
  // through 0 * NaN (GemmTest.BetaZeroIgnoresStaleNaN holds the library to it).
  CpuSgemm(p.trans_a, p.trans_b, p.m, p.n, p.k, p.alpha, a, p.lda, b, p.ldb, p.beta, c, p.ldc);
}

// Every batch item of p on the calling thread.
Status GemmSerial(const GemmProblem& p) {
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

// Splits one f32 item into blocks of rows of C (or of columns, when C is wide), each one BLAS call
// of about kBlockFlops: a size fixed by the shape, so the thread count never changes a result.
// 8 MFLOP: big enough that packing the other operand again for every block stays small (2 MFLOP
// blocks were 3-5% slower on the tiny step), small enough for a dozen blocks per thread.
constexpr int64_t kBlockFlops = int64_t{1} << 23;

bool Splits(const GemmProblem& p) {
  return p.ab_dtype == DType::kF32 && p.c_dtype == DType::kF32 && p.k > 0 &&
         2 * p.m * p.n * p.k >= 2 * kBlockFlops;
}

void GemmBlocks(const GemmProblem& p) {
  const bool by_rows = p.m >= p.n;
  const int64_t lines = by_rows ? p.m : p.n;  // rows or columns of C to share out
  const int64_t line_flops = 2 * (by_rows ? p.n : p.m) * p.k;
  const int64_t grain = std::max<int64_t>(16, (kBlockFlops / line_flops + 15) / 16 * 16);
  CpuPool().ParallelFor(lines, grain, [&](int64_t begin, int64_t end) {
    GemmProblem q = p;
    const float* a = static_cast<const float*>(p.a);
    const float* b = static_cast<const float*>(p.b);
    float* c = static_cast<float*>(p.c);
    if (by_rows) {  // rows [begin, end) of op(A) and C
      q.m = end - begin;
      q.a = p.trans_a ? a + begin : a + begin * p.lda;
      q.c = c + begin * p.ldc;
    } else {  // columns [begin, end) of op(B) and C
      q.n = end - begin;
      q.b = p.trans_b ? b + begin * p.ldb : b + begin;
      q.c = c + begin;
    }
    OneGemm(q, static_cast<const float*>(q.a), static_cast<const float*>(q.b),
            static_cast<float*>(q.c));
  });
}

}  // namespace

Status GemmCpu(const GemmProblem& p) {
  // The same BLAS calls whatever the thread count (or nesting), so results never depend on it.
  if (p.batch > 1) {
    CpuPool().ParallelFor(p.batch, 1, [&](int64_t begin, int64_t end) {
      GemmProblem q = p;
      q.batch = end - begin;
      const int64_t ab = static_cast<int64_t>(DTypeSize(p.ab_dtype));
      const int64_t cs = static_cast<int64_t>(DTypeSize(p.c_dtype));
      q.a = static_cast<const char*>(p.a) + begin * p.stride_a * ab;
      q.b = static_cast<const char*>(p.b) + begin * p.stride_b * ab;
      q.c = static_cast<char*>(p.c) + begin * p.stride_c * cs;
      (void)GemmSerial(q);  // OK on the CPU always
    });
    return absl::OkStatus();
  }
  if (!Splits(p)) return GemmSerial(p);
  GemmBlocks(p);
  return absl::OkStatus();
}

Status GroupedGemmCpu(std::span<const GemmProblem> groups) {
  CpuPool().ParallelFor(static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) (void)GemmSerial(groups[g]);
  });
  return absl::OkStatus();
}

}  // namespace smoe::internal
