// Where the time of a CPU training step goes, by kind of op (bench/cpu_step_bench, issue 14).
//
// The model, the MoE layer, the attention core and the trainer mark their phases with OpScope;
// while an OpProfile is active (SetActiveOpProfile), each scope adds its wall time to its kind,
// less the time of the scopes opened inside it (the attention core inside the attention block):
// exclusive times, which add up to at most the step's time; the rest is "other". With no profile
// active a scope costs one atomic load.
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
  kAttention,  // DiffQKV around the core: projections, AugQ, RoPE, head norms, output projection
  kAttentionCore,  // softmax(Q K^T) V and its backward
  kRouter,         // router logits, softmax, top-k, aux losses and their backward
  kDispatch,       // routing plan, permute to expert order, combine back (and their backward)
  kExperts,        // the experts' grouped GEMMs and SwiGLU
  kNorms,          // the blocks' RMSNorms and residual adds
  kHead,           // embedding, final norm, LM head, cross-entropy
  kOptimizer,      // gradient norm, clipping, AdamW, compute copies
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
  explicit OpScope(OpKind kind);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpKind kind_;
  OpProfile* profile_;
  OpScope* parent_ = nullptr;  // the scope this one opened inside (this thread's)
  double inner_ = 0.0;         // seconds of the scopes opened inside this one
  std::chrono::steady_clock::time_point start_;
};

}  // namespace smoe
