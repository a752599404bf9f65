#include "runtime/comm/stream_watchdog.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace smoe {

StreamWatchdog::StreamWatchdog(std::chrono::milliseconds timeout, std::chrono::milliseconds poll,
                               Hooks hooks)
    : timeout_(timeout), poll_(poll), hooks_(std::move(hooks)), thread_([this] { Run(); }) {}

StreamWatchdog::~StreamWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Status StreamWatchdog::Watch(std::function<bool()> done) {
  std::lock_guard<std::mutex> lock(mu_);
  if (status_.ok()) pending_.push_back({std::move(done), Clock::now()});
  return status_;
}

Status StreamWatchdog::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

int64_t StreamWatchdog::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(pending_.size());
}

void StreamWatchdog::GiveUp(Status why) {
  status_ = std::move(why);
  pending_.clear();
  if (hooks_.abort) hooks_.abort();
}

void StreamWatchdog::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, poll_, [this] { return stop_; });
    if (stop_ || !status_.ok()) continue;
    if (hooks_.async_error) {
      Status error = hooks_.async_error();
      if (!error.ok()) {
        GiveUp(std::move(error));
        continue;
      }
    }
    // Collectives finish in stream order: the oldest unfinished one is the one to time.
    while (!pending_.empty() && pending_.front().done()) pending_.pop_front();
    if (!pending_.empty() && Clock::now() - pending_.front().start > timeout_) {
      const double seconds = std::chrono::duration<double>(timeout_).count();
      GiveUp(absl::DeadlineExceededError(
          absl::StrCat("a collective did not finish within ", seconds,
                       " s (parallel.collective_timeout_s): a rank died or stalled; the "
                       "communicator was aborted")));
    }
  }
}

}  // namespace smoe
