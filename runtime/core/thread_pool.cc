#include "runtime/core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/core/launcher_env.h"

// OpenBLAS's thread setting, when the BLAS linked in is OpenBLAS (weak: absent elsewhere).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace smoe {
namespace {

thread_local bool in_region = false;

// Runs chunks [next, ...) of the job until none is left, marking the thread as inside a region.
void RunChunks(std::atomic<int64_t>& next, int64_t n, int64_t grain, ChunkFn fn) {
  const bool outer = in_region;
  in_region = true;
  for (int64_t begin = next.fetch_add(grain); begin < n; begin = next.fetch_add(grain)) {
    fn(begin, std::min(n, begin + grain));
  }
  in_region = outer;
}

void RunInline(int64_t n, int64_t grain, ChunkFn fn) {
  for (int64_t begin = 0; begin < n; begin += grain) fn(begin, std::min(n, begin + grain));
}

}  // namespace

struct ThreadPool::State {
  std::mutex mutex;              // guards everything below but `next`
  std::condition_variable wake;  // workers: a new job (generation) or stop
  std::condition_variable done;  // the caller: active reached 0
  uint64_t generation = 0;
  bool stop = false;
  const ChunkFn* fn = nullptr;  // the job; null between jobs
  int64_t n = 0, grain = 1;
  std::atomic<int64_t> next{0};
  int active = 0;     // workers running the job's chunks
  std::mutex caller;  // one job at a time; a second caller runs inline
  std::vector<std::thread> workers;
};

ThreadPool::ThreadPool(int threads) : threads_(std::max(threads, 1)), state_(new State) {
  for (int w = 1; w < threads_; ++w) {
    state_->workers.emplace_back([s = state_] {
      uint64_t seen = 0;
      std::unique_lock<std::mutex> lock(s->mutex);
      for (;;) {
        s->wake.wait(lock, [&] { return s->stop || s->generation != seen; });
        if (s->stop) return;
        seen = s->generation;
        // Join only while chunks are left: once they are all taken, the caller may be about to
        // return, and the job (fn) must not be touched after that.
        if (s->fn == nullptr || s->next.load() >= s->n) continue;
        ++s->active;
        const ChunkFn fn = *s->fn;
        const int64_t n = s->n, grain = s->grain;
        lock.unlock();
        RunChunks(s->next, n, grain, fn);
        lock.lock();
        if (--s->active == 0) s->done.notify_one();
      }
    });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stop = true;
  }
  state_->wake.notify_all();
  for (std::thread& t : state_->workers) t.join();
  delete state_;
}

bool ThreadPool::InParallelRegion() { return in_region; }

void ThreadPool::ParallelFor(int64_t n, int64_t grain, ChunkFn fn) {
  grain = std::max<int64_t>(grain, 1);
  if (n <= 0) return;
  State& s = *state_;
  if (threads_ == 1 || n <= grain || in_region) return RunInline(n, grain, fn);
  std::unique_lock<std::mutex> caller(s.caller, std::try_to_lock);
  if (!caller.owns_lock()) return RunInline(n, grain, fn);
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.fn = &fn;
    s.n = n;
    s.grain = grain;
    s.next.store(0);
    ++s.generation;
  }
  s.wake.notify_all();
  RunChunks(s.next, n, grain, fn);
  std::unique_lock<std::mutex> lock(s.mutex);
  s.done.wait(lock, [&] { return s.active == 0; });
  s.fn = nullptr;
}

namespace {

std::mutex pool_mutex;
std::unique_ptr<ThreadPool> pool;
int requested_threads = 0;  // SetCpuThreads; 0 = default

int DefaultThreads() {
  if (const char* env = std::getenv("MOE_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, hardware / std::max(1, LocalRankFromEnvironment(0, 1).size));
}

}  // namespace

int CpuThreads() { return requested_threads > 0 ? requested_threads : DefaultThreads(); }

ThreadPool& CpuPool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!pool) {
    if (openblas_set_num_threads != nullptr) openblas_set_num_threads(1);
    pool = std::make_unique<ThreadPool>(CpuThreads());
  }
  return *pool;
}

void SetCpuThreads(int n) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  requested_threads = std::max(n, 0);
  if (pool && pool->threads() != CpuThreads()) pool.reset();
}

void ParallelFor(int64_t n, int64_t work_per_item, ChunkFn fn, int64_t min_work) {
  const int64_t work = std::max<int64_t>(work_per_item, 1);
  const int64_t grain = std::max<int64_t>(1, (min_work + work - 1) / work);
  ThreadPool& pool = CpuPool();  // made before any BLAS call, which it sets to one thread
  if (n <= grain) {
    if (n > 0) fn(0, n);
    return;
  }
  pool.ParallelFor(n, grain, fn);
}

}  // namespace smoe
