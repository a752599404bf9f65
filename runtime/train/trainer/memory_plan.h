// The memory plan of a training run, computed from the config alone (nothing is allocated), so
// that a run that cannot fit stops before it allocates, and `--dry_run` can show the plan of a
// model far larger than the machine it runs on.
//
// Per rank, in bytes:
//   state        every parameter's f32 master, f32 gradient and two f32 AdamW moments, plus a
//                compute copy in the model dtype for the matrices (gains and the router stay f32);
//                expert tensors hold only this rank's experts or expert shard (model.h).
//   activations  what one micro-batch's forward keeps for its backward: per layer the block's
//                inputs and norms, DiffQKV's saved tensors, the MoE layer's routing (f32 logits
//                and probabilities) and its dispatched rows at the largest top-k the schedule
//                uses (progressive top-k), or the dense FFN's; then the head's f32 logits.
//   transient    the largest short-lived set on top of that: the head's backward (f32 and
//                compute-dtype logit gradients), a layer's backward buffers, and with W > 1 the
//                expert weights gathered for the r = 0 mode.
//   reserve      a fixed allowance for the CUDA runtime's own buffers (cuBLAS workspaces, the
//                caching allocator's rounding); 0 on the CPU.
// The estimate is an upper bound of the caching allocator's peak for the code as written: a CPU
// test compares it with the measured peak of real steps (memory_plan_test.cc).
#pragma once

#include <cstdint>
#include <string>

#include "runtime/core/dtype.h"
#include "runtime/core/status.h"
#include "runtime/device/device.h"
#include "runtime/train/config/config.h"

namespace smoe {

struct MemoryPlan {
  int64_t parameters = 0;        // global parameter count (Model::NumParameters)
  int64_t local_parameters = 0;  // held by this rank
  // At the final top-k (moe.top_k), as Model::NumActivatedParameters and Model::FlopsPerToken.
  int64_t activated_parameters = 0;
  double flops_per_token = 0;
  // Host syncs per optimizer step on one rank's CUDA path, the budget of SyncBudget
  // (runtime/train/model/sync_budget.h): per micro-batch one per MoE layer (expert offsets); per
  // step one read of the loss, aux values and gradient norm, and two per MoE layer for the routing
  // statistics of the metrics line, plus one per MoE layer for its max |expert bias| when
  // moe.bias_update_rate > 0. metrics.jsonl reports the measured count
  // (ExecContext::host_syncs), which the GPU check compares with this.
  int64_t host_syncs_per_step = 0;
  int64_t tokens = 0;  // per micro-batch on this rank
  int max_top_k = 1;   // the largest top-k of any MoE layer over the run
  double state_bytes = 0;
  double activation_bytes = 0;
  double transient_bytes = 0;
  double reserve_bytes = 0;
  double total_bytes() const {
    return state_bytes + activation_bytes + transient_bytes + reserve_bytes;
  }
};

// The plan of `config` on `device` in `dtype` for rank 0 of `world` ranks. InvalidArgument as
// ValidateWorld for a world the experts cannot be spread over.
[[nodiscard]] StatusOr<MemoryPlan> PlanMemory(const proto::RunConfig& config, Device device,
                                              DType dtype, int world = 1);

// Human-readable lines of the plan ("  state ... GiB"), for the dry run and errors.
std::string DescribePlan(const MemoryPlan& plan);

// OK when the plan fits in `free_bytes` of `device`; otherwise ResourceExhausted naming the bytes
// needed and free and what to change (train.batch_size, train.seq_len, model.num_layers, more
// ranks).
[[nodiscard]] Status CheckPlanFits(const MemoryPlan& plan, Device device, double free_bytes);

}  // namespace smoe
