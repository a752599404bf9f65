#include "moe/adapt/cost_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace smoe {
namespace {

constexpr double kGiga = 1e9;

// The rows every rank receives in an r >= 1 mode, and the rows each sends (copies included).
struct Loads {
  std::vector<double> recv;  // [W]
  double send = 0;
};

struct Layout {
  int w, n, nodes, e, s, el;  // W, GPUs per node (<= W), W / n, E, shards, local experts
};

Layout LayoutOf(const MoEWorkload& wl) {
  Layout l;
  l.w = wl.world;
  l.n = std::min(wl.gpus_per_node, wl.world);
  l.nodes = l.w / l.n;
  l.e = wl.num_experts;
  l.s = l.e < l.w ? l.w / l.e : 1;
  l.el = l.e >= l.w ? l.e / l.w : 1;
  return l;
}

std::vector<double> Shares(const MoEWorkload& wl) {
  if (!wl.expert_share.empty()) return wl.expert_share;
  return std::vector<double>(wl.num_experts, 1.0 / wl.num_experts);
}

double RowsPerRank(const MoEWorkload& wl) {
  return static_cast<double>(wl.tokens_per_rank) * wl.top_k;
}

Loads ExpertParallelLoads(const MoEWorkload& wl, const Layout& l, const std::vector<double>& share,
                          int r) {
  Loads loads;
  loads.recv.assign(l.w, 0.0);
  const double all_rows = RowsPerRank(wl) * l.w;  // routed rows over all ranks
  if (l.s == 1) {
    for (int g = 0; g < l.w; ++g) {
      for (int i = 0; i < l.el; ++i) loads.recv[g] += share[g * l.el + i] * all_rows;
    }
  } else {
    const int u = l.s / r;
    for (int g = 0; g < l.w; ++g) loads.recv[g] = share[g / l.s] * all_rows / u;
  }
  loads.send = RowsPerRank(wl) * r;
  return loads;
}

// Seconds of one all-to-all of `loads` (rows), `row_bytes` per row, scaled by `fraction` (a chunk).
double AllToAllSeconds(const HardwareModel& hw, const Layout& l, const Loads& loads,
                       double row_bytes, AllToAllAlgorithm algorithm, double fraction) {
  const double alpha = hw.latency_us * 1e-6;
  const double b_in = hw.intra_node_gbps * kGiga, b_out = hw.inter_node_gbps * kGiga;
  const double most_recv = *std::max_element(loads.recv.begin(), loads.recv.end());
  const double volume = std::max(loads.send, most_recv) * row_bytes * fraction;
  if (algorithm == AllToAllAlgorithm::kFlat || l.n == 1 || l.n == l.w) {
    const double intra = volume * (l.n - 1) / l.w / b_in;
    const double inter = volume * (l.w - l.n) / l.w / b_out;
    return std::max(intra, inter) + (l.w - 1) * alpha;
  }
  // 2dh. col[i]: rows received by the ranks of local index i, summed over the nodes.
  std::vector<double> col(l.n, 0.0);
  for (int g = 0; g < l.w; ++g) col[g % l.n] += loads.recv[g];
  double phase1 = 0, phase2 = 0;
  for (int g = 0; g < l.w; ++g) {
    const int i = g % l.n;
    // Inside the node: out, every row not for this local index; in, the node mates' rows for it.
    const double out1 = loads.send * (l.n - 1) / l.n;
    const double in1 = (l.n - 1) * col[i] / l.w;
    phase1 = std::max(phase1, std::max(out1, in1));
    // Across nodes: out, the node's rows for index i on the other nodes; in, this rank's rows from
    // the other nodes.
    const double out2 = static_cast<double>(l.n) / l.w * (col[i] - loads.recv[g]);
    const double in2 = loads.recv[g] * (l.w - l.n) / l.w;
    phase2 = std::max(phase2, std::max(out2, in2));
  }
  // Two regroups (before each phase's sends), each reading and writing the rows once.
  const double copies = 4 * volume / (hw.memory_gbps * kGiga);
  return phase1 * row_bytes * fraction / b_in + (l.n - 1) * alpha + copies +
         phase2 * row_bytes * fraction / b_out + (l.nodes - 1) * alpha;
}

// Seconds of a ring all-gather (or reduce-scatter) over `group` consecutive ranks, each receiving
// (group - 1) / group of `bytes`.
double RingSeconds(const HardwareModel& hw, const Layout& l, int group, double bytes) {
  if (group <= 1) return 0.0;
  const double bandwidth = (group <= l.n ? hw.intra_node_gbps : hw.inter_node_gbps) * kGiga;
  return bytes * (group - 1) / group / bandwidth + (group - 1) * hw.latency_us * 1e-6;
}

// Seconds of the expert GEMMs of one forward on `rows` rows (per expert group) of width `width`,
// in GEMMs of rows / d rows.
double ForwardSeconds(const HardwareModel& hw, int64_t model_dim, double width, double rows,
                      int d) {
  if (rows <= 0) return 0.0;
  const double flops = 6.0 * rows * model_dim * width;
  return flops / (hw.GemmTflops(rows / d) * 1e12);
}

// One pass in d chunks (top of cost_model.h): every chunk's rows out first on one channel, in
// order; chunk c's experts after its rows and the previous chunk; chunk c's rows back after the
// exchanges queued before. Returns the pass's seconds.
double PipelinedSeconds(int d, double exchange, double compute) {
  double channel = 0;  // when the channel is free
  std::vector<double> arrived(d);
  for (int c = 0; c < d; ++c) arrived[c] = channel = channel + exchange;
  double computed = 0, back = 0;
  for (int c = 0; c < d; ++c) {
    computed = std::max(computed, arrived[c]) + compute;
    back = channel = std::max(channel, computed) + exchange;
  }
  return back;
}

Status ValidateWorkload(const MoEWorkload& wl) {
  if (wl.world < 1) return BadArgument("workload.world", absl::StrCat(wl.world), ">= 1");
  if (wl.gpus_per_node < 1) {
    return BadArgument("workload.gpus_per_node", absl::StrCat(wl.gpus_per_node), ">= 1");
  }
  if (wl.world > wl.gpus_per_node && wl.world % wl.gpus_per_node != 0) {
    return BadArgument("workload.gpus_per_node", absl::StrCat(wl.gpus_per_node),
                       absl::StrCat("a divisor of world = ", wl.world, " (or >= it)"));
  }
  if (wl.num_experts < 1) {
    return BadArgument("workload.num_experts", absl::StrCat(wl.num_experts), ">= 1");
  }
  if (wl.num_experts >= wl.world ? wl.num_experts % wl.world != 0
                                 : wl.world % wl.num_experts != 0) {
    return BadArgument("workload.num_experts", absl::StrCat(wl.num_experts),
                       absl::StrCat("a multiple or a divisor of world = ", wl.world));
  }
  const int64_t s = wl.num_experts < wl.world ? wl.world / wl.num_experts : 1;
  if (wl.model_dim < 1)
    return BadArgument("workload.model_dim", absl::StrCat(wl.model_dim), ">= 1");
  if (wl.ffn_dim < 1 || wl.ffn_dim % s != 0) {
    return BadArgument("workload.ffn_dim", absl::StrCat(wl.ffn_dim),
                       absl::StrCat("a positive multiple of s = ", s));
  }
  if (wl.top_k < 1 || wl.top_k > wl.num_experts) {
    return BadArgument("workload.top_k", absl::StrCat(wl.top_k),
                       absl::StrCat("in [1, E = ", wl.num_experts, "]"));
  }
  if (wl.tokens_per_rank < 0) {
    return BadArgument("workload.tokens_per_rank", absl::StrCat(wl.tokens_per_rank), ">= 0");
  }
  if (!wl.expert_share.empty()) {
    if (static_cast<int>(wl.expert_share.size()) != wl.num_experts) {
      return BadArgument("workload.expert_share.size", absl::StrCat(wl.expert_share.size()),
                         absl::StrCat("E = ", wl.num_experts, " (or 0: uniform)"));
    }
    double sum = 0;
    for (double v : wl.expert_share) {
      if (!(v >= 0) || !std::isfinite(v)) {
        return BadArgument("workload.expert_share", absl::StrCat(v), "finite shares >= 0");
      }
      sum += v;
    }
    if (std::abs(sum - 1.0) > 1e-6) {
      return BadArgument("sum of workload.expert_share", absl::StrCat(sum), "1");
    }
  }
  return absl::OkStatus();
}

}  // namespace

HardwareModel HardwareModel::H100() {
  HardwareModel hw;
  hw.gemm = {{16, 10},    {64, 45},    {128, 85},   {256, 160},  {512, 260},
             {1024, 380}, {2048, 480}, {4096, 560}, {8192, 620}, {16384, 650}};
  return hw;
}

double HardwareModel::GemmTflops(double rows) const {
  MOE_CHECK(!gemm.empty());
  if (rows <= gemm.front().rows) return gemm.front().tflops;
  if (rows >= gemm.back().rows) return gemm.back().tflops;
  size_t i = 1;
  while (gemm[i].rows < rows) ++i;
  const GemmPoint& a = gemm[i - 1];
  const GemmPoint& b = gemm[i];
  const double t = std::log(rows / a.rows) / std::log(b.rows / a.rows);
  return a.tflops + t * (b.tflops - a.tflops);
}

Status ValidateHardwareModel(const HardwareModel& hw) {
  if (hw.gemm.empty()) return BadArgument("hardware.gemm", "[]", "at least one (rows, TFLOP/s)");
  for (size_t i = 0; i < hw.gemm.size(); ++i) {
    const GemmPoint& p = hw.gemm[i];
    if (!(p.rows > 0) || !(p.tflops > 0) || (i > 0 && !(p.rows > hw.gemm[i - 1].rows))) {
      return BadArgument(absl::StrCat("hardware.gemm[", i, "]"),
                         absl::StrCat(p.rows, " rows, ", p.tflops, " TFLOP/s"),
                         "rows and TFLOP/s > 0, rows ascending");
    }
  }
  const struct {
    const char* name;
    double value;
  } rates[] = {{"hardware.intra_node_gbps", hw.intra_node_gbps},
               {"hardware.inter_node_gbps", hw.inter_node_gbps},
               {"hardware.memory_gbps", hw.memory_gbps}};
  for (const auto& rate : rates) {
    if (!(rate.value > 0)) return BadArgument(rate.name, absl::StrCat(rate.value), "> 0");
  }
  if (!(hw.latency_us >= 0)) {
    return BadArgument("hardware.latency_us", absl::StrCat(hw.latency_us), ">= 0");
  }
  return absl::OkStatus();
}

StatusOr<std::vector<double>> SharesFromCounts(std::span<const int64_t> counts) {
  if (counts.empty()) return BadArgument("counts", "[]", "one count per expert");
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0) {
      return BadArgument(absl::StrCat("counts[", i, "]"), absl::StrCat(counts[i]), ">= 0");
    }
    total += counts[i];
  }
  if (total == 0) return BadArgument("counts", "all 0", "some routed rows");
  std::vector<double> shares(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) shares[i] = static_cast<double>(counts[i]) / total;
  return shares;
}

StatusOr<std::vector<double>> SharesFromCapacityBucket(int64_t bucket, int num_experts,
                                                       int64_t rows_per_rank) {
  if (bucket < 0 || bucket > 62) return BadArgument("bucket", absl::StrCat(bucket), "in [0, 62]");
  if (num_experts < 1) return BadArgument("num_experts", absl::StrCat(num_experts), ">= 1");
  if (rows_per_rank < 1) {
    return BadArgument("rows_per_rank", absl::StrCat(rows_per_rank), ">= 1");
  }
  if (num_experts == 1) return std::vector<double>{1.0};
  const double uniform = 1.0 / num_experts;
  const double hot =
      std::clamp(static_cast<double>((int64_t{1} << bucket) - 1) / rows_per_rank, uniform, 1.0);
  std::vector<double> shares(num_experts, (1.0 - hot) / (num_experts - 1));
  shares[0] = hot;
  return shares;
}

StatusOr<ModeCost> PredictModeCost(const HardwareModel& hw, const MoEWorkload& wl,
                                   const ParallelMode& mode) {
  MOE_RETURN_IF_ERROR(ValidateHardwareModel(hw));
  MOE_RETURN_IF_ERROR(ValidateWorkload(wl));
  const Layout l = LayoutOf(wl);
  if (mode.r < 0 || (mode.r > 0 && l.s % mode.r != 0)) {
    return BadArgument("mode.r", absl::StrCat(mode.r), absl::StrCat("0 or a divisor of s = ", l.s));
  }
  if (mode.d < 1) return BadArgument("mode.d", absl::StrCat(mode.d), ">= 1");
  if (mode.algorithm == AllToAllAlgorithm::kTwoDimHierarchical && !(l.n > 1 && l.n < l.w)) {
    return BadArgument(
        "mode.algorithm", "2dh",
        absl::StrCat("flat (2dh needs 1 < GPUs per node < W; here ", l.n, " and ", l.w, ")"));
  }
  const std::vector<double> share = Shares(wl);
  const double elem = DTypeSize(wl.dtype);
  const int64_t m = wl.model_dim, h = wl.ffn_dim;
  ModeCost cost;
  cost.mode = mode;
  if (mode.r == 0) {
    // Every expert's weights to every rank, every expert's f32 gradients back.
    const double weights = 3.0 * l.e * m * h;
    cost.gather_ms = 1e3 * (RingSeconds(hw, l, l.w, weights * elem) +
                            RingSeconds(hw, l, l.w, weights * DTypeSize(DType::kF32)));
    double forward = 0;
    for (int e = 0; e < l.e; ++e)
      forward += ForwardSeconds(hw, m, h, share[e] * RowsPerRank(wl), 1);
    cost.compute_ms = 1e3 * 3 * forward;
    return cost;
  }
  const int u = l.s / mode.r;
  const double width = static_cast<double>(h) / (l.s > 1 ? mode.r : 1);
  if (u > 1) {
    const double slice = 3.0 * m * width;
    cost.gather_ms = 1e3 * (RingSeconds(hw, l, u, slice * elem) +
                            RingSeconds(hw, l, u, slice * DTypeSize(DType::kF32)));
  }
  const Loads loads = ExpertParallelLoads(wl, l, share, mode.r);
  // The busiest rank's forward GEMMs (in GEMMs of rows / d rows).
  double forward = 0;
  const double all_rows = RowsPerRank(wl) * l.w;
  for (int g = 0; g < l.w; ++g) {
    double rank_forward = 0;
    if (l.s == 1) {
      for (int i = 0; i < l.el; ++i) {
        rank_forward += ForwardSeconds(hw, m, width, share[g * l.el + i] * all_rows, mode.d);
      }
    } else {
      rank_forward = ForwardSeconds(hw, m, width, loads.recv[g], mode.d);
    }
    forward = std::max(forward, rank_forward);
  }
  const double row_bytes = m * elem;
  const double chunk_exchange =
      AllToAllSeconds(hw, l, loads, row_bytes, mode.algorithm, 1.0 / mode.d);
  double exchange = 0, compute = 0, pipelined = 0;
  for (const double pass_compute : {forward, 2 * forward}) {  // forward, then backward
    exchange += 2 * mode.d * chunk_exchange;
    compute += pass_compute;
    pipelined += mode.d == 1 ? 2 * chunk_exchange + pass_compute
                             : PipelinedSeconds(mode.d, chunk_exchange, pass_compute / mode.d);
  }
  cost.exchange_ms = 1e3 * exchange;
  cost.compute_ms = 1e3 * compute;
  cost.overlap_ms = 1e3 * (exchange + compute - pipelined);
  return cost;
}

StatusOr<std::vector<ModeCost>> PredictModeCosts(const HardwareModel& hw,
                                                 const MoEWorkload& workload,
                                                 std::span<const ParallelMode> modes) {
  std::vector<ModeCost> out;
  out.reserve(modes.size());
  for (const ParallelMode& mode : modes) {
    MOE_ASSIGN_OR_RETURN(ModeCost cost, PredictModeCost(hw, workload, mode));
    out.push_back(cost);
  }
  return out;
}

}  // namespace smoe
