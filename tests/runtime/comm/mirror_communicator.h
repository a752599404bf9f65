// A host-only stand-in for a multi-rank group, for testing communicator wrappers in one process:
// rank `rank` of `size` ranks that all hold the same data as this one ("mirrors"). So
// AllReduceSum multiplies by size, AllGather repeats `in` size times, ReduceScatterSum gives
// size x segment rank of `in` (f32), and AllToAllV receives, from every rank, this rank's own
// send segment `rank` (recv_counts[i] must equal send_counts[rank]). It rejects any non-host
// buffer with FailedPrecondition (as MPI would fail) and counts its calls. Given another device
// to accept (`accepts`, e.g. cuda:0 for a stand-in of NCCL), it takes only buffers labelled with
// that device instead, and reads and writes them as host memory (tests label host memory so).
#pragma once

#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/comm/communicator.h"

namespace smoe::testing {

class MirrorHostCommunicator final : public Communicator {
 public:
  MirrorHostCommunicator(int rank, int size, Device accepts = Device::Cpu())
      : rank_(rank), size_(size), accepts_(accepts) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status AllReduceSum(ExecContext&, const TensorView& buffer) override {
    MOE_RETURN_IF_ERROR(Host("buffer", buffer));
    for (int64_t i = 0; i < buffer.numel(); ++i) {
      switch (buffer.dtype()) {
        case DType::kF32:
          buffer.data<float>()[i] *= static_cast<float>(size_);
          break;
        case DType::kI32:
          buffer.data<int32_t>()[i] *= size_;
          break;
        case DType::kI64:
          buffer.data<int64_t>()[i] *= size_;
          break;
        default:
          return BadArgument("buffer.dtype", DTypeName(buffer.dtype()), "f32, i32 or i64");
      }
    }
    return absl::OkStatus();
  }
  Status AllGather(ExecContext&, const TensorView& in, const TensorView& out) override {
    MOE_RETURN_IF_ERROR(Host("in", in));
    MOE_RETURN_IF_ERROR(Host("out", out));
    if (out.nbytes() != in.nbytes() * size_) {
      return BadArgument("out.numel", absl::StrCat(out.numel()), "ranks x in.numel");
    }
    for (int r = 0; r < size_; ++r) {
      if (in.nbytes() > 0) {
        std::memcpy(static_cast<char*>(out.data()) + r * in.nbytes(), in.data(), in.nbytes());
      }
    }
    return absl::OkStatus();
  }
  Status ReduceScatterSum(ExecContext&, const TensorView& in, const TensorView& out) override {
    MOE_RETURN_IF_ERROR(Host("in", in));
    MOE_RETURN_IF_ERROR(Host("out", out));
    if (in.dtype() != DType::kF32 || out.dtype() != DType::kF32) {
      return BadArgument("in.dtype", DTypeName(in.dtype()), "f32 (fake)");
    }
    if (in.numel() != out.numel() * size_) {
      return BadArgument("in.numel", absl::StrCat(in.numel()), "ranks x out.numel");
    }
    for (int64_t j = 0; j < out.numel(); ++j) {
      out.data<float>()[j] = static_cast<float>(size_) * in.data<float>()[rank_ * out.numel() + j];
    }
    return absl::OkStatus();
  }
  Status AllToAllV(ExecContext&, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    MOE_RETURN_IF_ERROR(Host("send", send));
    MOE_RETURN_IF_ERROR(Host("recv", recv));
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("send_counts", send_counts, size_, send.numel()));
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("recv_counts", recv_counts, size_, recv.numel()));
    const int64_t elem = DTypeSize(send.dtype());
    int64_t mine = 0;
    for (int j = 0; j < rank_; ++j) mine += send_counts[j];
    int64_t at = 0;
    for (int i = 0; i < size_; ++i) {
      if (recv_counts[i] != send_counts[rank_]) {
        return BadArgument(absl::StrCat("recv_counts[", i, "]"), absl::StrCat(recv_counts[i]),
                           absl::StrCat(send_counts[rank_], " (mirrored ranks)"));
      }
      if (recv_counts[i] > 0) {
        std::memcpy(static_cast<char*>(recv.data()) + at * elem,
                    static_cast<const char*>(send.data()) + mine * elem, recv_counts[i] * elem);
      }
      at += recv_counts[i];
    }
    return absl::OkStatus();
  }
  Status Barrier() override {
    ++barriers;
    return absl::OkStatus();
  }
  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    ++splits;
    // A sub-group of 1 rank per color: enough to tell the wrapper forwards to the split group.
    (void)key;
    return std::unique_ptr<Communicator>(new MirrorHostCommunicator(0, 1 + color, accepts_));
  }

  int calls = 0;  // buffers that reached the fake's collectives
  int barriers = 0;
  int splits = 0;
  std::vector<const void*> seen;  // data pointers handed to the collectives, in order

 private:
  Status Host(absl::string_view name, const TensorView& t) {
    if (t.device() != accepts_) {
      return absl::FailedPreconditionError(absl::StrCat(name, " on ", t.device().ToString(),
                                                        ": the fake takes ", accepts_.ToString(),
                                                        " buffers"));
    }
    MOE_RETURN_IF_ERROR(CheckContiguous(name, t));
    ++calls;
    seen.push_back(t.data());
    return absl::OkStatus();
  }

  int rank_;
  int size_;
  Device accepts_;
};

}  // namespace smoe::testing
