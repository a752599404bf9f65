// Single-thread f32 GEMM speed of OpenBLAS, BLIS and oneDNN on the shapes of one `tiny` training
// step (configs/tiny.textproto), to pick the CPU BLAS (issue 14).
//
// Nothing is linked at build time: each library is dlopen()ed at run time in a child process of its
// own (fork, before anything is loaded), so that OPENBLAS_CORETYPE, read when OpenBLAS loads, can
// differ per variant and the libraries' thread pools never meet. A library that is not installed
// gives one {"status":"missing"} line and is skipped.
//   openblas            libopenblas.so.0 (Debian openblas-pthread), OPENBLAS_CORETYPE unset
//   openblas-skylakex   the same with OPENBLAS_CORETYPE=SkylakeX (AVX-512 kernels)
//   openblas-haswell    the same with OPENBLAS_CORETYPE=Haswell (AVX2 kernels)
//   blis                libblis.so.4 (Debian libblis4-pthread or -openmp), its cblas_sgemm
//   onednn              libdnnl.so.3, else libdnnl.so.2 (Debian 12 has libdnnl2), dnnl_sgemm
// Threads: openblas_set_num_threads, bli_thread_set_num_threads, and for oneDNN (Debian builds it
// with the OpenMP runtime) omp_set_num_threads of the libgomp it loaded.
//
// Every shape is a row-major C = alpha op(A) op(B) + beta C exactly as a call site issues it
// (transposes, leading dimensions, alpha, beta). Every measurement first checks one result against
// a triple-loop reference in double on random inputs (a relative error beyond --tolerance is a
// loud failure: stderr, "ok":false, exit status 1), then times the call: the operands are cycled
// over enough copies to leave L2 (as the 96 experts' weights do; a block of a split product walks
// the blocks of one whole product instead), one repetition is one pass over the copies, and a
// round's time is the median per-call time over >= --reps repetitions and
// >= --min-ms milliseconds, after a warm-up. The parent drives all children in lockstep, shape by
// shape, --rounds rounds per shape, rotating the library order each round, and keeps each
// library's best round: on a shared machine the libraries then see the same background load, and
// a burst of it costs one round, not one library.
// Output, one JSON line each: a library's load info (or "missing"); per (shape, threads, library)
// GFLOP/s and ratio_vs_openblas (this library's speed over plain OpenBLAS's on the same shape and
// thread count; > 1 is faster); per library a summary: the time-weighted total over one tiny
// training step (shape time x calls per step) at 1 thread, as step_ms and by part (experts_ms,
// attention_ms, dense_ms: the blocks of the T = 4096 token projections), and, for reference,
// whole_<t>t_ms: the same projections unsplit, one call each, at t threads of the library's own.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

// ---- the shapes of one tiny training step ------------------------------------------------------
//
// tiny: T = batch 16 x seq 256 = 4096 tokens, M = 128, 4 layers, 96 experts of H = 64, top-1 (layer
// 0 top-4 for the first 200 of 1000 steps), DiffQKV attention n_q = 4, n_k = 1, n_v = 2, D = 32
// (QD = 128, KD = 32, VD = 64), AugQ d_aug = 192, vocab 256 (tied head), f32 on the CPU.
//
// The shapes are the single-threaded sgemm calls (CpuSgemm, runtime/blas/cpu_sgemm.h) that the CPU
// step issues from its thread pool, and per_step how many of each one step issues:
//  - dense projections over all T tokens (diffqkv.cc, aug_q.cc, router.cc, model.cc's LM head):
//    Gemm splits each into blocks of ~kBlockFlops (runtime/blas/gemm_cpu.cc, GemmBlocks: rows of C,
//    or columns when C is wider than tall, a multiple of 16 lines, >= 16), one call per block;
//    DenseBlocks below repeats that arithmetic. Once per layer (x4) per site, the head once;
//  - attention (attention_core_blas.cc): per sequence (16) and layer, the 4 query heads that share
//    the one K head packed into one M = 4 x 64 score product per causal block of 64 queries (block
//    q0 needs keys [0, q1), q1 = 64, 128, 192, 256), the PV / dV / dP products once per V head (2)
//    over its 2 packed heads; the backward recomputes the scores;
//  - experts (experts.cc): GroupedGemm / GroupedGemmRaggedK, one call per expert and layer, at the
//    mean rows per expert T k / E: 43 at top-1, 171 at top-4. Averaged over the 1000-step run,
//    layer 0 is top-4 in 20% of steps: 3.8 layer-equivalents of 96 calls at r = 43 (364.8) and
//    0.2 at r = 171 (19.2). Real routing is uneven around that mean.
// Calls that are identical (op, m, n, k, leading dimensions, alpha, beta) share one entry.
// For reference, each dense product is also listed whole ("whole": not part of the step total):
// what one BLAS call with the library's own threads (--threads) would do instead of the blocks.
constexpr int kT = 4096, kM = 128, kS = 256, kD = 32, kLayers = 4, kSeqs = 16;
constexpr int64_t kBlockFlops = int64_t{1} << 21;  // runtime/blas/gemm_cpu.cc
constexpr int kCausalBlock = 64;                   // attention_core_blas.cc kBlock
constexpr double kExpertTop1 = 96 * 3.8, kExpertTop4 = 96 * 0.2;
const float kAttnScale = 1.0f / std::sqrt(static_cast<float>(kD));

struct ShapeSpec {
  std::string name;
  std::string site;
  bool ta, tb;
  int m, n, k;
  int lda, ldb, ldc;  // 0: dense
  float alpha, beta;
  double per_step;     // calls per step (for a whole shape: the logical products it stands for)
  bool whole = false;  // reference only: a dense product in one call, outside the step total
  // A block of a split dense product (blocks > 0): the timed copies are `blocks` consecutive blocks
  // of one whole-size set of operands (rows of op(A) and C, or columns of op(B) and C), the other
  // operand shared, as one thread would run them.
  int blocks = 0;
  bool by_rows = true;

  int Lda() const { return lda ? lda : (ta ? m : k); }
  int Ldb() const { return ldb ? ldb : (tb ? k : n); }
  int Ldc() const { return ldc ? ldc : n; }
  int64_t ARows() const { return ta ? k : m; }
  int64_t BRows() const { return tb ? n : k; }
  double Flops() const { return 2.0 * m * n * k; }
  std::string Op() const { return std::string(ta ? "T" : "N") + (tb ? "T" : "N"); }
};

// A dense product over all tokens, issued `count` times per step: its whole shape (reference) and
// the blocks GemmBlocks cuts it into (a full-grain block and, when the grain does not divide the
// lines, the remainder), with the whole matrices' leading dimensions.
void DenseBlocks(std::vector<ShapeSpec>* out, const std::string& name, const std::string& site,
                 bool ta, bool tb, int m, int n, int k, float beta, double count) {
  ShapeSpec whole{name + ".whole", site, ta, tb, m, n, k, 0, 0, 0, 1.0f, beta, count, true};
  const int lda = whole.Lda(), ldb = whole.Ldb(), ldc = whole.Ldc();
  const bool by_rows = m >= n;
  const int64_t lines = by_rows ? m : n;
  const int64_t line_flops = 2 * int64_t{by_rows ? n : m} * k;
  const int64_t grain = std::max<int64_t>(16, (kBlockFlops / line_flops + 15) / 16 * 16);
  const bool split = 2.0 * m * n * k >= 2.0 * kBlockFlops;
  if (!split) {  // one call as it is
    ShapeSpec one = whole;
    one.name = name;
    one.whole = false;
    out->push_back(one);
    return;
  }
  out->push_back(whole);
  const int64_t full = lines / grain, rest = lines % grain;
  for (const auto& [size, times] : {std::pair<int64_t, int64_t>{grain, full}, {rest, 1}}) {
    if (size == 0 || times == 0) continue;
    ShapeSpec blk{name + (by_rows ? ".rows" : ".cols") + std::to_string(size),
                  site + " (block)",
                  ta,
                  tb,
                  by_rows ? static_cast<int>(size) : m,
                  by_rows ? n : static_cast<int>(size),
                  k,
                  lda,
                  ldb,
                  ldc,
                  1.0f,
                  beta,
                  count * static_cast<double>(times)};
    blk.blocks = static_cast<int>(times);
    blk.by_rows = by_rows;
    out->push_back(blk);
  }
}

std::vector<ShapeSpec> TinyStepShapes() {
  const double L = kLayers;
  std::vector<ShapeSpec> s;
  auto dense = [&](const char* name, const char* site, bool ta, bool tb, int m, int n, int k,
                   float beta,
                   double count) { DenseBlocks(&s, name, site, ta, tb, m, n, k, beta, count); };
  // Forward: X W.
  dense("proj_fwd_n128", "diffqkv.cc:77,110 x Wq, o Wo", false, false, kT, 128, kM, 0, 2 * L);
  dense("proj_fwd_n32", "diffqkv.cc:88 x Wk", false, false, kT, 32, kM, 0, L);
  dense("proj_fwd_n64", "diffqkv.cc:89 x Wv", false, false, kT, 64, kM, 0, L);
  dense("proj_fwd_n96", "router.cc:68 x Wgate", false, false, kT, 96, kM, 0, L);
  dense("proj_fwd_n192", "aug_q.cc:41,42 q Wgate, q Wup", false, false, kT, 192, 128, 0, 2 * L);
  dense("proj_fwd_k192", "aug_q.cc:44 h Wdown", false, false, kT, 128, 192, 0, L);
  dense("head_fwd_n256", "model.cc:572 nf E^T (tied)", false, true, kT, 256, kM, 0, 1);
  // Input gradients: dY W^T.
  dense("proj_dx_k128", "diffqkv.cc:135,167 dy Wo^T, dq Wq^T", false, true, kT, 128, 128, 0, 2 * L);
  dense("proj_dx_k32", "diffqkv.cc:168 dk Wk^T (+=)", false, true, kT, kM, 32, 1, L);
  dense("proj_dx_k64", "diffqkv.cc:169 dv Wv^T (+=)", false, true, kT, kM, 64, 1, L);
  dense("proj_dx_k96", "router.cc:136 dlogits Wgate^T", false, true, kT, kM, 96, 0, L);
  dense("proj_dx_n192", "aug_q.cc:64 dqa Wdown^T", false, true, kT, 192, 128, 0, L);
  dense("proj_dx_k192", "aug_q.cc:68 dgate Wgate^T", false, true, kT, 128, 192, 0, L);
  dense("proj_dx_k192_acc", "aug_q.cc:69 dup Wup^T (+=)", false, true, kT, 128, 192, 1, L);
  dense("head_dx_k256", "model.cc:728 dlogits E", false, false, kT, kM, 256, 0, 1);
  // Weight gradients: X^T dY over all tokens, accumulated (beta 1).
  dense("proj_dw_128x128", "diffqkv.cc:134,164 dWo, dWq", true, false, 128, 128, kT, 1, 2 * L);
  dense("proj_dw_128x32", "diffqkv.cc:165 dWk", true, false, kM, 32, kT, 1, L);
  dense("proj_dw_128x64", "diffqkv.cc:166 dWv", true, false, kM, 64, kT, 1, L);
  dense("proj_dw_128x96", "router.cc:139 dWgate", true, false, kM, 96, kT, 1, L);
  dense("proj_dw_128x192", "aug_q.cc:66,67 dWgate, dWup", true, false, 128, 192, kT, 1, 2 * L);
  dense("proj_dw_192x128", "aug_q.cc:63 dWdown", true, false, 192, 128, kT, 1, L);
  dense("head_dw_256x128", "model.cc:730 dE (tied)", true, false, 256, kM, kT, 1, 1);

  // Attention, per causal block q1 (keys [0, q1)): G = 4 packed query heads of 64 rows each
  // (M = 256; leading dimension D), 2 per V head (M = 128); P and dS [256 x q1] with ld S; the K,
  // V, dK, dV heads strided in [B, S, heads, D] (ld n_k D = 32, n_v D = 64).
  const double per_block = kSeqs * L;  // each q1 once per sequence and layer
  const int g_rows = 4 * kCausalBlock, v_rows = 2 * kCausalBlock;
  for (int q1 = kCausalBlock; q1 <= kS; q1 += kCausalBlock) {
    const std::string sfx = "_q" + std::to_string(q1);
    const std::vector<ShapeSpec> a = {
        {"attn_scores" + sfx, "attention_core_blas.cc scores Q K^T (fwd + bwd)", false, true,
         g_rows, q1, kD, kD, 32, kS, kAttnScale, 0, 2 * per_block},
        {"attn_pv" + sfx, "attention_core_blas.cc fwd P V, per V head", false, false, v_rows, kD,
         q1, kS, 64, kD, 1, 0, 2 * per_block},
        {"attn_dv" + sfx, "attention_core_blas.cc dV += P^T dO, per V head", true, false, q1, kD,
         v_rows, kS, kD, 64, 1, 1, 2 * per_block},
        {"attn_dp" + sfx, "attention_core_blas.cc dP = dO V^T, per V head", false, true, v_rows, q1,
         kD, kD, 64, kS, 1, 0, 2 * per_block},
        {"attn_dq" + sfx, "attention_core_blas.cc dQ = s dS K", false, false, g_rows, kD, q1, kS,
         32, kD, kAttnScale, 0, per_block},
        {"attn_dk" + sfx, "attention_core_blas.cc dK += s dS^T Q", true, false, q1, kD, g_rows, kS,
         kD, 32, kAttnScale, 1, per_block},
    };
    s.insert(s.end(), a.begin(), a.end());
  }

  // Experts (experts.cc), per expert, at r = 43 (top-1) and r = 171 (top-4) rows.
  for (const auto& [r, count] : {std::pair<int, double>{43, kExpertTop1}, {171, kExpertTop4}}) {
    const std::string sfx = "_r" + std::to_string(r);
    const std::vector<ShapeSpec> e = {
        {"exp_fwd_w13" + sfx, "experts.cc:91,92 x W1, x W3", false, false, r, 64, 128, 0, 0, 0, 1,
         0, 2 * count},
        {"exp_fwd_w2" + sfx, "experts.cc:94 act W2", false, false, r, 128, 64, 0, 0, 0, 1, 0,
         count},
        {"exp_dh" + sfx, "experts.cc:135 dy W2^T", false, true, r, 64, 128, 0, 0, 0, 1, 0, count},
        {"exp_dx" + sfx, "experts.cc:146 dh1 W1^T", false, true, r, 128, 64, 0, 0, 0, 1, 0, count},
        {"exp_dx_acc" + sfx, "experts.cc:147 dh3 W3^T (+=)", false, true, r, 128, 64, 0, 0, 0, 1, 1,
         count},
        {"exp_dw13" + sfx, "experts.cc:138,139 x^T dh1, x^T dh3 (ragged K, +=)", true, false, 128,
         64, r, 0, 0, 0, 1, 1, 2 * count},
        {"exp_dw2" + sfx, "experts.cc:130 act^T dy (ragged K, +=)", true, false, 64, 128, r, 0, 0,
         0, 1, 1, count},
    };
    s.insert(s.end(), e.begin(), e.end());
  }
  return s;
}

// ---- operands and the reference ----------------------------------------------------------------

struct Operands {
  std::vector<float> a, b, c0;
};

// Elements of A, B and C to allocate: one call's, or for a block shape the whole product's.
int64_t AElems(const ShapeSpec& s) {
  const int64_t rows = s.ARows() * (s.blocks > 0 && s.by_rows && !s.ta ? s.blocks : 1);
  return rows * s.Lda();
}
int64_t BElems(const ShapeSpec& s) {
  const int64_t rows = s.BRows() * (s.blocks > 0 && !s.by_rows && s.tb ? s.blocks : 1);
  return rows * s.Ldb();
}
int64_t CElems(const ShapeSpec& s) {
  return int64_t{s.m} * (s.blocks > 0 && s.by_rows ? s.blocks : 1) * s.Ldc();
}

// Copy `copy` of the shape's operands: uniform in [-1, 1], deterministic in (shape, copy).
Operands MakeOperands(const ShapeSpec& s, int shape_index, int copy) {
  std::mt19937_64 rng(0x5eed0000ull + 1000ull * static_cast<uint64_t>(shape_index) +
                      static_cast<uint64_t>(copy));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Operands o;
  o.a.resize(static_cast<size_t>(AElems(s)));
  o.b.resize(static_cast<size_t>(BElems(s)));
  o.c0.resize(static_cast<size_t>(CElems(s)));
  for (float& x : o.a) x = u(rng);
  for (float& x : o.b) x = u(rng);
  for (float& x : o.c0) x = u(rng);
  return o;
}

// Copies cycled through while timing: a block shape's blocks; otherwise ~8 MiB of operands, well
// past a core's L2 (1 MiB on the development machine's Zen 4), at most 96 (one per expert).
int CopiesFor(const ShapeSpec& s) {
  if (s.blocks > 0) return s.blocks;
  const double bytes = 4.0 * static_cast<double>(AElems(s) + BElems(s) + CElems(s));
  return static_cast<int>(std::clamp(std::ceil(8.0 * (1 << 20) / bytes), 1.0, 96.0));
}

// The operands of every copy: distinct sets, or for a block shape offsets into one set.
struct Working {
  const ShapeSpec* s = nullptr;
  std::vector<Operands> ops;
  std::vector<std::vector<float>> cs;
  int copies = 0;

  Working(const ShapeSpec& shape, int shape_index) : s(&shape), copies(CopiesFor(shape)) {
    for (int c = 0; c < (shape.blocks > 0 ? 1 : copies); ++c) {
      ops.push_back(MakeOperands(shape, shape_index, c));
      cs.push_back(ops.back().c0);
    }
  }
  const Operands& Set(int c) const { return ops[s->blocks > 0 ? 0 : c]; }
  const float* A(int c) const {
    if (s->blocks == 0 || !s->by_rows) return Set(c).a.data();
    return Set(c).a.data() + (s->ta ? int64_t{c} * s->m : int64_t{c} * s->m * s->Lda());
  }
  const float* B(int c) const {
    if (s->blocks == 0 || s->by_rows) return Set(c).b.data();
    return Set(c).b.data() + (s->tb ? int64_t{c} * s->n * s->Ldb() : int64_t{c} * s->n);
  }
  float* C(int c) {
    float* base = cs[s->blocks > 0 ? 0 : c].data();
    if (s->blocks == 0) return base;
    return base + (s->by_rows ? int64_t{c} * s->m * s->Ldc() : int64_t{c} * s->n);
  }
  void ResetC() {
    for (size_t i = 0; i < cs.size(); ++i) cs[i] = ops[i].c0;
  }
};

// C = alpha op(A) op(B) + beta C0 in double, as an [m, n] dense float matrix.
std::vector<float> Reference(const ShapeSpec& s, const Operands& o) {
  const int m = s.m, n = s.n, k = s.k;
  std::vector<double> a(static_cast<size_t>(int64_t{m} * k)),
      b(static_cast<size_t>(int64_t{k} * n));
  for (int i = 0; i < m; ++i) {
    for (int p = 0; p < k; ++p) {
      a[static_cast<size_t>(i) * k + p] = s.ta ? o.a[static_cast<size_t>(p) * s.Lda() + i]
                                               : o.a[static_cast<size_t>(i) * s.Lda() + p];
    }
  }
  for (int p = 0; p < k; ++p) {
    for (int j = 0; j < n; ++j) {
      b[static_cast<size_t>(p) * n + j] = s.tb ? o.b[static_cast<size_t>(j) * s.Ldb() + p]
                                               : o.b[static_cast<size_t>(p) * s.Ldb() + j];
    }
  }
  std::vector<float> c(static_cast<size_t>(int64_t{m} * n));
  std::vector<double> row(static_cast<size_t>(n));
  for (int i = 0; i < m; ++i) {
    std::fill(row.begin(), row.end(), 0.0);
    for (int p = 0; p < k; ++p) {
      const double x = a[static_cast<size_t>(i) * k + p];
      const double* bp = b.data() + static_cast<size_t>(p) * n;
      for (int j = 0; j < n; ++j) row[j] += x * bp[j];
    }
    for (int j = 0; j < n; ++j) {
      c[static_cast<size_t>(i) * n + j] = static_cast<float>(
          s.alpha * row[j] + s.beta * double{o.c0[static_cast<size_t>(i) * s.Ldc() + j]});
    }
  }
  return c;
}

// max |C - ref| / max |ref| over the m x n result.
double MaxRelError(const ShapeSpec& s, const std::vector<float>& c, const std::vector<float>& ref) {
  double err = 0.0, scale = 0.0;
  for (int i = 0; i < s.m; ++i) {
    for (int j = 0; j < s.n; ++j) {
      const double r = ref[static_cast<size_t>(i) * s.n + j];
      const double x = c[static_cast<size_t>(i) * s.Ldc() + j];
      err = std::max(err, std::isfinite(x) ? std::abs(x - r) : INFINITY);
      scale = std::max(scale, std::abs(r));
    }
  }
  return err / std::max(scale, 1e-30);
}

// ---- the libraries -----------------------------------------------------------------------------

// CBLAS ABI: enums are ints; Debian's openblas-pthread and BLIS use 32-bit BLAS integers (BLIS's is
// checked at load).
enum { kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112 };
using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                            int, float, float*, int);
using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);

struct Library {
  std::string name;
  std::string info;  // JSON fields (no braces) describing what was loaded
  CblasSgemm cblas = nullptr;
  DnnlSgemm dnnl = nullptr;
  void (*set_threads)(int) = nullptr;

  // Returns false on a library-reported error.
  bool Gemm(const ShapeSpec& s, const float* a, const float* b, float* c) const {
    if (cblas != nullptr) {
      cblas(kCblasRowMajor, s.ta ? kCblasTrans : kCblasNoTrans, s.tb ? kCblasTrans : kCblasNoTrans,
            s.m, s.n, s.k, s.alpha, a, s.Lda(), b, s.Ldb(), s.beta, c, s.Ldc());
      return true;
    }
    return dnnl(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.m, s.n, s.k, s.alpha, a, s.Lda(), b, s.Ldb(),
                s.beta, c, s.Ldc()) == 0;
  }
};

const std::vector<std::string> kAllLibs = {"openblas", "openblas-skylakex", "openblas-haswell",
                                           "blis", "onednn"};

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += ' ';
    } else {
      out += ch;
    }
  }
  return out;
}

// Setters with the int signature of Library::set_threads over each library's own function.
void (*g_openblas_set)(int) = nullptr;
void (*g_bli_set)(int64_t) = nullptr;
void (*g_omp_set)(int) = nullptr;
void OpenBlasThreads(int n) { g_openblas_set(n); }
void BlisThreads(int n) { g_bli_set(n); }
void OmpThreads(int n) { g_omp_set(n); }

// dlsym(handle, name) as a function pointer of type F (null when absent).
template <typename F>
F Symbol(void* handle, const char* name) {
  return reinterpret_cast<F>(dlsym(handle, name));
}

// Loads `name` in this (child) process; on failure returns false with `why`.
bool Load(const std::string& name, Library* lib, std::string* why) {
  lib->name = name;
  auto fail = [&](const std::string& what) {
    const char* e = dlerror();
    *why = what + (e ? std::string(": ") + e : std::string());
    return false;
  };
  if (name.rfind("openblas", 0) == 0) {
    if (name == "openblas-skylakex") {
      setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    } else if (name == "openblas-haswell") {
      setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    } else {
      unsetenv("OPENBLAS_CORETYPE");
    }
    void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return fail("dlopen libopenblas.so.0");
    lib->cblas = Symbol<CblasSgemm>(h, "cblas_sgemm");
    g_openblas_set = Symbol<void (*)(int)>(h, "openblas_set_num_threads");
    if (lib->cblas == nullptr || g_openblas_set == nullptr) return fail("dlsym");
    lib->set_threads = OpenBlasThreads;
    auto corename = Symbol<const char* (*)()>(h, "openblas_get_corename");
    auto config = Symbol<const char* (*)()>(h, "openblas_get_config");
    const char* env = getenv("OPENBLAS_CORETYPE");
    lib->info = "\"so\":\"libopenblas.so.0\",\"coretype_env\":\"" + std::string(env ? env : "") +
                "\",\"core\":\"" + JsonEscape(corename ? corename() : "?") + "\",\"config\":\"" +
                JsonEscape(config ? config() : "?") + "\"";
    return true;
  }
  if (name == "blis") {
    void* h = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return fail("dlopen libblis.so.4");
    lib->cblas = Symbol<CblasSgemm>(h, "cblas_sgemm");
    g_bli_set = Symbol<void (*)(int64_t)>(h, "bli_thread_set_num_threads");
    if (lib->cblas == nullptr || g_bli_set == nullptr) return fail("dlsym (a BLIS without CBLAS?)");
    lib->set_threads = BlisThreads;
    auto version = Symbol<const char* (*)()>(h, "bli_info_get_version_str");
    auto int_size = Symbol<int64_t (*)()>(h, "bli_info_get_blas_int_type_size");
    auto arch_id = Symbol<int (*)()>(h, "bli_arch_query_id");
    auto arch_str = Symbol<const char* (*)(int)>(h, "bli_arch_string");
    if (int_size != nullptr && int_size() != 32) {
      *why = "BLIS built with " + std::to_string(int_size()) + "-bit BLAS integers (need 32)";
      return false;
    }
    lib->info = "\"so\":\"libblis.so.4\",\"version\":\"" + JsonEscape(version ? version() : "?") +
                "\",\"arch\":\"" + JsonEscape(arch_id && arch_str ? arch_str(arch_id()) : "?") +
                "\"";
    return true;
  }
  if (name == "onednn") {
    const char* so = "libdnnl.so.3";
    void* h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      so = "libdnnl.so.2";
      h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    }
    if (h == nullptr) return fail("dlopen libdnnl.so.3 and libdnnl.so.2");
    lib->dnnl = Symbol<DnnlSgemm>(h, "dnnl_sgemm");
    if (lib->dnnl == nullptr) return fail("dlsym dnnl_sgemm");
    struct DnnlVersion {
      int major, minor, patch;
      const char* hash;
      unsigned cpu_runtime, gpu_runtime;
    };
    auto version = Symbol<const DnnlVersion* (*)()>(h, "dnnl_version");
    auto isa = Symbol<int (*)()>(h, "dnnl_get_effective_cpu_isa");
    const DnnlVersion* v = version ? version() : nullptr;
    // cpu_runtime: 1 sequential, 2 OpenMP, 4 TBB, 8 threadpool (dnnl_types.h DNNL_RUNTIME_*).
    const unsigned runtime = v ? v->cpu_runtime : 0;
    if (runtime == 2) {
      // The libgomp oneDNN itself loaded (RTLD_NOLOAD: no second copy).
      void* omp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD);
      if (omp == nullptr) omp = dlopen("libomp.so.5", RTLD_NOW | RTLD_NOLOAD);
      if (omp != nullptr) {
        g_omp_set = Symbol<void (*)(int)>(omp, "omp_set_num_threads");
      }
      if (g_omp_set == nullptr) return fail("omp_set_num_threads of oneDNN's OpenMP runtime");
      lib->set_threads = OmpThreads;
    } else if (runtime != 1) {
      *why = "oneDNN CPU runtime " + std::to_string(runtime) +
             " (this bench sets threads only for OpenMP or sequential builds)";
      return false;
    }
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "\"so\":\"%s\",\"version\":\"%d.%d.%d\",\"cpu_runtime\":%u,\"isa\":\"0x%x\"", so,
                  v ? v->major : -1, v ? v->minor : -1, v ? v->patch : -1, runtime,
                  isa ? static_cast<unsigned>(isa()) : 0u);
    lib->info = buf;
    return true;
  }
  *why = "unknown library";
  return false;
}

// ---- child: one library, measurements on command ---------------------------------------------

struct Command {
  int shape = -1;  // -1: exit
  int threads = 1;
  int settle_ms = 0;  // sleep this long after measuring (lets a thread pool go idle)
};

struct Record {
  enum Kind : int { kInfo, kResult, kMissing, kError } kind = kInfo;
  int shape = -1, threads = 0;
  double seconds = 0, err = 0;
  int copies = 0, reps = 0;
  char text[480] = {};
};

bool WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t w = write(fd, p, size);
    if (w <= 0) return false;
    p += w;
    size -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* data, size_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = read(fd, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

void SendText(int fd, Record::Kind kind, int shape, const std::string& text) {
  Record r;
  r.kind = kind;
  r.shape = shape;
  std::snprintf(r.text, sizeof r.text, "%s", text.c_str());
  if (!WriteAll(fd, &r, sizeof r)) _exit(3);
}

struct Options {
  int reps = 10;
  int rounds = 3;
  double min_ms = 50;
  double tolerance = 1e-3;
  std::vector<std::string> shape_filter, lib_filter;
  std::vector<int> threads = {1, 2};
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Loads the library, reports info (or missing, then exits), then serves commands until told to
// exit. `refs[i]` is shape i's reference result (empty for shapes not selected).
void RunChild(int cmd_fd, int out_fd, const std::string& name, const Options& opt,
              const std::vector<ShapeSpec>& shapes, const std::vector<std::vector<float>>& refs) {
  Library lib;
  std::string why;
  if (!Load(name, &lib, &why)) {
    SendText(out_fd, Record::kMissing, -1, why);
    return;
  }
  SendText(out_fd, Record::kInfo, -1, lib.info);
  int current = -1;
  std::unique_ptr<Working> w;
  Command cmd;
  while (ReadAll(cmd_fd, &cmd, sizeof cmd) && cmd.shape >= 0) {
    const ShapeSpec& s = shapes[cmd.shape];
    if (cmd.shape != current) {
      w.reset();
      w = std::make_unique<Working>(s, cmd.shape);
      current = cmd.shape;
    }
    const int copies = w->copies;
    if (lib.set_threads != nullptr) lib.set_threads(cmd.threads);
    w->ResetC();  // the check: copy 0 from C0
    if (!lib.Gemm(s, w->A(0), w->B(0), w->C(0))) {
      SendText(out_fd, Record::kError, cmd.shape, "library returned an error status");
      continue;
    }
    Record r;
    r.kind = Record::kResult;
    r.shape = cmd.shape;
    r.threads = cmd.threads;
    r.err = MaxRelError(s, w->cs[0], refs[cmd.shape]);
    // Warm-up: one pass over the copies and >= 10 ms.
    const double warm_start = Now();
    for (int i = 0; i < copies || Now() - warm_start < 0.01; ++i) {
      const int c = i % copies;
      lib.Gemm(s, w->A(c), w->B(c), w->C(c));
    }
    std::vector<double> per_call;
    double total = 0;
    while (static_cast<int>(per_call.size()) < opt.reps || total * 1e3 < opt.min_ms) {
      const double t0 = Now();
      for (int c = 0; c < copies; ++c) lib.Gemm(s, w->A(c), w->B(c), w->C(c));
      const double dt = Now() - t0;
      total += dt;
      per_call.push_back(dt / copies);
      if (per_call.size() >= 100000) break;
    }
    std::sort(per_call.begin(), per_call.end());
    r.seconds = per_call[per_call.size() / 2];
    r.copies = copies;
    r.reps = static_cast<int>(per_call.size());
    if (lib.set_threads != nullptr && cmd.threads != 1) lib.set_threads(1);
    if (cmd.settle_ms > 0) usleep(static_cast<useconds_t>(cmd.settle_ms) * 1000);
    if (!WriteAll(out_fd, &r, sizeof r)) _exit(3);
  }
}

// ---- parent ------------------------------------------------------------------------------------

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = s.find(',', start);
    const std::string part = s.substr(start, comma == std::string::npos ? comma : comma - start);
    if (!part.empty()) out.push_back(part);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

void Usage(const char* argv0) {
  std::printf(
      "Usage: %s [--rounds N] [--reps N] [--min-ms MS] [--shapes A,B,...] [--libs A,B,...]\n"
      "          [--threads 1,2] [--tolerance X] [--list]\n"
      "\n"
      "Times f32 row-major sgemm of OpenBLAS, BLIS and oneDNN (dlopen()ed at run time, each in a\n"
      "child process; a library that is not installed is reported \"missing\" and skipped) on the\n"
      "GEMM shapes of one `tiny` training step, checks each result against a double-precision\n"
      "reference, and prints one JSON line per (shape, threads, library) plus a per-library\n"
      "summary: the time-weighted total over one tiny step at 1 thread, by part, and the T=4096\n"
      "projections unsplit (\".whole\" shapes: reference, not in the step) at each thread count.\n"
      "\n"
      "  --rounds N     measure every (shape, threads) N times, libraries interleaved, and keep\n"
      "                 each library's best round (default 3)\n"
      "  --reps N       a round is the median of at least N timed repetitions (default 10)\n"
      "  --min-ms MS    ... and at least MS milliseconds of them (default 50)\n"
      "  --shapes LIST  only shapes whose name contains one of the comma-separated substrings\n"
      "                 (the step summaries then cover only those)\n"
      "  --libs LIST    libraries, comma-separated, from: openblas (OPENBLAS_CORETYPE unset),\n"
      "                 openblas-skylakex, openblas-haswell, blis, onednn (default: all);\n"
      "                 ratio_vs_openblas needs openblas among them\n"
      "  --threads LIST thread counts (default 1,2); counts > 1 run only the .whole shapes\n"
      "  --tolerance X  max relative error before a result counts as wrong (default 1e-3)\n"
      "  --list         print the shapes (with calls per step) and exit\n"
      "Exit status: 0, or 1 if any result was wrong or a library failed.\n",
      argv0);
}

std::string ShapeJson(const ShapeSpec& s) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "\"shape\":\"%s\",\"op\":\"%s\",\"m\":%d,\"n\":%d,\"k\":%d,\"lda\":%d,\"ldb\":%d,"
                "\"ldc\":%d,\"alpha\":%.6g,\"beta\":%g,\"per_step\":%g,\"whole\":%s",
                s.name.c_str(), s.Op().c_str(), s.m, s.n, s.k, s.Lda(), s.Ldb(), s.Ldc(), s.alpha,
                s.beta, s.per_step, s.whole ? "true" : "false");
  return buf;
}

struct Child {
  std::string name;
  pid_t pid = -1;
  int cmd_fd = -1, out_fd = -1;
  bool alive = false;
};

struct Best {
  double seconds = 0, worst = 0, err = 0;
  int copies = 0, reps = 0, rounds = 0;
};

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      Usage(argv[0]);
      return 0;
    } else if (arg == "--rounds") {
      opt.rounds = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--reps") {
      opt.reps = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--min-ms") {
      opt.min_ms = std::atof(value().c_str());
    } else if (arg == "--shapes") {
      opt.shape_filter = Split(value());
    } else if (arg == "--libs") {
      opt.lib_filter = Split(value());
    } else if (arg == "--threads") {
      opt.threads.clear();
      for (const std::string& t : Split(value())) {
        const int n = std::max(1, std::atoi(t.c_str()));
        if (std::find(opt.threads.begin(), opt.threads.end(), n) == opt.threads.end()) {
          opt.threads.push_back(n);
        }
      }
    } else if (arg == "--tolerance") {
      opt.tolerance = std::atof(value().c_str());
    } else if (arg == "--list") {
      list = true;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      Usage(argv[0]);
      return 2;
    }
  }
  std::sort(opt.threads.begin(), opt.threads.end());
  std::vector<std::string> libs = opt.lib_filter.empty() ? kAllLibs : opt.lib_filter;
  for (const std::string& l : libs) {
    if (std::find(kAllLibs.begin(), kAllLibs.end(), l) == kAllLibs.end()) {
      std::fprintf(stderr, "unknown library %s\n", l.c_str());
      return 2;
    }
  }

  const std::vector<ShapeSpec> shapes = TinyStepShapes();
  std::vector<int> selected;
  for (size_t i = 0; i < shapes.size(); ++i) {
    bool keep = opt.shape_filter.empty();
    for (const std::string& f : opt.shape_filter) {
      keep = keep || shapes[i].name.find(f) != std::string::npos;
    }
    if (keep) selected.push_back(static_cast<int>(i));
  }
  if (list) {
    for (int i : selected) {
      std::printf("{%s,\"site\":\"%s\",\"mflop\":%.3f,\"copies\":%d}\n",
                  ShapeJson(shapes[i]).c_str(), JsonEscape(shapes[i].site).c_str(),
                  shapes[i].Flops() / 1e6, CopiesFor(shapes[i]));
    }
    return 0;
  }
  if (selected.empty()) {
    std::fprintf(stderr, "no shape matches --shapes\n");
    return 2;
  }
  // References once, in the parent; the children inherit them.
  std::vector<std::vector<float>> refs(shapes.size());
  for (int i : selected) refs[i] = Reference(shapes[i], MakeOperands(shapes[i], i, 0));

  // Start the children; each reports "loaded" or "missing" first.
  bool failed = false;
  std::vector<Child> children;
  for (const std::string& name : libs) {
    int cmd[2], out[2];
    if (pipe(cmd) != 0 || pipe(out) != 0) {
      std::perror("pipe");
      return 1;
    }
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid == 0) {
      for (const Child& c : children) {  // the earlier children's pipe ends
        close(c.cmd_fd);
        close(c.out_fd);
      }
      close(cmd[1]);
      close(out[0]);
      RunChild(cmd[0], out[1], name, opt, shapes, refs);
      _exit(0);
    }
    close(cmd[0]);
    close(out[1]);
    Child c{name, pid, cmd[1], out[0], false};
    Record r;
    if (!ReadAll(c.out_fd, &r, sizeof r)) {
      failed = true;
      std::printf("{\"lib\":\"%s\",\"status\":\"failed\",\"detail\":\"child died loading\"}\n",
                  name.c_str());
    } else if (r.kind == Record::kMissing) {
      std::printf("{\"lib\":\"%s\",\"status\":\"missing\",\"detail\":\"%s\"}\n", name.c_str(),
                  JsonEscape(r.text).c_str());
    } else {
      std::printf("{\"lib\":\"%s\",\"status\":\"loaded\",%s}\n", name.c_str(), r.text);
      c.alive = true;
    }
    children.push_back(c);
  }
  std::fflush(stdout);

  // Measure: thread counts in order, shape by shape, rounds with the library order rotated.
  std::map<std::tuple<std::string, int, int>, Best> best;  // (lib, shape, threads)
  std::map<std::string, int> wrong;
  for (int threads : opt.threads) {
    for (int idx : selected) {
      const ShapeSpec& s = shapes[idx];
      if (threads > 1 && !s.whole) continue;
      for (int round = 0; round < opt.rounds; ++round) {
        for (size_t j = 0; j < children.size(); ++j) {
          Child& c = children[(j + static_cast<size_t>(round)) % children.size()];
          if (!c.alive) continue;
          Command cmd{idx, threads, threads > 1 ? 300 : 0};
          Record r;
          if (!WriteAll(c.cmd_fd, &cmd, sizeof cmd) || !ReadAll(c.out_fd, &r, sizeof r)) {
            int status = 0;
            waitpid(c.pid, &status, 0);
            c.alive = false;
            failed = true;
            std::printf(
                "{\"lib\":\"%s\",\"status\":\"crashed\",%s,\"threads\":%d,\"wait_status\":%d}\n",
                c.name.c_str(), ShapeJson(s).c_str(), threads, status);
            continue;
          }
          if (r.kind == Record::kError) {
            failed = true;
            std::printf(
                "{\"lib\":\"%s\",%s,\"threads\":%d,\"status\":\"error\",\"detail\":\"%s\"}\n",
                c.name.c_str(), ShapeJson(s).c_str(), threads, JsonEscape(r.text).c_str());
            continue;
          }
          Best& b = best[{c.name, idx, threads}];
          if (b.rounds == 0 || r.seconds < b.seconds) {
            b.seconds = r.seconds;
            b.copies = r.copies;
            b.reps = r.reps;
          }
          b.worst = std::max(b.worst, r.seconds);
          b.err = std::max(b.err, r.err);
          ++b.rounds;
        }
      }
      // One line per library for this (shape, threads).
      const auto base = best.find({"openblas", idx, threads});
      for (const Child& c : children) {
        const auto it = best.find({c.name, idx, threads});
        if (it == best.end()) continue;
        const Best& b = it->second;
        const bool ok = b.err <= opt.tolerance;
        if (!ok) {
          failed = true;
          ++wrong[c.name];
          std::fprintf(stderr, "WRONG RESULT: %s %s threads=%d max_rel_err=%.3g > %.3g\n",
                       c.name.c_str(), s.name.c_str(), threads, b.err, opt.tolerance);
        }
        char ratio[32] = "null";
        if (base != best.end()) {
          std::snprintf(ratio, sizeof ratio, "%.3f", base->second.seconds / b.seconds);
        }
        std::printf(
            "{\"lib\":\"%s\",%s,\"threads\":%d,\"us\":%.2f,\"gflops\":%.2f,"
            "\"ratio_vs_openblas\":%s,\"worst_round_us\":%.2f,\"max_rel_err\":%.2e,\"ok\":%s,"
            "\"copies\":%d,\"reps\":%d,\"rounds\":%d}\n",
            c.name.c_str(), ShapeJson(s).c_str(), threads, b.seconds * 1e6,
            s.Flops() / b.seconds / 1e9, ratio, b.worst * 1e6, b.err, ok ? "true" : "false",
            b.copies, b.reps, b.rounds);
      }
      std::fflush(stdout);
    }
  }
  for (Child& c : children) {
    if (c.alive) {
      const Command stop{};
      WriteAll(c.cmd_fd, &stop, sizeof stop);
    }
    close(c.cmd_fd);
    close(c.out_fd);
    int status = 0;
    waitpid(c.pid, &status, 0);
    if (c.alive && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
      failed = true;
      std::printf("{\"lib\":\"%s\",\"status\":\"failed\",\"detail\":\"exit status %d\"}\n",
                  c.name.c_str(), status);
    }
  }

  // Per-library summaries: the step (every selected non-whole shape at 1 thread, times its calls
  // per step), split into experts, attention and dense blocks; and the whole dense products at
  // each thread count. A total is "complete" when every selected shape has a time, and a ratio is
  // given only when plain OpenBLAS has a time for every shape in it.
  for (const Child& c : children) {
    struct Sum {
      double s = 0, base_s = 0, flops = 0;
      int have = 0, have_base = 0, expected = 0;
    };
    std::map<std::string, Sum> sums;  // "step", "experts", "attention", "dense", "whole_<t>t"
    for (int idx : selected) {
      const ShapeSpec& sh = shapes[idx];
      for (int threads : opt.threads) {
        if (threads > 1 && !sh.whole) continue;
        std::vector<std::string> keys;
        if (sh.whole) {
          keys.push_back("whole_" + std::to_string(threads) + "t");
        } else {
          keys.push_back("step");
          keys.push_back(sh.name.rfind("exp_", 0) == 0    ? "experts"
                         : sh.name.rfind("attn_", 0) == 0 ? "attention"
                                                          : "dense");
        }
        const auto it = best.find({c.name, idx, threads});
        const auto base = best.find({"openblas", idx, threads});
        for (const std::string& key : keys) {
          Sum& sum = sums[key];
          ++sum.expected;
          if (it == best.end()) continue;
          sum.s += sh.per_step * it->second.seconds;
          sum.flops += sh.per_step * sh.Flops();
          ++sum.have;
          if (base != best.end()) {
            sum.base_s += sh.per_step * base->second.seconds;
            ++sum.have_base;
          }
        }
      }
    }
    const Sum& step = sums["step"];
    if (step.have == 0 && sums.size() <= 1) continue;
    auto ratio = [](const Sum& sum) {
      char buf[32] = "null";
      if (sum.have > 0 && sum.have_base == sum.have) {
        std::snprintf(buf, sizeof buf, "%.3f", sum.base_s / sum.s);
      }
      return std::string(buf);
    };
    std::string parts;
    for (const auto& [key, sum] : sums) {
      if (key == "step" || sum.have == 0) continue;
      char buf[200];
      std::snprintf(buf, sizeof buf, ",\"%s_ms\":%.2f,\"%s_ratio\":%s", key.c_str(), sum.s * 1e3,
                    key.c_str(), ratio(sum).c_str());
      parts += buf;
    }
    std::printf(
        "{\"lib\":\"%s\",\"summary\":\"tiny_step\",\"threads\":1,\"shapes\":%d,\"complete\":%s,"
        "\"step_ms\":%.2f,\"step_gflop\":%.3f,\"gflops\":%.2f,\"ratio_vs_openblas\":%s%s,"
        "\"wrong\":%d}\n",
        c.name.c_str(), step.have, step.have == step.expected ? "true" : "false", step.s * 1e3,
        step.flops / 1e9, step.s > 0 ? step.flops / step.s / 1e9 : 0.0, ratio(step).c_str(),
        parts.c_str(), wrong[c.name]);
  }
  return failed ? 1 : 0;
}
