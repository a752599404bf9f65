// Runs under mpirun (CTest label mpi, -np 4 and -np 6): the 2dh exchange is bit-identical to the
// flat one and to the values the sending rank wrote, for every node size dividing the group.
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moe/dispatch/all_to_all.h"
#include "runtime/core/philox.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::StatusIs;

constexpr int64_t kWidth = 3;

Communicator& World() {
  StatusOr<Communicator*> world = MpiWorldCommunicator();
  MOE_CHECK(world.ok()) << world.status().ToString();
  return **world;
}

// Rows rank src sends to rank dst in exchange `seed`: 0 to 4 (zeros included), the same on both
// ends. Seed 0 also leaves rank 1 with nothing to send, so whole empty send buffers occur.
int64_t SegmentRows(uint64_t seed, int src, int dst) {
  if (seed == 0 && src == 1) return 0;
  return PhiloxBits(seed, static_cast<uint64_t>(src) * 64 + dst) % 5;
}

// Element (row k, column c) of the segment src sends to dst. Below 2^24, so exact in f32 too.
int64_t Value(int src, int dst, int64_t k, int64_t c) {
  return 100000 * src + 1000 * dst + 10 * k + c;
}

struct Segments {
  std::vector<int64_t> send_rows, recv_rows;
  int64_t send_total = 0, recv_total = 0;
};

Segments MakeSegments(uint64_t seed, int me, int w) {
  Segments s;
  for (int r = 0; r < w; ++r) {
    s.send_rows.push_back(SegmentRows(seed, me, r));
    s.recv_rows.push_back(SegmentRows(seed, r, me));
    s.send_total += s.send_rows.back();
    s.recv_total += s.recv_rows.back();
  }
  return s;
}

// f32 values are Value + 0.5, so the fractional bits travel too.
void Put(const Tensor& t, int64_t i, int64_t value) {
  if (t.dtype() == DType::kF32) {
    t.data<float>()[i] = static_cast<float>(value) + 0.5f;
  } else {
    t.data<int64_t>()[i] = value;
  }
}
double Get(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kF32 ? static_cast<double>(t.data<float>()[i]) - 0.5
                                  : static_cast<double>(t.data<int64_t>()[i]);
}

std::vector<int> Divisors(int w) {
  std::vector<int> out;
  for (int d = 1; d <= w; ++d) {
    if (w % d == 0) out.push_back(d);
  }
  return out;
}

TEST(AllToAllMpiTest, TwoDimHierarchicalEqualsFlatAndTheSentValues) {
  Communicator& world = World();
  ASSERT_GE(world.size(), 2) << "run with mpirun -np 4 (or 6)";
  const int w = world.size(), me = world.rank();
  int zero_segments = 0;
  for (int node_size : Divisors(w)) {
    // One exchanger per node size, reused: its sub-groups are created once, on the first 2dh call.
    MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<RowExchanger> exchanger,
                             RowExchanger::Create(&world, node_size));
    for (uint64_t seed : {0, 1, 2, 3}) {
      const Segments s = MakeSegments(seed, me, w);
      for (int64_t rows : s.recv_rows) zero_segments += rows == 0;
      for (DType dtype : {DType::kF32, DType::kI64}) {
        SCOPED_TRACE(::testing::Message()
                     << "rank " << me << " of " << w << ", node_size " << node_size << ", seed "
                     << seed << ", " << DTypeName(dtype));
        Tensor send = HostTensor({s.send_total, kWidth}, dtype);
        int64_t at = 0;
        for (int d = 0; d < w; ++d) {
          for (int64_t k = 0; k < s.send_rows[d]; ++k, ++at) {
            for (int64_t c = 0; c < kWidth; ++c) Put(send, at * kWidth + c, Value(me, d, k, c));
          }
        }
        Tensor flat = HostTensor({s.recv_total, kWidth}, dtype);
        Tensor two_dim = HostTensor({s.recv_total, kWidth}, dtype);
        MOE_ASSERT_OK(Fill(Cpu(), flat, -7.0));
        MOE_ASSERT_OK(Fill(Cpu(), two_dim, -9.0));
        MOE_ASSERT_OK(exchanger->Exchange(Cpu(), AllToAllAlgorithm::kFlat, send, s.send_rows, flat,
                                          s.recv_rows));
        MOE_ASSERT_OK(exchanger->Exchange(Cpu(), AllToAllAlgorithm::kTwoDimHierarchical, send,
                                          s.send_rows, two_dim, s.recv_rows));
        ASSERT_EQ(std::memcmp(flat.data(), two_dim.data(), flat.nbytes()), 0);
        at = 0;
        for (int src = 0; src < w; ++src) {
          for (int64_t k = 0; k < s.recv_rows[src]; ++k, ++at) {
            for (int64_t c = 0; c < kWidth; ++c) {
              ASSERT_EQ(Get(two_dim, at * kWidth + c), static_cast<double>(Value(src, me, k, c)))
                  << "row " << k << " column " << c << " from rank " << src;
            }
          }
        }
      }
    }
  }
  // The generator did produce empty segments (the cases that skip copies and messages).
  EXPECT_GT(zero_segments, 0);
}

// Small enough to work by hand: rows one element wide, one row per (src, dst) pair, nodes of two
// ranks. Rank s sends the row [10 * s + d] to rank d, so rank d receives [d, 10 + d, 20 + d, ...].
TEST(AllToAllMpiTest, OneRowPerPairHandWorked) {
  Communicator& world = World();
  const int w = world.size(), me = world.rank();
  const int node_size = w % 2 == 0 ? 2 : 1;
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<RowExchanger> exchanger,
                           RowExchanger::Create(&world, node_size));
  Tensor send = HostTensor({w, 1}, DType::kI64);
  Tensor recv = HostTensor({w, 1}, DType::kI64);
  for (int d = 0; d < w; ++d) send.data<int64_t>()[d] = 10 * me + d;
  const std::vector<int64_t> ones(w, 1);
  MOE_ASSERT_OK(
      exchanger->Exchange(Cpu(), AllToAllAlgorithm::kTwoDimHierarchical, send, ones, recv, ones));
  for (int s = 0; s < w; ++s) EXPECT_EQ(recv.data<int64_t>()[s], 10 * s + me) << "from " << s;
}

TEST(AllToAllMpiTest, NodeSizeMustDivideTheGroup) {
  Communicator& world = World();
  const int w = world.size();
  for (int node_size : {0, w - 1, w + 1, 2 * w}) {
    if (node_size > 0 && w % node_size == 0) continue;
    EXPECT_THAT(RowExchanger::Create(&world, node_size).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_size")))
        << node_size;
  }
}

}  // namespace
}  // namespace smoe
