// CUDA vs CPU parity for the attention kernels: the flash forward/backward on a grid of shapes
// (T = 1, T not a multiple of the tiles, B > 1, D in {32, 64, 96, 128}, several (n_q, n_k, n_v)),
// RoPE, QK-norm, decode over multi-chunk caches, and the whole DiffQKV block (AugQ's SwiGLU gate is
// runtime/nn/swiglu, whose parity test is in tests/moe/experts/experts_cuda_test.cc).
// Skips itself without a GPU.
#include <cmath>
#include <memory>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "attention/attention_core.h"
#include "attention/diffqkv.h"
#include "attention/kv_cache.h"
#include "attention/qk_norm.h"
#include "attention/rope.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::CheckParity;
using ::testing::HasSubstr;
using testing::Input;
using testing::NmseAtMost;
using testing::Output;
using testing::ParityArgs;
using testing::StatusIs;
using testing::Tolerance;

Tolerance ValueTolerance(DType dtype) {
  return dtype == DType::kBF16 ? Tolerance{2e-2, 2e-2} : Tolerance{2e-4, 2e-4};
}
Tolerance GradTolerance(DType dtype) {
  return dtype == DType::kBF16 ? Tolerance{4e-2, 3e-2} : Tolerance{5e-4, 5e-4};
}
// A weight gradient reduced over rows in f32 on both backends (from the same inputs, bf16 or
// not): only the summation order differs, a relative error of about 1e-6 (NMSE 1e-12).
constexpr NmseAtMost kReducedGradient{1e-8};

std::function<void(const TensorView&)> Normal(uint64_t seed, float stddev, float mean = 0.0f) {
  return [=](const TensorView& t) {
    MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), t, seed, 0, mean, stddev));
  };
}

// (B, S, D, (n_q, n_k, n_v), dtype)
using AttentionCase =
    std::tuple<int64_t, int64_t, int64_t, std::tuple<int64_t, int64_t, int64_t>, DType>;
class AttentionParityTest : public ::testing::TestWithParam<AttentionCase> {};

// q, k, v, dout, then the outputs out, lse, dq, dk, dv of one attention problem.
std::vector<testing::ParityArg> AttentionArgs(int64_t B, int64_t S, int64_t D, int64_t n_q,
                                              int64_t n_k, int64_t n_v, DType dtype,
                                              Tolerance lse_tolerance) {
  return {Input("q", {B, S, n_q, D}, dtype),
          Input("k", {B, S, n_k, D}, dtype),
          Input("v", {B, S, n_v, D}, dtype),
          Input("dout", {B, S, n_q, D}, dtype),
          Output("out", {B, S, n_q, D}, dtype, ValueTolerance(dtype)),
          Output("lse", {B, n_q, S}, DType::kF32, lse_tolerance),
          Output("dq", {B, S, n_q, D}, dtype, GradTolerance(dtype)),
          Output("dk", {B, S, n_k, D}, dtype, GradTolerance(dtype)),
          Output("dv", {B, S, n_v, D}, dtype, GradTolerance(dtype))};
}

TEST_P(AttentionParityTest, ForwardAndBackwardMatchCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [B, S, D, heads, dtype] = GetParam();
  const auto [n_q, n_k, n_v] = heads;
  EXPECT_TRUE(CheckParity(
      AttentionArgs(B, S, D, n_q, n_k, n_v, dtype, Tolerance{1e-4, 1e-4}),
      [](ExecContext& ctx, const ParityArgs& t) {
        MOE_RETURN_IF_ERROR(AttentionForward(ctx, t["q"], t["k"], t["v"], t["out"], t["lse"]));
        return AttentionBackward(ctx, t["q"], t["k"], t["v"], t["out"], t["lse"], t["dout"],
                                 t["dq"], t["dk"], t["dv"]);
      }));
}

// "B2_S37_D96_heads6q2k3v_bf16"
std::string AttentionCaseName(const ::testing::TestParamInfo<AttentionCase>& info) {
  const auto [B, S, D, heads, dtype] = info.param;
  const auto [n_q, n_k, n_v] = heads;
  return absl::StrCat("B", B, "_S", S, "_D", D, "_heads", n_q, "q", n_k, "k", n_v, "v_",
                      DTypeName(dtype));
}

INSTANTIATE_TEST_SUITE_P(Grid, AttentionParityTest,
                         ::testing::Combine(::testing::Values(1, 2), ::testing::Values(1, 37, 70),
                                            ::testing::Values(32, 64, 96, 128),
                                            ::testing::Values(std::make_tuple(4, 4, 4),
                                                              std::make_tuple(4, 1, 2),
                                                              std::make_tuple(6, 2, 3)),
                                            ::testing::Values(DType::kBF16)),
                         AttentionCaseName);
INSTANTIATE_TEST_SUITE_P(F32, AttentionParityTest,
                         ::testing::Combine(::testing::Values(2), ::testing::Values(33),
                                            ::testing::Values(96),
                                            ::testing::Values(std::make_tuple(8, 2, 4)),
                                            ::testing::Values(DType::kF32)),
                         AttentionCaseName);

// Forward and backward of one bf16 problem against the CPU, with `kernels_only` choosing the path
// of each pass (SetCudaAttentionKernelsOnly); returns CheckParity's verdict.
::testing::AssertionResult PathParity(int64_t B, int64_t S, int64_t D, int64_t n_q, int64_t n_k,
                                      int64_t n_v, bool forward_kernels_only,
                                      bool backward_kernels_only) {
  ::testing::AssertionResult ok = CheckParity(
      AttentionArgs(B, S, D, n_q, n_k, n_v, DType::kBF16, Tolerance{1e-3, 1e-3}),
      [&](ExecContext& ctx, const ParityArgs& t) {
        SetCudaAttentionKernelsOnly(ctx.device().is_cuda() && forward_kernels_only);
        MOE_RETURN_IF_ERROR(AttentionForward(ctx, t["q"], t["k"], t["v"], t["out"], t["lse"]));
        SetCudaAttentionKernelsOnly(ctx.device().is_cuda() && backward_kernels_only);
        return AttentionBackward(ctx, t["q"], t["k"], t["v"], t["out"], t["lse"], t["dout"],
                                 t["dq"], t["dk"], t["dv"]);
      });
  SetCudaAttentionKernelsOnly(false);
  return ok;
}

// bf16 runs cuDNN's fused attention in a cuDNN build and our kernels when told to; both match the
// CPU, on DiffQKV head counts (n_k != n_v, neither nested in the other) and the benchmark's.
TEST(AttentionPathTest, CudnnAndKernelsBothMatchCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  for (const auto& [n_q, n_k, n_v] : {std::make_tuple(16, 2, 8), std::make_tuple(6, 2, 3)}) {
    for (bool kernels_only : {false, true}) {
      const int64_t runs = internal::CudnnAttentionRuns();
      EXPECT_TRUE(PathParity(2, 70, 96, n_q, n_k, n_v, kernels_only, kernels_only))
          << "kernels_only " << kernels_only;
      const int64_t cudnn_runs = internal::CudnnAttentionRuns() - runs;
      if (kernels_only || !internal::CudnnAttentionBuilt()) {
        EXPECT_EQ(cudnn_runs, 0);
      } else {
        EXPECT_EQ(cudnn_runs, 2) << "a cuDNN build runs bf16 forward and backward on cuDNN";
      }
    }
  }
}

// The two paths' lse is the same statistic: a forward on one and the backward on the other agree.
TEST(AttentionPathTest, MixedPathsAgree) {
  MOE_SKIP_WITHOUT_CUDA();
  EXPECT_TRUE(PathParity(1, 129, 64, 4, 1, 2, /*forward_kernels_only=*/false,
                         /*backward_kernels_only=*/true));
  EXPECT_TRUE(PathParity(1, 129, 64, 4, 1, 2, /*forward_kernels_only=*/true,
                         /*backward_kernels_only=*/false));
}

// Graphs are cached: the same shape again builds nothing new (timing is not asserted; the count of
// cuDNN runs is).
TEST(AttentionPathTest, RepeatedShapeReusesItsGraph) {
  MOE_SKIP_WITHOUT_CUDA();
  if (!internal::CudnnAttentionBuilt()) GTEST_SKIP() << "built without cuDNN";
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(PathParity(1, 33, 128, 8, 2, 4, false, false));
}

TEST(AttentionCudaTest, UnsupportedHeadDimIsInvalidArgument) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor q, Tensor::Empty({1, 4, 2, 80}, DType::kBF16, Device::Cuda()));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor lse, Tensor::Empty({1, 2, 4}, DType::kF32, Device::Cuda()));
  EXPECT_THAT(AttentionForward(*ctx, q, q, q, q, lse),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("q.head_dim: got 80")));
}

TEST(ElementwiseParityTest, RopeQkNorm) {
  MOE_SKIP_WITHOUT_CUDA();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    EXPECT_TRUE(CheckParity({Input("x", {2, 37, 3, 96}, dtype), Input("dy", {2, 37, 3, 96}, dtype),
                             Output("y", {2, 37, 3, 96}, dtype, ValueTolerance(dtype)),
                             Output("dx", {2, 37, 3, 96}, dtype, ValueTolerance(dtype))},
                            [](ExecContext& ctx, const ParityArgs& t) {
                              MOE_RETURN_IF_ERROR(RopeForward(ctx, t["x"], t["y"], 10000.0, 4000));
                              return RopeBackward(ctx, t["dy"], t["dx"], 10000.0, 4000);
                            }))
        << "rope";
    EXPECT_TRUE(CheckParity(
        {Input("x", {3, 37, 2, 64}, dtype), Input("w", {64}, dtype, Normal(5, 0.2f, 1.0f)),
         Input("dy", {3, 37, 2, 64}, dtype),
         Output("y", {3, 37, 2, 64}, dtype, ValueTolerance(dtype)),
         Output("rstd", {3 * 37 * 2}, DType::kF32, Tolerance{1e-4, 1e-4}),
         Output("dx", {3, 37, 2, 64}, dtype, GradTolerance(dtype)),
         Output("dw", {64}, DType::kF32, kReducedGradient, Normal(11, 1.0f))},  // accumulated
        [](ExecContext& ctx, const ParityArgs& t) {
          MOE_RETURN_IF_ERROR(HeadRmsNormForward(ctx, t["x"], t["w"], t["y"], t["rstd"]));
          return HeadRmsNormBackward(ctx, t["x"], t["w"], t["rstd"], t["dy"], t["dx"], t["dw"]);
        }))
        << "qk-norm";
    // dx aliasing dy (allowed by the contract): dw must still be computed from the original dy.
    EXPECT_TRUE(CheckParity(
        {Input("x", {3, 37, 2, 64}, dtype), Input("w", {64}, dtype, Normal(5, 0.2f, 1.0f)),
         Input("rstd", {3 * 37 * 2}, DType::kF32, Normal(6, 0.1f, 1.0f)),
         Input("dy", {3, 37, 2, 64}, dtype),
         Output("dx", {3, 37, 2, 64}, dtype, GradTolerance(dtype)),
         Output("dw", {64}, DType::kF32, kReducedGradient, Normal(11, 1.0f))},  // accumulated
        [](ExecContext& ctx, const ParityArgs& t) {
          MOE_RETURN_IF_ERROR(Copy(ctx, t["dy"], t["dx"]));
          return HeadRmsNormBackward(ctx, t["x"], t["w"], t["rstd"], t["dx"], t["dx"], t["dw"]);
        }))
        << "qk-norm, dx aliasing dy";
  }
}

// (cache length, D, (n_q, n_k, n_v)): one chunk, a partial chunk, several chunks.
using DecodeCase = std::tuple<int64_t, int64_t, std::tuple<int64_t, int64_t, int64_t>>;
class DecodeParityTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeParityTest, MatchesCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [L, D, heads] = GetParam();
  const auto [n_q, n_k, n_v] = heads;
  const int64_t B = 3;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    EXPECT_TRUE(CheckParity(
        {Input("q", {B, n_q, D}, dtype), Input("k", {B, L, n_k, D}, dtype),
         Input("v", {B, L, n_v, D}, dtype),
         Output("out", {B, n_q, D}, dtype, ValueTolerance(dtype))},
        [&](ExecContext& ctx, const ParityArgs& t) {
          MOE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(ctx, B, L + 3, n_k, n_v, D, dtype));
          MOE_RETURN_IF_ERROR(cache.Append(ctx, t["k"], t["v"]));
          return DecodeAttention(ctx, t["q"], cache, t["out"]);
        }))
        << DTypeName(dtype);
  }
}

// "L200_D96_heads16q2k8v"
std::string DecodeCaseName(const ::testing::TestParamInfo<DecodeCase>& info) {
  const auto [L, D, heads] = info.param;
  const auto [n_q, n_k, n_v] = heads;
  return absl::StrCat("L", L, "_D", D, "_heads", n_q, "q", n_k, "k", n_v, "v");
}

INSTANTIATE_TEST_SUITE_P(Grid, DecodeParityTest,
                         ::testing::Combine(::testing::Values(1, 200, 1000),
                                            ::testing::Values(32, 64, 96, 128),
                                            ::testing::Values(std::make_tuple(16, 2, 8),
                                                              std::make_tuple(4, 4, 4),
                                                              std::make_tuple(6, 3, 2))),
                         DecodeCaseName);
// 128 query heads on one K/V head: both the scores' and the values' shared memory exceed 48 KB.
INSTANTIATE_TEST_SUITE_P(WideGroup, DecodeParityTest,
                         ::testing::Combine(::testing::Values(300), ::testing::Values(128),
                                            ::testing::Values(std::make_tuple(128, 1, 1))),
                         DecodeCaseName);

TEST(DecodeCudaTest, EqualsLastRowOfCausalAttentionOnTheGpu) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  const int64_t B = 2, S = 300, n_q = 16, n_k = 2, n_v = 8, D = 96;
  auto random = [&](Shape shape, uint64_t seed) {
    Tensor t = *Tensor::Empty(shape, DType::kF32, Device::Cuda());
    MOE_CHECK_OK(FillNormal(*ctx, t, seed, 0, 0.0f, 1.0f));
    return t;
  };
  Tensor q = random({B, S, n_q, D}, 1), k = random({B, S, n_k, D}, 2),
         v = random({B, S, n_v, D}, 3);
  Tensor out = *Tensor::Empty(q.shape(), DType::kF32, Device::Cuda());
  Tensor lse = *Tensor::Empty({B, n_q, S}, DType::kF32, Device::Cuda());
  MOE_ASSERT_OK(AttentionForward(*ctx, q, k, v, out, lse));
  MOE_ASSERT_OK_AND_ASSIGN(KvCache cache, KvCache::Create(*ctx, B, S, n_k, n_v, D, DType::kF32));
  MOE_ASSERT_OK(cache.Append(*ctx, k, v));
  // The last query row of each sequence, gathered into [B, n_q, D].
  Tensor q_last = *Tensor::Empty({B, n_q, D}, DType::kF32, Device::Cuda());
  Tensor expected = *Tensor::Empty({B, n_q, D}, DType::kF32, Device::Cuda());
  for (int64_t b = 0; b < B; ++b) {
    MOE_ASSERT_OK_AND_ASSIGN(TensorView q_rows, q.view().Reshape({B * S, n_q * D}));
    MOE_ASSERT_OK_AND_ASSIGN(TensorView o_rows, out.view().Reshape({B * S, n_q * D}));
    MOE_ASSERT_OK_AND_ASSIGN(TensorView q_dst, q_last.view().Reshape({B, n_q * D}));
    MOE_ASSERT_OK_AND_ASSIGN(TensorView e_dst, expected.view().Reshape({B, n_q * D}));
    MOE_ASSERT_OK(Copy(*ctx, q_rows.Rows(b * S + S - 1, b * S + S), q_dst.Rows(b, b + 1)));
    MOE_ASSERT_OK(Copy(*ctx, o_rows.Rows(b * S + S - 1, b * S + S), e_dst.Rows(b, b + 1)));
  }
  Tensor decoded = *Tensor::Empty({B, n_q, D}, DType::kF32, Device::Cuda());
  MOE_ASSERT_OK(DecodeAttention(*ctx, q_last, cache, decoded));
  MOE_ASSERT_OK(ctx->Synchronize());
  EXPECT_TRUE(testing::AllClose(decoded, expected, Tolerance{1e-5, 1e-4}));
}

// Generating token by token: the decode workspace grows by B * n_q floats per token. It must not
// reach cudaMalloc once per token (nor leave a trail of too-small cached blocks): the context's
// workspace grows geometrically, so 1000 tokens cost a handful of device allocations.
TEST(DecodeCudaTest, GrowingCacheReallocatesTheWorkspaceLogarithmicallyOften) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  const int64_t B = 1, n_q = 8, n_k = 2, n_v = 4, D = 64, steps = 1000;
  MOE_ASSERT_OK_AND_ASSIGN(KvCache cache,
                           KvCache::Create(*ctx, B, steps, n_k, n_v, D, DType::kF32));
  Tensor k = *Tensor::Empty({B, 1, n_k, D}, DType::kF32, Device::Cuda());
  Tensor v = *Tensor::Empty({B, 1, n_v, D}, DType::kF32, Device::Cuda());
  Tensor q = *Tensor::Empty({B, n_q, D}, DType::kF32, Device::Cuda());
  Tensor out = *Tensor::Empty({B, n_q, D}, DType::kF32, Device::Cuda());
  for (Tensor* t : {&k, &v, &q}) MOE_ASSERT_OK(FillNormal(*ctx, *t, 5, 0, 0.0f, 1.0f));
  MOE_ASSERT_OK_AND_ASSIGN(Allocator * device, AllocatorFor(Device::Cuda()));
  const size_t before = device->stats().num_system_allocations;
  size_t workspace_changes = 0, last = ctx->workspace_bytes();
  for (int64_t step = 0; step < steps; ++step) {
    MOE_ASSERT_OK(cache.Append(*ctx, k, v));
    MOE_ASSERT_OK(DecodeAttention(*ctx, q, cache, out));
    if (ctx->workspace_bytes() != last) ++workspace_changes;
    last = ctx->workspace_bytes();
    if (step % 64 == 0) {
      MOE_ASSERT_OK(ctx->Synchronize());  // a sampler reads the logits
    }
  }
  MOE_ASSERT_OK(ctx->Synchronize());
  EXPECT_LE(workspace_changes, 16u);  // 1000 without geometric growth
  EXPECT_LE(device->stats().num_system_allocations - before, 16u);
}

TEST(DiffQkvParityTest, BlockForwardAndBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  const DiffQkvConfig c{48, 4, 1, 2, 64, 32, true, 10000.0};
  const int64_t B = 2, S = 19, M = c.model_dim, qd = c.n_q * c.head_dim;
  const float ws = 1.0f / std::sqrt(static_cast<float>(M));
  const float qs = 1.0f / std::sqrt(static_cast<float>(qd));
  const DType dt = DType::kF32;
  const Tolerance tol{1e-3, 1e-3};
  std::vector<testing::ParityArg> args = {Input("x", {B, S, M}, dt),
                                          Input("w_q", {M, qd}, dt, Normal(1, ws)),
                                          Input("w_k", {M, c.n_k * c.head_dim}, dt, Normal(2, ws)),
                                          Input("w_v", {M, c.n_v * c.head_dim}, dt, Normal(3, ws)),
                                          Input("w_o", {qd, M}, dt, Normal(4, qs)),
                                          Input("w_gate", {qd, c.d_aug}, dt, Normal(5, qs)),
                                          Input("w_up", {qd, c.d_aug}, dt, Normal(6, qs)),
                                          Input("w_down", {c.d_aug, qd}, dt, Normal(7, 0.2f)),
                                          Input("q_norm", {c.head_dim}, dt, Normal(8, 0.1f, 1.0f)),
                                          Input("k_norm", {c.head_dim}, dt, Normal(9, 0.1f, 1.0f)),
                                          Input("dy", {B, S, M}, dt),
                                          Output("y", {B, S, M}, dt, tol),
                                          Output("dx", {B, S, M}, dt, tol)};
  const char* grad_names[] = {"dw_q",  "dw_k",    "dw_v",    "dw_o",   "dw_gate",
                              "dw_up", "dw_down", "dq_norm", "dk_norm"};
  // The weight gradients are f32 and accumulate: both sides start from the same random values.
  for (int i = 0; i < 9; ++i) {
    args.push_back(
        Output(grad_names[i], args[i + 1].shape, DType::kF32, tol, Normal(20 + i, 1.0f)));
  }
  EXPECT_TRUE(CheckParity(args, [&](ExecContext& ctx, const ParityArgs& t) {
    const DiffQkvParams p{
        t["w_q"],    t["w_k"],   t["w_v"], t["w_o"], {t["w_gate"], t["w_up"], t["w_down"]},
        t["q_norm"], t["k_norm"]};
    const DiffQkvParams g{
        t["dw_q"],    t["dw_k"],   t["dw_v"], t["dw_o"], {t["dw_gate"], t["dw_up"], t["dw_down"]},
        t["dq_norm"], t["dk_norm"]};
    DiffQkvSaved saved;
    MOE_RETURN_IF_ERROR(DiffQkvForward(ctx, c, p, t["x"], t["y"], &saved));
    return DiffQkvBackward(ctx, c, p, t["x"], saved, t["dy"], t["dx"], g);
  }));
}

TEST(DiffQkvCudaTest, DecodeStepsEqualForwardRows) {
  MOE_SKIP_WITHOUT_CUDA();
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cuda()));
  const DiffQkvConfig c{64, 16, 2, 8, 96, 48, true, 10000.0};
  const int64_t B = 2, S = 40, prompt = 37, M = c.model_dim, qd = c.n_q * c.head_dim;
  uint64_t seed = 1;
  auto random = [&](Shape shape, float stddev, float mean = 0.0f) {
    Tensor t = *Tensor::Empty(shape, DType::kF32, Device::Cuda());
    MOE_CHECK_OK(FillNormal(*ctx, t, seed++, 0, mean, stddev));
    return t;
  };
  const float ws = 1.0f / std::sqrt(float(M)), qs = 1.0f / std::sqrt(float(qd));
  Tensor w_q = random({M, qd}, ws), w_k = random({M, c.n_k * c.head_dim}, ws);
  Tensor w_v = random({M, c.n_v * c.head_dim}, ws), w_o = random({qd, M}, qs);
  Tensor w_gate = random({qd, c.d_aug}, qs), w_up = random({qd, c.d_aug}, qs);
  Tensor w_down = random({c.d_aug, qd}, 0.2f);
  Tensor q_norm = random({c.head_dim}, 0.1f, 1.0f), k_norm = random({c.head_dim}, 0.1f, 1.0f);
  const DiffQkvParams p{w_q, w_k, w_v, w_o, {w_gate, w_up, w_down}, q_norm, k_norm};
  Tensor x = random({B, S, M}, 1.0f);
  Tensor y = *Tensor::Empty(x.shape(), DType::kF32, Device::Cuda());
  DiffQkvSaved saved;
  MOE_ASSERT_OK(DiffQkvForward(*ctx, c, p, x, y, &saved));

  // Row s of each sequence of a [B, S, M] tensor, as views of rows of [B*S, M].
  MOE_ASSERT_OK_AND_ASSIGN(TensorView x_rows, x.view().Reshape({B * S, M}));
  MOE_ASSERT_OK_AND_ASSIGN(TensorView y_rows, y.view().Reshape({B * S, M}));
  auto gather = [&](const TensorView& rows, int64_t begin, int64_t end) {
    Tensor out = *Tensor::Empty({B, end - begin, M}, DType::kF32, Device::Cuda());
    const TensorView flat = *out.view().Reshape({B * (end - begin), M});
    for (int64_t b = 0; b < B; ++b) {
      MOE_CHECK_OK(Copy(*ctx, rows.Rows(b * S + begin, b * S + end),
                        flat.Rows(b * (end - begin), (b + 1) * (end - begin))));
    }
    return out;
  };
  MOE_ASSERT_OK_AND_ASSIGN(KvCache cache,
                           KvCache::Create(*ctx, B, S, c.n_k, c.n_v, c.head_dim, DType::kF32));
  Tensor x_prompt = gather(x_rows, 0, prompt);
  Tensor y_prompt = *Tensor::Empty(x_prompt.shape(), DType::kF32, Device::Cuda());
  DiffQkvSaved prompt_saved;
  MOE_ASSERT_OK(DiffQkvForward(*ctx, c, p, x_prompt, y_prompt, &prompt_saved));
  MOE_ASSERT_OK(DiffQkvPrefillCache(*ctx, prompt_saved, &cache));
  for (int64_t s = prompt; s < S; ++s) {
    Tensor y_new = *Tensor::Empty({B, 1, M}, DType::kF32, Device::Cuda());
    MOE_ASSERT_OK(DiffQkvDecodeStep(*ctx, c, p, gather(x_rows, s, s + 1), &cache, y_new));
    Tensor expected = gather(y_rows, s, s + 1);
    // The comparison reads on a stream of its own: finish ours first.
    MOE_ASSERT_OK(ctx->Synchronize());
    EXPECT_TRUE(testing::AllClose(y_new, expected, Tolerance{1e-4, 1e-3})) << "position " << s;
  }
}

}  // namespace
}  // namespace smoe
