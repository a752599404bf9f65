// The training loop of sigma-moe-train (DESIGN.md section 8, issue 5).
//
// Per optimizer step: the progressive top-k schedule, grad_accum micro-batches of forward and
// backward, a non-finite check (loss and global gradient norm), clipping, AdamW on the fp32
// masters (weight decay on matrices only), warmup + cosine LR; then metrics, progress, held-out
// evaluation and checkpoints at their intervals. SIGINT/SIGTERM save a checkpoint and stop cleanly;
// a loss spike rolls back to the last checkpoint with a reduced LR.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "runtime/core/status.h"
#include "runtime/train/config/config.h"
#include "runtime/train/model/model.h"

namespace smoe {

struct TrainerOptions {
  std::string metrics_path;  // metrics.jsonl; empty: <checkpoint.dir>/metrics.jsonl
  bool progress_bar = true;  // on a terminal; plain log lines otherwise
  // Set (e.g. by a signal handler) to ask the loop to checkpoint and stop after the current step.
  std::atomic<bool>* stop_requested = nullptr;
};

struct TrainSummary {
  int64_t steps_done = 0;
  double final_loss = 0.0;
  double final_eval_loss = -1.0;  // -1: not evaluated
  int64_t skipped_steps = 0;
  int64_t rollbacks = 0;
  bool stopped_early = false;     // by stop_requested
};

// Resolves "auto" device and dtype: CUDA and bf16 when a GPU is visible, else CPU and f32.
[[nodiscard]] StatusOr<Device> ResolveDevice(const proto::RunConfig& config);
[[nodiscard]] StatusOr<DType> ResolveDType(const proto::RunConfig& config, Device device);
// The model description of a (validated) config.
ModelSpec SpecFromConfig(const proto::RunConfig& config, DType dtype);
// Learning rate at optimizer step `step` (0-based): linear warmup to lr, cosine to min_lr.
double LearningRateAt(const proto::TrainConfig& train, int64_t step);

// Trains `config` (validated) and returns a summary. Resumes from the newest valid checkpoint
// when checkpoint.resume is set and one exists.
[[nodiscard]] StatusOr<TrainSummary> Train(const proto::RunConfig& config,
                                           const TrainerOptions& options);

// Prints parameter counts (total, activated), the FLOPs per token and the memory plan.
[[nodiscard]] Status DryRun(const proto::RunConfig& config);

// Generates `num_tokens` bytes after `prompt` from the newest checkpoint under checkpoint.dir
// (temperature 0: greedy). Incremental: the prompt (its last train.seq_len bytes) is prefilled into
// per-layer KV caches of train.seq_len positions, then each new byte is one decode step; when the
// caches are full, the last train.seq_len / 2 bytes of the text are prefilled again.
[[nodiscard]] StatusOr<std::string> Sample(const proto::RunConfig& config, const std::string& prompt,
                                           int num_tokens, double temperature, uint64_t seed);

}  // namespace smoe
