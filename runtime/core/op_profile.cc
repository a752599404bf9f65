#include "runtime/core/op_profile.h"

namespace smoe {
namespace {
std::atomic<OpProfile*> active{nullptr};
thread_local OpScope* innermost = nullptr;
}  // namespace

OpScope::OpScope(OpKind kind) : kind_(kind), profile_(ActiveOpProfile()) {
  if (profile_ == nullptr) return;
  parent_ = innermost;
  innermost = this;
  start_ = std::chrono::steady_clock::now();
}

OpScope::~OpScope() {
  if (profile_ == nullptr) return;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  profile_->seconds[static_cast<int>(kind_)] += seconds - inner_;
  if (parent_ != nullptr) parent_->inner_ += seconds;
  innermost = parent_;
}

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAttention:
      return "attention";
    case OpKind::kAttentionCore:
      return "attention_core";
    case OpKind::kRouter:
      return "router";
    case OpKind::kDispatch:
      return "dispatch";
    case OpKind::kExperts:
      return "experts";
    case OpKind::kNorms:
      return "norms";
    case OpKind::kHead:
      return "head";
    case OpKind::kOptimizer:
      return "optimizer";
    case OpKind::kCount:
      break;
  }
  return "?";
}

void SetActiveOpProfile(OpProfile* profile) { active.store(profile); }
OpProfile* ActiveOpProfile() { return active.load(std::memory_order_relaxed); }

}  // namespace smoe
