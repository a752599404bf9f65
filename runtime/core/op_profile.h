// Where the time of a CPU training step goes, by kind of op (bench/cpu_step_bench, issue 14).
//
// The model, the MoE layer and the trainer mark their phases with OpScope; while an OpProfile is
// active (SetActiveOpProfile), each scope adds its wall time to its kind. With none active a
// scope costs one atomic load. Scopes of different kinds do not nest (each phase is marked once,
// where it runs), so the kinds add up to at most the step's time; the rest is "other".
//
// Host clock: on the CPU the ops run inline, so this is their time. On CUDA it would be launch
// time, not run time (use a GPU profiler there). Not for multi-threaded callers: one step at a
// time (the pool's workers run inside the scopes of the thread that started them).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace smoe {

enum class OpKind : int {
  kAttention,  // DiffQKV: projections, RoPE, head norms, the attention core, output projection
  kRouter,     // router logits, softmax, top-k, aux losses and their backward
  kDispatch,   // routing plan, permute to expert order, combine back (and their backward)
  kExperts,    // the experts' grouped GEMMs and SwiGLU
  kNorms,      // the blocks' RMSNorms and residual adds
  kHead,       // embedding, final norm, LM head, cross-entropy
  kOptimizer,  // gradient norm, clipping, AdamW, compute copies
  kCount,
};

// "attention", "router", ...: the names benchmarks print.
const char* OpKindName(OpKind kind);

struct OpProfile {
  std::array<double, static_cast<int>(OpKind::kCount)> seconds{};
  void Reset() { seconds.fill(0.0); }
};

// The profile scopes add to (null: none). The caller keeps it alive while active.
void SetActiveOpProfile(OpProfile* profile);
OpProfile* ActiveOpProfile();

class OpScope {
 public:
  explicit OpScope(OpKind kind) : kind_(kind), profile_(ActiveOpProfile()) {
    if (profile_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  ~OpScope() {
    if (profile_ == nullptr) return;
    const std::chrono::duration<double> d = std::chrono::steady_clock::now() - start_;
    profile_->seconds[static_cast<int>(kind_)] += d.count();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpKind kind_;
  OpProfile* profile_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace smoe
