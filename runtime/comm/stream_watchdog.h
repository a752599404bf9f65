// StreamWatchdog: gives up on stream-ordered (device) collectives that will never finish, so that
// a dead or stalled peer ends the run instead of hanging it (issue 19). Blocking host collectives
// (MPI) have their own watchdog over scopes; a device collective instead returns once enqueued.
//
// A device collective returns once it is enqueued; if a peer never joins, its kernel waits on the
// GPU forever and so does every later host sync. The watchdog's thread checks, every `poll`:
//   - the communicator's own asynchronous error (NCCL: ncclCommGetAsyncError), and
//   - whether the oldest collective it watches has finished (NCCL: a CUDA event recorded after
//     it), against `timeout`.
// On an error or a timeout it calls `abort` once (NCCL: ncclCommAbort, which also ends the waiting
// kernels) and from then on status() is that error: DeadlineExceeded naming the timeout, or the
// communicator's error. Watch() returns the same error, so the next collective fails at once.
// Thread-safe. The hooks run on the watchdog's thread (async_error and abort) and must be safe
// there; `done` closures likewise.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "runtime/core/status.h"

namespace smoe {

class StreamWatchdog {
 public:
  struct Hooks {
    std::function<Status()> async_error;  // OK while the communicator is healthy
    std::function<void()> abort;          // gives the communicator up; called at most once
  };
  using Clock = std::chrono::steady_clock;

  StreamWatchdog(std::chrono::milliseconds timeout, std::chrono::milliseconds poll, Hooks hooks);
  ~StreamWatchdog();
  StreamWatchdog(const StreamWatchdog&) = delete;
  StreamWatchdog& operator=(const StreamWatchdog&) = delete;

  // Watches a collective just enqueued until `done` returns true; its clock starts now. Returns
  // status() (an error once the communicator was given up).
  [[nodiscard]] Status Watch(std::function<bool()> done);
  // OK, or why the communicator was aborted.
  Status status() const;
  // Collectives watched and not yet seen done.
  int64_t pending() const;

 private:
  struct Entry {
    std::function<bool()> done;
    Clock::time_point start;
  };
  void Run();
  // Under mu_: records the failure and aborts (once).
  void GiveUp(Status why);

  const std::chrono::milliseconds timeout_, poll_;
  Hooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Entry> pending_;
  Status status_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace smoe
