// The MoE layer over the ranks of an MoE group, in every parallel mode (DESIGN.md section 6).
//
// Layout (never changes between modes): E experts over W ranks with E % W == 0; rank g owns the
// E_l = E / W experts [g * E_l, (g + 1) * E_l) whole: w1, w3 [E_l, M, H] and w2 [E_l, H, M] are
// its slices of the global tensors, and the router w_gate [M, E] f32 is replicated. (E < W, experts
// sharded over s = W / E ranks, is not implemented: Unimplemented.)
//
// Contract: rank g calls with its own tokens x_g [T_g, M] (T_g may differ between ranks and may be
// 0; every rank joins every collective). The result equals "data parallel with replicated
// experts": every rank running MoEForward / MoEBackward on its tokens with all E experts, the
// expert gradients summed over ranks. On every rank and in every mode:
//   y_g, dx_g and the aux-loss values equal that reference's (same routing, same capacity C from
//   the local T_g, same drops);
//   the w_gate gradient is this rank's own contribution (the reference's per-rank value; the
//   trainer all-reduces it with the other replicated parameters);
//   the local expert gradients dw1, dw3 [E_l, M, H], dw2 [E_l, H, M] are the reference's
//   gradients of the owned experts summed over ranks.
// Equal means up to fp32 summation order (the expert GEMMs see the rows grouped differently).
//
// Modes (ParallelMode, moe/adapt/parallel_mode.h):
//   r = 0: all-gather the expert weights into full [E, ...] buffers, run the single-rank path on
//     the local tokens, reduce-scatter the full f32 expert gradients back to their owners. No
//     token exchange; d does not apply (accepted, ignored).
//   r = 1: tokens to the experts' owners. The expert-sorted buffer xs is in global expert order,
//     so the rows bound for rank j are one range; the per-(rank, local expert) counts go first (an
//     i64 all-to-all), then the rows (RowExchanger, mode.algorithm). Received rows arrive
//     [source rank][local expert] and are regrouped (GatherRows) to [local expert][source rank] for
//     the grouped expert GEMMs, then back, and returned; Combine uses the local plan.
//   d >= 1 (with r = 1): every (rank, local expert) segment is split into d near-equal parts
//     (the first n % d parts one row longer) and chunk c carries part c of every segment: the
//     exchange and experts run chunk by chunk, the expert gradients accumulating over chunks.
//     On CPU the chunks run one after the other; the chunk structure is what lets the exchange of
//     chunk c + 1 overlap the experts of chunk c on a GPU.
// Every rank must pass the same mode (the controller's decisions are all-reduced) and the same
// config; Backward runs the mode its Forward saved.
//
// Devices: tensors on ctx's device. The communicator gets the rows (and, with r = 0, the weights
// and gradients) on ctx's device and the counts as host i64 tensors, so the MPI communicator
// (host buffers) serves CPU ranks.
// Host syncs: those of MoEForward (the plan, the aux values) plus, with r = 1, the counts exchange
// (its result sizes the expert GEMMs).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/adapt/parallel_mode.h"
#include "moe/dispatch/all_to_all.h"
#include "moe/moe_layer.h"

namespace smoe {

// Which experts this rank owns.
struct ExpertShardLayout {
  int num_experts = 0;    // E
  int world = 1;          // W, ranks in the MoE group
  int rank = 0;           // g
  int local_experts = 0;  // E_l = E / W
  int first_expert = 0;   // g * E_l
};

// InvalidArgument naming the field for E < 1, W < 1, rank outside [0, W) or E % W != 0 with
// E >= W; Unimplemented for E < W (experts sharded over ranks).
[[nodiscard]] StatusOr<ExpertShardLayout> MakeExpertShardLayout(int num_experts, int world,
                                                                int rank);

// What ParallelMoEForward saves for ParallelMoEBackward. Owns its tensors; holds a view of x and a
// pointer to the exchanger (both must outlive the backward).
struct ParallelMoEState {
  bool valid = false;
  ParallelMode mode;
  ExpertShardLayout layout;
  RowExchanger* exchanger = nullptr;
  // Routing, plan, xs [R, M] and ys [R, M] in global expert order (both modes); with r = 0 also
  // the expert activations h1, h3, act.
  MoEState local;
  // r = 0: the gathered expert weights, [E, M, H] and [E, H, M].
  Tensor w1, w3, w2;

  // r = 1. The rows this rank sends, in chunk order: chunk c, then destination rank j, then j's
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
  // i32 GatherRows indices on ctx's device, views of `indices`: to_chunks [R] (xs order -> chunk
  // order) and from_chunks [R] (its inverse), empty when d = 1 (the orders agree); to_experts and
  // to_sources [R_in], per chunk relative to its first row (received order <-> expert order).
  // (indices_host keeps the host source of the asynchronous copy alive.)
  Tensor indices, indices_host;
  TensorView to_chunks, from_chunks, to_experts, to_sources;
  // Expert side, [R_in, M] and [R_in, H]: the rows received, regrouped, and what the experts saved.
  Tensor xe, h1, h3, act;
};

// Forward on this rank's tokens (see the contract above). `local`: w_gate [M, E] f32, w1, w3
// [E_l, M, H] and w2 [E_l, H, M] in config.dtype. x, y [T_g, M] config.dtype, contiguous.
// `exchanger` spans the MoE group (its communicator's size and rank give the layout). `aux_comm`
// and `expert_bias` as MoEForward's `comm` and `expert_bias` (the aux losses are per rank, the
// global LBL counts summed over aux_comm).
// InvalidArgument naming the field: config, mode.r (not 0 or 1), mode.d (< 1), a tensor's dtype,
// device or shape (local shapes with E_l); Unimplemented for E < W.
[[nodiscard]] StatusOr<AuxLossValues> ParallelMoEForward(
    ExecContext& ctx, const MoELayerConfig& config, const MoEParamViews& local, const TensorView& x,
    const TensorView& y, ParallelMoEState* state, RowExchanger& exchanger, const ParallelMode& mode,
    Communicator* aux_comm = nullptr, const TensorView& expert_bias = {});

// Backward of the forward saved in `state`, in its mode. dy, dx [T_g, M] config.dtype (dx
// overwritten); local_grads f32 in the shapes of `local` (overwritten, or added to when
// accumulate_grads); aux_grad_scale as MoEBackward's. FailedPrecondition before a successful
// forward or when config.top_k changed since.
[[nodiscard]] Status ParallelMoEBackward(ExecContext& ctx, const MoELayerConfig& config,
                                         const MoEParamViews& local,
                                         const ParallelMoEState& state, const TensorView& dy,
                                         const TensorView& dx, const MoEGradViews& local_grads,
                                         bool accumulate_grads = false,
                                         float aux_grad_scale = 1.0f);

}  // namespace smoe
