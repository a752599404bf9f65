// CollectiveWatchdog: a rank that dies or stalls must not hang the others (communicator.h,
// Faults). A thread that enters a blocking collective registers it with a watchdog (Enter, a
// scope); a watchdog thread checks the registered collectives a few times per timeout and, when
// one has waited longer than the collective timeout, calls its OnTimeout once with a message
// naming the collective, the group size, the rank in it and the time waited.
//
// The process-wide watchdog (Process, used by the MPI communicator) logs that message at ERROR
// and ends the process with exit status 1 through std::_Exit: a collective cannot be cancelled,
// and neither the atexit handlers (MPI_Finalize) nor the destructors could be trusted not to wait
// for the stalled rank. mpirun then ends the rest of the job.
//
// Why not non-blocking collectives with a deadline: with Open MPI 4.1 on CPU ranks the blocking
// collectives are several times faster, and a non-blocking one that completes locally leaves the
// peer waiting for this rank's next MPI call (no asynchronous progress), which serializes ranks.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace smoe {

class CollectiveWatchdog {
 public:
  using OnTimeout = std::function<void(const std::string& message)>;
  // `timeout_s` is read at every check (seconds; <= 0: no timeout, nothing fires).
  CollectiveWatchdog(OnTimeout on_timeout, std::function<double()> timeout_s);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // The calling thread is inside collective `what` (a string literal, e.g. "AllToAllV
  // (MPI_Alltoallv)") of a group of `size` ranks, as rank `rank`, until the scope ends.
  class Scope {
   public:
    ~Scope();
    Scope(Scope&& other) noexcept;
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    Scope& operator=(Scope&&) = delete;

   private:
    friend class CollectiveWatchdog;
    Scope(CollectiveWatchdog* watchdog, uint64_t id) : watchdog_(watchdog), id_(id) {}
    CollectiveWatchdog* watchdog_;
    uint64_t id_;
  };
  [[nodiscard]] Scope Enter(const char* what, int rank, int size);

  // Whether OnTimeout has been called.
  bool fired() const;

  // The process's watchdog over CollectiveTimeoutSeconds(): logs and exits (top of this file).
  // `label` prefixes the message (e.g. "rank 3 of 8"); set once MPI knows it.
  static CollectiveWatchdog& Process();
  static void SetProcessLabel(std::string label);

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    const char* what;
    int rank, size;
    Clock::time_point start;
  };
  void Leave(uint64_t id);
  void Run();

  const OnTimeout on_timeout_;
  const std::function<double()> timeout_s_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<uint64_t, Entry> active_;
  uint64_t next_id_ = 0;
  bool stop_ = false;
  bool fired_ = false;
  std::thread thread_;  // started by the first Enter
};

}  // namespace smoe
