// MPI_COMM_WORLD as a Communicator, for CPU ranks (tests, the CPU trainer, NCCL bootstrap).
// Every collective runs under the process's CollectiveWatchdog (a rank that stalls ends the job
// with an error naming the collective instead of hanging it). MPI runs with
// MPI_THREAD_SERIALIZED, so a communication thread (comm_lane.h) may take turns with the main one.
//
// On the main thread the collectives are MPI's blocking ones (the fastest). On another thread
// (a communication thread, while the main thread computes) AllToAllV is MPI_Ialltoallv and a wait
// that sleeps between MPI_Test calls: a blocking call would busy-poll a core away from the
// compute it is meant to overlap.
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/comm/collective_watchdog.h"
#include "runtime/comm/communicator.h"
#include "runtime/core/logging.h"

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
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    default:
      return BadArgument("buffer.dtype", DTypeName(t.dtype()), "f32, i32 or i64");
  }
}

// The thread support MPI gave (MPI_THREAD_SINGLE until MPI is initialized).
int thread_level = MPI_THREAD_SINGLE;

bool OnMainThread() {
  int main = 1;
  MPI_Is_thread_main(&main);
  return main != 0;
}

// Waits for `request` politely: quick tests (yielding the CPU) for 20 us, then sleeps of 10 us
// growing to 200 us between them (each test also progresses the transfer).
Status AwaitPolitely(MPI_Request* request, absl::string_view what) {
  const auto start = std::chrono::steady_clock::now();
  std::chrono::microseconds nap(10);
  while (true) {
    int done = 0;
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Test(request, &done, MPI_STATUS_IGNORE), what));
    if (done) return absl::OkStatus();
    if (std::chrono::steady_clock::now() - start < std::chrono::microseconds(20)) {
      sched_yield();
      continue;
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::microseconds(200));
  }
}

Status CheckHost(absl::string_view name, const TensorView& t) {
  if (!t.device().is_cpu()) {
    return BadArgument(absl::StrCat(name, ".device"), t.device().ToString(),
                       "cpu (MPI communicator)");
  }
  return CheckContiguous(name, t);
}

// A group of MPI ranks: MPI_COMM_WORLD or a communicator split from it (freed on destruction
// unless MPI is already finalized).
class MpiGroup final : public Communicator {
 public:
  MpiGroup(MPI_Comm comm, int rank, int size, bool owned)
      : comm_(comm), rank_(rank), size_(size), owned_(owned) {}
  ~MpiGroup() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status AllReduceSum(ExecContext&, const TensorView& buffer) override {
    MOE_RETURN_IF_ERROR(CheckHost("buffer", buffer));
    MOE_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(buffer));
    // Fixed order: reduce to rank 0 then broadcast is what MPI_Allreduce does for small buffers in
    // Open MPI's defaults; the result is identical on every rank either way.
    const auto watched = Watch("AllReduceSum (MPI_Allreduce)");
    return MpiStatus(MPI_Allreduce(MPI_IN_PLACE, buffer.data(), static_cast<int>(buffer.numel()),
                                   type, MPI_SUM, comm_),
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
    const auto watched = Watch("AllGather (MPI_Allgather)");
    return MpiStatus(MPI_Allgather(in.data(), bytes, MPI_BYTE, out.data(), bytes, MPI_BYTE, comm_),
                     "MPI_Allgather");
  }

  Status ReduceScatterSum(ExecContext&, const TensorView& in, const TensorView& out) override {
    MOE_RETURN_IF_ERROR(CheckHost("in", in));
    MOE_RETURN_IF_ERROR(CheckHost("out", out));
    if (in.dtype() != out.dtype()) {
      return BadArgument("out.dtype", DTypeName(out.dtype()), DTypeName(in.dtype()));
    }
    if (in.numel() != out.numel() * size_) {
      return BadArgument("in.numel", absl::StrCat(in.numel()),
                         absl::StrCat(out.numel() * size_, " (ranks x out.numel)"));
    }
    MOE_ASSIGN_OR_RETURN(MPI_Datatype type, MpiType(in));
    const auto watched = Watch("ReduceScatterSum (MPI_Reduce_scatter_block)");
    return MpiStatus(MPI_Reduce_scatter_block(in.data(), out.data(), static_cast<int>(out.numel()),
                                              type, MPI_SUM, comm_),
                     "MPI_Reduce_scatter_block");
  }

  Status AllToAllV(ExecContext&, const TensorView& send, std::span<const int64_t> send_counts,
                   const TensorView& recv, std::span<const int64_t> recv_counts) override {
    MOE_RETURN_IF_ERROR(CheckHost("send", send));
    MOE_RETURN_IF_ERROR(CheckHost("recv", recv));
    if (send.dtype() != recv.dtype()) {
      return BadArgument("recv.dtype", DTypeName(recv.dtype()), DTypeName(send.dtype()));
    }
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("send_counts", send_counts, size_, send.numel()));
    MOE_RETURN_IF_ERROR(CheckSegmentCounts("recv_counts", recv_counts, size_, recv.numel()));
    // Byte counts and displacements: MPI's are int (no MPI-4 large counts in Open MPI 4.1).
    const int64_t elem = DTypeSize(send.dtype());
    if (send.nbytes() > INT_MAX || recv.nbytes() > INT_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("AllToAllV: buffers of ", send.nbytes(), " and ", recv.nbytes(),
                       " bytes; the MPI communicator moves at most ", INT_MAX, " bytes per call"));
    }
    std::vector<int> send_bytes(size_), send_displ(size_), recv_bytes(size_), recv_displ(size_);
    int send_at = 0, recv_at = 0;
    for (int i = 0; i < size_; ++i) {
      send_bytes[i] = static_cast<int>(send_counts[i] * elem);
      recv_bytes[i] = static_cast<int>(recv_counts[i] * elem);
      send_displ[i] = send_at;
      recv_displ[i] = recv_at;
      send_at += send_bytes[i];
      recv_at += recv_bytes[i];
    }
    if (!OnMainThread()) {
      const auto watched = Watch("AllToAllV (MPI_Ialltoallv)");
      MPI_Request request = MPI_REQUEST_NULL;
      MOE_RETURN_IF_ERROR(MpiStatus(
          MPI_Ialltoallv(send.data(), send_bytes.data(), send_displ.data(), MPI_BYTE, recv.data(),
                         recv_bytes.data(), recv_displ.data(), MPI_BYTE, comm_, &request),
          "MPI_Ialltoallv"));
      return AwaitPolitely(&request, "MPI_Ialltoallv");
    }
    const auto watched = Watch("AllToAllV (MPI_Alltoallv)");
    return MpiStatus(
        MPI_Alltoallv(send.data(), send_bytes.data(), send_displ.data(), MPI_BYTE, recv.data(),
                      recv_bytes.data(), recv_displ.data(), MPI_BYTE, comm_),
        "MPI_Alltoallv");
  }

  Status Barrier() override {
    const auto watched = Watch("Barrier (MPI_Barrier)");
    return MpiStatus(MPI_Barrier(comm_), "MPI_Barrier");
  }

  bool CallableFromAnotherThread() const override { return thread_level >= MPI_THREAD_SERIALIZED; }

  StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    if (color < 0) return BadArgument("color", absl::StrCat(color), ">= 0");
    MPI_Comm sub;
    {
      const auto watched = Watch("Split (MPI_Comm_split)");
      MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split"));
    }
    int rank = 0, size = 1;
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(sub, &rank), "MPI_Comm_rank"));
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(sub, &size), "MPI_Comm_size"));
    return std::unique_ptr<Communicator>(new MpiGroup(sub, rank, size, /*owned=*/true));
  }

 private:
  CollectiveWatchdog::Scope Watch(const char* what) const {
    return CollectiveWatchdog::Process().Enter(what, rank_, size_);
  }

  MPI_Comm comm_;
  int rank_;
  int size_;
  bool owned_;
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
      // Serialized: a communication thread (comm_lane.h) takes turns with the main thread.
      MOE_RETURN_IF_ERROR(
          MpiStatus(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &thread_level),
                    "MPI_Init_thread"));
      std::atexit(FinalizeMpi);
    } else {
      MOE_RETURN_IF_ERROR(MpiStatus(MPI_Query_thread(&thread_level), "MPI_Query_thread"));
    }
    int rank = 0, size = 1;
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank"));
    MOE_RETURN_IF_ERROR(MpiStatus(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size"));
    CollectiveWatchdog::SetProcessLabel(absl::StrCat("rank ", rank, " of ", size));
    if (thread_level < MPI_THREAD_SERIALIZED && rank == 0) {
      MOE_LOG(WARNING) << "MPI provides no MPI_THREAD_SERIALIZED: pipelined exchanges (d > 1) "
                          "run on the calling thread, without overlap";
    }
    return new MpiGroup(MPI_COMM_WORLD, rank, size, /*owned=*/false);
  }();
  return world;
}

}  // namespace smoe
