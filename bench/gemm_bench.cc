// GEMM throughput of the runtime's entry points (Google Benchmark).
//
// On a GPU: bf16 (fp32 accumulation) at 8192^3 -- the card's measured ceiling -- and the MoE
// expert shapes of Sigma-MoE-Tiny (96 experts, 170 rows each, M=1536, H=768) through GroupedGemm
// and GroupedGemmRaggedK. On the CPU: f32 at the tiny preset's expert shapes.
// Reports TFLOP/s as a counter; timing uses CUDA events (manual time) on a warmed-up stream, inputs
// are random normals, never zeros. --benchmark_format=json gives machine-readable lines.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <vector>

#include "runtime/blas/gemm.h"
#include "runtime/tensor/tensor_ops.h"

#if MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace smoe {
namespace {

Tensor RandomTensor(ExecContext& ctx, Shape shape, DType dtype, uint64_t seed) {
  Tensor t = *Tensor::Empty(shape, dtype, ctx.device());
  MOE_CHECK_OK(FillNormal(ctx, t, seed, 0, 0.0f, 1.0f));
  return t;
}

ExecContext& ContextFor(Device device) {
  static std::unique_ptr<ExecContext> gpu;
  if (device.is_cpu()) return ExecContext::Cpu();
  if (!gpu) gpu = *ExecContext::Create(device);
  return *gpu;
}

// Times `run` with CUDA events (GPU) or the host clock (CPU); sets the TFLOP/s counter.
template <typename Run>
void TimeLoop(benchmark::State& state, ExecContext& ctx, double flops, Run run) {
  MOE_CHECK_OK(run());  // warm-up: handles, kernels, workspace
  MOE_CHECK_OK(ctx.Synchronize());
#if MOE_WITH_CUDA
  cudaEvent_t start, stop;
  if (ctx.device().is_cuda()) {
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
  }
#endif
  for (auto _ : state) {
#if MOE_WITH_CUDA
    if (ctx.device().is_cuda()) {
      cudaEventRecord(start, ctx.stream());
      MOE_CHECK_OK(run());
      cudaEventRecord(stop, ctx.stream());
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(ms / 1e3);
      continue;
    }
#endif
    const auto t0 = std::chrono::steady_clock::now();
    MOE_CHECK_OK(run());
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
#if MOE_WITH_CUDA
  if (ctx.device().is_cuda()) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
#endif
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Gemm(benchmark::State& state, Device device, DType dtype) {
  ExecContext& ctx = ContextFor(device);
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  Tensor a = RandomTensor(ctx, {m, k}, dtype, 1), b = RandomTensor(ctx, {k, n}, dtype, 2);
  Tensor c = *Tensor::Empty({m, n}, dtype, device);
  TimeLoop(state, ctx, 2.0 * m * n * k, [&] { return Gemm(ctx, a, b, c); });
}

// The expert forward (x W), input gradient (dy W^T) and weight gradient (x^T dy) of one MoE matrix:
// `groups` experts with `rows` tokens each, model dim m_dim, expert dim h_dim.
void BM_GroupedGemm(benchmark::State& state, Device device, DType dtype, int which) {
  ExecContext& ctx = ContextFor(device);
  const int64_t groups = state.range(0), rows = state.range(1), m_dim = state.range(2),
                h_dim = state.range(3);
  std::vector<int64_t> offsets(groups + 1);
  for (int64_t g = 0; g <= groups; ++g) offsets[g] = g * rows;
  const int64_t total = groups * rows;
  Tensor x = RandomTensor(ctx, {total, m_dim}, dtype, 1);
  Tensor w = RandomTensor(ctx, {groups, m_dim, h_dim}, dtype, 2);
  Tensor dy = RandomTensor(ctx, {total, h_dim}, dtype, 3);
  Tensor y = *Tensor::Empty({total, h_dim}, dtype, device);
  Tensor dx = *Tensor::Empty({total, m_dim}, dtype, device);
  Tensor dw = *Tensor::Empty({groups, m_dim, h_dim}, DType::kF32, device);
  const double flops = 2.0 * total * m_dim * h_dim;
  TimeLoop(state, ctx, flops, [&]() -> Status {
    if (which == 0) return GroupedGemm(ctx, x, w, y, offsets);
    if (which == 1) return GroupedGemm(ctx, dy, w, dx, offsets, {false, true});
    return GroupedGemmRaggedK(ctx, x, dy, dw, offsets);
  });
}

void Register() {
  if (CudaAvailable()) {
    const Device gpu = Device::Cuda(0);
    benchmark::RegisterBenchmark("gemm/cuda/bf16", BM_Gemm, gpu, DType::kBF16)
        ->Args({8192, 8192, 8192})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("gemm/cuda/f32", BM_Gemm, gpu, DType::kF32)
        ->Args({4096, 4096, 4096})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    const char* names[] = {"grouped/cuda/bf16/fwd", "grouped/cuda/bf16/dgrad",
                           "grouped/cuda/bf16/wgrad"};
    for (int which = 0; which < 3; ++which) {
      benchmark::RegisterBenchmark(names[which], BM_GroupedGemm, gpu, DType::kBF16, which)
          ->Args({96, 170, 1536, 768})
          ->Args({96, 683, 1536, 768})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }
    // Throughput by rows per group, for the cost model's GEMM table (bench/gemm_table.py turns
    // these lines into adapt_sim's --gemm_table).
    auto* rows = benchmark::RegisterBenchmark("grouped_rows/cuda/bf16/fwd", BM_GroupedGemm, gpu,
                                              DType::kBF16, 0);
    for (int64_t r : {16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}) {
      rows->Args({8, r, 1536, 768});
    }
    rows->UseManualTime()->Unit(benchmark::kMillisecond);
  }
  const Device cpu = Device::Cpu();
  benchmark::RegisterBenchmark("gemm/cpu/f32", BM_Gemm, cpu, DType::kF32)
      ->Args({512, 512, 512})
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("grouped/cpu/f32/fwd", BM_GroupedGemm, cpu, DType::kF32, 0)
      ->Args({96, 43, 128, 64})
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("grouped_rows/cpu/f32/fwd", BM_GroupedGemm, cpu, DType::kF32, 0)
      ->Args({8, 16, 128, 64})
      ->Args({8, 256, 128, 64})
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) {
  smoe::Register();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
