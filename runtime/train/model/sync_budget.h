// The host-sync budget of a training step (docs/design.md section 4) and a ledger that checks it.
//
// A host sync stalls the CPU until the GPU's queue drains, so the step keeps them to:
//   - one per MoE layer forward: the per-expert row offsets, which the grouped GEMMs need on the
//     host (moe/dispatch/routing_plan.h);
//   - none in any backward;
//   - one per optimizer step that reads the loss, the aux-loss values and the gradient norm
//     together (Model::ForwardBackwardAccumulate keeps them on the device until then);
//   - for the metrics line, the routing statistics of each MoE layer (two copies each,
//     moe/router/routing_stats.h), once per logged step.
// The budget is for one rank; several ranks add what their communicators need.
//
// SyncLedger charges the syncs that a counter (ExecContext::host_syncs, or a fake in tests) moves
// by between a Scope's construction and destruction to a phase, and checks the totals against a
// SyncBudget. The CPU backends make fewer syncs than the CUDA ones (ExecContext counts every
// Synchronize call, but most CPU paths need none), so the budget binds on CUDA; on the CPU the
// counts are at most the budget.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>

#include "runtime/core/status.h"

namespace smoe {

struct SyncBudget {
  int64_t per_moe_forward = 1;
  int64_t per_backward = 0;
  int64_t per_step_read = 1;
  int64_t per_moe_layer_stats = 2;

  // Syncs of one optimizer step over `micro_batches` forward + backward passes of a model with
  // `moe_layers` MoE layers, with (`stats`) or without the routing statistics of a metrics line.
  int64_t StepTotal(int moe_layers, int micro_batches, bool stats = true) const {
    return int64_t{micro_batches} * moe_layers * per_moe_forward +
           int64_t{micro_batches} * per_backward + per_step_read +
           (stats ? int64_t{moe_layers} * per_moe_layer_stats : 0);
  }
};

class SyncLedger {
 public:
  enum class Phase { kForward, kBackward, kStepRead, kStats, kCount };
  static const char* PhaseName(Phase phase);

  // `counter` returns a monotonic count of host syncs (ExecContext::host_syncs).
  explicit SyncLedger(std::function<int64_t()> counter) : counter_(std::move(counter)) {}

  // Charges the syncs made during its lifetime to one phase. Scopes do not nest: a scope opened
  // while another is open charges nothing (the outer one counts those syncs).
  class Scope {
   public:
    Scope(SyncLedger* ledger, Phase phase);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    SyncLedger* ledger_;
    Phase phase_;
    int64_t start_ = 0;
    bool active_ = false;
  };

  // A scope on `ledger`, or one that charges nothing when ledger is null (callers that may or may
  // not be watched).
  static Scope Charge(SyncLedger* ledger, Phase phase) { return Scope(ledger, phase); }

  int64_t count(Phase phase) const { return counts_[static_cast<int>(phase)]; }
  // Passes (forward + backward of a micro-batch) and optimizer steps recorded.
  void AddMicroBatch() { ++micro_batches_; }
  void AddStep() { ++steps_; }
  int64_t micro_batches() const { return micro_batches_; }
  void Reset();

  // OK when every phase is within `budget` for the micro-batches and steps recorded and
  // `moe_layers` MoE layers; else FailedPrecondition naming each phase over budget, with the count
  // seen and the count allowed.
  [[nodiscard]] Status Check(const SyncBudget& budget, int moe_layers) const;

 private:
  std::function<int64_t()> counter_;
  std::array<int64_t, static_cast<int>(Phase::kCount)> counts_{};
  int64_t micro_batches_ = 0, steps_ = 0;
  bool open_ = false;
};

}  // namespace smoe
