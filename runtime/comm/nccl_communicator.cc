// NCCL as a Communicator for GPU ranks. Compiled only when MOE_WITH_NCCL (CUDA + NCCL found).
#include "runtime/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/comm/staging.h"
#include "runtime/comm/stream_watchdog.h"
#include "runtime/device/cuda_error.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status NcclStatus(ncclResult_t result, absl::string_view what) {
  if (result == ncclSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", ncclGetErrorString(result));
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(message);
    case ncclRemoteError:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

#define MOE_NCCL_RETURN_IF_ERROR(expr) MOE_RETURN_IF_ERROR(NcclStatus((expr), #expr))

using Clock = std::chrono::steady_clock;

std::chrono::milliseconds TimeoutOf(const NcclOptions& options) {
  // No timeout: a deadline no run reaches (a year).
  const double seconds = options.timeout_s > 0 ? options.timeout_s : 365.0 * 24 * 3600;
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
}

// Non-blocking communicators (the only kind made here) may answer a call with ncclInProgress:
// the call then completes in the background, and the communicator's state says when. Waits for it
// up to `timeout` (then aborts `comm`: a peer that never arrives must not hang this rank).
Status Finish(ncclComm_t comm, ncclResult_t result, absl::string_view what,
              std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  while (result == ncclInProgress) {
    if (Clock::now() > deadline) {
      ncclCommAbort(comm);
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": not done after ", timeout.count() / 1000.0,
                       " s (parallel.collective_timeout_s): a rank died or stalled; aborted"));
    }
    std::this_thread::yield();
    if (ncclCommGetAsyncError(comm, &result) != ncclSuccess) break;
  }
  return NcclStatus(result, what);
}

// NCCL's reduction dtypes; collectives that move bytes use ncclUint8 instead.
StatusOr<ncclDataType_t> NcclSumType(absl::string_view name, const TensorView& t) {
  switch (t.dtype()) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
    default:
      return BadArgument(absl::StrCat(name, ".dtype"), DTypeName(t.dtype()), "f32, i32 or i64");
  }
}

// Makes `device` current for the guard's lifetime: NCCL calls and our stream and copies belong to
// the communicator's device, while the caller may have another one current.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) status_ = CudaStatus(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const Status& status() const { return status_; }

 private:
  int previous_ = -1;
  Status status_;
};

// The configuration of every communicator made here: non-blocking, so that a dead or stalled peer
// can be given up (ncclCommGetAsyncError, ncclCommAbort) instead of blocking this rank for ever.
ncclConfig_t NonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

class NcclGroup final : public Communicator {
 public:
  // Takes ownership of `comm` (initialized, or still initializing: Wrap waits for it).
  static StatusOr<std::unique_ptr<Communicator>> Wrap(ncclComm_t comm, int device,
                                                      const NcclOptions& options) {
    std::unique_ptr<NcclGroup> group(new NcclGroup(comm, device, options));
    MOE_RETURN_IF_ERROR(Finish(comm, ncclInProgress, "ncclCommInitRankConfig", group->timeout_));
    MOE_RETURN_IF_ERROR(group->Call(ncclCommUserRank(comm, &group->rank_), "ncclCommUserRank"));
    MOE_RETURN_IF_ERROR(group->Call(ncclCommCount(comm, &group->size_), "ncclCommCount"));
    MOE_CUDA_RETURN_IF_ERROR(
        cudaStreamCreateWithFlags(&group->barrier_stream_, cudaStreamNonBlocking));
    MOE_ASSIGN_OR_RETURN(group->barrier_buffer_,
                         Tensor::Empty({1}, DType::kI32, Device::Cuda(device)));
    NcclGroup* raw = group.get();
    group->watchdog_ =
        std::make_unique<StreamWatchdog>(group->timeout_, std::chrono::milliseconds(100),
                                         StreamWatchdog::Hooks{[raw] { return raw->AsyncError(); },
                                                               [raw] {
                                                                 raw->aborted_ = true;
                                                                 ncclCommAbort(raw->comm_);
                                                               }});
    return std::unique_ptr<Communicator>(std::move(group));
  }

  ~NcclGroup() override {
    watchdog_.reset();  // its thread may abort comm_: stop it first
    DeviceGuard guard(device_);
    if (barrier_stream_ != nullptr) cudaStreamDestroy(barrier_stream_);
    if (!aborted_) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status AllReduceSum(ExecContext& ctx, const TensorView& buffer) override {
    MOE_RETURN_IF_ERROR(CheckContext(ctx));
    MOE_RETURN_IF_ERROR(CheckBuffer("buffer", buffer));
    MOE_ASSIGN_OR_RETURN(ncclDataType_t type, NcclSumType("buffer", buffer));
    if (buffer.numel() == 0) return absl::OkStatus();
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    return Enqueued(ctx.stream(), Call(ncclAllReduce(buffer.data(), buffer.data(),
                                                     static_cast<size_t>(buffer.numel()), type,
                                                     ncclSum, comm_, ctx.stream()),
                                       "ncclAllReduce"));
  }

  Status AllGather(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    MOE_RETURN_IF_ERROR(CheckContext(ctx));
    MOE_RETURN_IF_ERROR(CheckBuffer("in", in));
    MOE_RETURN_IF_ERROR(CheckBuffer("out", out));
    if (in.dtype() != out.dtype()) {
      return BadArgument("out.dtype", DTypeName(out.dtype()), DTypeName(in.dtype()));
    }
    if (out.numel() != in.numel() * size_) {
      return BadArgument("out.numel", absl::StrCat(out.numel()),
                         absl::StrCat(in.numel() * size_, " (ranks x in.numel)"));
    }
    if (in.numel() == 0) return absl::OkStatus();
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    return Enqueued(ctx.stream(), Call(ncclAllGather(in.data(), out.data(), in.nbytes(), ncclUint8,
                                                     comm_, ctx.stream()),
                                       "ncclAllGather"));
  }

  Status ReduceScatterSum(ExecContext& ctx, const TensorView& in, const TensorView& out) override {
    MOE_RETURN_IF_ERROR(CheckContext(ctx));
    MOE_RETURN_IF_ERROR(CheckBuffer("in", in));
    MOE_RETURN_IF_ERROR(CheckBuffer("out", out));
    if (in.dtype() != out.dtype()) {
      return BadArgument("out.dtype", DTypeName(out.dtype()), DTypeName(in.dtype()));
    }
    if (in.numel() != out.numel() * size_) {
      return BadArgument("in.numel", absl::StrCat(in.numel()),
                         absl::StrCat(out.numel() * size_, " (ranks x out.numel)"));
    }
    MOE_ASSIGN_OR_RETURN(ncclDataType_t type, NcclSumType("in", in));
    if (out.numel() == 0) return absl::OkStatus();
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    return Enqueued(ctx.stream(),
                    Call(ncclReduceScatter(in.data(), out.data(), static_cast<size_t>(out.numel()),
                                           type, ncclSum, comm_, ctx.stream()),
                         "ncclReduceScatter"));
  }

  Status AllToAllV(ExecContext& ctx, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    MOE_RETURN_IF_ERROR(CheckContext(ctx));
    MOE_RETURN_IF_ERROR(CheckBuffer("send", send));
    MOE_RETURN_IF_ERROR(CheckBuffer("recv", recv));
    if (send.dtype() != recv.dtype()) {
      return BadArgument("recv.dtype", DTypeName(recv.dtype()), DTypeName(send.dtype()));
    }
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("send_counts", send_counts, size_, send.numel()));
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("recv_counts", recv_counts, size_, recv.numel()));
    if (send_counts[rank_] != recv_counts[rank_]) {
      return BadArgument(absl::StrCat("recv_counts[", rank_, "]"), absl::StrCat(recv_counts[rank_]),
                         absl::StrCat(send_counts[rank_], " (send_counts[", rank_,
                                      "]: this rank's segment to itself)"));
    }
    const size_t elem = DTypeSize(send.dtype());
    std::vector<size_t> send_at(size_ + 1, 0), recv_at(size_ + 1, 0);
    for (int p = 0; p < size_; ++p) {
      send_at[p + 1] = send_at[p] + static_cast<size_t>(send_counts[p]) * elem;
      recv_at[p + 1] = recv_at[p] + static_cast<size_t>(recv_counts[p]) * elem;
    }
    auto* send_bytes = static_cast<const char*>(send.data());
    auto* recv_bytes = static_cast<char*>(recv.data());
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    // The own segment never goes through NCCL: a copy on the same stream keeps it ordered.
    if (send_counts[rank_] > 0) {
      MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
          recv_bytes + recv_at[rank_], send_bytes + send_at[rank_],
          send_at[rank_ + 1] - send_at[rank_], cudaMemcpyDeviceToDevice, ctx.stream()));
    }
    MOE_RETURN_IF_ERROR(watchdog_->status());
    MOE_NCCL_RETURN_IF_ERROR(ncclGroupStart());
    // Every call between ncclGroupStart and ncclGroupEnd only records work; on an error the group
    // is still closed so that NCCL's group state stays balanced.
    Status queued;
    for (int p = 0; p < size_ && queued.ok(); ++p) {
      if (p == rank_) continue;
      if (send_counts[p] > 0) {
        queued = NcclStatus(ncclSend(send_bytes + send_at[p], send_at[p + 1] - send_at[p],
                                     ncclUint8, p, comm_, ctx.stream()),
                            "ncclSend");
      }
      if (queued.ok() && recv_counts[p] > 0) {
        queued = NcclStatus(ncclRecv(recv_bytes + recv_at[p], recv_at[p + 1] - recv_at[p],
                                     ncclUint8, p, comm_, ctx.stream()),
                            "ncclRecv");
      }
    }
    const Status ended = Call(ncclGroupEnd(), "ncclGroupEnd");
    MOE_RETURN_IF_ERROR(queued);
    return Enqueued(ctx.stream(), ended);
  }

  Status Barrier() override {
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    MOE_RETURN_IF_ERROR(
        Enqueued(barrier_stream_, Call(ncclAllReduce(barrier_buffer_.data(), barrier_buffer_.data(),
                                                     1, ncclInt32, ncclSum, comm_, barrier_stream_),
                                       "ncclAllReduce (barrier)")));
    // Wait without blocking in the driver, so that the watchdog's verdict ends the wait.
    while (true) {
      const cudaError_t state = cudaStreamQuery(barrier_stream_);
      if (state == cudaSuccess) return absl::OkStatus();
      if (state != cudaErrorNotReady) return CudaStatus(state, "cudaStreamQuery (barrier)");
      MOE_RETURN_IF_ERROR(watchdog_->status());
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    if (color < 0) return BadArgument("color", absl::StrCat(color), ">= 0");
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    MOE_RETURN_IF_ERROR(watchdog_->status());
    ncclComm_t sub = nullptr;
    ncclConfig_t config = NonBlockingConfig();
    MOE_RETURN_IF_ERROR(Call(ncclCommSplit(comm_, color, key, &sub, &config), "ncclCommSplit"));
    return Wrap(sub, device_, options_);
  }

 private:
  NcclGroup(ncclComm_t comm, int device, const NcclOptions& options)
      : comm_(comm), device_(device), options_(options), timeout_(TimeoutOf(options)) {}

  // A call on comm_, completed (non-blocking communicators may still be working on it), as Status.
  // After the watchdog gave the communicator up, its verdict.
  Status Call(ncclResult_t result, absl::string_view what) {
    if (watchdog_ != nullptr) MOE_RETURN_IF_ERROR(watchdog_->status());
    return Finish(comm_, result, what, timeout_);
  }

  // After a collective was enqueued on `stream` (status `enqueued`): the watchdog times it until a
  // CUDA event recorded behind it completes.
  Status Enqueued(cudaStream_t stream, Status enqueued) {
    MOE_RETURN_IF_ERROR(enqueued);
    cudaEvent_t raw = nullptr;
    MOE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&raw, cudaEventDisableTiming));
    std::shared_ptr<CUevent_st> event(raw, [](cudaEvent_t e) { cudaEventDestroy(e); });
    MOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(raw, stream));
    return watchdog_->Watch([event] { return cudaEventQuery(event.get()) != cudaErrorNotReady; });
  }

  // The communicator's asynchronous error (a failed peer, a network error), OK while healthy.
  Status AsyncError() {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm_, &state);
    if (queried != ncclSuccess) return NcclStatus(queried, "ncclCommGetAsyncError");
    if (state == ncclSuccess || state == ncclInProgress) return absl::OkStatus();
    return NcclStatus(state, "NCCL (asynchronous error)");
  }

  Status CheckContext(ExecContext& ctx) const {
    if (ctx.device() != Device::Cuda(device_)) {
      return BadArgument("ctx.device", ctx.device().ToString(),
                         Device::Cuda(device_).ToString() + " (the NCCL communicator's device)");
    }
    return absl::OkStatus();
  }

  Status CheckBuffer(absl::string_view name, const TensorView& t) const {
    if (t.device() != Device::Cuda(device_)) {
      return BadArgument(absl::StrCat(name, ".device"), t.device().ToString(),
                         Device::Cuda(device_).ToString() + " (the NCCL communicator's device)");
    }
    return CheckContiguous(name, t);
  }

  ncclComm_t comm_;
  int device_;
  NcclOptions options_;
  std::chrono::milliseconds timeout_;
  std::atomic<bool> aborted_{false};
  std::unique_ptr<StreamWatchdog> watchdog_;
  int rank_ = 0;
  int size_ = 1;
  cudaStream_t barrier_stream_ = nullptr;
  Tensor barrier_buffer_;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator& bootstrap,
                                                               int cuda_device,
                                                               const NcclOptions& options) {
  if (cuda_device < 0 || cuda_device >= CudaDeviceCount()) {
    return BadArgument("cuda_device", absl::StrCat(cuda_device),
                       absl::StrCat("a visible CUDA device (", CudaDeviceCount(), " visible)"));
  }
  DeviceGuard guard(cuda_device);
  MOE_RETURN_IF_ERROR(guard.status());

  // The id travels as i64 words; every rank contributes a block and keeps rank 0's.
  static_assert(sizeof(ncclUniqueId) % sizeof(int64_t) == 0);
  constexpr int64_t kWords = sizeof(ncclUniqueId) / sizeof(int64_t);
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (bootstrap.rank() == 0) MOE_NCCL_RETURN_IF_ERROR(ncclGetUniqueId(&id));
  MOE_ASSIGN_OR_RETURN(Tensor mine, Tensor::Empty({kWords}, DType::kI64, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor all,
                       Tensor::Empty({kWords * bootstrap.size()}, DType::kI64, Device::Cpu()));
  std::memcpy(mine.data(), &id, sizeof(id));
  MOE_RETURN_IF_ERROR(bootstrap.AllGather(ExecContext::Cpu(), mine, all));
  std::memcpy(&id, all.data(), sizeof(id));

  ncclComm_t comm = nullptr;
  ncclConfig_t config = NonBlockingConfig();
  const ncclResult_t started =
      ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  MOE_RETURN_IF_ERROR(Finish(comm, started, "ncclCommInitRankConfig", TimeoutOf(options)));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> group,
                       NcclGroup::Wrap(comm, cuda_device, options));
  // NCCL takes device buffers only; host buffers are staged through device memory.
  Communicator* raw = group.get();
  return StagingCommunicator(raw, std::move(group),
                             std::make_shared<DeviceBufferStager>(cuda_device));
}

}  // namespace smoe
