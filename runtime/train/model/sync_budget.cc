#include "runtime/train/model/sync_budget.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace smoe {

const char* SyncLedger::PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kForward:
      return "forward";
    case Phase::kBackward:
      return "backward";
    case Phase::kStepRead:
      return "step read";
    case Phase::kStats:
      return "routing statistics";
    case Phase::kCount:
      break;
  }
  return "?";
}

SyncLedger::Scope::Scope(SyncLedger* ledger, Phase phase) : ledger_(ledger), phase_(phase) {
  if (ledger_ == nullptr || ledger_->open_) return;
  ledger_->open_ = true;
  active_ = true;
  start_ = ledger_->counter_();
}

SyncLedger::Scope::~Scope() {
  if (!active_) return;
  ledger_->counts_[static_cast<int>(phase_)] += ledger_->counter_() - start_;
  ledger_->open_ = false;
}

void SyncLedger::Reset() {
  counts_.fill(0);
  micro_batches_ = steps_ = 0;
}

Status SyncLedger::Check(const SyncBudget& budget, int moe_layers) const {
  const int64_t allowed[] = {micro_batches_ * moe_layers * budget.per_moe_forward,
                             micro_batches_ * budget.per_backward, steps_ * budget.per_step_read,
                             steps_ * moe_layers * budget.per_moe_layer_stats};
  std::vector<std::string> over;
  for (int p = 0; p < static_cast<int>(Phase::kCount); ++p) {
    if (counts_[p] > allowed[p]) {
      over.push_back(absl::StrCat(PhaseName(static_cast<Phase>(p)), ": got ", counts_[p],
                                  " host syncs, expected at most ", allowed[p]));
    }
  }
  if (over.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("host-sync budget exceeded over ", micro_batches_, " micro-batches and ", steps_,
                   " steps with ", moe_layers, " MoE layers (", absl::StrJoin(over, "; "), ")"));
}

}  // namespace smoe
