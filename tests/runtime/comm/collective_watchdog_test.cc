// CollectiveWatchdog: a collective that outlives the timeout is reported once, naming itself, the
// group and the rank; one that ends in time, or any with the timeout off, is not.
#include "runtime/comm/collective_watchdog.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/comm/communicator.h"
#include "tests/testing/status_matchers.h"

namespace smoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

struct Reports {
  std::mutex mutex;
  std::vector<std::string> messages;
  CollectiveWatchdog::OnTimeout Callback() {
    return [this](const std::string& m) {
      std::lock_guard<std::mutex> lock(mutex);
      messages.push_back(m);
    };
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mutex);
    return messages.size();
  }
};

TEST(CollectiveWatchdogTest, ReportsACollectiveThatOutlivesTheTimeoutOnce) {
  Reports reports;
  CollectiveWatchdog watchdog(reports.Callback(), [] { return 0.05; });
  { const auto quick = watchdog.Enter("AllReduceSum (MPI_Allreduce)", 0, 4); }
  const auto stuck = watchdog.Enter("AllToAllV (MPI_Alltoallv)", 2, 4);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (reports.size() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // no second report
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_TRUE(watchdog.fired());
  EXPECT_THAT(reports.messages[0],
              AllOf(HasSubstr("AllToAllV (MPI_Alltoallv)"), HasSubstr("group of 4 ranks"),
                    HasSubstr("rank 2 of it"), HasSubstr("within 0.05 s"),
                    HasSubstr("parallel.collective_timeout_s")));
}

TEST(CollectiveWatchdogTest, NothingFiresInTimeOrWithoutATimeout) {
  Reports reports;
  std::atomic<double> timeout{0.0};
  CollectiveWatchdog watchdog(reports.Callback(), [&] { return timeout.load(); });
  {
    const auto forever = watchdog.Enter("Barrier (MPI_Barrier)", 1, 2);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  timeout = 5.0;
  for (int i = 0; i < 100; ++i) {
    const auto quick = watchdog.Enter("AllGather (MPI_Allgather)", 0, 2);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(reports.size(), 0u);
  EXPECT_FALSE(watchdog.fired());
}

TEST(CollectiveTimeoutTest, SetAndValidated) {
  const double before = CollectiveTimeoutSeconds();
  MOE_EXPECT_OK(SetCollectiveTimeoutSeconds(7.5));
  EXPECT_EQ(CollectiveTimeoutSeconds(), 7.5);
  EXPECT_THAT(SetCollectiveTimeoutSeconds(-1), testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                                                 HasSubstr("collective timeout")));
  MOE_EXPECT_OK(SetCollectiveTimeoutSeconds(before));
}

}  // namespace
}  // namespace smoe
