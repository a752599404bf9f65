#include "runtime/core/op_profile.h"

#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace smoe {
namespace {

void Sleep(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// A scope's time excludes the scopes opened inside it; nothing is counted while no profile is
// active.
TEST(OpProfileTest, NestedScopesCountExclusiveTime) {
  OpProfile profile;
  {
    const OpScope ignored(OpKind::kRouter);  // before activation: not counted
    Sleep(5);
  }
  SetActiveOpProfile(&profile);
  {
    const OpScope outer(OpKind::kAttention);
    Sleep(20);
    {
      const OpScope inner(OpKind::kAttentionCore);
      Sleep(40);
    }
  }
  SetActiveOpProfile(nullptr);
  const double attention = profile.seconds[static_cast<int>(OpKind::kAttention)];
  const double core = profile.seconds[static_cast<int>(OpKind::kAttentionCore)];
  EXPECT_EQ(profile.seconds[static_cast<int>(OpKind::kRouter)], 0.0);
  EXPECT_GE(core, 0.040);
  EXPECT_GE(attention, 0.020);
  EXPECT_LT(attention, 0.058);  // with the inner 40 ms it would be >= 60 ms
}

TEST(OpProfileTest, KindsHaveNames) {
  for (int k = 0; k < static_cast<int>(OpKind::kCount); ++k) {
    EXPECT_STRNE(OpKindName(static_cast<OpKind>(k)), "?");
  }
}

}  // namespace
}  // namespace smoe
