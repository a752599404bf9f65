// The MoE layer over the ranks of an MoE group, in every parallel mode (docs/design.md section 6).
//
// Layout (never changes between modes; the router w_gate [M, E] f32 is replicated):
//   E >= W (E % W == 0): rank g owns the E_l = E / W experts [g * E_l, (g + 1) * E_l) whole:
//     w1, w3 [E_l, M, H] and w2 [E_l, H, M] are its slices of the global tensors (s = 1).
//   E < W (W % E == 0): each expert is sharded over s = W / E consecutive ranks; rank g holds
//     shard j = g mod s of expert e = floor(g / s), H_s = H / s wide: w1, w3 [1, M, H_s] are
//     columns [j * H_s, (j + 1) * H_s) of W1[e], W3[e] and w2 [1, H_s, M] the same rows of W2[e]
//     (E_l = 1). SwiGLU is separable over H, so shards compute partial outputs that sum.
//
// Contract: rank g calls with its own tokens x_g [T_g, M] (T_g may differ between ranks and may be
// 0; every rank joins every collective). The result equals "data parallel with replicated
// experts": every rank running MoEForward / MoEBackward on its tokens with all E experts, the
// expert gradients summed over ranks. On every rank and in every mode:
//   y_g, dx_g and the aux-loss values equal that reference's (same routing, same capacity C from
//   the local T_g, same drops);
//   the w_gate gradient is this rank's own contribution (the reference's per-rank value; the
//   trainer all-reduces it with the other replicated parameters);
//   the local expert gradients dw1, dw3 [E_l, M, H_s], dw2 [E_l, H_s, M] are the reference's
//   gradients of the owned experts (their owned shard) summed over ranks.
// Equal means up to fp32 summation order (the expert GEMMs see the rows grouped differently, and
// with r > 1 the output is a sum of r partial GEMMs over H).
//
// Modes (ParallelMode, moe/adapt/parallel_mode.h); r must be 0 or divide s (s = 1: r is 0 or 1):
//   r = 0: all-gather the expert weights into full [E, ...] buffers (with s > 1 the shards of an
//     expert are put side by side along H), run the single-rank path on the local tokens,
//     reduce-scatter the full f32 expert gradients back to their owners (shards). No token
//     exchange; d does not apply (accepted, ignored).
//   r >= 1: tokens to the experts' owners. The s owners of expert e form r slice groups of
//     u = s / r consecutive shard indices (consecutive ranks); group q all-gathers its shards into
//     slice q of width H / r over its sub-communicator (ExpertShardGroups; no gather when u = 1,
//     which includes every E >= W case). A row routed to expert e goes to one rank of each of the
//     r groups: the replica with index (source rank mod u), so the load spreads over replicas.
//     The per-(rank, local expert) counts go first (an i64 all-to-all), then the rows
//     (RowExchanger, mode.algorithm), in destination rank order. Received rows arrive
//     [source rank][local expert] and are regrouped (GatherRows) to [local expert][source rank]
//     for the grouped expert GEMMs, then back, and returned. The r partial outputs of a row are
//     summed slice 0 first, then 1, ..., before Combine (with the local plan).
//     Backward mirrors it: dy to every slice owner that got the row, the r partial dx summed in the
//     same order; slice gradients (from every replica's rows) are reduce-scattered within the
//     slice group back to the H_s shards.
//   d >= 1 (with r >= 1): every (rank, local expert) segment is split into d near-equal parts
//     (the first n % d parts one row longer) and chunk c carries part c of every segment: the
//     exchange and experts run chunk by chunk, the expert gradients accumulating over chunks.
//     Every chunk's rows are sent first (in chunk order, on the exchanger's communication lane:
//     RowExchanger::Start), so chunk c + 1's exchange runs while chunk c's experts compute, and
//     chunk c's outputs go back as soon as they are done: on CPU ranks a communication thread
//     (MPI), on GPU ranks a communication stream ordered by events. With overlap off
//     (RowExchanger::set_overlap) the same exchanges run on the calling thread: the results are
//     bit-identical either way.
// Every rank must pass the same mode (the controller's decisions are all-reduced) and the same
// config; Backward runs the mode its Forward saved.
//
// Devices: tensors on ctx's device. The communicators get every buffer (rows, counts and, with
// r = 0 or slice groups, the weights and gradients) on ctx's device: MPI (host buffers) serves CPU
// ranks, NCCL (device buffers) GPU ranks.
// Host syncs: those of MoEForward (the plan, the aux values) plus, with r >= 1, the counts exchange
// (its result sizes the expert GEMMs).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "moe/adapt/parallel_mode.h"
#include "moe/dispatch/all_to_all.h"
#include "moe/moe_layer.h"

namespace smoe {

// Which experts (or expert shard) this rank owns.
struct ExpertShardLayout {
  int num_experts = 0;    // E
  int world = 1;          // W, ranks in the MoE group
  int rank = 0;           // g
  int local_experts = 0;  // E_l = E / W, or 1 when E < W
  int first_expert = 0;   // g * E_l, or floor(g / s) when E < W
  int shards = 1;         // s: ranks per expert (W / E when E < W, else 1)
  int shard = 0;          // j = g mod s: which H_s-wide shard of its expert this rank holds

  // H_s = H / s and the owned columns [ShardBegin, ShardBegin + ShardWidth) of an expert's H.
  int64_t ShardWidth(int64_t ffn_dim) const { return ffn_dim / shards; }
  int64_t ShardBegin(int64_t ffn_dim) const { return shard * ShardWidth(ffn_dim); }
};

// InvalidArgument naming the field for E < 1, W < 1, rank outside [0, W), E % W != 0 with E >= W,
// W % E != 0 with E < W.
[[nodiscard]] StatusOr<ExpertShardLayout> MakeExpertShardLayout(int num_experts, int world,
                                                                int rank);
// The same, and InvalidArgument naming ffn_dim unless ffn_dim >= 1 and s divides it.
[[nodiscard]] StatusOr<ExpertShardLayout> MakeExpertShardLayout(int num_experts, int world,
                                                                int rank, int64_t ffn_dim);

// The sub-communicators the sharded modes need (E < W, 1 <= r < s: the slice groups), created
// once and kept by the caller next to its RowExchanger (one per MoE group, shared by its layers).
// Not thread-safe.
class ExpertShardGroups {
 public:
  // `comm` (the MoE group, the exchanger's communicator) outlives this object.
  explicit ExpertShardGroups(Communicator* comm) : comm_(comm) {}
  ~ExpertShardGroups();

  // The group of `size` consecutive ranks [g - g mod size, g - g mod size + size) holding this
  // rank, ranked in rank order; size divides comm.size() (InvalidArgument naming size otherwise).
  // Created on the first request of each size, by a collective Split over comm, so every rank
  // must request the same sizes in the same order (the mode contract guarantees it). size =
  // comm.size() is comm itself.
  [[nodiscard]] StatusOr<Communicator*> ConsecutiveGroup(int size);

  Communicator& comm() const { return *comm_; }

 private:
  Communicator* comm_;
  std::vector<std::pair<int, std::unique_ptr<Communicator>>> groups_;  // by size
};

// What ParallelMoEForward saves for ParallelMoEBackward. Owns its tensors; holds a view of x and
// pointers to the exchanger and the shard groups (all must outlive the backward).
struct ParallelMoEState {
  bool valid = false;
  ParallelMode mode;
  ExpertShardLayout layout;
  RowExchanger* exchanger = nullptr;
  // Routing, plan, xs [R, M] and ys [R, M] in global expert order (both modes); with r = 0 also
  // the expert activations h1, h3, act.
  MoEState local;
  // The gathered expert weights: r = 0, [E, M, H] and [E, H, M]; r >= 1 with u = s / r > 1, this
  // rank's slice [1, M, H / r] and [1, H / r, M]. Empty otherwise (the local weights serve).
  Tensor w1, w3, w2;
  // With u > 1 shards per gathered slice (r = 0: u = s; r >= 1: u = s / r): i32 GatherRows
  // indices on ctx's device over rows of width H_s that turn u shards [u, M, H_s] into one
  // [M, u * H_s] slice per expert (to_slices) and back (from_slices). `slice_group`: the group the
  // weights were gathered over (r = 0: the whole MoE group; r >= 1: the slice group, null when
  // u = 1).
  Tensor slice_indices, slice_indices_host;
  TensorView to_slices, from_slices;
  Communicator* slice_group = nullptr;

  // r >= 1. The rows this rank sends, in chunk order: chunk c, then destination rank j, then j's
  // local expert; rows of the expert side (received), per chunk [local expert][source rank].
  struct Chunk {
    std::vector<int64_t> send_rows;  // [W]: rows to each rank
    std::vector<int64_t> recv_rows;  // [W]: rows from each rank
    std::vector<int64_t> offsets;    // [E_l + 1]: local experts' rows within the chunk
    int64_t send_begin = 0;          // first row of the chunk in the chunk-ordered send buffer
    int64_t recv_begin = 0;          // first row of the chunk on the expert side
    int64_t send_count() const;
    int64_t recv_count() const;
  };
  std::vector<Chunk> chunks;  // d entries
  // i32 GatherRows indices on ctx's device, views of `indices`: to_chunks [r * R] (xs rows in
  // send order: chunk, destination; each row once per slice group) and from_chunks [r * R] (r
  // blocks of R: block q gives each xs row's position in send order of its copy for slice q),
  // both empty when d = 1 and r = 1 (the orders agree); to_experts and to_sources [R_in], per
  // chunk relative to its first row (received order <-> expert order).
  // (indices_host keeps the host source of the asynchronous copy alive.)
  Tensor indices, indices_host;
  TensorView to_chunks, from_chunks, to_experts, to_sources;
  // Expert side, [R_in, M] and [R_in, H / r]: the rows received, regrouped, and what the experts
  // saved.
  Tensor xe, h1, h3, act;
};

// Forward on this rank's tokens (see the contract above). `local`: w_gate [M, E] f32, w1, w3
// [E_l, M, H_s] and w2 [E_l, H_s, M] in config.dtype. x, y [T_g, M] config.dtype, contiguous.
// `exchanger` spans the MoE group (its communicator's size and rank give the layout). `aux_comm`
// and `expert_bias` as MoEForward's `comm` and `expert_bias` (the aux losses are per rank, the
// global LBL counts summed over aux_comm). `shard_groups` over the exchanger's communicator: needed
// (kept in the state for the backward) only when E < W and 1 <= mode.r < s, may be null otherwise.
// InvalidArgument naming the field: config, ffn_dim (not a multiple of s), mode.r (not 0 and not a
// divisor of s), mode.d (< 1), shard_groups (null where needed, or over another communicator), a
// tensor's dtype, device or shape (local shapes with E_l and H_s).
[[nodiscard]] StatusOr<AuxLossValues> ParallelMoEForward(
    ExecContext& ctx, const MoELayerConfig& config, const MoEParamViews& local, const TensorView& x,
    const TensorView& y, ParallelMoEState* state, RowExchanger& exchanger, const ParallelMode& mode,
    Communicator* aux_comm = nullptr, const TensorView& expert_bias = {},
    ExpertShardGroups* shard_groups = nullptr);

// Backward of the forward saved in `state`, in its mode. dy, dx [T_g, M] config.dtype (dx
// overwritten); local_grads f32 in the shapes of `local` (overwritten, or added to when
// accumulate_grads); aux_grad_scale as MoEBackward's. FailedPrecondition before a successful
// forward or when config.top_k changed since.
[[nodiscard]] Status ParallelMoEBackward(ExecContext& ctx, const MoELayerConfig& config,
                                         const MoEParamViews& local, const ParallelMoEState& state,
                                         const TensorView& dy, const TensorView& dx,
                                         const MoEGradViews& local_grads,
                                         bool accumulate_grads = false,
                                         float aux_grad_scale = 1.0f);

}  // namespace smoe
