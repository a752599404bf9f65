// gMock matchers for absl::Status and StatusOr.
//   EXPECT_THAT(DoThing(), IsOk());
//   EXPECT_THAT(DoThing(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("x.shape")));
#pragma once

#include "gmock/gmock.h"
#include "runtime/core/status.h"

namespace smoe::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = GetStatus(arg);
  if (!status.ok()) *result_listener << "status is " << status.ToString();
  return status.ok();
}

MATCHER_P2(StatusIs, code, message_matcher,
           "has code " + ::testing::PrintToString(code) + " and a matching message") {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status is " << status.ToString();
  return status.code() == code &&
         ::testing::Matches(message_matcher)(std::string(status.message()));
}

}  // namespace smoe::testing

#define MOE_ASSERT_OK(expr) ASSERT_THAT((expr), ::smoe::testing::IsOk())
#define MOE_EXPECT_OK(expr) EXPECT_THAT((expr), ::smoe::testing::IsOk())
// Declares `lhs` from a StatusOr expression, failing the test if it is not OK.
#define MOE_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  MOE_ASSERT_OK_AND_ASSIGN_IMPL(MOE_STATUS_CONCAT(moe_test_or_, __LINE__), lhs, expr)
#define MOE_ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();   \
  lhs = std::move(tmp).value()
