// MoE layer forward + backward, router included (a program; prints one JSON line per shape).
//
//   {"impl": "sigma-moe/cuda/bf16", "tokens": 16384, "ms_fwd_bwd": ..., "tflops": ...,
//    "peak_fraction": ..., ...}
// On a GPU: M=1536, H=768, E=96, K=1, bf16, T in {16384, 65536} (Sigma-MoE-Tiny's layer), a freshly
// initialized random router; peak_fraction is against a bf16 8192^3 GEMM measured in the same run.
// On the CPU: the tiny preset's shape (M=128, H=64, E=96, T=4096, f32), against an f32 GEMM.
// FLOPs counted: experts 18 * R * M * H (3 matrices; forward 1x, backward 2x), router 6 * T * M *
// E. The pass is the trainer's: MoEForwardDeferAux (the aux values stay on the device; one host
// sync, the expert offsets) and MoEBackward accumulating into f32 gradients (in bf16 the grouped
// products with bf16 outputs and the fused f32 accumulation, moe/experts/experts.h);
// "host_syncs" is the count one forward + backward made (budget: 1).
// Timing: warm-up, then the median of repeated runs (CUDA events on the GPU, steady_clock on CPU).
// Flags: --device=cpu|cuda, --tokens=N (one shape), --iters=N.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_timing.h"
#include "bench/ceilings.h"
#include "moe/moe_layer.h"
#include "runtime/blas/gemm.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status RunShape(ExecContext& ctx, const MoELayerConfig& config, int64_t tokens, int iters,
                double ceiling_tflops, const char* impl) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<MoELayer> layer, MoELayer::Create(config, ctx.device()));
  MOE_RETURN_IF_ERROR(layer->InitParameters(ctx, 2026));
  const Shape shape{tokens, config.model_dim};
  MOE_ASSIGN_OR_RETURN(Tensor x, Tensor::Empty(shape, config.dtype, ctx.device()));
  MOE_ASSIGN_OR_RETURN(Tensor y, Tensor::Empty(shape, config.dtype, ctx.device()));
  MOE_ASSIGN_OR_RETURN(Tensor dy, Tensor::Empty(shape, config.dtype, ctx.device()));
  MOE_ASSIGN_OR_RETURN(Tensor dx, Tensor::Empty(shape, config.dtype, ctx.device()));
  MOE_RETURN_IF_ERROR(FillNormal(ctx, x, 7, 0, 0.0f, 1.0f));
  MOE_RETURN_IF_ERROR(FillNormal(ctx, dy, 8, 0, 0.0f, 1.0f));
  MoEState state;
  const MoEParamViews params = layer->param_views();
  const MoEGradViews grads = layer->grad_views();
  for (const TensorView& g : {grads.w_gate, grads.w1, grads.w3, grads.w2}) {
    MOE_RETURN_IF_ERROR(Fill(ctx, g, 0.0));
  }
  auto pass = [&]() -> Status {
    MOE_RETURN_IF_ERROR(MoEForwardDeferAux(ctx, config, params, x, y, &state));
    return MoEBackward(ctx, config, params, state, dy, dx, grads, /*accumulate_grads=*/true);
  };
  const int64_t syncs_before = ctx.host_syncs();
  MOE_RETURN_IF_ERROR(pass());
  const int64_t host_syncs = ctx.host_syncs() - syncs_before;
  MOE_ASSIGN_OR_RETURN(double ms, MedianMs(ctx, 2, iters, pass));
  const double rows = static_cast<double>(tokens) * config.top_k - state.plan.dropped_host;
  const double flops = 18.0 * rows * config.model_dim * config.ffn_dim +
                       6.0 * tokens * config.model_dim * config.num_experts;
  const double tflops = flops / (ms * 1e-3) / 1e12;
  MOE_ASSIGN_OR_RETURN(RoutingStats stats, MoEStats(ctx, state));
  const int64_t dropped = state.plan.dropped_host;
  std::printf(
      "{\"impl\": \"%s\", \"tokens\": %lld, \"M\": %lld, \"H\": %lld, \"E\": %d, \"K\": %d, "
      "\"dtype\": \"%s\", \"ms_fwd_bwd\": %.4f, \"tflops\": %.2f, \"peak_fraction\": %.4f, "
      "\"gemm_ceiling_tflops\": %.2f, \"max_rel_dev\": %.3f, \"dropped\": %lld, "
      "\"host_syncs\": %lld, \"target_ms\": %s}\n",
      impl, static_cast<long long>(tokens), static_cast<long long>(config.model_dim),
      static_cast<long long>(config.ffn_dim), config.num_experts, config.top_k,
      std::string(DTypeName(config.dtype)).c_str(), ms, tflops, tflops / ceiling_tflops,
      ceiling_tflops, stats.max_rel_dev, static_cast<long long>(dropped),
      static_cast<long long>(host_syncs),
      !ctx.device().is_cuda() ? "null"
      : tokens == 16384       ? "0.9"
      : tokens == 65536       ? "2.8"
                              : "null");
  std::fflush(stdout);
  return absl::OkStatus();
}

Status Main(int argc, char** argv) {
  std::string device_text = CudaAvailable() ? "cuda" : "cpu";
  int64_t only_tokens = 0;
  int iters = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--device=", 0) == 0) {
      device_text = arg.substr(9);
    } else if (arg.rfind("--tokens=", 0) == 0) {
      only_tokens = std::stoll(arg.substr(9));
    } else if (arg.rfind("--iters=", 0) == 0) {
      iters = std::stoi(arg.substr(8));
    } else {
      return BadArgument("argument", arg, "--device=cpu|cuda, --tokens=N or --iters=N");
    }
  }
  MOE_ASSIGN_OR_RETURN(Device device, ParseDevice(device_text));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(device));
  MoELayerConfig config;
  config.num_experts = 96;
  config.top_k = 1;
  config.aux.lbl_coef = 0.01f;
  std::vector<int64_t> shapes;
  if (device.is_cuda()) {
    config.model_dim = 1536;
    config.ffn_dim = 768;
    config.dtype = DType::kBF16;
    shapes = {16384, 65536};
    if (iters == 0) iters = 20;
  } else {
    config.model_dim = 128;
    config.ffn_dim = 64;
    config.dtype = DType::kF32;
    shapes = {4096};
    if (iters == 0) iters = 5;
  }
  if (only_tokens > 0) shapes = {only_tokens};
  MOE_ASSIGN_OR_RETURN(double ceiling,
                       GemmCeilingTflops(*ctx, config.dtype, device.is_cuda() ? 8192 : 1024,
                                         device.is_cuda() ? 10 : 3));
  const std::string impl = std::string("sigma-moe/") + (device.is_cuda() ? "cuda/" : "cpu/") +
                           std::string(DTypeName(config.dtype));
  for (int64_t tokens : shapes) {
    MOE_RETURN_IF_ERROR(RunShape(*ctx, config, tokens, iters, ceiling, impl.c_str()));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace smoe

int main(int argc, char** argv) {
  const smoe::Status status = smoe::Main(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "moe_layer_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
