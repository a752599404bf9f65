#include "runtime/comm/comm_lane.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace smoe {

CommLane::~CommLane() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    WaitIdleLocked(lock);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t CommLane::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(jobs_.size());
}

StatusOr<int64_t> CommLane::Submit(ExecContext& ctx, Task task) {
  if (lane_ctx_ == nullptr) {
    MOE_ASSIGN_OR_RETURN(lane_ctx_, ExecContext::Create(ctx.device()));
  } else if (lane_ctx_->device() != ctx.device()) {
    return BadArgument("ctx", ctx.device().ToString(),
                       absl::StrCat(lane_ctx_->device().ToString(), " (the lane's device)"));
  }
  auto job = std::make_shared<Job>();
  job->task = std::move(task);
  MOE_RETURN_IF_ERROR(job->ready.Record(ctx));
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  int64_t ticket;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ticket = job->ticket = next_ticket_++;
    jobs_.emplace(ticket, job);
    queue_.push_back(std::move(job));
  }
  work_cv_.notify_one();
  return ticket;
}

Status CommLane::Wait(ExecContext& ctx, int64_t ticket) {
  std::shared_ptr<Job> job;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto it = jobs_.find(ticket);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("comm lane: ticket ", ticket,
                                              " was never submitted, or already waited for"));
    }
    job = it->second;
    done_cv_.wait(lock, [&] { return job->finished; });
    jobs_.erase(it);
  }
  MOE_RETURN_IF_ERROR(job->result);
  return job->done.Block(ctx);
}

void CommLane::WaitIdleLocked(std::unique_lock<std::mutex>& lock) {
  done_cv_.wait(lock, [&] { return queue_.empty() && !running_; });
}

void CommLane::Drain(ExecContext& ctx) {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    WaitIdleLocked(lock);
    jobs_.clear();
    failure_ = absl::OkStatus();
  }
  if (lane_ctx_ == nullptr) return;
  // The lane is idle: its context is ours to use until the next Submit.
  StreamEvent all;
  Status status = all.Record(*lane_ctx_);
  if (status.ok()) status = all.Block(ctx);
  if (!status.ok()) {
    // Cannot order the streams: wait on the host instead (an error path only).
    (void)lane_ctx_->Synchronize();
  }
}

void CommLane::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_
    std::shared_ptr<Job> job = std::move(queue_.front());
    queue_.pop_front();
    if (!failure_.ok()) {
      job->result = absl::AbortedError(
          absl::StrCat("comm lane: not run, an earlier task failed: ", failure_.ToString()));
    } else {
      running_ = true;
      lock.unlock();
      Status status = BindThreadToDevice(lane_ctx_->device());
      if (status.ok()) status = job->ready.Block(*lane_ctx_);
      if (status.ok()) status = job->task(*lane_ctx_);
      if (status.ok()) status = job->done.Record(*lane_ctx_);
      job->task = nullptr;  // what it captured goes now, on the lane
      lock.lock();
      running_ = false;
      job->result = std::move(status);
      if (!job->result.ok()) failure_ = job->result;
    }
    job->finished = true;
    done_cv_.notify_all();
  }
}

}  // namespace smoe
