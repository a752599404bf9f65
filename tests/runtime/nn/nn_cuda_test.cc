// CUDA vs CPU parity for embedding, RMSNorm, cross-entropy and AdamW (+ squared norm,
// finiteness). Skips itself without a GPU.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "runtime/nn/adamw.h"
#include "runtime/nn/cross_entropy.h"
#include "runtime/nn/embedding.h"
#include "runtime/nn/rmsnorm.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::CheckParity;
using testing::Input;
using testing::Output;
using testing::ParityArgs;
using testing::Tolerance;

constexpr Tolerance kExact{0.0, 0.0};

// Random ids in [0, vocab); every `ignore_every`-th one -1 (0 = never).
std::function<void(const TensorView&)> FillIds(int64_t vocab, uint64_t seed,
                                               int64_t ignore_every = 0) {
  return [=](const TensorView& t) {
    int32_t* p = t.data<int32_t>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      p[i] = (ignore_every > 0 && i % ignore_every == ignore_every - 1)
                 ? -1
                 : static_cast<int32_t>(PhiloxBits(seed, i) % vocab);
    }
  };
}

std::function<void(const TensorView&)> FillNormalWith(uint64_t seed, float mean, float stddev) {
  return [=](const TensorView& t) {
    MOE_CHECK_OK(FillNormal(ExecContext::Cpu(), t, seed, 0, mean, stddev));
  };
}

std::function<void(const TensorView&)> FillUniformWith(uint64_t seed, float low, float high) {
  return [=](const TensorView& t) {
    MOE_CHECK_OK(FillUniform(ExecContext::Cpu(), t, seed, 0, low, high));
  };
}

// (T, V or R, M or C, dtype)
using Case = std::tuple<int64_t, int64_t, int64_t, DType>;
class NnParityTest : public ::testing::TestWithParam<Case> {};

TEST_P(NnParityTest, EmbeddingForwardIsExact) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [tokens, vocab, dim, dtype] = GetParam();
  EXPECT_TRUE(CheckParity(
      {Input("ids", {tokens}, DType::kI32, FillIds(vocab, 3)), Input("table", {vocab, dim}, dtype),
       Output("out", {tokens, dim}, dtype, kExact)},
      [](ExecContext& ctx, const ParityArgs& t) {
        return EmbeddingForward(ctx, t["ids"], t["table"], t["out"]);
      }));
}

TEST_P(NnParityTest, EmbeddingBackwardAccumulates) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [tokens, vocab, dim, dtype] = GetParam();
  // Few ids for many tokens, so that segments are long and most rows stay at their start value.
  const int64_t used = std::max<int64_t>(1, vocab / 8);
  EXPECT_TRUE(CheckParity(
      {Input("ids", {tokens}, DType::kI32, FillIds(used, 4)), Input("dout", {tokens, dim}, dtype),
       Output("dtable", {vocab, dim}, DType::kF32,
              Tolerance{1e-5 * std::sqrt(double(tokens)), 1e-5}, FillNormalWith(5, 0.0f, 1.0f))},
      [](ExecContext& ctx, const ParityArgs& t) {
        return EmbeddingBackward(ctx, t["ids"], t["dout"], t["dtable"]);
      }));
}

TEST_P(NnParityTest, RMSNormForward) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [rows, unused, cols, dtype] = GetParam();
  EXPECT_TRUE(CheckParity({Input("x", {rows, cols}, dtype), Input("gain", {cols}, DType::kF32),
                           Output("y", {rows, cols}, dtype),
                           Output("rstd", {rows}, DType::kF32, Tolerance{1e-6, 1e-5})},
                          [](ExecContext& ctx, const ParityArgs& t) {
                            return RMSNormForward(ctx, t["x"], t["gain"], 1e-5f, t["y"], t["rstd"]);
                          }));
}

TEST_P(NnParityTest, RMSNormBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [rows, unused, cols, dtype] = GetParam();
  const Tolerance dgain_tol{1e-5 * std::sqrt(double(rows)) * 4, 1e-4};
  EXPECT_TRUE(CheckParity(
      {Input("x", {rows, cols}, dtype), Input("gain", {cols}, DType::kF32),
       Input("rstd", {rows}, DType::kF32, FillUniformWith(6, 0.5f, 1.5f)),
       Input("dy", {rows, cols}, dtype), Output("dx", {rows, cols}, dtype),
       Output("dgain", {cols}, DType::kF32, dgain_tol, FillNormalWith(7, 0.0f, 1.0f))},
      [](ExecContext& ctx, const ParityArgs& t) {
        return RMSNormBackward(ctx, t["x"], t["gain"], t["rstd"], t["dy"], t["dx"], t["dgain"]);
      }));
}

TEST_P(NnParityTest, CrossEntropyForwardBackward) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [tokens, vocab, unused, dtype] = GetParam();
  for (int64_t ignore_every : {0, 3}) {
    EXPECT_TRUE(
        CheckParity({Input("logits", {tokens, vocab}, dtype, FillNormalWith(8, 0.0f, 3.0f)),
                     Input("targets", {tokens}, DType::kI32, FillIds(vocab, 9, ignore_every)),
                     Output("dlogits", {tokens, vocab}, dtype), Output("loss", {1}, DType::kF32)},
                    [](ExecContext& ctx, const ParityArgs& t) {
                      return CrossEntropyForwardBackwardAsync(ctx, t["logits"], t["targets"], 0.5f,
                                                              t["dlogits"], t["loss"]);
                    }))
        << "ignore_every " << ignore_every;
    EXPECT_TRUE(
        CheckParity({Input("logits", {tokens, vocab}, dtype, FillNormalWith(10, 0.0f, 3.0f)),
                     Input("targets", {tokens}, DType::kI32, FillIds(vocab, 11, ignore_every)),
                     Output("loss", {1}, DType::kF32)},
                    [](ExecContext& ctx, const ParityArgs& t) {
                      return CrossEntropyLossAsync(ctx, t["logits"], t["targets"], t["loss"]);
                    }))
        << "loss only, ignore_every " << ignore_every;
  }
}

// "T37_V256_M64_bf16" (for RMSNorm: T rows of M columns; V unused).
std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const auto [t, v, m, dtype] = info.param;
  return absl::StrCat("T", t, "_V", v, "_M", m, "_", DTypeName(dtype));
}

INSTANTIATE_TEST_SUITE_P(Shapes, NnParityTest,
                         ::testing::Combine(::testing::Values(1, 37, 300),
                                            ::testing::Values(33, 256, 1000),
                                            ::testing::Values(1, 64, 257),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         CaseName);

TEST(NnCudaTest, EmbeddingBackwardIsBitwiseDeterministic) {
  MOE_SKIP_WITHOUT_CUDA();
  auto gpu = *ExecContext::Create(Device::Cuda(0));
  const int64_t tokens = 4096, vocab = 50, dim = 96;
  Tensor ids_host = *Tensor::Empty({tokens}, DType::kI32, Device::Cpu());
  FillIds(vocab, 12)(ids_host);
  Tensor ids = *CopyTo(*gpu, ids_host, Device::Cuda(0));
  Tensor dout = *Tensor::Empty({tokens, dim}, DType::kF32, Device::Cuda(0));
  MOE_ASSERT_OK(FillNormal(*gpu, dout, 13, 0, 0.0f, 1.0f));
  std::vector<Tensor> results;
  for (int run = 0; run < 3; ++run) {
    Tensor dtable = *Tensor::Empty({vocab, dim}, DType::kF32, Device::Cuda(0));
    MOE_ASSERT_OK(Fill(*gpu, dtable, 0.0));
    MOE_ASSERT_OK(EmbeddingBackward(*gpu, ids, dout, dtable));
    results.push_back(dtable);
  }
  MOE_ASSERT_OK(gpu->Synchronize());
  EXPECT_TRUE(testing::AllEqual(results[1], results[0]));
  EXPECT_TRUE(testing::AllEqual(results[2], results[0]));
}

TEST(NnCudaTest, CrossEntropySyncReturnsTheSameLossAsCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  auto gpu = *ExecContext::Create(Device::Cuda(0));
  const int64_t tokens = 65, vocab = 1001;
  Tensor logits_host = *Tensor::Empty({tokens, vocab}, DType::kF32, Device::Cpu());
  MOE_ASSERT_OK(FillNormal(ExecContext::Cpu(), logits_host, 14, 0, 0.0f, 2.0f));
  Tensor targets_host = *Tensor::Empty({tokens}, DType::kI32, Device::Cpu());
  FillIds(vocab, 15, 4)(targets_host);
  Tensor logits = *CopyTo(*gpu, logits_host, Device::Cuda(0));
  Tensor targets = *CopyTo(*gpu, targets_host, Device::Cuda(0));
  MOE_ASSERT_OK_AND_ASSIGN(double cpu_loss,
                           CrossEntropyLoss(ExecContext::Cpu(), logits_host, targets_host));
  MOE_ASSERT_OK_AND_ASSIGN(double gpu_loss, CrossEntropyLoss(*gpu, logits, targets));
  EXPECT_NEAR(gpu_loss, cpu_loss, 1e-5 * std::abs(cpu_loss));
  Tensor dlogits = *Tensor::Empty({tokens, vocab}, DType::kF32, Device::Cuda(0));
  MOE_ASSERT_OK_AND_ASSIGN(double fb_loss,
                           CrossEntropyForwardBackward(*gpu, logits, targets, 1.0f, dlogits));
  EXPECT_EQ(fb_loss, gpu_loss);
}

// (n, shadow dtype)
using AdamWCase = std::tuple<int64_t, DType>;
class AdamWParityTest : public ::testing::TestWithParam<AdamWCase> {};

TEST_P(AdamWParityTest, StepMatchesCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [n, shadow_dtype] = GetParam();
  const AdamWConfig config{
      .lr = 3e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
  // The same fp32 formula with explicit fmaf on both sides: expected to agree to the last bit.
  const Tolerance tight{1e-7, 1e-6};
  EXPECT_TRUE(
      CheckParity({Input("grads", {n}, DType::kF32),
                   Output("params", {n}, DType::kF32, tight, FillNormalWith(16, 0.0f, 1.0f)),
                   Output("m", {n}, DType::kF32, tight, FillNormalWith(17, 0.0f, 0.1f)),
                   Output("v", {n}, DType::kF32, tight, FillUniformWith(18, 0.0f, 0.01f)),
                   Output("shadow", {n}, shadow_dtype)},
                  [&](ExecContext& ctx, const ParityArgs& t) {
                    return AdamWStep(ctx, config, 7, 0.25f, t["params"], t["grads"], t["m"], t["v"],
                                     t["shadow"]);
                  }));
}

// "n1000_bf16_shadow"
std::string AdamWCaseName(const ::testing::TestParamInfo<AdamWCase>& info) {
  const auto [n, shadow_dtype] = info.param;
  return absl::StrCat("n", n, "_", DTypeName(shadow_dtype), "_shadow");
}

INSTANTIATE_TEST_SUITE_P(Sizes, AdamWParityTest,
                         ::testing::Combine(::testing::Values(1, 1000, 100003),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         AdamWCaseName);

TEST(NnCudaTest, SquaredNormMatchesCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 7}}) {
    EXPECT_TRUE(CheckParity({Input("g", {n}, DType::kF32),
                             Output("out", {1}, DType::kF32, Tolerance{1e-6, 1e-6},
                                    [](const TensorView& t) { t.data<float>()[0] = 2.0f; })},
                            [](ExecContext& ctx, const ParityArgs& t) {
                              return AccumulateSquaredNorm(ctx, t["g"], t["out"]);
                            }))
        << "n " << n;
  }
}

TEST(NnCudaTest, AllFiniteMatchesCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  auto gpu = *ExecContext::Create(Device::Cuda(0));
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t bad_index : {int64_t{-1}, int64_t{0}, int64_t{77776}}) {
      for (double bad :
           {std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::infinity()}) {
        Tensor host = *Tensor::Empty({77777}, dtype, Device::Cpu());
        MOE_ASSERT_OK(FillNormal(ExecContext::Cpu(), host, 19, 0, 0.0f, 10.0f));
        if (bad_index >= 0) {
          MOE_ASSERT_OK(
              Fill(ExecContext::Cpu(),
                   TensorView(static_cast<char*>(host.data()) + bad_index * DTypeSize(dtype), dtype,
                              {1}, Device::Cpu()),
                   bad));
        }
        Tensor device = *CopyTo(*gpu, host, Device::Cuda(0));
        MOE_ASSERT_OK_AND_ASSIGN(bool cpu_finite, AllFinite(ExecContext::Cpu(), host));
        MOE_ASSERT_OK_AND_ASSIGN(bool gpu_finite, AllFinite(*gpu, device));
        EXPECT_EQ(cpu_finite, bad_index < 0);
        EXPECT_EQ(gpu_finite, cpu_finite) << DTypeName(dtype) << " at " << bad_index;
      }
    }
  }
}

}  // namespace
}  // namespace smoe
