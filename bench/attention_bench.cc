// DiffQKV attention benchmarks (a program, not a test): prints one JSON line per measurement.
//
//   attention_train_fwd_bwd: causal flash attention forward + backward (n_q=16, n_k=2, n_v=8,
//                            D=96); on a GPU B=4, S=4096, bf16 (target <= 2.0 ms on an H100),
//                            once on the default path (cuDNN's fused attention in a cuDNN build)
//                            and once on our kernels, each line naming the path that ran
//                            ("cudnn" or "kernels"); on the CPU a small f32 shape through the
//                            reference.
//   attention_decode:        one new token per sequence over a KV cache of the same heads; on a GPU
//                            B=4, caches of 8192 and 32768, bf16 (target <= 0.11 ms at 32K), with
//                            the GB/s of K and V cache read; on the CPU a small cache.
// On a GPU the peak fractions are against the card's bf16 GEMM and copy ceilings measured at the
// start of the same run (bench/ceilings.h).
// Usage: attention_bench [--device=cpu|cuda] [--iters=N]. Inputs are random normals. GPU timing
// uses CUDA events after a warm-up; CPU timing the steady clock.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "attention/attention_core.h"
#include "attention/kv_cache.h"
#include "bench/bench_timing.h"
#include "bench/ceilings.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

constexpr int64_t kNq = 16, kNk = 2, kNv = 8, kD = 96;
// The card's ceilings, measured at the start of the run (bench/ceilings.h): the peak fractions are
// against what this card reaches on a large bf16 GEMM and a large device copy.
double g_ceiling_tflops = 0;
double g_ceiling_gbps = 0;

// The fraction of the H100 peak as JSON: null on the CPU, where that peak means nothing.
std::string PeakFraction(const ExecContext& ctx, double fraction) {
  if (ctx.device().is_cpu()) return "null";
  char text[32];
  std::snprintf(text, sizeof(text), "%.4f", fraction);
  return text;
}

Tensor Random(ExecContext& ctx, Shape shape, DType dtype, uint64_t seed) {
  Tensor t = *Tensor::Empty(shape, dtype, ctx.device());
  MOE_CHECK_OK(FillNormal(ctx, t, seed, 0, 0.0f, 1.0f));
  return t;
}

Tensor Empty(ExecContext& ctx, Shape shape, DType dtype) {
  return *Tensor::Empty(shape, dtype, ctx.device());
}

// Median milliseconds of one call (bench/bench_timing.h), after one warm-up call.
template <typename Run>
double TimeMs(ExecContext& ctx, int iters, Run run) {
  StatusOr<double> ms = MedianMs(ctx, 1, iters, run);
  MOE_CHECK_OK(ms.status());
  return *ms;
}

// kernels_only: SetCudaAttentionKernelsOnly for this measurement.
void BenchTrain(ExecContext& ctx, int64_t B, int64_t S, DType dtype, int iters,
                bool kernels_only = false) {
  SetCudaAttentionKernelsOnly(kernels_only);
  const int64_t cudnn_runs = internal::CudnnAttentionRuns();
  Tensor q = Random(ctx, {B, S, kNq, kD}, dtype, 1), k = Random(ctx, {B, S, kNk, kD}, dtype, 2);
  Tensor v = Random(ctx, {B, S, kNv, kD}, dtype, 3), dout = Random(ctx, {B, S, kNq, kD}, dtype, 4);
  Tensor out = Empty(ctx, {B, S, kNq, kD}, dtype), lse = Empty(ctx, {B, kNq, S}, DType::kF32);
  Tensor dq = Empty(ctx, q.shape(), dtype), dk = Empty(ctx, k.shape(), dtype);
  Tensor dv = Empty(ctx, v.shape(), dtype);
  const double ms = TimeMs(ctx, iters, [&]() -> Status {
    MOE_RETURN_IF_ERROR(AttentionForward(ctx, q, k, v, out, lse));
    return AttentionBackward(ctx, q, k, v, out, lse, dout, dq, dk, dv);
  });
  SetCudaAttentionKernelsOnly(false);
  const char* path = ctx.device().is_cpu()                         ? "cpu"
                     : internal::CudnnAttentionRuns() > cudnn_runs ? "cudnn"
                                                                   : "kernels";
  // Causal: half of the S x S scores. Forward 2 GEMMs, backward 5 (one recomputes the scores).
  const double fwd_flops = 4.0 * B * kNq * double(S) * S * kD / 2.0;
  const double tflops = 3.5 * fwd_flops / (ms * 1e-3) / 1e12;
  std::printf(
      "{\"name\":\"attention_train_fwd_bwd\",\"device\":\"%s\",\"path\":\"%s\","
      "\"dtype\":\"%s\",\"B\":%lld,"
      "\"S\":%lld,\"n_q\":%lld,\"n_k\":%lld,\"n_v\":%lld,\"D\":%lld,\"ms\":%.4f,"
      "\"tflops\":%.3f,\"peak_fraction\":%s,\"ceiling_tflops\":%.1f,\"target_ms\":2.0}\n",
      ctx.device().ToString().c_str(), path, std::string(DTypeName(dtype)).c_str(), (long long)B,
      (long long)S, (long long)kNq, (long long)kNk, (long long)kNv, (long long)kD, ms, tflops,
      PeakFraction(ctx, tflops / g_ceiling_tflops).c_str(), g_ceiling_tflops);
}

void BenchDecode(ExecContext& ctx, int64_t B, int64_t L, DType dtype, int iters) {
  KvCache cache = *KvCache::Create(ctx, B, L, kNk, kNv, kD, dtype);
  MOE_CHECK_OK(cache.Append(ctx, Random(ctx, {B, L, kNk, kD}, dtype, 5),
                            Random(ctx, {B, L, kNv, kD}, dtype, 6)));
  Tensor q = Random(ctx, {B, kNq, kD}, dtype, 7), out = Empty(ctx, {B, kNq, kD}, dtype);
  const double ms = TimeMs(ctx, iters, [&] { return DecodeAttention(ctx, q, cache, out); });
  const double bytes = double(B) * L * (kNk + kNv) * kD * DTypeSize(dtype);
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  std::printf(
      "{\"name\":\"attention_decode\",\"device\":\"%s\",\"dtype\":\"%s\",\"B\":%lld,"
      "\"cache\":%lld,\"n_q\":%lld,\"n_k\":%lld,\"n_v\":%lld,\"D\":%lld,\"ms\":%.4f,"
      "\"gbps\":%.1f,\"peak_fraction\":%s,\"ceiling_gbps\":%.1f,\"target_ms\":%s}\n",
      ctx.device().ToString().c_str(), std::string(DTypeName(dtype)).c_str(), (long long)B,
      (long long)L, (long long)kNq, (long long)kNk, (long long)kNv, (long long)kD, ms, gbps,
      PeakFraction(ctx, gbps / g_ceiling_gbps).c_str(), g_ceiling_gbps,
      L == 32768 ? "0.11" : "null");
}

int Main(int argc, char** argv) {
  std::string device = CudaAvailable() ? "cuda" : "cpu";
  int iters = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--device=", 9) == 0)
      device = argv[i] + 9;
    else if (std::strncmp(argv[i], "--iters=", 8) == 0)
      iters = std::atoi(argv[i] + 8);
    else {
      std::fprintf(stderr, "usage: %s [--device=cpu|cuda] [--iters=N]\n", argv[0]);
      return 2;
    }
  }
  if (device == "cpu") {
    ExecContext& ctx = ExecContext::Cpu();
    BenchTrain(ctx, 1, 128, DType::kF32, iters > 0 ? iters : 2);
    BenchDecode(ctx, 2, 2048, DType::kF32, iters > 0 ? iters : 5);
    return 0;
  }
  StatusOr<Device> parsed = ParseDevice(device);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", parsed.status().ToString().c_str());
    return 1;
  }
  StatusOr<std::unique_ptr<ExecContext>> ctx = ExecContext::Create(*parsed);
  if (!ctx.ok()) {
    std::fprintf(stderr, "%s\n", ctx.status().ToString().c_str());
    return 1;
  }
  StatusOr<double> tflops = GemmCeilingTflops(**ctx, DType::kBF16, 8192, 10);
  StatusOr<double> gbps = CopyCeilingGbps(**ctx, int64_t{1} << 30, 10);
  MOE_CHECK_OK(tflops.status());
  MOE_CHECK_OK(gbps.status());
  g_ceiling_tflops = *tflops;
  g_ceiling_gbps = *gbps;
  BenchTrain(**ctx, 4, 4096, DType::kBF16, iters > 0 ? iters : 10);
  if (internal::CudnnAttentionBuilt()) {  // our kernels on the same problem, for comparison
    BenchTrain(**ctx, 4, 4096, DType::kBF16, iters > 0 ? iters : 3, /*kernels_only=*/true);
  }
  for (int64_t cache : {8192, 32768})
    BenchDecode(**ctx, 4, cache, DType::kBF16, iters > 0 ? iters : 100);
  return 0;
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) { return smoe::Main(argc, argv); }
