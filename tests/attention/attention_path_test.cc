// The host logic of the CUDA attention's path choice (attention_core.h): which problems go to
// cuDNN's fused attention, and the cache of its graphs (keys, one build per key, declines
// remembered and reported once). Pure host code: runs without a GPU.
#include <memory>
#include <string>
#include <unordered_set>

#include "attention/attention_core.h"
#include "gtest/gtest.h"

namespace smoe::internal {
namespace {

const AttentionDims kDims{4, 4096, 16, 2, 8, 96};

TEST(CudaAttentionPathTest, Bf16GoesToCudnnWhenBuilt) {
  EXPECT_EQ(ChooseCudaAttentionPath(DType::kBF16, 96, true, false), CudaAttentionPath::kCudnn);
  for (int64_t d : {64, 96, 128, 8, 120}) {
    EXPECT_EQ(ChooseCudaAttentionPath(DType::kBF16, d, true, false), CudaAttentionPath::kCudnn)
        << "D = " << d;
  }
}

TEST(CudaAttentionPathTest, FallsBackToOurKernels) {
  // f32 always runs our kernels.
  EXPECT_EQ(ChooseCudaAttentionPath(DType::kF32, 96, true, false), CudaAttentionPath::kKernels);
  // A build without cuDNN.
  EXPECT_EQ(ChooseCudaAttentionPath(DType::kBF16, 96, false, false), CudaAttentionPath::kKernels);
  // Forced (benchmarks, parity tests).
  EXPECT_EQ(ChooseCudaAttentionPath(DType::kBF16, 96, true, true), CudaAttentionPath::kKernels);
  // Head widths cuDNN's SDPA does not take.
  for (int64_t d : {0, 4, 60, 100, 136, 256}) {
    EXPECT_EQ(ChooseCudaAttentionPath(DType::kBF16, d, true, false), CudaAttentionPath::kKernels)
        << "D = " << d;
  }
}

TEST(CudaAttentionPathTest, KernelsOnlySwitchIsProcessWide) {
  EXPECT_FALSE(CudaAttentionKernelsOnly());
  SetCudaAttentionKernelsOnly(true);
  EXPECT_TRUE(CudaAttentionKernelsOnly());
  SetCudaAttentionKernelsOnly(false);
  EXPECT_FALSE(CudaAttentionKernelsOnly());
}

TEST(CudaAttentionPathTest, BuildFlagMatchesTheBuild) {
#if MOE_WITH_CUDNN_EXPECTED
  EXPECT_TRUE(CudnnAttentionBuilt());
#endif
  if (!CudnnAttentionBuilt()) EXPECT_EQ(CudnnAttentionRuns(), 0);
}

TEST(SdpaGraphKeyTest, EveryFieldTellsKeysApart) {
  const SdpaGraphKey base = MakeSdpaGraphKey(0, AttentionPass::kForward, kDims, DType::kBF16);
  EXPECT_EQ(base.batch, 4);
  EXPECT_EQ(base.seq, 4096);
  EXPECT_EQ(base.n_q, 16);
  EXPECT_EQ(base.n_k, 2);
  EXPECT_EQ(base.n_v, 8);
  EXPECT_EQ(base.head_dim, 96);
  EXPECT_EQ(base, MakeSdpaGraphKey(0, AttentionPass::kForward, kDims, DType::kBF16));
  EXPECT_EQ(SdpaGraphKeyHash()(base),
            SdpaGraphKeyHash()(MakeSdpaGraphKey(0, AttentionPass::kForward, kDims, DType::kBF16)));

  std::vector<SdpaGraphKey> variants;
  auto with = [&](auto change) {
    SdpaGraphKey k = base;
    change(k);
    variants.push_back(k);
  };
  with([](SdpaGraphKey& k) { k.device = 1; });
  with([](SdpaGraphKey& k) { k.pass = AttentionPass::kBackward; });
  with([](SdpaGraphKey& k) { k.dtype = DType::kF32; });
  with([](SdpaGraphKey& k) { k.batch = 2; });
  with([](SdpaGraphKey& k) { k.seq = 4095; });
  with([](SdpaGraphKey& k) { k.n_q = 8; });
  with([](SdpaGraphKey& k) { k.n_k = 4; });
  with([](SdpaGraphKey& k) { k.n_v = 4; });
  with([](SdpaGraphKey& k) { k.head_dim = 128; });
  // n_k and n_v swapped is another problem (K and V keep their own head counts).
  with([](SdpaGraphKey& k) { std::swap(k.n_k, k.n_v); });
  std::unordered_set<SdpaGraphKey, SdpaGraphKeyHash> keys(variants.begin(), variants.end());
  keys.insert(base);
  EXPECT_EQ(keys.size(), variants.size() + 1);
  for (const SdpaGraphKey& k : variants) EXPECT_FALSE(k == base);
}

TEST(SdpaGraphCacheTest, BuildsOncePerKey) {
  SdpaGraphCache<std::string> cache;
  int builds = 0;
  auto build = [&]() -> StatusOr<std::shared_ptr<std::string>> {
    ++builds;
    return std::make_shared<std::string>("graph " + std::to_string(builds));
  };
  const SdpaGraphKey fwd = MakeSdpaGraphKey(0, AttentionPass::kForward, kDims, DType::kBF16);
  const SdpaGraphKey bwd = MakeSdpaGraphKey(0, AttentionPass::kBackward, kDims, DType::kBF16);
  bool declined = true;
  Status reason;
  std::shared_ptr<std::string> a = cache.Get(fwd, build, &declined, &reason);
  ASSERT_NE(a, nullptr);
  EXPECT_FALSE(declined);
  EXPECT_EQ(*a, "graph 1");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(cache.Get(fwd, build, &declined, &reason), a);  // the same graph, not rebuilt
    EXPECT_FALSE(declined);
  }
  std::shared_ptr<std::string> b = cache.Get(bwd, build, &declined, &reason);
  EXPECT_EQ(*b, "graph 2");
  EXPECT_EQ(builds, 2);
  EXPECT_EQ(cache.builds(), 2);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(SdpaGraphCacheTest, DeclineIsRememberedAndReportedOnce) {
  SdpaGraphCache<std::string> cache;
  int builds = 0;
  auto failing = [&]() -> StatusOr<std::shared_ptr<std::string>> {
    ++builds;
    return absl::FailedPreconditionError("no engine for this shape");
  };
  const SdpaGraphKey key = MakeSdpaGraphKey(0, AttentionPass::kBackward, kDims, DType::kBF16);
  bool declined = false;
  Status reason;
  EXPECT_EQ(cache.Get(key, failing, &declined, &reason), nullptr);
  EXPECT_TRUE(declined);
  EXPECT_EQ(reason.message(), "no engine for this shape");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(cache.Get(key, failing, &declined, &reason), nullptr);  // still our kernels
    EXPECT_FALSE(declined);                                           // said once only
  }
  EXPECT_EQ(builds, 1);
  // Other shapes are unaffected, and a build that returns no graph also counts as a decline.
  AttentionDims other = kDims;
  other.seq = 128;
  const SdpaGraphKey other_key = MakeSdpaGraphKey(0, AttentionPass::kBackward, other, DType::kBF16);
  auto empty = []() -> StatusOr<std::shared_ptr<std::string>> { return nullptr; };
  EXPECT_EQ(cache.Get(other_key, empty, &declined, &reason), nullptr);
  EXPECT_TRUE(declined);
  EXPECT_EQ(cache.size(), 2u);
}

}  // namespace
}  // namespace smoe::internal
