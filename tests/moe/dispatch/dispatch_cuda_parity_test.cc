// CUDA vs CPU parity of moe/dispatch: plan integers exact, floats by dtype. Skips without a GPU.
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/dispatch/permute.h"
#include "moe/dispatch/routing_plan.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/moe/dispatch/dispatch_testing.h"
#include "tests/testing/parity.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using testing::CheckParity;
using ::testing::HasSubstr;
using testing::Input;
using testing::Output;
using testing::ParityArgs;
using testing::RandomRouting;
using testing::Skew;
using testing::StatusIs;
using testing::ToInts;

std::vector<int64_t> Prefix(const TensorView& t, int64_t n) {
  std::vector<int64_t> all = ToInts(t);
  all.resize(n);
  return all;
}

std::unique_ptr<ExecContext> Gpu() {
  StatusOr<std::unique_ptr<ExecContext>> gpu = ExecContext::Create(Device::Cuda(0));
  MOE_CHECK_OK(gpu.status());
  return *std::move(gpu);
}

// T, E, K (K = 0 stands for K = E), capacity factor (0 = dropless), dtype.
using PlanCase = std::tuple<int64_t, int, int, float, DType>;
class DispatchParityTest : public ::testing::TestWithParam<PlanCase> {
 protected:
  void SetUp() override {
    const auto [t_count, e_count, k_param, factor, dtype] = GetParam();
    k_count_ = k_param == 0 ? e_count : k_param;
    if (k_count_ > e_count) GTEST_SKIP() << "K > E";
    t_count_ = t_count;
    config_ = PlanConfig{e_count, k_count_, factor};
    dtype_ = dtype;
    // Not a multiple of the 16-byte pack for E = 8, so both kernel paths run.
    m_ = e_count == 8 ? 33 : 64;
    // Skewed routings overflow capacity and leave experts empty; with K = E every expert is
    // chosen by every token anyway, and a uniform draw is much cheaper.
    idx_ = RandomRouting(t_count, k_count_, e_count, 100 + e_count + k_count_,
                         k_count_ == e_count ? Skew::kUniform : Skew::kSkewed);
  }
  int64_t t_count_ = 0, m_ = 0;
  int k_count_ = 0;
  PlanConfig config_;
  DType dtype_ = DType::kF32;
  Tensor idx_;
};

TEST_P(DispatchParityTest, PlanIntegersAreIdentical) {
  MOE_SKIP_WITHOUT_CUDA();
  RoutingPlan cpu_plan, gpu_plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), config_, idx_, &cpu_plan));
  std::unique_ptr<ExecContext> gpu = Gpu();
  MOE_ASSERT_OK_AND_ASSIGN(Tensor idx, CopyTo(*gpu, idx_, Device::Cuda(0)));
  MOE_ASSERT_OK(BuildRoutingPlan(*gpu, config_, idx, &gpu_plan));
  const int64_t rows = cpu_plan.num_rows();
  EXPECT_EQ(gpu_plan.offsets_host, cpu_plan.offsets_host);
  EXPECT_EQ(gpu_plan.dropped_host, cpu_plan.dropped_host);
  EXPECT_EQ(gpu_plan.capacity, cpu_plan.capacity);
  EXPECT_EQ(ToInts(gpu_plan.counts), ToInts(cpu_plan.counts));
  EXPECT_EQ(ToInts(gpu_plan.offsets), ToInts(cpu_plan.offsets));
  EXPECT_EQ(ToInts(gpu_plan.slots), ToInts(cpu_plan.slots));
  EXPECT_EQ(ToInts(gpu_plan.num_dropped), ToInts(cpu_plan.num_dropped));
  EXPECT_EQ(Prefix(gpu_plan.row_token, rows), Prefix(cpu_plan.row_token, rows));
  EXPECT_EQ(Prefix(gpu_plan.row_choice, rows), Prefix(cpu_plan.row_choice, rows));
}

TEST_P(DispatchParityTest, OpsMatchCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  RoutingPlan cpu_plan;
  MOE_ASSERT_OK(BuildRoutingPlan(ExecContext::Cpu(), config_, idx_, &cpu_plan));
  const int64_t t = t_count_, k = k_count_, m = m_, rows = cpu_plan.num_rows();
  auto fill_idx = [&](const TensorView& host) {
    MOE_CHECK_OK(Copy(ExecContext::Cpu(), idx_, host));
  };
  const testing::Tolerance dot_tolerance{1e-4, 1e-4};
  const PlanConfig config = config_;
  EXPECT_TRUE(CheckParity(
      {Input("topk_idx", {t, k}, DType::kI32, fill_idx), Input("x", {t, m}, dtype_),
       Input("ys", {rows, m}, dtype_), Input("dy", {t, m}, dtype_),
       Input("gates", {t, k}, DType::kF32), Output("xs", {rows, m}, dtype_),
       Output("dx", {t, m}, dtype_), Output("y", {t, m}, dtype_), Output("dys", {rows, m}, dtype_),
       Output("dgates", {t, k}, DType::kF32, dot_tolerance), Output("slots", {t, k}, DType::kI32),
       Output("row_token", {rows}, DType::kI32)},
      [&](ExecContext& ctx, const ParityArgs& a) -> Status {
        RoutingPlan plan;
        MOE_RETURN_IF_ERROR(BuildRoutingPlan(ctx, config, a["topk_idx"], &plan));
        MOE_RETURN_IF_ERROR(Permute(ctx, plan, a["x"], a["xs"]));
        MOE_RETURN_IF_ERROR(PermuteBackward(ctx, plan, a["ys"], a["dx"]));
        MOE_RETURN_IF_ERROR(Combine(ctx, plan, a["ys"], a["gates"], a["y"]));
        MOE_RETURN_IF_ERROR(
            CombineBackward(ctx, plan, a["dy"], a["ys"], a["gates"], a["dys"], a["dgates"]));
        MOE_RETURN_IF_ERROR(Copy(ctx, plan.slots, a["slots"]));
        return Copy(ctx, plan.row_token.view().Rows(0, rows), a["row_token"]);
      }));
}

std::string CaseName(const ::testing::TestParamInfo<PlanCase>& info) {
  const auto [t, e, k, factor, dtype] = info.param;
  return absl::StrCat("T", t, "_E", e, "_K", k == 0 ? std::string("E") : absl::StrCat(k),
                      factor > 0 ? "_capacity" : "_dropless", "_", DTypeName(dtype));
}

INSTANTIATE_TEST_SUITE_P(Grid, DispatchParityTest,
                         ::testing::Combine(::testing::Values(1, 1000), ::testing::Values(1, 8, 96),
                                            ::testing::Values(1, 2, 0),
                                            ::testing::Values(0.0f, 1.0f),
                                            ::testing::Values(DType::kF32, DType::kBF16)),
                         CaseName);

TEST(DispatchCudaTest, OutOfRangeIdIsReportedLikeTheCpu) {
  MOE_SKIP_WITHOUT_CUDA();
  Tensor idx = RandomRouting(300, 2, 8, 3);
  idx.data<int32_t>()[2 * 123 + 1] = 8;
  idx.data<int32_t>()[2 * 200] = -5;
  RoutingPlan cpu_plan, gpu_plan;
  const Status cpu = BuildRoutingPlan(ExecContext::Cpu(), {8, 2, 1.0f}, idx, &cpu_plan);
  EXPECT_THAT(cpu, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr("topk_idx[123, 1]: got 8, expected an expert id in [0, 8)")));
  std::unique_ptr<ExecContext> gpu = Gpu();
  MOE_ASSERT_OK_AND_ASSIGN(Tensor gpu_idx, CopyTo(*gpu, idx, Device::Cuda(0)));
  EXPECT_EQ(BuildRoutingPlan(*gpu, {8, 2, 1.0f}, gpu_idx, &gpu_plan), cpu);
}

TEST(DispatchCudaTest, ZeroTokens) {
  MOE_SKIP_WITHOUT_CUDA();
  std::unique_ptr<ExecContext> gpu = Gpu();
  MOE_ASSERT_OK_AND_ASSIGN(Tensor idx, Tensor::Empty({0, 2}, DType::kI32, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor x, Tensor::Empty({0, 16}, DType::kF32, Device::Cuda(0)));
  MOE_ASSERT_OK_AND_ASSIGN(Tensor gates, Tensor::Empty({0, 2}, DType::kF32, Device::Cuda(0)));
  RoutingPlan plan;
  MOE_ASSERT_OK(BuildRoutingPlan(*gpu, {4, 2, 1.0f}, idx, &plan));
  EXPECT_EQ(ToInts(plan.offsets), std::vector<int64_t>(5, 0));
  EXPECT_EQ(plan.num_rows(), 0);
  MOE_EXPECT_OK(Permute(*gpu, plan, x, x));
  MOE_EXPECT_OK(PermuteBackward(*gpu, plan, x, x));
  MOE_EXPECT_OK(Combine(*gpu, plan, x, gates, x));
  MOE_EXPECT_OK(CombineBackward(*gpu, plan, x, x, gates, x, gates));
  MOE_EXPECT_OK(gpu->Synchronize());
}

TEST(DispatchCudaTest, PlanOnCudaRejectsCpuTensors) {
  MOE_SKIP_WITHOUT_CUDA();
  std::unique_ptr<ExecContext> gpu = Gpu();
  RoutingPlan plan;
  EXPECT_THAT(BuildRoutingPlan(*gpu, {8, 2, 1.0f}, RandomRouting(4, 2, 8, 1), &plan),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("topk_idx.device")));
}

}  // namespace
}  // namespace smoe
