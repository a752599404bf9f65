#include "moe/parallel_moe_layer.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moe/dispatch/regroup.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {
namespace {

Status CheckLocalParams(const MoELayerConfig& c, const ExpertShardLayout& layout,
                        const MoEParamViews& p, Device device) {
  const int64_t m = c.model_dim, h = layout.ShardWidth(c.ffn_dim), el = layout.local_experts;
  MOE_RETURN_IF_ERROR(
      CheckTensor("local.w_gate", p.w_gate, DType::kF32, device, {m, c.num_experts}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("local.w1", p.w1, c.dtype, device, {el, m, h}));
  MOE_RETURN_IF_ERROR(CheckContiguousTensor("local.w3", p.w3, c.dtype, device, {el, m, h}));
  return CheckContiguousTensor("local.w2", p.w2, c.dtype, device, {el, h, m});
}

Status CheckLocalGrads(const MoELayerConfig& c, const ExpertShardLayout& layout,
                       const MoEGradViews& g, Device device) {
  const int64_t m = c.model_dim, h = layout.ShardWidth(c.ffn_dim), el = layout.local_experts;
  MOE_RETURN_IF_ERROR(
      CheckTensor("local_grads.w_gate", g.w_gate, DType::kF32, device, {m, c.num_experts}));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("local_grads.w1", g.w1, DType::kF32, device, {el, m, h}));
  MOE_RETURN_IF_ERROR(
      CheckContiguousTensor("local_grads.w3", g.w3, DType::kF32, device, {el, m, h}));
  return CheckContiguousTensor("local_grads.w2", g.w2, DType::kF32, device, {el, h, m});
}

Status CheckActivation(absl::string_view name, const MoELayerConfig& c, const ExecContext& ctx,
                       const TensorView& t, int64_t tokens) {
  return CheckContiguousTensor(name, t, c.dtype, ctx.device(), {tokens, c.model_dim});
}

Status CheckMode(const ParallelMode& mode, const ExpertShardLayout& layout) {
  if (mode.r < 0 || (mode.r > 0 && layout.shards % mode.r != 0)) {
    if (layout.shards == 1) {
      return BadArgument("mode.r", absl::StrCat(mode.r),
                         "0 or 1 (r > 1 needs experts sharded over ranks, E < W)");
    }
    return BadArgument("mode.r", absl::StrCat(mode.r),
                       absl::StrCat("0 or a divisor of s = W / E = ", layout.shards));
  }
  if (mode.d < 1) return BadArgument("mode.d", absl::StrCat(mode.d), ">= 1");
  return absl::OkStatus();
}

// Part c of d of a segment of n rows: the first n % d parts are one row longer.
struct Part {
  int64_t begin, size;
};
Part SplitPart(int64_t n, int d, int c) {
  const int64_t base = n / d, extra = n % d;
  return {c * base + std::min<int64_t>(c, extra), base + (c < extra ? 1 : 0)};
}

StatusOr<Tensor> Rows(int64_t rows, int64_t width, DType dtype, Device device) {
  return Tensor::Empty({rows, width}, dtype, device);
}

// Whether the send order differs from xs order: chunks interleave the experts' rows, and r > 1
// sends every row r times.
bool SendsGathered(const ParallelMode& mode) { return mode.d > 1 || mode.r > 1; }

// The r >= 1 exchange plan: per-chunk counts and the GatherRows indices (state's r >= 1 fields,
// except the expert-side activations). One host sync: the counts exchange.
Status PlanExchange(ExecContext& ctx, Communicator& comm, ParallelMoEState& s) {
  const int w = s.layout.world, el = s.layout.local_experts, shards = s.layout.shards;
  const int d = s.mode.d, r = s.mode.r, u = shards / r;
  // The replica this rank feeds in every slice group.
  const int replica = s.layout.rank % u;
  const bool gathered = SendsGathered(s.mode);
  const std::vector<int64_t>& offsets = s.local.plan.offsets_host;
  const int64_t rows = s.local.plan.num_rows();

  ExecContext& host = ExecContext::Cpu();
  MOE_ASSIGN_OR_RETURN(Tensor send_counts, Tensor::Empty({w * el}, DType::kI64, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor recv_counts, Tensor::Empty({w * el}, DType::kI64, Device::Cpu()));
  // Rank j's local expert e is global expert (j / s) * E_l + e; j gets its rows if it is the
  // replica this rank feeds in j's slice group.
  auto expert_of = [&](int j, int e) { return (j / shards) * el + e; };
  for (int j = 0; j < w; ++j) {
    for (int e = 0; e < el; ++e) {
      const int g = expert_of(j, e);
      const bool fed = j % u == replica && !offsets.empty();
      send_counts.data<int64_t>()[j * el + e] = fed ? offsets[g + 1] - offsets[g] : 0;
    }
  }
  const std::vector<int64_t> per_rank(w, el);
  if (ctx.device().is_cpu()) {
    MOE_RETURN_IF_ERROR(comm.AllToAllV(host, send_counts, per_rank, recv_counts, per_rank));
  } else {
    // A GPU rank's communicator (NCCL) takes device buffers only, like the rows it exchanges; the
    // copy back is the counts exchange's host sync.
    MOE_ASSIGN_OR_RETURN(Tensor send_on_device, CopyTo(ctx, send_counts, ctx.device()));
    MOE_ASSIGN_OR_RETURN(Tensor recv_on_device, Tensor::Empty({w * el}, DType::kI64, ctx.device()));
    MOE_RETURN_IF_ERROR(comm.AllToAllV(ctx, send_on_device, per_rank, recv_on_device, per_rank));
    MOE_RETURN_IF_ERROR(Copy(ctx, recv_on_device, recv_counts));
  }
  const int64_t* sent = send_counts.data<int64_t>();
  const int64_t* received = recv_counts.data<int64_t>();

  std::vector<int32_t> to_chunks, from_chunks, to_experts, to_sources;
  if (gathered) {
    to_chunks.reserve(static_cast<size_t>(r * rows));
    from_chunks.assign(static_cast<size_t>(r * rows), 0);
  }
  s.chunks.assign(d, {});
  int64_t send_begin = 0, recv_begin = 0;
  std::vector<int64_t> parts(w * el), parts_by_expert(w * el);
  for (int c = 0; c < d; ++c) {
    ParallelMoEState::Chunk& chunk = s.chunks[c];
    chunk.send_rows.assign(w, 0);
    chunk.recv_rows.assign(w, 0);
    chunk.offsets.assign(el + 1, 0);
    chunk.send_begin = send_begin;
    chunk.recv_begin = recv_begin;
    for (int j = 0; j < w; ++j) {
      for (int e = 0; e < el; ++e) {
        const int g = j * el + e;
        const Part part = SplitPart(sent[g], d, c);
        chunk.send_rows[j] += part.size;
        if (!gathered) continue;
        const int64_t q = (j % shards) / u;  // j's slice group
        const int64_t first = offsets.empty() ? 0 : offsets[expert_of(j, e)] + part.begin;
        for (int64_t i = 0; i < part.size; ++i) {
          from_chunks[q * rows + first + i] = static_cast<int32_t>(to_chunks.size());
          to_chunks.push_back(static_cast<int32_t>(first + i));
        }
      }
    }
    for (int i = 0; i < w; ++i) {
      for (int e = 0; e < el; ++e) {
        const int64_t n = SplitPart(received[i * el + e], d, c).size;
        parts[i * el + e] = n;
        parts_by_expert[e * w + i] = n;
        chunk.recv_rows[i] += n;
        chunk.offsets[e + 1] += n;
      }
    }
    for (int e = 0; e < el; ++e) chunk.offsets[e + 1] += chunk.offsets[e];
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> there, BlockTransposeIndex(parts, w, el));
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> back, BlockTransposeIndex(parts_by_expert, el, w));
    to_experts.insert(to_experts.end(), there.begin(), there.end());
    to_sources.insert(to_sources.end(), back.begin(), back.end());
    send_begin += chunk.send_count();
    recv_begin += chunk.recv_count();
  }
  MOE_CHECK_EQ(send_begin, r * rows);

  // All four indices in one buffer, copied to the device once.
  const int64_t chunk_rows = gathered ? r * rows : 0, expert_rows = recv_begin;
  MOE_ASSIGN_OR_RETURN(Tensor all_host, Tensor::Empty({2 * chunk_rows + 2 * expert_rows},
                                                      DType::kI32, Device::Cpu()));
  int32_t* out = all_host.data<int32_t>();
  std::copy(to_chunks.begin(), to_chunks.end(), out);
  std::copy(from_chunks.begin(), from_chunks.end(), out + chunk_rows);
  std::copy(to_experts.begin(), to_experts.end(), out + 2 * chunk_rows);
  std::copy(to_sources.begin(), to_sources.end(), out + 2 * chunk_rows + expert_rows);
  Tensor all = all_host;
  if (!ctx.device().is_cpu()) {
    MOE_ASSIGN_OR_RETURN(all, CopyTo(ctx, all_host, ctx.device()));
  }
  const TensorView v = all;
  s.to_chunks = v.Rows(0, chunk_rows);
  s.from_chunks = v.Rows(chunk_rows, 2 * chunk_rows);
  s.to_experts = v.Rows(2 * chunk_rows, 2 * chunk_rows + expert_rows);
  s.to_sources = v.Rows(2 * chunk_rows + expert_rows, 2 * chunk_rows + 2 * expert_rows);
  s.indices = std::move(all);
  s.indices_host = std::move(all_host);
  return absl::OkStatus();
}

// GatherRows indices over rows of width H_s between `experts` x u shards [experts * u, M, H_s]
// (the all-gathered shards, shard-major) and [experts, M, u * H_s] (the shards side by side).
Status BuildSliceIndices(ExecContext& ctx, int64_t experts, int64_t u, int64_t m,
                         ParallelMoEState& s) {
  const int64_t n = experts * u * m;
  MOE_ASSIGN_OR_RETURN(s.slice_indices_host, Tensor::Empty({2 * n}, DType::kI32, Device::Cpu()));
  int32_t* to = s.slice_indices_host.data<int32_t>();
  int32_t* from = to + n;
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t j = 0; j < u; ++j) {
      for (int64_t row = 0; row < m; ++row) {
        const int64_t sharded = (e * u + j) * m + row, sliced = (e * m + row) * u + j;
        to[sliced] = static_cast<int32_t>(sharded);
        from[sharded] = static_cast<int32_t>(sliced);
      }
    }
  }
  s.slice_indices = s.slice_indices_host;
  if (!ctx.device().is_cpu()) {
    MOE_ASSIGN_OR_RETURN(s.slice_indices, CopyTo(ctx, s.slice_indices_host, ctx.device()));
  }
  s.to_slices = s.slice_indices.view().Rows(0, n);
  s.from_slices = s.slice_indices.view().Rows(n, 2 * n);
  return absl::OkStatus();
}

// [rows, width] view of a contiguous tensor.
StatusOr<TensorView> AsRows(const TensorView& t, int64_t width) {
  return t.Reshape({t.numel() / width, width});
}

// Gathers the expert weights of `group` (rank order is expert, then shard order) into s.w1, s.w3
// [X, M, u * H_s] and s.w2 [X, u * H_s, M], X = group.size() * E_l / u whole experts (u = s) or
// slices (u < s). The w2 shards are row ranges, so the gather alone puts them side by side.
Status GatherSlices(ExecContext& ctx, const MoELayerConfig& config, const MoEParamViews& local,
                    Communicator& group, int u, ParallelMoEState& s) {
  const int64_t m = config.model_dim, hs = s.layout.ShardWidth(config.ffn_dim);
  const int64_t n = group.size() * s.layout.local_experts, x = n / u;
  const Device device = ctx.device();
  if (u > 1) MOE_RETURN_IF_ERROR(BuildSliceIndices(ctx, x, u, m, s));
  MOE_ASSIGN_OR_RETURN(s.w1, Tensor::Empty({x, m, u * hs}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(s.w3, Tensor::Empty({x, m, u * hs}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(s.w2, Tensor::Empty({x, u * hs, m}, config.dtype, device));
  MOE_RETURN_IF_ERROR(group.AllGather(ctx, local.w2, s.w2));
  Tensor* sliced[2] = {&s.w1, &s.w3};
  const TensorView owned[2] = {local.w1, local.w3};
  for (int i = 0; i < 2; ++i) {
    if (u == 1) {
      MOE_RETURN_IF_ERROR(group.AllGather(ctx, owned[i], *sliced[i]));
      continue;
    }
    MOE_ASSIGN_OR_RETURN(Tensor shards, Tensor::Empty({n, m, hs}, config.dtype, device));
    MOE_RETURN_IF_ERROR(group.AllGather(ctx, owned[i], shards));
    MOE_ASSIGN_OR_RETURN(const TensorView src, AsRows(shards, hs));
    MOE_ASSIGN_OR_RETURN(const TensorView dst, AsRows(*sliced[i], hs));
    MOE_RETURN_IF_ERROR(GatherRows(ctx, src, s.to_slices, dst));
  }
  s.slice_group = &group;
  return absl::OkStatus();
}

// The inverse of GatherSlices for f32 gradients: the slice gradients [X, M, u * H_s] and
// [X, u * H_s, M] of every rank of s.slice_group, summed over it, scattered to this rank's shard
// (overwriting local_grads, or added to them).
Status ScatterSliceGrads(ExecContext& ctx, const MoELayerConfig& config, const ParallelMoEState& s,
                         int u, const TensorView (&sliced)[3], const MoEGradViews& local_grads,
                         bool accumulate_grads) {
  const int64_t m = config.model_dim, hs = s.layout.ShardWidth(config.ffn_dim);
  Communicator& group = *s.slice_group;
  const int64_t n = group.size() * s.layout.local_experts;
  const Device device = ctx.device();
  const TensorView owned[3] = {local_grads.w1, local_grads.w3, local_grads.w2};
  for (int i = 0; i < 3; ++i) {
    TensorView shards = sliced[i];
    Tensor regrouped;
    if (u > 1 && i < 2) {
      MOE_ASSIGN_OR_RETURN(regrouped, Tensor::Empty({n, m, hs}, DType::kF32, device));
      MOE_ASSIGN_OR_RETURN(const TensorView src, AsRows(sliced[i], hs));
      MOE_ASSIGN_OR_RETURN(const TensorView dst, AsRows(regrouped, hs));
      MOE_RETURN_IF_ERROR(GatherRows(ctx, src, s.from_slices, dst));
      shards = regrouped;
    }
    if (!accumulate_grads) {
      MOE_RETURN_IF_ERROR(group.ReduceScatterSum(ctx, shards, owned[i]));
      continue;
    }
    MOE_ASSIGN_OR_RETURN(Tensor sum, Tensor::Empty(owned[i].shape(), DType::kF32, device));
    MOE_RETURN_IF_ERROR(group.ReduceScatterSum(ctx, shards, sum));
    MOE_RETURN_IF_ERROR(Axpy(ctx, owned[i], 1.0f, sum, owned[i]));
  }
  return absl::OkStatus();
}

// out [R, M] = the r partial outputs of every xs row in `returned` [r * R, M] (send order), summed
// slice 0 first (a fixed order, so the result does not depend on arrival).
Status SumSlices(ExecContext& ctx, const ParallelMoEState& s, const TensorView& returned,
                 const TensorView& out) {
  const int64_t rows = out.dim(0);
  MOE_RETURN_IF_ERROR(GatherRows(ctx, returned, s.from_chunks.Rows(0, rows), out));
  if (s.mode.r == 1 || rows == 0) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(Tensor part, Tensor::Empty(out.shape(), out.dtype(), ctx.device()));
  for (int64_t q = 1; q < s.mode.r; ++q) {
    MOE_RETURN_IF_ERROR(
        GatherRows(ctx, returned, s.from_chunks.Rows(q * rows, (q + 1) * rows), part));
    MOE_RETURN_IF_ERROR(Axpy(ctx, out, 1.0f, part, out));
  }
  return absl::OkStatus();
}

// The weights the expert side of r >= 1 computes with: the gathered slices when u > 1 (the only
// r >= 1 case with a slice group), else the local weights.
ExpertWeights ExpertSideWeights(const MoEParamViews& local, const ParallelMoEState& s) {
  if (s.slice_group != nullptr) return {s.w1, s.w3, s.w2};
  return {local.w1, local.w3, local.w2};
}

// Width of the expert side's hidden activations: H / r (H when s = 1).
int64_t SliceWidth(const MoELayerConfig& config, const ParallelMoEState& s) {
  return s.layout.ShardWidth(config.ffn_dim) * (s.layout.shards / s.mode.r);
}

// The exchanges of one pass's chunks, on the exchanger's communication lane (RowExchanger::Start)
// whatever d is: every chunk's rows go out first, in chunk order (with d > 1, chunk c + 1's rows
// travel while chunk c's experts compute), and chunk c's rows go back as soon as its experts are
// done; with any d the calling thread sleeps rather than spins while it waits. Every rank starts
// the same exchanges in the same order. On every exit, exchanges still in flight are waited for
// before the buffers they use go.
class ChunkExchanges {
 public:
  ChunkExchanges(ExecContext& ctx, const ParallelMoEState& s)
      : ctx_(ctx),
        ex_(*s.exchanger),
        algorithm_(s.mode.algorithm),
        chunks_(s.chunks),
        sent_(s.chunks.size(), -1),
        returned_(s.chunks.size(), -1) {}
  ~ChunkExchanges() { ex_.FinishAll(ctx_); }

  // Starts every chunk's exchange: `send` rows in send order, `recv` rows on the expert side.
  Status SendAll(const TensorView& send, const TensorView& recv) {
    for (size_t i = 0; i < chunks_.size(); ++i) {
      const ParallelMoEState::Chunk& c = chunks_[i];
      const int64_t sb = c.send_begin, rb = c.recv_begin;
      MOE_ASSIGN_OR_RETURN(
          sent_[i], ex_.Start(ctx_, algorithm_, send.Rows(sb, sb + c.send_count()), c.send_rows,
                              recv.Rows(rb, rb + c.recv_count()), c.recv_rows));
    }
    return absl::OkStatus();
  }
  // Waits until chunk i's rows have arrived.
  Status Received(size_t i) { return ex_.Finish(ctx_, sent_[i]); }
  // Starts returning chunk i: `from` rows on the expert side, `to` rows in send order.
  Status Return(size_t i, const TensorView& from, const TensorView& to) {
    const ParallelMoEState::Chunk& c = chunks_[i];
    const int64_t sb = c.send_begin, rb = c.recv_begin;
    MOE_ASSIGN_OR_RETURN(
        returned_[i], ex_.Start(ctx_, algorithm_, from.Rows(rb, rb + c.recv_count()), c.recv_rows,
                                to.Rows(sb, sb + c.send_count()), c.send_rows));
    return absl::OkStatus();
  }
  // Waits until every chunk is back.
  Status ReturnedAll() {
    for (int64_t id : returned_) MOE_RETURN_IF_ERROR(ex_.Finish(ctx_, id));
    return absl::OkStatus();
  }

 private:
  ExecContext& ctx_;
  RowExchanger& ex_;
  const AllToAllAlgorithm algorithm_;
  const std::vector<ParallelMoEState::Chunk>& chunks_;
  std::vector<int64_t> sent_, returned_;
};

Status ForwardReplicated(ExecContext& ctx, const MoELayerConfig& config, ParallelMoEState& s) {
  const int64_t rows = s.local.plan.num_rows(), m = config.model_dim, h = config.ffn_dim;
  const Device device = ctx.device();
  MoEState& l = s.local;
  MOE_ASSIGN_OR_RETURN(l.h1, Rows(rows, h, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(l.h3, Rows(rows, h, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(l.act, Rows(rows, h, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(l.ys, Rows(rows, m, config.dtype, device));
  return ExpertsForward(ctx, {s.w1, s.w3, s.w2}, l.xs, l.plan.offsets_host, {l.h1, l.h3, l.act},
                        l.ys);
}

Status ForwardExpertParallel(ExecContext& ctx, const MoELayerConfig& config,
                             const MoEParamViews& local, ParallelMoEState& s) {
  const int64_t rows = s.local.plan.num_rows(), m = config.model_dim, h = SliceWidth(config, s);
  const int64_t rows_in = s.to_experts.dim(0), sent = s.mode.r * rows;
  const Device device = ctx.device();
  const DType dtype = config.dtype;
  const bool gathered = SendsGathered(s.mode);
  const ExpertWeights weights = ExpertSideWeights(local, s);
  MoEState& l = s.local;
  MOE_ASSIGN_OR_RETURN(l.ys, Rows(rows, m, dtype, device));
  MOE_ASSIGN_OR_RETURN(s.xe, Rows(rows_in, m, dtype, device));
  MOE_ASSIGN_OR_RETURN(s.h1, Rows(rows_in, h, dtype, device));
  MOE_ASSIGN_OR_RETURN(s.h3, Rows(rows_in, h, dtype, device));
  MOE_ASSIGN_OR_RETURN(s.act, Rows(rows_in, h, dtype, device));
  // Received rows in source order, expert outputs in expert order, and in source order.
  MOE_ASSIGN_OR_RETURN(Tensor xr, Rows(rows_in, m, dtype, device));
  MOE_ASSIGN_OR_RETURN(Tensor ye, Rows(rows_in, m, dtype, device));
  MOE_ASSIGN_OR_RETURN(Tensor yr, Rows(rows_in, m, dtype, device));
  Tensor xs_chunked, ys_chunked;
  TensorView send = l.xs, returned = l.ys;
  if (gathered) {
    MOE_ASSIGN_OR_RETURN(xs_chunked, Rows(sent, m, dtype, device));
    MOE_ASSIGN_OR_RETURN(ys_chunked, Rows(sent, m, dtype, device));
    MOE_RETURN_IF_ERROR(GatherRows(ctx, l.xs, s.to_chunks, xs_chunked));
    send = xs_chunked;
    returned = ys_chunked;
  }
  ChunkExchanges exchanges(ctx, s);
  MOE_RETURN_IF_ERROR(exchanges.SendAll(send, xr));
  for (size_t i = 0; i < s.chunks.size(); ++i) {
    const ParallelMoEState::Chunk& c = s.chunks[i];
    const int64_t rb = c.recv_begin, re = rb + c.recv_count();
    const TensorView xe = s.xe.view().Rows(rb, re);
    MOE_RETURN_IF_ERROR(exchanges.Received(i));
    MOE_RETURN_IF_ERROR(GatherRows(ctx, xr.view().Rows(rb, re), s.to_experts.Rows(rb, re), xe));
    MOE_RETURN_IF_ERROR(ExpertsForward(
        ctx, weights, xe, c.offsets,
        {s.h1.view().Rows(rb, re), s.h3.view().Rows(rb, re), s.act.view().Rows(rb, re)},
        ye.view().Rows(rb, re)));
    MOE_RETURN_IF_ERROR(
        GatherRows(ctx, ye.view().Rows(rb, re), s.to_sources.Rows(rb, re), yr.view().Rows(rb, re)));
    MOE_RETURN_IF_ERROR(exchanges.Return(i, yr, returned));
  }
  MOE_RETURN_IF_ERROR(exchanges.ReturnedAll());
  if (gathered) MOE_RETURN_IF_ERROR(SumSlices(ctx, s, ys_chunked, l.ys));
  return absl::OkStatus();
}

// r = 0: expert gradients of every expert from the local tokens, reduce-scattered to the owners.
Status BackwardReplicated(ExecContext& ctx, const MoELayerConfig& config, const ParallelMoEState& s,
                          const TensorView& dys, const TensorView& dxs,
                          const MoEGradViews& local_grads, bool accumulate_grads) {
  const int64_t m = config.model_dim, h = config.ffn_dim, e = config.num_experts;
  const Device device = ctx.device();
  const MoEState& l = s.local;
  // Every expert's gradient from the local tokens; s.w1 etc. are [E, M, H] whatever s is.
  Tensor full[3];
  MOE_ASSIGN_OR_RETURN(full[0], Tensor::Empty({e, m, h}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(full[1], Tensor::Empty({e, m, h}, DType::kF32, device));
  MOE_ASSIGN_OR_RETURN(full[2], Tensor::Empty({e, h, m}, DType::kF32, device));
  MOE_RETURN_IF_ERROR(ExpertsBackward(ctx, {s.w1, s.w3, s.w2}, l.xs, l.plan.offsets_host,
                                      {l.h1, l.h3, l.act}, dys, dxs, {full[0], full[1], full[2]}));
  const TensorView sliced[3] = {full[0], full[1], full[2]};
  return ScatterSliceGrads(ctx, config, s, s.layout.shards, sliced, local_grads, accumulate_grads);
}

Status BackwardExpertParallel(ExecContext& ctx, const MoELayerConfig& config,
                              const MoEParamViews& local, const ParallelMoEState& s,
                              const TensorView& dys, const TensorView& dxs,
                              const MoEGradViews& local_grads, bool accumulate_grads) {
  const int64_t rows = s.local.plan.num_rows(), m = config.model_dim, h = SliceWidth(config, s);
  const int64_t rows_in = s.to_experts.dim(0), sent = s.mode.r * rows;
  const int64_t el = s.layout.local_experts;
  const Device device = ctx.device();
  const DType dtype = config.dtype;
  const bool gathered = SendsGathered(s.mode);
  const ExpertWeights weights = ExpertSideWeights(local, s);
  // With gathered slices (u > 1) the chunks' gradients accumulate into f32 slice gradients, which
  // are then reduce-scattered within the slice group; otherwise straight into local_grads.
  const bool sliced = s.slice_group != nullptr;
  Tensor slice_grads[3];
  ExpertGrads grads{local_grads.w1, local_grads.w3, local_grads.w2};
  if (sliced) {
    MOE_ASSIGN_OR_RETURN(slice_grads[0], Tensor::Empty({el, m, h}, DType::kF32, device));
    MOE_ASSIGN_OR_RETURN(slice_grads[1], Tensor::Empty({el, m, h}, DType::kF32, device));
    MOE_ASSIGN_OR_RETURN(slice_grads[2], Tensor::Empty({el, h, m}, DType::kF32, device));
    grads = {slice_grads[0], slice_grads[1], slice_grads[2]};
  }
  // Output gradients received (source order) and regrouped (expert order); input gradients in
  // expert order (written over the regrouped output gradients) and in source order.
  MOE_ASSIGN_OR_RETURN(Tensor dyr, Rows(rows_in, m, dtype, device));
  MOE_ASSIGN_OR_RETURN(Tensor dye, Rows(rows_in, m, dtype, device));
  MOE_ASSIGN_OR_RETURN(Tensor dxr, Rows(rows_in, m, dtype, device));
  Tensor dys_chunked, dxs_chunked;
  TensorView send = dys, returned = dxs;
  if (gathered) {
    MOE_ASSIGN_OR_RETURN(dys_chunked, Rows(sent, m, dtype, device));
    MOE_ASSIGN_OR_RETURN(dxs_chunked, Rows(sent, m, dtype, device));
    MOE_RETURN_IF_ERROR(GatherRows(ctx, dys, s.to_chunks, dys_chunked));
    send = dys_chunked;
    returned = dxs_chunked;
  }
  // The forward's schedule: every chunk's output gradients out first, input gradients back as
  // each chunk is done.
  ChunkExchanges exchanges(ctx, s);
  MOE_RETURN_IF_ERROR(exchanges.SendAll(send, dyr));
  bool accumulate = accumulate_grads && !sliced;
  for (size_t i = 0; i < s.chunks.size(); ++i) {
    const ParallelMoEState::Chunk& c = s.chunks[i];
    const int64_t rb = c.recv_begin, re = rb + c.recv_count();
    const TensorView de = dye.view().Rows(rb, re);
    MOE_RETURN_IF_ERROR(exchanges.Received(i));
    MOE_RETURN_IF_ERROR(GatherRows(ctx, dyr.view().Rows(rb, re), s.to_experts.Rows(rb, re), de));
    MOE_RETURN_IF_ERROR(ExpertsBackward(
        ctx, weights, s.xe.view().Rows(rb, re), c.offsets,
        {s.h1.view().Rows(rb, re), s.h3.view().Rows(rb, re), s.act.view().Rows(rb, re)}, de, de,
        grads, accumulate));
    // Later chunks add to the first chunk's gradients.
    accumulate = true;
    MOE_RETURN_IF_ERROR(GatherRows(ctx, de, s.to_sources.Rows(rb, re), dxr.view().Rows(rb, re)));
    MOE_RETURN_IF_ERROR(exchanges.Return(i, dxr, returned));
  }
  MOE_RETURN_IF_ERROR(exchanges.ReturnedAll());
  if (gathered) MOE_RETURN_IF_ERROR(SumSlices(ctx, s, dxs_chunked, dxs));
  if (!sliced) return absl::OkStatus();
  const TensorView sums[3] = {slice_grads[0], slice_grads[1], slice_grads[2]};
  return ScatterSliceGrads(ctx, config, s, s.layout.shards / s.mode.r, sums, local_grads,
                           accumulate_grads);
}

}  // namespace

int64_t ParallelMoEState::Chunk::send_count() const {
  int64_t n = 0;
  for (int64_t v : send_rows) n += v;
  return n;
}

int64_t ParallelMoEState::Chunk::recv_count() const {
  int64_t n = 0;
  for (int64_t v : recv_rows) n += v;
  return n;
}

ExpertShardGroups::~ExpertShardGroups() = default;

StatusOr<Communicator*> ExpertShardGroups::ConsecutiveGroup(int size) {
  const int w = comm_->size();
  if (size < 1 || w % size != 0) {
    return BadArgument("size", absl::StrCat(size), absl::StrCat("a divisor of W = ", w));
  }
  if (size == w) return comm_;
  for (const auto& [n, group] : groups_) {
    if (n == size) return group.get();
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> group,
                       comm_->Split(comm_->rank() / size, comm_->rank() % size));
  MOE_CHECK_EQ(group->size(), size);
  Communicator* out = group.get();
  groups_.emplace_back(size, std::move(group));
  return out;
}

StatusOr<ExpertShardLayout> MakeExpertShardLayout(int num_experts, int world, int rank) {
  if (num_experts < 1) return BadArgument("num_experts", absl::StrCat(num_experts), ">= 1");
  if (world < 1) return BadArgument("world", absl::StrCat(world), ">= 1");
  if (rank < 0 || rank >= world) {
    return BadArgument("rank", absl::StrCat(rank), absl::StrCat("in [0, ", world, ")"));
  }
  if (num_experts < world) {
    if (world % num_experts != 0) {
      return BadArgument("num_experts", absl::StrCat(num_experts),
                         absl::StrCat("a divisor or a multiple of world = ", world));
    }
    const int shards = world / num_experts;
    return ExpertShardLayout{num_experts, world, rank, 1, rank / shards, shards, rank % shards};
  }
  if (num_experts % world != 0) {
    return BadArgument("num_experts", absl::StrCat(num_experts),
                       absl::StrCat("a multiple of world = ", world));
  }
  const int local = num_experts / world;
  return ExpertShardLayout{num_experts, world, rank, local, rank * local};
}

StatusOr<ExpertShardLayout> MakeExpertShardLayout(int num_experts, int world, int rank,
                                                  int64_t ffn_dim) {
  MOE_ASSIGN_OR_RETURN(const ExpertShardLayout layout,
                       MakeExpertShardLayout(num_experts, world, rank));
  if (ffn_dim < 1 || ffn_dim % layout.shards != 0) {
    return BadArgument("ffn_dim", absl::StrCat(ffn_dim),
                       absl::StrCat("a positive multiple of s = W / E = ", layout.shards));
  }
  return layout;
}

StatusOr<AuxLossValues> ParallelMoEForward(ExecContext& ctx, const MoELayerConfig& config,
                                           const MoEParamViews& local, const TensorView& x,
                                           const TensorView& y, ParallelMoEState* state,
                                           RowExchanger& exchanger, const ParallelMode& mode,
                                           Communicator* aux_comm, const TensorView& expert_bias,
                                           ExpertShardGroups* shard_groups) {
  if (state == nullptr) return BadArgument("state", "null", "a ParallelMoEState");
  ParallelMoEState& s = *state;
  s.valid = false;
  s.local.valid = false;
  MOE_RETURN_IF_ERROR(ValidateMoEConfig(config));
  Communicator& comm = exchanger.comm();
  MOE_ASSIGN_OR_RETURN(
      const ExpertShardLayout layout,
      MakeExpertShardLayout(config.num_experts, comm.size(), comm.rank(), config.ffn_dim));
  MOE_RETURN_IF_ERROR(CheckMode(mode, layout));
  // Ranks per slice group: r = 0 gathers whole experts over the group, r >= 1 slices of H / r.
  const int u = mode.r == 0 ? layout.shards : layout.shards / mode.r;
  if (mode.r >= 1 && u > 1) {
    if (shard_groups == nullptr) {
      return BadArgument(
          "shard_groups", "null",
          absl::StrCat("an ExpertShardGroups for mode.r = ", mode.r, " < s = ", layout.shards));
    }
    if (&shard_groups->comm() != &comm) {
      return BadArgument("shard_groups", "over another communicator",
                         "over the exchanger's communicator");
    }
  }
  MOE_RETURN_IF_ERROR(CheckLocalParams(config, layout, local, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckActivation("x", config, ctx, x, -1));
  MOE_RETURN_IF_ERROR(CheckActivation("y", config, ctx, y, x.dim(0)));
  s.mode = mode;
  s.layout = layout;
  s.exchanger = &exchanger;
  s.chunks.clear();
  s.w1 = s.w3 = s.w2 = Tensor();
  s.slice_indices = s.slice_indices_host = Tensor();
  s.to_slices = s.from_slices = TensorView();
  s.slice_group = nullptr;
  s.xe = s.h1 = s.h3 = s.act = Tensor();
  s.local.h1 = s.local.h3 = s.local.act = Tensor();

  MOE_RETURN_IF_ERROR(
      internal::RouteAndPermute(ctx, config, local.w_gate, x, aux_comm, expert_bias, &s.local));
  MOE_ASSIGN_OR_RETURN(const AuxLossValues aux, ReadAuxLossValues(ctx, s.local.aux_values));
  if (mode.r == 0) {
    MOE_RETURN_IF_ERROR(GatherSlices(ctx, config, local, comm, u, s));
    MOE_RETURN_IF_ERROR(ForwardReplicated(ctx, config, s));
  } else {
    if (u > 1) {
      MOE_ASSIGN_OR_RETURN(Communicator * group, shard_groups->ConsecutiveGroup(u));
      MOE_RETURN_IF_ERROR(GatherSlices(ctx, config, local, *group, u, s));
    }
    MOE_RETURN_IF_ERROR(PlanExchange(ctx, comm, s));
    MOE_RETURN_IF_ERROR(ForwardExpertParallel(ctx, config, local, s));
  }
  MOE_RETURN_IF_ERROR(Combine(ctx, s.local.plan, s.local.ys, s.local.gates, y));
  s.local.x = x;
  s.local.top_k = config.top_k;
  s.local.valid = true;
  s.valid = true;
  return aux;
}

Status ParallelMoEBackward(ExecContext& ctx, const MoELayerConfig& config,
                           const MoEParamViews& local, const ParallelMoEState& s,
                           const TensorView& dy, const TensorView& dx,
                           const MoEGradViews& local_grads, bool accumulate_grads,
                           float aux_grad_scale) {
  if (!s.valid) {
    return absl::FailedPreconditionError("parallel MoE backward before a successful forward");
  }
  if (s.local.top_k != config.top_k) {
    return absl::FailedPreconditionError(absl::StrCat("parallel MoE backward: top_k is ",
                                                      config.top_k, " but the forward routed with ",
                                                      s.local.top_k));
  }
  MOE_RETURN_IF_ERROR(CheckLocalParams(config, s.layout, local, ctx.device()));
  MOE_RETURN_IF_ERROR(CheckLocalGrads(config, s.layout, local_grads, ctx.device()));
  const int64_t t = s.local.x.dim(0), m = config.model_dim, k = config.top_k;
  MOE_RETURN_IF_ERROR(CheckActivation("dy", config, ctx, dy, t));
  MOE_RETURN_IF_ERROR(CheckActivation("dx", config, ctx, dx, t));
  const int64_t rows = s.local.plan.num_rows();
  const Device device = ctx.device();

  MOE_ASSIGN_OR_RETURN(Tensor dys, Tensor::Empty({rows, m}, config.dtype, device));
  MOE_ASSIGN_OR_RETURN(Tensor dgates, Tensor::Empty({t, k}, DType::kF32, device));
  MOE_RETURN_IF_ERROR(
      CombineBackward(ctx, s.local.plan, dy, s.local.ys, s.local.gates, dys, dgates));
  MOE_ASSIGN_OR_RETURN(Tensor dxs, Tensor::Empty({rows, m}, config.dtype, device));
  if (s.mode.r == 0) {
    MOE_RETURN_IF_ERROR(
        BackwardReplicated(ctx, config, s, dys, dxs, local_grads, accumulate_grads));
  } else {
    MOE_RETURN_IF_ERROR(
        BackwardExpertParallel(ctx, config, local, s, dys, dxs, local_grads, accumulate_grads));
  }
  MOE_RETURN_IF_ERROR(PermuteBackward(ctx, s.local.plan, dxs, dx));
  return internal::RouterBackwardAddDx(ctx, config, local.w_gate, s.local, dgates, aux_grad_scale,
                                       dx, local_grads.w_gate, accumulate_grads);
}

}  // namespace smoe
