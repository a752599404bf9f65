// Real overlap of pipelined chunks (d > 1) on CPU ranks (mpirun -np 2, CTest label mpi): with a
// slow link in front of MPI (tests/testing/delay_communicator.h: every all-to-all sleeps for its
// bytes), the delay adds to the layer's forward + backward at d = 4 at most half of what it adds
// at d = 1 (each against its own time without the delay): the communication thread sleeps through
// chunk c + 1's exchange while the experts of chunk c compute. The pipelined results are bit-identical with and without the communication
// thread, and equal d = 1 within fp32 tolerance. Prints the times as JSON lines: per repetition,
// with the share of the injected delay that d = 4 still shows (its time with the delay minus its
// time without, over the delay: a quarter in theory, the first chunk out and the last one back),
// and the medians.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "moe/parallel_moe_layer.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/moe/parallel_moe_layer_testing.h"
#include "tests/testing/compare.h"
#include "tests/testing/delay_communicator.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe {
namespace {

using testing::AllClose;
using testing::Cpu;
using testing::DelayCommunicator;
using testing::HostTensor;
using testing::RandomNormal;
using testing::Tolerance;

Communicator* World() {
  StatusOr<Communicator*> comm = MpiWorldCommunicator();
  MOE_CHECK_OK(comm.status());
  return *comm;
}

// The largest of every rank's value (every rank gets it).
double MaxOverRanks(Communicator& comm, double value) {
  Tensor mine = HostTensor({1}), all = HostTensor({comm.size()});
  mine.data<float>()[0] = static_cast<float>(value);
  MOE_CHECK_OK(comm.AllGather(Cpu(), mine, all));
  return *std::max_element(all.data<float>(), all.data<float>() + comm.size());
}

template <typename T>
T Must(StatusOr<T> value) {
  MOE_CHECK_OK(value.status());
  return *std::move(value);
}

bool BitEqual(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

struct Outputs {
  Tensor y, dx, dw_gate, dw1, dw3, dw2;
};

class OverlapRig {
 public:
  explicit OverlapRig(Communicator* world) : slow_(world, 0.0) {
    exchanger_ = Must(RowExchanger::Create(&slow_));
    config_.model_dim = 128;
    config_.ffn_dim = 256;
    config_.num_experts = 2 * world->size();
    config_.top_k = 2;
    const int64_t m = config_.model_dim, h = config_.ffn_dim, e = config_.num_experts;
    layout_ = Must(MakeExpertShardLayout(e, world->size(), world->rank(), h));
    w_gate_ = RandomNormal({m, e}, DType::kF32, 11, 0.2f);
    const Tensor w1 = RandomNormal({e, m, h}, DType::kF32, 12, 1.0f / std::sqrt(float(m)));
    const Tensor w3 = RandomNormal({e, m, h}, DType::kF32, 13, 1.0f / std::sqrt(float(m)));
    const Tensor w2 = RandomNormal({e, h, m}, DType::kF32, 14, 1.0f / std::sqrt(float(h)));
    w1_ = testing::OwnedShard(w1, layout_, true);
    w3_ = testing::OwnedShard(w3, layout_, true);
    w2_ = testing::OwnedShard(w2, layout_, false);
    x_ = RandomNormal({kTokens, m}, DType::kF32, 100 + world->rank());
    dy_ = RandomNormal({kTokens, m}, DType::kF32, 200 + world->rank());
  }

  DelayCommunicator& slow() { return slow_; }

  // Forward + backward in `mode`; returns the slowest rank's milliseconds and the slowest rank's
  // injected delay (*slept_ms).
  double Run(int d, bool overlap, Outputs* out, double* slept_ms = nullptr) {
    const int64_t m = config_.model_dim, e = config_.num_experts;
    const int64_t el = layout_.local_experts, hs = layout_.ShardWidth(config_.ffn_dim);
    out->y = HostTensor({kTokens, m});
    out->dx = HostTensor({kTokens, m});
    out->dw_gate = HostTensor({m, e});
    out->dw1 = HostTensor({el, m, hs});
    out->dw3 = HostTensor({el, m, hs});
    out->dw2 = HostTensor({el, hs, m});
    exchanger_->set_overlap(overlap);
    const MoEParamViews local{w_gate_, w1_, w3_, w2_};
    const ParallelMode mode{1, d, AllToAllAlgorithm::kFlat};
    ParallelMoEState state;
    MOE_CHECK_OK(slow_.Barrier());
    slow_.reset_slept();
    const auto start = std::chrono::steady_clock::now();
    MOE_CHECK_OK(
        ParallelMoEForward(Cpu(), config_, local, x_, out->y, &state, *exchanger_, mode).status());
    MOE_CHECK_OK(ParallelMoEBackward(Cpu(), config_, local, state, dy_, out->dx,
                                     {out->dw_gate, out->dw1, out->dw3, out->dw2}));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const double slept = slow_.slept_ms();
    if (slept_ms != nullptr) *slept_ms = MaxOverRanks(slow_, slept);
    return MaxOverRanks(slow_, ms);
  }

  // The fastest of `reps` runs (the least disturbed by other processes on the machine).
  double Fastest(int reps, int d, bool overlap, Outputs* out, double* slept_ms = nullptr) {
    double best = 1e30;
    for (int i = 0; i < reps; ++i) best = std::min(best, Run(d, overlap, out, slept_ms));
    return best;
  }

 private:
  // Enough tokens that a chunk's experts take milliseconds: the overlap's fixed costs (a thread
  // hand-off per exchange) must stay small next to the injected delay, which is a share of the
  // compute time (with 2,048 tokens and the faster CPU GEMMs the median fell to 0.2-0.45).
  static constexpr int64_t kTokens = 8192;
  DelayCommunicator slow_;
  std::unique_ptr<RowExchanger> exchanger_;
  MoELayerConfig config_;
  ExpertShardLayout layout_;
  Tensor w_gate_, w1_, w3_, w2_, x_, dy_;
};

TEST(MpiOverlapTest, PipelinedChunksHideTheInjectedDelay) {
  Communicator* world = World();
  OverlapRig rig(world);
  Outputs out, d1, d4, d4_serial;
  rig.Run(4, true, &out);  // warm: buffers, the communication thread
  // The bytes each rank's exchanges move in a d = 1 pass (1 ns per byte).
  rig.slow().set_ns_per_byte(1.0);
  double ns_total_ms = 0;
  rig.Run(1, true, &out, &ns_total_ms);
  // Each repetition: the d = 4 pass without delay, then a delay such that each of the four
  // exchanges of a d = 1 pass (rows out and back, forward and backward) takes 8% of it (a quarter
  // of its forward: a chunk's exchange stays well below a chunk's experts), then d = 1, d = 4 and
  // d = 4 with the overlap off under that delay. d = 4 pays a quarter of each pass's delay (the
  // first chunk out, the last one back): it hides 75% in theory. The machine's speed drifts
  // (other processes share its cores), so each repetition calibrates itself and the test takes
  // the median of the repetitions' shares.
  // The share saved against d = 1 compares what the delay adds to each (its time with the delay
  // minus its time without): the four chunks' own compute, faster or slower than one chunk's on a
  // given CPU, is not overlap.
  const int reps = 11;
  std::vector<double> vs_d1, vs_serial;
  double plain = 0, plain1 = 0, t1 = 0, t4 = 0, t4_serial = 0, injected = 0, injected_d4 = 0;
  for (int i = 0; i < reps; ++i) {
    rig.slow().set_ns_per_byte(0.0);
    plain = rig.Run(4, true, &out);
    plain1 = rig.Run(1, true, &out);
    rig.slow().set_ns_per_byte(4 * 0.08 * plain / ns_total_ms);
    t1 = rig.Run(1, true, &d1, &injected);
    t4 = rig.Run(4, true, &d4, &injected_d4);
    t4_serial = rig.Run(4, false, &d4_serial);
    vs_d1.push_back(((t1 - plain1) - (t4 - plain)) / injected);
    vs_serial.push_back((t4_serial - t4) / injected_d4);
    if (world->rank() == 0) {
      std::printf(
          "{\"name\": \"overlap_mpi\", \"ranks\": %d, \"rep\": %d, \"d4_no_delay_ms\": %.2f, "
          "\"d1_no_delay_ms\": %.2f, \"d1_ms\": %.2f, \"d4_ms\": %.2f, \"d4_no_overlap_ms\": %.2f, "
          "\"injected_d1_ms\": %.2f, \"injected_d4_ms\": %.2f, \"saved_vs_d1_of_injected\": "
          "%.3f, \"saved_vs_no_overlap_of_injected\": %.3f, \"d4_exposed_of_injected\": %.3f}\n",
          world->size(), i, plain, plain1, t1, t4, t4_serial, injected, injected_d4, vs_d1.back(),
          vs_serial.back(), (t4 - plain) / injected_d4);
      std::fflush(stdout);
    }
  }
  std::sort(vs_d1.begin(), vs_d1.end());
  std::sort(vs_serial.begin(), vs_serial.end());
  // d = 4 hides at least half the delay that d = 1 pays (the median repetition; 0.75 in theory)...
  EXPECT_GE(vs_d1[reps / 2], 0.5) << "median share of the injected delay saved against d = 1";
  // What the overlap alone saves, against the same chunks with the overlap off (each exchange
  // waited for at once, on the same thread and in the same way: d = 4 on a CPU also gains from its
  // smaller working set), is printed, not checked: on a machine whose cores are all busy (ranks
  // oversubscribed, other jobs) the communication thread waits for a core after each sleep, and
  // that can eat the gain (medians seen on the 2-core development machine: -0.8 to 0.76 of the
  // delay, 0.75 in theory).
  if (world->rank() == 0) {
    std::printf(
        "{\"name\": \"overlap_mpi_medians\", \"ranks\": %d, \"saved_vs_d1_of_injected\": "
        "%.3f, \"saved_vs_no_overlap_of_injected\": %.3f}\n",
        world->size(), vs_d1[reps / 2], vs_serial[reps / 2]);
    std::fflush(stdout);
  }

  // The communication thread changes nothing in the results.
  EXPECT_TRUE(BitEqual(d4.y, d4_serial.y));
  EXPECT_TRUE(BitEqual(d4.dx, d4_serial.dx));
  EXPECT_TRUE(BitEqual(d4.dw_gate, d4_serial.dw_gate));
  EXPECT_TRUE(BitEqual(d4.dw1, d4_serial.dw1));
  EXPECT_TRUE(BitEqual(d4.dw3, d4_serial.dw3));
  EXPECT_TRUE(BitEqual(d4.dw2, d4_serial.dw2));
  // And d = 4 is d = 1 up to the summation order of the expert gradients (sums of ~4,000 rows,
  // chunked: a few ulps of the larger partial sums).
  const Tolerance tol{5e-5, 2e-4};
  EXPECT_TRUE(AllClose(d4.y, d1.y, tol));
  EXPECT_TRUE(AllClose(d4.dx, d1.dx, tol));
  EXPECT_TRUE(AllClose(d4.dw1, d1.dw1, tol));
  EXPECT_TRUE(AllClose(d4.dw3, d1.dw3, tol));
  EXPECT_TRUE(AllClose(d4.dw2, d1.dw2, tol));
}

}  // namespace
}  // namespace smoe
