#include "runtime/core/op_profile.h"

namespace smoe {
namespace {
std::atomic<OpProfile*> active{nullptr};
}  // namespace

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAttention:
      return "attention";
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
