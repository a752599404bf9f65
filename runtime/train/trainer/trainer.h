// The training loop of sigma-moe-train (docs/design.md section 8, issue 5).
//
// Per optimizer step: the progressive top-k schedule, grad_accum micro-batches of forward and
// backward, a non-finite check (loss and global gradient norm), clipping, AdamW on the fp32
// masters (weight decay on matrices only), warmup + cosine LR; then metrics, progress, held-out
// evaluation and checkpoints at their intervals. SIGINT/SIGTERM save a checkpoint and stop cleanly;
// a loss spike rolls back to the last checkpoint with a reduced LR.
//
// Multi-rank (`mpirun -np W sigma-moe-train`, MOE_WITH_MPI builds; W from MpiWorldCommunicator
// when the launcher's environment says W > 1, otherwise MPI is never initialized and everything
// is the single-rank run, bit for bit; a build without MPI fails with FailedPrecondition there).
// CPU ranks, or CUDA ranks (train.device cuda / auto with a GPU): rank r then uses
// cuda:(local rank % visible GPUs), local rank from OMPI_COMM_WORLD_LOCAL_RANK else r, so ranks
// may share one GPU; the model's collectives go through StagedCommunicator over MPI (device
// buffers staged through the host: correct, slow; for testing the GPU paths). The W ranks are
// one data-parallel group and one MoE group (docs/design.md section 6):
//   Data: a step's global batch is what one rank with train.batch_size reads; rank r trains on
//     its contiguous slice of batch_size / W sequences (batch_size % W == 0, else InvalidArgument
//     naming train.batch_size), so W ranks train on exactly the single-rank data.
//   Loss: the mean over the global batch. Each rank back-propagates its local mean times
//     1 / (W grad_accum); the replicated parameters' gradients are all-reduced (summed); the
//     experts' come out of ParallelMoEBackward summed over ranks. The gradient norm is the
//     replicated part plus the all-reduced expert shards' part. Reported loss, aux losses and eval
//     loss are means over ranks (in f64, rank order). moe.global_lbl sums the LBL counts over the
//     world; the expert-bias update uses the world's counts.
//   Experts: rank r holds its E / W experts (E >= W, E % W == 0) or, with E < W (W % E == 0 and
//     H % (W / E) == 0), its H / s wide shard of one expert over s = W / E ranks (model.h);
//     otherwise InvalidArgument naming model.moe.num_experts or model.moe.ffn_dim. Either way
//     initialized as its slices of the single-rank init.
//   Checkpoints: in the global logical layout (byte-compatible with a single-rank checkpoint,
//     loadable on any W): the expert tensors and moments are gathered, rank 0 writes, every rank
//     then learns whether it succeeded. On resume and rollback every rank reads the checkpoint
//     (a file system shared by the ranks) and takes its slice.
//   Parallel modes: each MoE layer asks the AdaptiveController (parallel.mode "auto", or one forced
//     mode) for its mode every step, keyed by (layer, AgreedCapacityBucket of the largest
//     per-expert row count over the ranks in the previous step (0 at the first), top-k); while the
//     key is measuring, the layer's ParallelMoEForward + ParallelMoEBackward time is reported after
//     the step. Candidates (ParallelCandidates): r0.d1.flat, then r.d1.flat, r.d2.flat for r = 1
//     and (E < W) every other divisor r of s, and the same r.d1.2dh, r.d2.2dh when 1 <
//     parallel.node_size < W. The table is saved with the checkpoints (parallel.table_path, default
//     <checkpoint.dir>/adapt_table.txt); metrics.jsonl names every MoE layer's mode. Routing
//     statistics in metrics.jsonl are rank 0's tokens.
//   Capacity: with moe.capacity_factor > 0 each rank's capacity comes from its own tokens (as
//     GShard's per-device capacity), so drops, unlike dropless runs, differ from one rank's.
//   Agreement: the stop request (signals) is all-reduced each step, so every rank stops at the
//     same step. Only rank 0 writes metrics, progress and most log lines.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include <vector>

#include "moe/adapt/parallel_mode.h"
#include "runtime/core/status.h"
#include "runtime/train/config/config.h"
#include "runtime/train/model/model.h"

namespace smoe {

struct TrainerOptions {
  std::string metrics_path;  // metrics.jsonl; empty: <checkpoint.dir>/metrics.jsonl
  bool progress_bar = true;  // on a terminal; plain log lines otherwise
  // Set (e.g. by a signal handler) to ask the loop to checkpoint and stop after the current step.
  std::atomic<bool>* stop_requested = nullptr;
  // Called after each applied optimizer step with its number (from 1) and its wall time
  // (batch, forward, backward, gradient reduction, optimizer; not metrics, evaluation or
  // checkpoints): benchmarks (bench/cpu_step_bench).
  std::function<void(int64_t step, double seconds)> on_step;
};

struct TrainSummary {
  int64_t steps_done = 0;
  double final_loss = 0.0;
  double final_eval_loss = -1.0;  // -1: not evaluated
  int64_t skipped_steps = 0;
  int64_t rollbacks = 0;
  int64_t loss_spikes = 0;     // detected (train.spike_threshold), rolled back or not
  bool stopped_early = false;  // by stop_requested
  bool leader = true;          // rank 0 (the rank that reports) of a multi-rank run
};

// Resolves "auto" device and dtype: CUDA and bf16 when a GPU is visible, else CPU and f32.
[[nodiscard]] StatusOr<Device> ResolveDevice(const proto::RunConfig& config);
[[nodiscard]] StatusOr<DType> ResolveDType(const proto::RunConfig& config, Device device);
// The model description of a (validated) config.
ModelSpec SpecFromConfig(const proto::RunConfig& config, DType dtype);
// The candidate parallel modes of a W-rank run with `node_size` ranks per node and `shards` ranks
// per expert (s = W / E when E < W, else 1; see above).
std::vector<ParallelMode> ParallelCandidates(int world, int node_size, int shards = 1);

// Learning rate at optimizer step `step` (0-based): linear warmup to lr, cosine to min_lr.
double LearningRateAt(const proto::TrainConfig& train, int64_t step);

// Trains `config` (validated) and returns a summary. Before the first step, checkpoint.dir goes
// through PrepareCheckpointDir (checkpoint.h; rank 0 decides for every rank): resumes from the
// newest valid checkpoint when checkpoint.resume is set and one exists; FailedPrecondition
// (before any step) when checkpoints exist and none is valid; invalid ones are moved aside.
// train.debug_nan_step = N > 0 fills step N's gradients with NaN once (for fault tests).
[[nodiscard]] StatusOr<TrainSummary> Train(const proto::RunConfig& config,
                                           const TrainerOptions& options);

// Prints parameter counts (total, activated), the FLOPs per token and the memory plan.
[[nodiscard]] Status DryRun(const proto::RunConfig& config);

// Single rank (under mpirun every rank samples on its own). Generates `num_tokens` bytes after
// `prompt` from the newest checkpoint under checkpoint.dir (temperature 0: greedy). Incremental:
// the prompt (its last train.seq_len bytes) is prefilled into per-layer KV caches of train.seq_len
// positions, then each new byte is one decode step; when the caches are full, the last
// train.seq_len / 2 bytes of the text are prefilled again.
[[nodiscard]] StatusOr<std::string> Sample(const proto::RunConfig& config,
                                           const std::string& prompt, int num_tokens,
                                           double temperature, uint64_t seed);

}  // namespace smoe
