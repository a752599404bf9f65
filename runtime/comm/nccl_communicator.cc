// NCCL as a Communicator for GPU ranks. Compiled only when MOE_WITH_NCCL (CUDA + NCCL found).
#include "runtime/comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/comm/staging.h"
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

// NCCL's reduction dtypes; collectives that move bytes use ncclUint8 instead.
StatusOr<ncclDataType_t> NcclSumType(absl::string_view name, const TensorView& t) {
  switch (t.dtype()) {
    case DType::kF32: return ncclFloat32;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
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

class NcclGroup final : public Communicator {
 public:
  // Takes ownership of `comm`.
  static StatusOr<std::unique_ptr<Communicator>> Wrap(ncclComm_t comm, int device) {
    std::unique_ptr<NcclGroup> group(new NcclGroup(comm, device));
    MOE_NCCL_RETURN_IF_ERROR(ncclCommUserRank(comm, &group->rank_));
    MOE_NCCL_RETURN_IF_ERROR(ncclCommCount(comm, &group->size_));
    MOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&group->barrier_stream_,
                                                       cudaStreamNonBlocking));
    MOE_ASSIGN_OR_RETURN(group->barrier_buffer_,
                         Tensor::Empty({1}, DType::kI32, Device::Cuda(device)));
    return std::unique_ptr<Communicator>(std::move(group));
  }

  ~NcclGroup() override {
    DeviceGuard guard(device_);
    if (barrier_stream_ != nullptr) cudaStreamDestroy(barrier_stream_);
    ncclCommDestroy(comm_);
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
    MOE_NCCL_RETURN_IF_ERROR(ncclAllReduce(buffer.data(), buffer.data(),
                                           static_cast<size_t>(buffer.numel()), type, ncclSum,
                                           comm_, ctx.stream()));
    return absl::OkStatus();
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
    MOE_NCCL_RETURN_IF_ERROR(
        ncclAllGather(in.data(), out.data(), in.nbytes(), ncclUint8, comm_, ctx.stream()));
    return absl::OkStatus();
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
    MOE_NCCL_RETURN_IF_ERROR(ncclReduceScatter(in.data(), out.data(),
                                               static_cast<size_t>(out.numel()), type, ncclSum,
                                               comm_, ctx.stream()));
    return absl::OkStatus();
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
      return BadArgument(absl::StrCat("recv_counts[", rank_, "]"),
                         absl::StrCat(recv_counts[rank_]),
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
      MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(recv_bytes + recv_at[rank_],
                                               send_bytes + send_at[rank_],
                                               send_at[rank_ + 1] - send_at[rank_],
                                               cudaMemcpyDeviceToDevice, ctx.stream()));
    }
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
    const Status ended = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");
    MOE_RETURN_IF_ERROR(queued);
    return ended;
  }

  Status Barrier() override {
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    MOE_NCCL_RETURN_IF_ERROR(ncclAllReduce(barrier_buffer_.data(), barrier_buffer_.data(), 1,
                                           ncclInt32, ncclSum, comm_, barrier_stream_));
    MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(barrier_stream_));
    return absl::OkStatus();
  }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    if (color < 0) return BadArgument("color", absl::StrCat(color), ">= 0");
    DeviceGuard guard(device_);
    MOE_RETURN_IF_ERROR(guard.status());
    ncclComm_t sub = nullptr;
    MOE_NCCL_RETURN_IF_ERROR(ncclCommSplit(comm_, color, key, &sub, nullptr));
    return Wrap(sub, device_);
  }

 private:
  NcclGroup(ncclComm_t comm, int device) : comm_(comm), device_(device) {}

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
  int rank_ = 0;
  int size_ = 1;
  cudaStream_t barrier_stream_ = nullptr;
  Tensor barrier_buffer_;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator& bootstrap,
                                                               int cuda_device) {
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
  MOE_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty({kWords * bootstrap.size()}, DType::kI64,
                                                 Device::Cpu()));
  std::memcpy(mine.data(), &id, sizeof(id));
  MOE_RETURN_IF_ERROR(bootstrap.AllGather(ExecContext::Cpu(), mine, all));
  std::memcpy(&id, all.data(), sizeof(id));

  ncclComm_t comm = nullptr;
  MOE_NCCL_RETURN_IF_ERROR(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> group, NcclGroup::Wrap(comm, cuda_device));
  // NCCL takes device buffers only; host buffers are staged through device memory.
  Communicator* raw = group.get();
  return StagingCommunicator(raw, std::move(group),
                             std::make_shared<DeviceBufferStager>(cuda_device));
}

}  // namespace smoe
