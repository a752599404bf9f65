// RowExchanger on the one-rank group: both algorithms are a copy; argument validation names the
// argument; algorithm names round-trip. Multi-rank behaviour (2dh == flat) is all_to_all_mpi_test.
#include "moe/dispatch/all_to_all.h"

#include <cstring>
#include <map>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::Cpu;
using ::testing::HasSubstr;
using testing::HostTensor;
using testing::RandomNormal;
using testing::StatusIs;

std::unique_ptr<RowExchanger> SingleRankExchanger() {
  StatusOr<std::unique_ptr<RowExchanger>> exchanger =
      RowExchanger::Create(SingleRankCommunicator());
  MOE_CHECK(exchanger.ok()) << exchanger.status().ToString();
  return *std::move(exchanger);
}

TEST(AllToAllAlgorithmTest, NamesRoundTrip) {
  for (AllToAllAlgorithm algorithm :
       {AllToAllAlgorithm::kFlat, AllToAllAlgorithm::kTwoDimHierarchical}) {
    MOE_ASSERT_OK_AND_ASSIGN(AllToAllAlgorithm parsed,
                             ParseAllToAllAlgorithm(AllToAllAlgorithmName(algorithm)));
    EXPECT_EQ(parsed, algorithm);
  }
  EXPECT_EQ(AllToAllAlgorithmName(AllToAllAlgorithm::kFlat), "flat");
  EXPECT_EQ(AllToAllAlgorithmName(AllToAllAlgorithm::kTwoDimHierarchical), "2dh");
}

TEST(AllToAllAlgorithmTest, UnknownNameIsRejectedWithTheAcceptedNames) {
  for (absl::string_view name : {"ring", "", "FLAT", "2DH"}) {
    EXPECT_THAT(ParseAllToAllAlgorithm(name).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("flat or 2dh")))
        << name;
  }
}

TEST(RowExchangerTest, CreateValidatesCommAndNodeSize) {
  EXPECT_THAT(RowExchanger::Create(nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("comm")));
  for (int node_size : {0, -1, 2}) {
    EXPECT_THAT(RowExchanger::Create(SingleRankCommunicator(), node_size).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node_size")))
        << node_size;
  }
  MOE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<RowExchanger> exchanger,
                           RowExchanger::Create(SingleRankCommunicator(), 1));
  EXPECT_EQ(exchanger->node_size(), 1);
  EXPECT_EQ(exchanger->comm().size(), 1);
}

// One rank: its only segment goes to itself, so recv == send for both algorithms, bit for bit.
TEST(RowExchangerTest, SingleRankCopiesRowsWithEitherAlgorithm) {
  std::unique_ptr<RowExchanger> exchanger = SingleRankExchanger();
  for (AllToAllAlgorithm algorithm :
       {AllToAllAlgorithm::kFlat, AllToAllAlgorithm::kTwoDimHierarchical}) {
    Tensor send = RandomNormal({5, 3}, 7);
    Tensor recv = HostTensor({5, 3});
    MOE_ASSERT_OK(Fill(Cpu(), recv, -1.0));
    const std::vector<int64_t> rows = {5};
    MOE_ASSERT_OK(exchanger->Exchange(Cpu(), algorithm, send, rows, recv, rows));
    EXPECT_EQ(std::memcmp(send.data(), recv.data(), send.nbytes()), 0)
        << AllToAllAlgorithmName(algorithm);

    Tensor ids = HostTensor({4, 3}, DType::kI64);
    for (int i = 0; i < 12; ++i) ids.data<int64_t>()[i] = 1000 + 7 * i;
    Tensor ids_out = HostTensor({4, 3}, DType::kI64);
    const std::vector<int64_t> id_rows = {4};
    MOE_ASSERT_OK(exchanger->Exchange(Cpu(), algorithm, ids, id_rows, ids_out, id_rows));
    for (int i = 0; i < 12; ++i) EXPECT_EQ(ids_out.data<int64_t>()[i], 1000 + 7 * i);
  }
}

TEST(RowExchangerTest, ZeroRowsIsANoOp) {
  std::unique_ptr<RowExchanger> exchanger = SingleRankExchanger();
  Tensor send = HostTensor({0, 3});
  Tensor recv = HostTensor({0, 3});
  const std::vector<int64_t> rows = {0};
  MOE_EXPECT_OK(exchanger->Exchange(Cpu(), AllToAllAlgorithm::kFlat, send, rows, recv, rows));
  MOE_EXPECT_OK(
      exchanger->Exchange(Cpu(), AllToAllAlgorithm::kTwoDimHierarchical, send, rows, recv, rows));
}

TEST(RowExchangerTest, RejectsBadArgumentsNamingThem) {
  std::unique_ptr<RowExchanger> exchanger = SingleRankExchanger();
  Tensor send = RandomNormal({4, 3}, 11);
  Tensor recv = HostTensor({4, 3});
  const std::vector<int64_t> four = {4};
  auto exchange = [&](const TensorView& s, std::span<const int64_t> s_rows, const TensorView& r,
                      std::span<const int64_t> r_rows) {
    return exchanger->Exchange(Cpu(), AllToAllAlgorithm::kTwoDimHierarchical, s, s_rows, r, r_rows);
  };
  auto invalid = [](absl::string_view field) {
    return StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(std::string(field)));
  };

  Tensor flat = HostTensor({12});
  EXPECT_THAT(exchange(flat, four, recv, four), invalid("send.rank"));
  EXPECT_THAT(exchange(send, four, flat, four), invalid("recv.rank"));
  // Every other row of an [8, 3] buffer: a [4, 3] view with row stride 6.
  Tensor wide = HostTensor({8, 3});
  TensorView strided(wide.data(), DType::kF32, Shape({4, 3}), Strides({6, 1}), Device::Cpu());
  EXPECT_THAT(exchange(strided, four, recv, four), invalid("send.strides"));
  EXPECT_THAT(exchange(send, four, strided, four), invalid("recv.strides"));
  Tensor ints = HostTensor({4, 3}, DType::kI32);
  EXPECT_THAT(exchange(send, four, ints, four), invalid("recv.dtype"));
  Tensor narrow = HostTensor({4, 2});
  EXPECT_THAT(exchange(send, four, narrow, four), invalid("recv.dim(1)"));

  const std::vector<int64_t> two_ranks = {2, 2};
  EXPECT_THAT(exchange(send, two_ranks, recv, four), invalid("send_rows.size"));
  EXPECT_THAT(exchange(send, four, recv, two_ranks), invalid("recv_rows.size"));
  const std::vector<int64_t> three = {3};
  EXPECT_THAT(exchange(send, three, recv, four), invalid("sum of send_rows"));
  EXPECT_THAT(exchange(send, four, recv, three), invalid("sum of recv_rows"));
  const std::vector<int64_t> negative = {-4};
  EXPECT_THAT(exchange(send, negative, recv, four), invalid("send_rows[0]"));
  // The failed calls wrote nothing the valid one depends on.
  MOE_EXPECT_OK(exchange(send, four, recv, four));
  EXPECT_EQ(std::memcmp(send.data(), recv.data(), send.nbytes()), 0);
}

// The 2dh split plan, simulated over every rank as Split groups them (by color, ranked by key):
// each intra-node group is one node's ranks by local index, each inter-node group the ranks of one
// local index by node, as ExchangeTwoDim expects of any transport (MPI or ncclCommSplit).
TEST(TwoDimSplitsTest, GroupsAreNodesAndLocalIndices) {
  for (const auto& [world, node_size] : {std::pair{8, 4}, std::pair{16, 8}, std::pair{12, 3},
                                         std::pair{64, 8}, std::pair{4, 1}, std::pair{4, 4}}) {
    // color -> (key, rank) pairs, for both kinds of group.
    std::map<int, std::vector<std::pair<int, int>>> intra, inter;
    for (int rank = 0; rank < world; ++rank) {
      const TwoDimSplits s = TwoDimSplitsOf(rank, node_size);
      intra[s.intra_node.color].push_back({s.intra_node.key, rank});
      inter[s.inter_node.color].push_back({s.inter_node.key, rank});
    }
    ASSERT_EQ(static_cast<int>(intra.size()), world / node_size) << world << "/" << node_size;
    ASSERT_EQ(static_cast<int>(inter.size()), node_size) << world << "/" << node_size;
    for (auto& [node, members] : intra) {
      std::sort(members.begin(), members.end());
      for (int i = 0; i < node_size; ++i) EXPECT_EQ(members[i].second, node * node_size + i);
    }
    for (auto& [local, members] : inter) {
      std::sort(members.begin(), members.end());
      for (int i = 0; i < world / node_size; ++i)
        EXPECT_EQ(members[i].second, i * node_size + local);
    }
  }
}

}  // namespace
}  // namespace smoe
