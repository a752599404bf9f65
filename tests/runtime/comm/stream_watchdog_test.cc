// StreamWatchdog with fake collectives: a collective that never finishes (a dead peer) and a
// communicator error both abort exactly once and fail the next collective; finished ones do not.
#include "runtime/comm/stream_watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "gmock/gmock.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::smoe::testing::StatusIs;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

struct FakeCommunicator {
  std::atomic<int> aborts{0};
  std::atomic<bool> broken{false};
  StreamWatchdog::Hooks hooks() {
    return {[this]() -> Status {
              return broken ? absl::UnavailableError("remote rank closed its connection")
                            : absl::OkStatus();
            },
            [this] { ++aborts; }};
  }
};

// Polls `ready` for up to 5 s.
template <typename F>
bool Eventually(F ready) {
  for (int i = 0; i < 500; ++i) {
    if (ready()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return ready();
}

TEST(StreamWatchdogTest, FinishedCollectivesAreForgotten) {
  FakeCommunicator comm;
  StreamWatchdog watchdog(200ms, 5ms, comm.hooks());
  for (int i = 0; i < 10; ++i) MOE_ASSERT_OK(watchdog.Watch([] { return true; }));
  EXPECT_TRUE(Eventually([&] { return watchdog.pending() == 0; }));
  std::this_thread::sleep_for(300ms);
  MOE_EXPECT_OK(watchdog.status());
  EXPECT_EQ(comm.aborts, 0);
}

// A slow collective that finishes within the timeout is not a failure.
TEST(StreamWatchdogTest, SlowButWithinTheTimeoutIsFine) {
  FakeCommunicator comm;
  StreamWatchdog watchdog(500ms, 5ms, comm.hooks());
  const auto finish = std::chrono::steady_clock::now() + 100ms;
  MOE_ASSERT_OK(watchdog.Watch([finish] { return std::chrono::steady_clock::now() > finish; }));
  EXPECT_TRUE(Eventually([&] { return watchdog.pending() == 0; }));
  MOE_EXPECT_OK(watchdog.status());
  EXPECT_EQ(comm.aborts, 0);
}

// The fake dead peer: a collective that never finishes.
TEST(StreamWatchdogTest, ACollectiveThatNeverFinishesAbortsAfterTheTimeout) {
  FakeCommunicator comm;
  StreamWatchdog watchdog(150ms, 5ms, comm.hooks());
  const auto start = std::chrono::steady_clock::now();
  MOE_ASSERT_OK(watchdog.Watch([] { return true; }));
  MOE_ASSERT_OK(watchdog.Watch([] { return false; }));
  ASSERT_TRUE(Eventually([&] { return comm.aborts > 0; }));
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.15);
  EXPECT_LT(waited, 2.0);
  EXPECT_THAT(watchdog.status(), StatusIs(absl::StatusCode::kDeadlineExceeded,
                                          HasSubstr("parallel.collective_timeout_s")));
  // The next collective fails at once; the abort happened once.
  EXPECT_THAT(watchdog.Watch([] { return true; }),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("aborted")));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(comm.aborts, 1);
  EXPECT_EQ(watchdog.pending(), 0);
}

TEST(StreamWatchdogTest, TheCommunicatorsOwnErrorAborts) {
  FakeCommunicator comm;
  StreamWatchdog watchdog(10s, 5ms, comm.hooks());
  MOE_ASSERT_OK(watchdog.Watch([] { return false; }));
  comm.broken = true;
  ASSERT_TRUE(Eventually([&] { return comm.aborts > 0; }));
  EXPECT_THAT(watchdog.status(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("remote rank")));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(comm.aborts, 1);
}

}  // namespace
}  // namespace smoe
