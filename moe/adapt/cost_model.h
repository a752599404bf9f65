// A cost model of one MoE layer's training step (forward + backward) in each parallel mode
// (DESIGN.md section 6). Host-only: it predicts from a workload and hardware parameters, it never
// measures. The adaptive controller can use it as a prior (AdaptiveController::SetPrior) that
// prunes the candidates worth measuring; bench/adapt_sim replays routing traces against it.
//
// Workload: W ranks in nodes of n GPUs, E experts of M x H (SwiGLU: three M x H matrices), top-K
// routing of T tokens per rank, the dtype of activations and weights, and how the routed rows
// spread over the experts (shares from routing counts, or from a capacity bucket). Every rank
// routes with the same shares (rank j sends share_e * T * K rows to expert e). The layout is the
// one of moe/parallel_moe_layer.h: E >= W, E / W whole experts per rank; E < W, s = W / E ranks
// per expert, each an H / s slice.
//
// What a mode costs (what differs between modes; the router, permute and combine do not):
//   exchange: the token all-to-alls, two per pass (rows out and back), forward and backward. A
//     rank's link carries the larger of what it sends and what it receives; its peers are spread
//     evenly, so (n - 1) / W of it crosses the intra-node link and (W - n) / W the inter-node one,
//     both at once: flat = max(intra, inter) + (W - 1) messages x latency. 2dh (1 < n < W) moves
//     the rows in two phases: inside the node (rows regrouped for each local index), then across
//     nodes between ranks of one local index (W / n - 1 messages), plus two regroup copies through
//     device memory. The busiest rank sets the time (the owner of the hottest experts receives
//     most).
//   gather: r = 0 all-gathers every expert's weights and reduce-scatters their f32 gradients over
//     the W ranks (a ring: W - 1 messages, the inter-node link's bandwidth once W > n); r >= 1 with
//     u = s / r > 1 does the same within groups of u ranks for an H / r slice.
//   compute: the expert GEMMs on the busiest rank: 6 M H' flops per row forward (three matrices),
//     twice that backward, at the throughput of a GEMM of that many rows (HardwareModel::gemm:
//     small groups run far below peak). r = 0: every expert on the local rows (balanced whatever
//     the routing); r >= 1: the rows received (s = 1: the owned experts' rows; s > 1: R_e / u rows
//     of width H / r).
//   overlap (d > 1): each pass is simulated in chunks: every chunk's rows go out first, on one
//     communication channel in order; chunk c's experts start when its rows are in and the
//     previous chunk is done; its rows go back, after the exchanges queued before them. A chunk's
//     exchange moves 1/d of the bytes but pays the full per-message latency; its GEMMs are 1/d as
//     tall (slower per row). overlap = exchange + compute - the simulated time.
// total = exchange + gather + compute - overlap. All times in milliseconds.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "moe/adapt/parallel_mode.h"
#include "runtime/core/dtype.h"
#include "runtime/core/status.h"

namespace smoe {

// Achieved throughput of an expert GEMM whose groups have `rows` rows.
struct GemmPoint {
  double rows = 1;    // > 0
  double tflops = 1;  // > 0
};

struct HardwareModel {
  // Ascending rows; GemmTflops interpolates linearly in log(rows) and clamps at the ends. Fill it
  // from gemm_bench's grouped runs on the card (adapt_sim --gemm_table).
  std::vector<GemmPoint> gemm;
  double intra_node_gbps = 380;  // GB/s per GPU per direction inside a node (NVLink 4, achieved)
  double inter_node_gbps = 50;   // GB/s per GPU per direction between nodes (400 Gb/s)
  double latency_us = 3;         // per message
  double memory_gbps = 2600;     // device memory (2dh regroup copies)

  // An H100 SXM node of 8 with one 400 Gb/s NIC per GPU. The GEMM table is an assumption for bf16
  // grouped GEMMs of Sigma-MoE-Tiny's shape (M 1536, H 768), from ~10 TFLOP/s at 16 rows to ~650
  // at 16384, not a measurement: replace it with gemm_bench's.
  static HardwareModel H100();
  // TFLOP/s at `rows` rows per group (rows > 0).
  double GemmTflops(double rows) const;
};

// InvalidArgument naming the field: an empty GEMM table, rows or tflops <= 0 or not ascending,
// a bandwidth <= 0, a latency < 0.
[[nodiscard]] Status ValidateHardwareModel(const HardwareModel& hw);

struct MoEWorkload {
  int world = 8;                    // W
  int gpus_per_node = 8;            // n (W <= n: one node; otherwise n divides W)
  int num_experts = 96;             // E (E % W == 0, or W % E == 0 and W / E divides H)
  int64_t model_dim = 1536;         // M
  int64_t ffn_dim = 768;            // H
  int top_k = 1;                    // K
  int64_t tokens_per_rank = 16384;  // T
  DType dtype = DType::kBF16;       // activations and weights (gradients are f32)
  // [E] shares of the routed rows, >= 0, summing to 1 (within 1e-6); empty = uniform.
  std::vector<double> expert_share;
};

// counts [E] (rows per expert, >= 0, not all 0) as shares.
[[nodiscard]] StatusOr<std::vector<double>> SharesFromCounts(std::span<const int64_t> counts);
// The shares a capacity bucket (moe/adapt/controller.h CapacityBucket) implies when nothing else is
// known: the hottest expert gets 2^bucket - 1 of a rank's rows_per_rank routed rows (the top of
// the bucket, at most all of them), the other experts share the rest evenly.
[[nodiscard]] StatusOr<std::vector<double>> SharesFromCapacityBucket(int64_t bucket,
                                                                     int num_experts,
                                                                     int64_t rows_per_rank);

struct ModeCost {
  ParallelMode mode;
  double exchange_ms = 0;  // token all-to-alls, forward and backward, one after the other
  double gather_ms = 0;    // weight all-gathers and gradient reduce-scatters
  double compute_ms = 0;   // expert GEMMs, forward and backward, on the busiest rank
  double overlap_ms = 0;   // what pipelining hides (d > 1)
  double total_ms() const { return exchange_ms + gather_ms + compute_ms - overlap_ms; }
};

// InvalidArgument naming the field for a bad workload, hardware model or mode (r not 0 and not a
// divisor of s, d < 1, 2dh without 1 < n < W).
[[nodiscard]] StatusOr<ModeCost> PredictModeCost(const HardwareModel& hw,
                                                 const MoEWorkload& workload,
                                                 const ParallelMode& mode);
[[nodiscard]] StatusOr<std::vector<ModeCost>> PredictModeCosts(const HardwareModel& hw,
                                                               const MoEWorkload& workload,
                                                               std::span<const ParallelMode> modes);

}  // namespace smoe
