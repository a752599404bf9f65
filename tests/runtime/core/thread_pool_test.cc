#include "runtime/core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace smoe {
namespace {

// Every index is visited exactly once, in chunks of exactly `grain` (the last one shorter).
TEST(ThreadPoolTest, ChunksCoverTheRangeOnceWithFixedBoundaries) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 7, 64, 1000}) {
      for (int64_t grain : {1, 3, 64}) {
        std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
        std::mutex mutex;
        std::set<std::pair<int64_t, int64_t>> chunks;
        pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) seen[i].fetch_add(1);
          std::lock_guard<std::mutex> lock(mutex);
          chunks.insert({begin, end});
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << i;
        std::set<std::pair<int64_t, int64_t>> want;
        for (int64_t b = 0; b < n; b += grain) want.insert({b, std::min(n, b + grain)});
        EXPECT_EQ(chunks, want) << "threads " << threads << " n " << n << " grain " << grain;
      }
    }
  }
}

// The work is shared: with 2 threads and chunks that wait for each other, both threads run.
TEST(ThreadPoolTest, WorkersRunChunksConcurrently) {
  ThreadPool pool(2);
  std::atomic<int> arrived{0};
  std::mutex mutex;
  std::set<std::thread::id> ids;
  pool.ParallelFor(2, 1, [&](int64_t, int64_t) {
    arrived.fetch_add(1);
    // Each chunk waits (bounded) for the other to start: only possible on two threads.
    for (int spin = 0; spin < 2000000 && arrived.load() < 2; ++spin) std::this_thread::yield();
    std::lock_guard<std::mutex> lock(mutex);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_EQ(arrived.load(), 2);
  EXPECT_EQ(ids.size(), 2u);
}

// A ParallelFor inside a chunk runs inline on that thread, and everything completes.
TEST(ThreadPoolTest, NestedCallsRunInline) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> seen(64 * 8);
  pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end) {
    EXPECT_TRUE(ThreadPool::InParallelRegion());
    const std::thread::id outer = std::this_thread::get_id();
    for (int64_t i = begin; i < end; ++i) {
      pool.ParallelFor(8, 1, [&](int64_t b, int64_t e) {
        EXPECT_EQ(std::this_thread::get_id(), outer);
        for (int64_t j = b; j < e; ++j) seen[i * 8 + j].fetch_add(1);
      });
    }
  });
  EXPECT_FALSE(ThreadPool::InParallelRegion());
  for (auto& s : seen) EXPECT_EQ(s.load(), 1);
}

// Two threads calling one pool at once: both complete (the second runs inline while busy).
TEST(ThreadPoolTest, ConcurrentCallersBothComplete) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  auto work = [&] {
    for (int r = 0; r < 200; ++r) {
      pool.ParallelFor(100, 7, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
    }
  };
  std::thread other(work);
  work();
  other.join();
  EXPECT_EQ(total.load(), 2 * 200 * 100);
}

TEST(ThreadPoolTest, ProcessPoolFollowsSetCpuThreads) {
  SetCpuThreads(3);
  EXPECT_EQ(CpuThreads(), 3);
  EXPECT_EQ(CpuPool().threads(), 3);
  SetCpuThreads(1);
  EXPECT_EQ(CpuPool().threads(), 1);
  SetCpuThreads(0);  // back to the default
  EXPECT_GE(CpuPool().threads(), 1);
}

// The free ParallelFor: chunks of ceil(min_work / work_per_item) items; one chunk runs inline.
TEST(ThreadPoolTest, FreeParallelForChunksByWork) {
  std::mutex mutex;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  ParallelFor(
      10, 3,
      [&](int64_t b, int64_t e) {
        std::lock_guard<std::mutex> lock(mutex);
        chunks.push_back({b, e});
      },
      /*min_work=*/10);
  std::sort(chunks.begin(), chunks.end());
  const std::vector<std::pair<int64_t, int64_t>> want = {{0, 4}, {4, 8}, {8, 10}};
  EXPECT_EQ(chunks, want);
  chunks.clear();
  ParallelFor(
      5, 1,
      [&](int64_t b, int64_t e) {
        chunks.push_back({b, e});
      },
      100);
  EXPECT_EQ(chunks, (std::vector<std::pair<int64_t, int64_t>>{{0, 5}}));
}

}  // namespace
}  // namespace smoe
