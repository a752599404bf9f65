#include "moe/router/aux_loss.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/router/router.h"
#include "moe/router/router_cpu.h"
#include "runtime/nn/softmax.h"
#include "tests/testing/compare.h"
#include "tests/testing/fake_communicator.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::FromFloats;
using testing::FromInts;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;
using testing::ToDoubles;
using testing::ToInts;

// The values left in a tensor (what the training step reads once per optimizer step) are the
// returned ones; T == 0 gives zeros; the tensor is checked.
TEST(AuxLossTest, ValuesIntoATensor) {
  const Tensor logits = RandomNormal({7, 5}, DType::kF32, 3, 1.0f);
  const Tensor probs = HostTensor({7, 5}, DType::kF32);
  MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), logits, probs));
  const Tensor idx = FromInts({0, 1, 1, 4, 2, 0, 1}, {7, 1});
  const Tensor d_a = HostTensor({7, 5}, DType::kF32), d_b = HostTensor({7, 5}, DType::kF32);
  const AuxLossConfig config{.lbl_coef = 0.01f, .z_coef = 0.001f, .top1_lbl_coef = 0.1f};
  MOE_ASSERT_OK_AND_ASSIGN(
      AuxLossValues v,
      AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx, nullptr, d_a));
  const Tensor values = HostTensor({kAuxLossValues}, DType::kF32);
  MOE_ASSERT_OK(AuxLossForwardBackwardInto(ExecContext::Cpu(), config, logits, probs, idx, nullptr,
                                           d_b, values));
  EXPECT_TRUE(testing::AllEqual(d_a, d_b));
  EXPECT_EQ(ToDoubles(values),
            (std::vector<double>{static_cast<float>(v.lbl), static_cast<float>(v.z_loss),
                                 static_cast<float>(v.top1_lbl), static_cast<float>(v.total)}));
  MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues read, ReadAuxLossValues(ExecContext::Cpu(), values));
  EXPECT_EQ(read.total, static_cast<float>(v.total));

  const Tensor none = HostTensor({0, 5}, DType::kF32);
  MOE_ASSERT_OK(AuxLossForwardBackwardInto(ExecContext::Cpu(), config, none, none,
                                           HostTensor({0, 1}, DType::kI32), nullptr, none, values));
  EXPECT_EQ(ToDoubles(values), (std::vector<double>{0, 0, 0, 0}));
  EXPECT_THAT(AuxLossForwardBackwardInto(ExecContext::Cpu(), config, logits, probs, idx, nullptr,
                                         d_b, HostTensor({3}, DType::kF32)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("values.shape")));
}

// logits [[0, 0], [ln 3, 0]] -> probs [[.5, .5], [.75, .25]]; both tokens choose expert 0.
TEST(AuxLossTest, HandWorkedValues) {
  const Tensor logits = FromFloats({0, 0, static_cast<float>(std::log(3.0)), 0}, {2, 2});
  const Tensor probs = HostTensor({2, 2}, DType::kF32);
  MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), logits, probs));
  const Tensor idx = FromInts({0, 0}, {2, 1});
  const Tensor d_logits = HostTensor({2, 2}, DType::kF32);
  const AuxLossConfig config{.lbl_coef = 0.01f, .z_coef = 0.001f, .top1_lbl_coef = 0.1f};
  MOE_ASSERT_OK_AND_ASSIGN(
      AuxLossValues v,
      AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx, nullptr, d_logits));
  const double ln2 = std::log(2.0);
  EXPECT_NEAR(v.lbl, 2 * (1.0 * 0.625 + 0.0 * 0.375), 1e-6);  // f = [1, 0], P = [.625, .375]
  EXPECT_NEAR(v.z_loss, (ln2 * ln2 + 4 * ln2 * ln2) / 2, 1e-6);
  EXPECT_NEAR(v.top1_lbl, 2 * (0.625 * 0.625 + 0.375 * 0.375) / 0.625, 1e-6);
  EXPECT_NEAR(v.total, 0.01f * v.lbl + 0.001f * v.z_loss + 0.1f * v.top1_lbl, 1e-9);
  // The LBL pushes probability away from the overloaded expert 0.
  const AuxLossConfig lbl_only{.lbl_coef = 1.0f};
  MOE_ASSERT_OK(
      AuxLossForwardBackward(ExecContext::Cpu(), lbl_only, logits, probs, idx, nullptr, d_logits)
          .status());
  EXPECT_GT(d_logits.data<float>()[0], 0.0f);
  EXPECT_LT(d_logits.data<float>()[1], 0.0f);
}

struct AuxCase {
  AuxLossConfig config;
  const char* name;
};

// Each loss alone, then all three.
const AuxCase kAuxCases[] = {
    AuxCase{{.lbl_coef = 1.0f}, "lbl"}, AuxCase{{.z_coef = 1.0f}, "z"},
    AuxCase{{.top1_lbl_coef = 1.0f}, "top1"},
    AuxCase{{.lbl_coef = 0.5f, .z_coef = 0.25f, .top1_lbl_coef = 2.0f}, "all"}};

// The reference's top-k of logits [T, E] (doubles) and the shares f it gives.
struct Routed {
  std::vector<int32_t> idx;
  std::vector<double> f;
};
Routed RouteReference(const std::vector<double>& logits, int64_t t, int64_t e, int64_t k) {
  Routed r{std::vector<int32_t>(t * k), {}};
  router_reference::TopK(logits.data(), static_cast<const double*>(nullptr), t, e, k, r.idx.data());
  std::vector<int64_t> counts(e, 0);
  for (int32_t i : r.idx) ++counts[i];
  r.f = router_reference::Shares(counts);
  return r;
}

TEST(AuxLossTest, GradientsMatchFiniteDifferences) {
  const int64_t t = 9, e = 6, k = 2;
  const Tensor logits = RandomNormal({t, e}, 60, 1.5f);
  std::vector<double> ld = ToDoubles(logits);
  std::vector<double> probs(t * e);
  router_reference::Softmax(ld.data(), t, e, probs.data());
  const Routed routed = RouteReference(ld, t, e, k);
  const std::vector<int32_t>& idx = routed.idx;
  const std::vector<double>& f = routed.f;
  for (const AuxCase& c : kAuxCases) {
    SCOPED_TRACE(c.name);
    auto loss = [&](const std::vector<double>& l) {
      std::vector<double> p(t * e);
      router_reference::Softmax(l.data(), t, e, p.data());
      return router_reference::AuxLoss<double>(c.config, l.data(), p.data(), t, e, f, nullptr)
          .total;
    };
    std::vector<double> d_logits(t * e);
    router_reference::AuxLoss<double>(c.config, ld.data(), probs.data(), t, e, f, d_logits.data());
    EXPECT_TRUE(testing::CheckGradient(loss, ld, d_logits, {1e-6, 1e-8, 1e-5}));

    // The f32 op against the fp64 reference.
    const Tensor probs_f = HostTensor({t, e}, DType::kF32);
    MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), logits, probs_f));
    const Tensor d_op = HostTensor({t, e}, DType::kF32);
    MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues v,
                             AuxLossForwardBackward(ExecContext::Cpu(), c.config, logits, probs_f,
                                                    FromInts(idx, {t, k}), nullptr, d_op));
    const AuxLossValues ref =
        router_reference::AuxLoss<double>(c.config, ld.data(), probs.data(), t, e, f, nullptr);
    EXPECT_NEAR(v.total, ref.total, 1e-5 * std::abs(ref.total));
    EXPECT_NEAR(v.lbl, ref.lbl, 1e-5);
    EXPECT_NEAR(v.z_loss, ref.z_loss, 1e-5 * ref.z_loss);
    EXPECT_NEAR(v.top1_lbl, ref.top1_lbl, 1e-5);
    EXPECT_TRUE(testing::AllClose(ToDoubles(d_op), d_logits, {1e-7, 1e-5}));
  }
}

// The CPU path at a Sigma-sized router over many parallel chunks (lse from the softmax, column
// sums per block, f32 gradient rows) against the fp64 reference, for each loss alone and all.
TEST(AuxLossTest, MatchesReferenceAtSigmaShape) {
  const int64_t t = 1500, e = 96, k = 1;
  const Tensor logits = RandomNormal({t, e}, 70, 2.0f);
  const Tensor probs = HostTensor({t, e}, DType::kF32);
  MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), logits, probs));
  const std::vector<double> ld = ToDoubles(logits), pd = ToDoubles(probs);
  const Routed routed = RouteReference(ld, t, e, k);
  const std::vector<int32_t>& idx = routed.idx;
  const std::vector<double>& f = routed.f;
  for (const AuxCase& c : kAuxCases) {
    SCOPED_TRACE(c.name);
    std::vector<double> d_ref(t * e);
    const AuxLossValues ref =
        router_reference::AuxLoss<double>(c.config, ld.data(), pd.data(), t, e, f, d_ref.data());
    const Tensor d_op = HostTensor({t, e}, DType::kF32);
    MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues v,
                             AuxLossForwardBackward(ExecContext::Cpu(), c.config, logits, probs,
                                                    FromInts(idx, {t, k}), nullptr, d_op));
    EXPECT_NEAR(v.lbl, ref.lbl, 1e-6 * ref.lbl);
    EXPECT_NEAR(v.z_loss, ref.z_loss, 1e-6 * ref.z_loss);
    EXPECT_NEAR(v.top1_lbl, ref.top1_lbl, 1e-6 * ref.top1_lbl);
    EXPECT_NEAR(v.total, ref.total, 1e-6 * std::abs(ref.total));
    double scale = 0.0;
    for (double d : d_ref) scale = std::max(scale, std::abs(d));
    EXPECT_TRUE(testing::AllClose(ToDoubles(d_op), d_ref, {1e-6 * scale, 1e-5}));
  }
}

// Adds fixed counts, as if a second rank had routed them.
class AddingCommunicator final : public testing::UnimplementedCommunicator {
 public:
  explicit AddingCommunicator(std::vector<int64_t> other)
      : UnimplementedCommunicator(0, 2), other_(std::move(other)) {}
  Status AllReduceSum(ExecContext&, const TensorView& buffer) override {
    ++calls;
    if (buffer.dtype() != DType::kI64 || buffer.numel() != static_cast<int64_t>(other_.size())) {
      return absl::InvalidArgumentError("unexpected buffer");
    }
    for (size_t i = 0; i < other_.size(); ++i) buffer.data<int64_t>()[i] += other_[i];
    return absl::OkStatus();
  }
  int calls = 0;

 private:
  std::vector<int64_t> other_;
};

TEST(AuxLossTest, GlobalLblUsesGroupCounts) {
  const int64_t t = 7, e = 4, k = 2;
  const Tensor logits = RandomNormal({t, e}, 70);
  const Tensor probs = HostTensor({t, e}, DType::kF32);
  MOE_ASSERT_OK(SoftmaxRows(ExecContext::Cpu(), logits, probs));
  const Tensor idx = FromInts({0, 1, 0, 2, 0, 1, 3, 0, 1, 0, 2, 0, 0, 1}, {t, k});
  const Tensor d_local = HostTensor({t, e}, DType::kF32),
               d_global = HostTensor({t, e}, DType::kF32);
  AuxLossConfig config{.lbl_coef = 0.3f, .z_coef = 0.1f, .top1_lbl_coef = 0.2f};
  MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues local,
                           AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx,
                                                  SingleRankCommunicator(), d_local));
  config.global_lbl = true;
  MOE_ASSERT_OK_AND_ASSIGN(AuxLossValues global,
                           AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx,
                                                  SingleRankCommunicator(), d_global));
  EXPECT_EQ(global.lbl, local.lbl);
  EXPECT_EQ(global.total, local.total);
  EXPECT_TRUE(testing::AllEqual(d_global, d_local));
  MOE_ASSERT_OK_AND_ASSIGN(
      AuxLossValues no_comm,
      AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx, nullptr, d_global));
  EXPECT_EQ(no_comm.lbl, local.lbl);

  // Local counts [7, 4, 2, 1]; the other rank adds [0, 3, 6, 5]: global [7, 7, 8, 6] / 28.
  AddingCommunicator comm({0, 3, 6, 5});
  MOE_ASSERT_OK_AND_ASSIGN(
      AuxLossValues two_rank,
      AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx, &comm, d_global));
  EXPECT_EQ(comm.calls, 1);
  double expected = 0.0;
  const std::vector<double> f = {7.0 / 28, 7.0 / 28, 8.0 / 28, 6.0 / 28};
  for (int64_t i = 0; i < e; ++i) {
    double p_mean = 0.0;
    for (int64_t r = 0; r < t; ++r) p_mean += probs.data<float>()[r * e + i];
    expected += f[i] * p_mean / t;
  }
  EXPECT_NEAR(two_rank.lbl, e * expected, 1e-6);
  EXPECT_EQ(two_rank.z_loss, local.z_loss);
  // Without global_lbl the communicator is not used.
  config.global_lbl = false;
  MOE_ASSERT_OK(
      AuxLossForwardBackward(ExecContext::Cpu(), config, logits, probs, idx, &comm, d_global)
          .status());
  EXPECT_EQ(comm.calls, 1);
}

TEST(AuxLossTest, ZeroTokensGiveZeroValues) {
  const Tensor logits = HostTensor({0, 4}, DType::kF32), probs = HostTensor({0, 4}, DType::kF32);
  const Tensor idx = HostTensor({0, 2}, DType::kI32), d = HostTensor({0, 4}, DType::kF32);
  MOE_ASSERT_OK_AND_ASSIGN(
      AuxLossValues v, AuxLossForwardBackward(ExecContext::Cpu(), {.lbl_coef = 1.0f}, logits, probs,
                                              idx, nullptr, d));
  EXPECT_EQ(v.total, 0.0);
  EXPECT_EQ(v.lbl, 0.0);
}

TEST(AuxLossTest, BadInputs) {
  const Tensor logits = RandomNormal({3, 4}, 80), probs = RandomNormal({3, 4}, 81);
  const Tensor idx = FromInts({0, 1, 2}, {3, 1}), d = HostTensor({3, 4}, DType::kF32);
  EXPECT_THAT(
      AuxLossForwardBackward(ExecContext::Cpu(), {}, logits, probs, HostTensor({3, 5}, DType::kI32),
                             nullptr, d),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx.shape: got [3, 5]")));
  EXPECT_THAT(
      AuxLossForwardBackward(ExecContext::Cpu(), {}, logits, probs, idx, nullptr,
                             HostTensor({3, 3}, DType::kF32)),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("d_logits.shape: got [3, 3]")));
  EXPECT_THAT(AuxLossForwardBackward(ExecContext::Cpu(), {}, logits,
                                     HostTensor({3, 4}, DType::kBF16), idx, nullptr, d),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("probs.dtype: got bf16")));
  EXPECT_THAT(
      AuxLossForwardBackward(ExecContext::Cpu(), {.z_coef = NAN}, logits, probs, idx, nullptr, d),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("config.z_coef")));
  EXPECT_THAT(AuxLossForwardBackward(ExecContext::Cpu(), {}, logits, probs,
                                     FromInts({0, 4, 1}, {3, 1}), nullptr, d),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx[1, 0]: got 4")));
}

}  // namespace
}  // namespace smoe
