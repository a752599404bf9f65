// StreamTimer: with a fake asynchronous stream (work returns at once and runs "later"), the timer
// measures the work itself, where the bare host clock measures only its launch.
#include "runtime/device/stream_timer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using Clock = std::chrono::steady_clock;

// A stream whose enqueued work finishes `ms` after it is enqueued; Wait blocks until it has.
class FakeAsyncStream {
 public:
  void Enqueue(int ms) {
    const Clock::time_point start = std::max(done_, Clock::now());
    done_ = start + std::chrono::milliseconds(ms);
  }
  Status Wait() {
    ++waits_;
    std::this_thread::sleep_until(done_);
    return absl::OkStatus();
  }
  int waits() const { return waits_; }

 private:
  Clock::time_point done_ = Clock::now();
  int waits_ = 0;
};

constexpr int kSlowLayerMs = 80;

TEST(StreamTimerTest, MeasuresAsynchronousWorkNotItsLaunch) {
  FakeAsyncStream stream;
  StreamTimer timer([&] { return stream.Wait(); });
  MOE_ASSERT_OK(timer.Start());
  stream.Enqueue(kSlowLayerMs);  // the fake slow layer: returns at once
  MOE_ASSERT_OK_AND_ASSIGN(const double ms, timer.StopMs());
  EXPECT_GE(ms, kSlowLayerMs);
  EXPECT_EQ(stream.waits(), 2);
}

// Work enqueued before Start is not charged to the measured stretch.
TEST(StreamTimerTest, WaitsForEarlierWorkBeforeStarting) {
  FakeAsyncStream stream;
  stream.Enqueue(kSlowLayerMs);
  StreamTimer timer([&] { return stream.Wait(); });
  MOE_ASSERT_OK(timer.Start());
  stream.Enqueue(1);
  MOE_ASSERT_OK_AND_ASSIGN(const double ms, timer.StopMs());
  EXPECT_LT(ms, kSlowLayerMs / 2);
}

// The failure the timer exists to prevent: without waiting, the host clock sees only the launch.
TEST(StreamTimerTest, TheBareHostClockMissesTheWork) {
  FakeAsyncStream stream;
  StreamTimer bare(nullptr);
  MOE_ASSERT_OK(bare.Start());
  stream.Enqueue(kSlowLayerMs);
  MOE_ASSERT_OK_AND_ASSIGN(const double ms, bare.StopMs());
  EXPECT_LT(ms, kSlowLayerMs / 2);
  MOE_ASSERT_OK(stream.Wait());
}

// On the CPU work runs when called: no syncs are spent.
TEST(StreamTimerTest, CpuContextsAreNotSynchronized) {
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(Device::Cpu()));
  StreamTimer timer = StreamTimer::For(*ctx);
  MOE_ASSERT_OK(timer.Start());
  MOE_ASSERT_OK(timer.StopMs().status());
  EXPECT_EQ(ctx->host_syncs(), 0);
}

}  // namespace
}  // namespace smoe
