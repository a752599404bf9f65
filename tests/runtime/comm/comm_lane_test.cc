// CommLane on the CPU: tasks run on another thread, one at a time and in submission order, while
// the submitter goes on; a failure skips the tasks after it until Drain; tickets are waited once.
#include "runtime/comm/comm_lane.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CommLaneTest, RunsTasksInOrderOnAnotherThreadWhileTheSubmitterGoesOn) {
  ExecContext& ctx = ExecContext::Cpu();
  CommLane lane;
  std::vector<int> order;
  std::atomic<bool> release{false};
  const std::thread::id submitter = std::this_thread::get_id();
  std::thread::id ran_on;
  MOE_ASSERT_OK_AND_ASSIGN(const int64_t first, lane.Submit(ctx, [&](ExecContext& lane_ctx) {
    EXPECT_NE(&lane_ctx, &ctx);
    ran_on = std::this_thread::get_id();
    while (!release.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    order.push_back(1);
    return absl::OkStatus();
  }));
  MOE_ASSERT_OK_AND_ASSIGN(const int64_t second, lane.Submit(ctx, [&](ExecContext&) {
    order.push_back(2);
    return absl::OkStatus();
  }));
  // The first task is blocked on us: Submit returned without running it.
  EXPECT_EQ(lane.pending(), 2);
  release = true;
  MOE_EXPECT_OK(lane.Wait(ctx, second));
  MOE_EXPECT_OK(lane.Wait(ctx, first));
  EXPECT_THAT(order, ElementsAre(1, 2));
  EXPECT_NE(ran_on, submitter);
  EXPECT_EQ(lane.pending(), 0);
  EXPECT_THAT(lane.Wait(ctx, first), StatusIs(absl::StatusCode::kNotFound, ::testing::_));
}

TEST(CommLaneTest, AFailureSkipsTheTasksAfterItUntilDrain) {
  ExecContext& ctx = ExecContext::Cpu();
  CommLane lane;
  int ran = 0;
  MOE_ASSERT_OK_AND_ASSIGN(const int64_t bad, lane.Submit(ctx, [&](ExecContext&) {
    ++ran;
    return absl::DeadlineExceededError("AllToAllV (MPI_Ialltoallv) timed out");
  }));
  MOE_ASSERT_OK_AND_ASSIGN(const int64_t after, lane.Submit(ctx, [&](ExecContext&) {
    ++ran;
    return absl::OkStatus();
  }));
  EXPECT_THAT(lane.Wait(ctx, bad), StatusIs(absl::StatusCode::kDeadlineExceeded, ::testing::_));
  EXPECT_THAT(lane.Wait(ctx, after),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("AllToAllV (MPI_Ialltoallv)")));
  EXPECT_EQ(ran, 1);
  // Drain forgets the failure (and tickets never waited for).
  MOE_ASSERT_OK(lane.Submit(ctx, [](ExecContext&) { return absl::OkStatus(); }).status());
  lane.Drain(ctx);
  EXPECT_EQ(lane.pending(), 0);
  MOE_ASSERT_OK_AND_ASSIGN(const int64_t fine, lane.Submit(ctx, [&](ExecContext&) {
    ++ran;
    return absl::OkStatus();
  }));
  MOE_EXPECT_OK(lane.Wait(ctx, fine));
  EXPECT_EQ(ran, 2);
}

TEST(CommLaneTest, DestructionWaitsForQueuedTasks) {
  std::atomic<int> ran{0};
  {
    CommLane lane;
    for (int i = 0; i < 4; ++i) {
      MOE_ASSERT_OK(lane.Submit(ExecContext::Cpu(),
                                [&](ExecContext&) {
                                  std::this_thread::sleep_for(std::chrono::milliseconds(2));
                                  ++ran;
                                  return absl::OkStatus();
                                })
                        .status());
    }
  }
  EXPECT_EQ(ran.load(), 4);
}

}  // namespace
}  // namespace smoe
