// CommLane: a communication thread, so that collectives run while the calling thread computes
// (DESIGN.md section 6, pipelining degree d: the exchange of chunk c + 1 overlaps the experts of
// chunk c).
//
// Order. Tasks run one at a time on the lane's own thread, in the order they were submitted, so
// ranks that submit the same collectives in the same order run them in that order (the
// Communicator contract). While tasks are in flight the submitting thread calls none of the
// communicators they use: the lane and the submitter take turns, never call at once (what MPI's
// MPI_THREAD_SERIALIZED allows; Communicator::CallableFromAnotherThread says whether a
// communicator allows it at all).
//
// Devices. A task runs with the lane's own context on the submitter's device: a private CPU
// context, or on CUDA a context with its own stream (the communication stream). Submit records
// an event on the submitter's stream that the lane's stream waits for before the task runs, so
// the task sees everything enqueued before Submit; after the task the lane records an event that
// Wait makes the submitter's stream wait for (on the device: no host sync), so the work enqueued
// after Wait sees the task's results. On CUDA a task that only enqueues (NCCL) returns at once and
// the overlap happens on the device; one that blocks (MPI staged through the host) blocks the
// lane's thread, not the submitter. Correct by construction: every task is ordered after the
// work before its Submit and before the work after its Wait, whatever the streams do.
//
// Errors. A failed task makes every task submitted after it fail, without running, until Drain
// (their collectives would pair with different ones on the other ranks): Wait returns Aborted
// naming the first failure.
//
// Lifetime. What a task reads or writes stays alive and untouched until its Wait, or Drain.
// The destructor drains and joins the thread. Submit, Wait and Drain are called from one thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/device/stream_event.h"

namespace smoe {

class CommLane {
 public:
  using Task = std::function<Status(ExecContext& lane_ctx)>;

  CommLane() = default;
  ~CommLane();
  CommLane(const CommLane&) = delete;
  CommLane& operator=(const CommLane&) = delete;

  // Queues `task` after the work enqueued on ctx so far; returns its ticket for Wait. The lane's
  // context is made for ctx's device on the first Submit; a later Submit from another device is
  // InvalidArgument naming ctx.
  [[nodiscard]] StatusOr<int64_t> Submit(ExecContext& ctx, Task task);
  // Blocks until the task has run (or been skipped) and returns its status; on success ctx's
  // stream then waits for what the task enqueued. Each ticket once (NotFound otherwise).
  [[nodiscard]] Status Wait(ExecContext& ctx, int64_t ticket);
  // Blocks until every submitted task has run or been skipped, makes ctx's stream wait for the
  // lane's, forgets the tickets not waited for and clears the failure (later tasks run).
  void Drain(ExecContext& ctx);

  // Tasks submitted and not yet waited for or drained.
  int64_t pending() const;

 private:
  struct Job {
    int64_t ticket = 0;
    Task task;
    StreamEvent ready;  // on the submitter's stream at Submit
    StreamEvent done;   // on the lane's stream after the task
    Status result;
    bool finished = false;
  };
  void Run();
  void WaitIdleLocked(std::unique_lock<std::mutex>& lock);

  std::unique_ptr<ExecContext> lane_ctx_;
  std::thread thread_;
  mutable std::mutex mutex_;
  std::condition_variable work_cv_;  // the lane: a job was queued, or stop
  std::condition_variable done_cv_;  // the submitter: a job finished
  std::deque<std::shared_ptr<Job>> queue_;
  std::map<int64_t, std::shared_ptr<Job>> jobs_;  // submitted, not yet waited for
  int64_t next_ticket_ = 0;
  bool running_ = false;  // the lane is running a job
  bool stop_ = false;
  Status failure_;  // the first failure since the last Drain
};

}  // namespace smoe
