// CUDA vs CPU parity of GatherRows (moe/dispatch/regroup.h): rows copied bit for bit, for every
// word width the kernel picks (16-, 4- and 2-byte rows). Skips without a GPU.
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "moe/dispatch/regroup.h"
#include "runtime/core/philox.h"
#include "tests/testing/parity.h"

namespace smoe {
namespace {

using testing::CheckParity;
using testing::Input;
using testing::Output;
using testing::ParityArgs;

// S source rows, N gathered rows, C columns, dtype.
using Case = std::tuple<int64_t, int64_t, int64_t, DType>;
class GatherRowsParityTest : public ::testing::TestWithParam<Case> {};

TEST_P(GatherRowsParityTest, MatchesCpuExactly) {
  MOE_SKIP_WITHOUT_CUDA();
  const auto [s, n, c, dtype] = GetParam();
  auto fill_index = [s = s](const TensorView& index) {
    int32_t* idx = index.data<int32_t>();
    for (int64_t i = 0; i < index.numel(); ++i) {
      idx[i] = static_cast<int32_t>(PhiloxBits(5, static_cast<uint64_t>(i)) % s);
    }
  };
  EXPECT_TRUE(
      CheckParity({Input("src", {s, c}, dtype), Input("index", {n}, DType::kI32, fill_index),
                   Output("dst", {n, c}, dtype, testing::Tolerance{0.0, 0.0})},
                  [](ExecContext& ctx, const ParityArgs& t) {
                    return GatherRows(ctx, t["src"], t["index"], t["dst"]);
                  }));
}

// "S37_N100_C33_f32"
std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const auto [s, n, c, dtype] = info.param;
  return absl::StrCat("S", s, "_N", n, "_C", c, "_", DTypeName(dtype));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatherRowsParityTest,
                         ::testing::Values(Case{1, 1, 1, DType::kF32},
                                           Case{37, 100, 16, DType::kF32},    // 64-byte rows
                                           Case{37, 100, 33, DType::kF32},    // 4-byte words
                                           Case{50, 70000, 8, DType::kBF16},  // > 65535 rows
                                           Case{50, 20, 33, DType::kBF16},    // 2-byte words
                                           Case{300, 129, 64, DType::kBF16}),
                         CaseName);

}  // namespace
}  // namespace smoe
