// The CPU's one pool of worker threads (issue 14), shared by every CPU op of the process.
//
// Why one pool: a CPU training step is hundreds of small ops. When each op (or each BLAS call)
// brings its own threads, the threads of one spin or yield while the next op's start, and on a
// 2-core machine a third of the step went to sched_yield. Here the only threads that compute are
// the caller and the pool's workers; BLAS runs single-threaded inside them (runtime/blas), and
// idle workers sleep on a condition variable: nothing spins between ops.
//
// ParallelFor(n, grain, fn) calls fn(begin, end) on disjoint chunks that cover [0, n) and returns
// when every call has returned. The chunks are [0, g), [g, 2g), ... with g = max(grain, 1): fixed
// by n and grain alone, never by the thread count or by timing. Which thread runs a chunk varies,
// so fn must give the same result for a chunk on any thread; a reduction writes one partial per
// chunk and the caller adds them in chunk order. Then results do not depend on the thread count,
// and are bit-identical from run to run. The caller runs chunks too.
//
// Nesting: a ParallelFor called from inside fn, or from another thread while the pool is busy,
// runs its chunks inline on the calling thread, in order. So ops may call ParallelFor freely (an
// expert's GEMM inside a loop over experts), and the pool never holds more runnable threads than
// it has.
//
// fn must not throw. Thread-safe.
#pragma once

#include <cstdint>

#include "absl/functional/function_ref.h"

namespace smoe {

// fn(begin, end): one chunk of a ParallelFor. Not owned: it lives for the call.
using ChunkFn = absl::FunctionRef<void(int64_t, int64_t)>;

class ThreadPool {
 public:
  // `threads` >= 1 computing threads: the caller of ParallelFor and threads - 1 workers.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }
  void ParallelFor(int64_t n, int64_t grain, ChunkFn fn);
  // Whether the calling thread is inside a ParallelFor's fn (of any pool).
  static bool InParallelRegion();

 private:
  struct State;
  const int threads_;
  State* state_;
};

// The process's pool. Its size: the last SetCpuThreads, else the environment variable
// MOE_NUM_THREADS, else the machine's hardware threads shared out among the job's ranks on this
// machine (the launcher's OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS or SLURM_NTASKS_PER_NODE),
// so that ranks sharing a machine do not oversubscribe it. Creating it also sets OpenBLAS (when
// linked) to one thread: parallel work goes through the pool.
ThreadPool& CpuPool();
// Resizes the process's pool (n >= 1; 0 = the default above). Not while a ParallelFor runs.
void SetCpuThreads(int n);
// The size CpuPool() has or would have.
int CpuThreads();

// CpuPool().ParallelFor, the common way in, for `n` items of about `work_per_item` units of work
// (say, elements touched) each: chunks of ceil(min_work / work_per_item) items, so a chunk is
// worth waking a thread for (chunks still depend on n, work_per_item and min_work only). Loops of
// one chunk run inline.
void ParallelFor(int64_t n, int64_t work_per_item, ChunkFn fn, int64_t min_work = 16384);

}  // namespace smoe
