// MPI_COMM_WORLD as a Communicator, for CPU ranks (tests, the CPU trainer, NCCL bootstrap).
#include <mpi.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "runtime/comm/communicator.h"

namespace smoe {
namespace {

Status MpiStatus(int code, absl::string_view what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return absl::InternalError(absl::StrCat(what, ": ", absl::string_view(text, length)));
}

StatusOr<MPI_Datatype> MpiType(const TensorView& t) {
  switch (t.dtype()) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
    default: return BadArgument("buffer.dtype", DTypeName(t.dtype()), "f32, i32 or i64");
  }
}

Status CheckHost(absl::string_view name, const TensorView& t) {
  if (!t.device().is_cpu()) {
    return BadArgument(absl::StrCat(name, ".device"), t.device().ToString(), "cpu (MPI communicator)");
  }
  return CheckContiguous(name, t);
}

class MpiWorld final : public Communicator {
 public:
  MpiWorld(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status AllReduceSum(ExecContext&, const TensorView& buffer) override {
    MOE_RETURN_IF_ERROR(CheckHost("buffer", buffer));
    MOE_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(buffer));
    // Fixed order: reduce to rank 0 then broadcast is what MPI_Allreduce does for small buffers in
    // Open MPI's defaults; the result is identical on every rank either way.
    return MpiStatus(MPI_Allreduce(MPI_IN_PLACE, buffer.data(), static_cast<int>(buffer.numel()),
                                   type, MPI_SUM, MPI_COMM_WORLD),
                     "MPI_Allreduce");
  }

  Status AllGather(ExecContext&, const TensorView& in, const TensorView& out) override {
    MOE_RETURN_IF_ERROR(CheckHost("in", in));
    MOE_RETURN_IF_ERROR(CheckHost("out", out));
    if (in.dtype() != out.dtype()) {
      return BadArgument("out.dtype", DTypeName(out.dtype()), DTypeName(in.dtype()));
    }
    if (out.numel() != in.numel() * size_) {
      return BadArgument("out.numel", absl::StrCat(out.numel()),
                         absl::StrCat(in.numel() * size_, " (ranks x in.numel)"));
    }
    const int bytes = static_cast<int>(in.nbytes());
    return MpiStatus(MPI_Allgather(in.data(), bytes, MPI_BYTE, out.data(), bytes, MPI_BYTE,
                                   MPI_COMM_WORLD),
                     "MPI_Allgather");
  }

  Status Barrier() override { return MpiStatus(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

 private:
  int rank_;
  int size_;
};

void FinalizeMpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

StatusOr<Communicator*> MpiWorldCommunicator() {
  static StatusOr<Communicator*> world = []() -> StatusOr<Communicator*> {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      MOE_RETURN_IF_ERROR(MpiStatus(MPI_Init(nullptr, nullptr), "MPI_Init"));
      std::atexit(FinalizeMpi);
    }
    int rank = 0, size = 1;
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank"));
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size"));
    return new MpiWorld(rank, size);
  }();
  return world;
}

}  // namespace smoe
