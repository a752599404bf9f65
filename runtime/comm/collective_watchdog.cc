#include "runtime/comm/collective_watchdog.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/comm/communicator.h"
#include "runtime/core/logging.h"

namespace smoe {
namespace {

constexpr double kDefaultTimeoutS = 60.0;

double InitialTimeout() {
  const char* env = std::getenv("SMOE_COLLECTIVE_TIMEOUT_S");
  if (env == nullptr || *env == '\0') return kDefaultTimeoutS;
  double seconds = 0;
  if (!absl::SimpleAtod(env, &seconds) || !std::isfinite(seconds) || seconds < 0) {
    MOE_LOG(WARNING) << "ignoring SMOE_COLLECTIVE_TIMEOUT_S=\"" << env
                     << "\" (expected seconds >= 0); the collective timeout is " << kDefaultTimeoutS
                     << " s";
    return kDefaultTimeoutS;
  }
  return seconds;
}

std::atomic<double>& Timeout() {
  static std::atomic<double> timeout(InitialTimeout());
  return timeout;
}

std::mutex& LabelMutex() {
  static std::mutex* mutex = new std::mutex;
  return *mutex;
}
std::string& Label() {
  static std::string* label = new std::string;
  return *label;
}

}  // namespace

double CollectiveTimeoutSeconds() { return Timeout().load(); }

Status SetCollectiveTimeoutSeconds(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) {
    return BadArgument("collective timeout", absl::StrCat(seconds), "seconds >= 0 (0 = none)");
  }
  Timeout().store(seconds);
  return absl::OkStatus();
}

CollectiveWatchdog::CollectiveWatchdog(OnTimeout on_timeout, std::function<double()> timeout_s)
    : on_timeout_(std::move(on_timeout)), timeout_s_(std::move(timeout_s)) {}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

CollectiveWatchdog::Scope::~Scope() {
  if (watchdog_ != nullptr) watchdog_->Leave(id_);
}

CollectiveWatchdog::Scope::Scope(Scope&& other) noexcept
    : watchdog_(std::exchange(other.watchdog_, nullptr)), id_(other.id_) {}

CollectiveWatchdog::Scope CollectiveWatchdog::Enter(const char* what, int rank, int size) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  const uint64_t id = next_id_++;
  active_.emplace(id, Entry{what, rank, size, Clock::now()});
  return Scope(this, id);
}

void CollectiveWatchdog::Leave(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  active_.erase(id);
}

bool CollectiveWatchdog::fired() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fired_;
}

void CollectiveWatchdog::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    const double timeout_s = timeout_s_();
    // A few checks per timeout: it fires at most ~10% late.
    const double poll_s = timeout_s > 0 ? std::clamp(timeout_s / 10, 0.01, 1.0) : 1.0;
    cv_.wait_for(lock, std::chrono::duration<double>(poll_s), [&] { return stop_; });
    if (stop_ || fired_ || timeout_s <= 0) continue;
    const Clock::time_point now = Clock::now();
    for (const auto& [id, e] : active_) {
      const double waited_s = std::chrono::duration<double>(now - e.start).count();
      if (waited_s < timeout_s) continue;
      fired_ = true;
      const std::string message = absl::StrFormat(
          "%s on a group of %d ranks (rank %d of it) did not complete within %g s (waited "
          "%.1f s): another rank died or stalled. The collective timeout is "
          "parallel.collective_timeout_s or SMOE_COLLECTIVE_TIMEOUT_S.",
          e.what, e.size, e.rank, timeout_s, waited_s);
      lock.unlock();
      on_timeout_(message);
      lock.lock();
      break;
    }
  }
}

void CollectiveWatchdog::SetProcessLabel(std::string label) {
  std::lock_guard<std::mutex> lock(LabelMutex());
  Label() = std::move(label);
}

CollectiveWatchdog& CollectiveWatchdog::Process() {
  // Never destroyed: the thread may be waiting at exit.
  static CollectiveWatchdog* watchdog = new CollectiveWatchdog(
      [](const std::string& message) {
        std::string label;
        {
          std::lock_guard<std::mutex> lock(LabelMutex());
          label = Label();
        }
        MOE_LOG(ERROR) << (label.empty() ? "" : label + ": ") << message << " Exiting.";
        std::fflush(stdout);
        std::fflush(stderr);
        std::_Exit(1);
      },
      CollectiveTimeoutSeconds);
  return *watchdog;
}

}  // namespace smoe
