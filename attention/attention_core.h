// Causal multi-head attention in which K heads and V heads are mapped to query heads separately
// (DiffQKV): query head i reads K head floor(i * n_k / n_q) and V head floor(i * n_v / n_q).
// MHA (n_k = n_v = n_q) and GQA (n_k = n_v < n_q) are special cases. K and V are never repeated
// to n_q heads, on either backend.
//
//   AttentionForward:  o_i[s] = sum_{t <= s} P_i[s, t] v_{vh(i)}[t],
//                      P_i[s, :] = softmax_{t <= s}(q_i[s] . k_{kh(i)}[t] / sqrt(D))
//                      lse[b, i, s] = log sum_{t <= s} exp(q_i[s] . k_{kh(i)}[t] / sqrt(D))
//   AttentionBackward: dq, dk, dv of sum(dout * out), from the saved out and lse (flash-attention-2
//                      style: the probabilities are recomputed, never stored).
// Shapes (row-major, i.e. [T, heads * D] with T = B * S; all B sequences have length S):
//   q, out, dq, dout [B, S, n_q, D];  k, dk [B, S, n_k, D];  v, dv [B, S, n_v, D];
//   lse [B, n_q, S].
// n_k and n_v must each divide n_q. dtypes: q, k, v, out, dout, dq, dk, dv all f32 or all bf16;
// lse f32. Accumulation is fp32 on CUDA; on the CPU, f32 runs the OpenBLAS path of
// attention_core_blas.h (fp32 products, softmax sums in double) and bf16 the plain-loop reference
// of attention_core_cpu.h (fp64). Every output is overwritten.
// CPU: any D >= 1. CUDA: D in {32, 64, 96, 128}, on one of two paths (docs/design.md section 7):
//   - bf16, in a build with cuDNN (MOE_WITH_CUDNN): cuDNN's fused flash attention (SDPA), forward
//     and backward, through the cuDNN frontend's graph API (attention_core_cudnn.cc). K and V keep
//     their own head counts (cuDNN's GQA maps query head i to K head floor(i n_k / n_q) and V head
//     floor(i n_v / n_q), as here, and reduces dK and dV over their query groups). Its lse is the
//     same natural-log statistic, so a forward on one path and a backward on the other agree. One
//     graph per shape and pass, built on first use and cached; a shape cuDNN declines (its graph
//     does not build) is said once in the log and runs our kernels from then on. Workspace: what
//     the graph asks for. The backward uses cuDNN's deterministic algorithm.
//   - f32, declined shapes, builds without cuDNN, and SetCudaAttentionKernelsOnly(true): our fused
//     tiled kernels with online softmax (attention_core_cuda.cu; no S x S matrix in memory);
//     workspace: B * n_q * S floats for backward. Decoding (kv_cache.h) always runs ours.
// Deterministic on each path (fixed reduction order, no atomics). No host synchronization.
// Tensors contiguous, on the device of ctx.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

// The sizes of one attention problem.
struct AttentionDims {
  int64_t batch = 0;  // B
  int64_t seq = 0;    // S
  int64_t n_q = 0;
  int64_t n_k = 0;
  int64_t n_v = 0;
  int64_t head_dim = 0;  // D

  int64_t KHead(int64_t q_head) const { return q_head * n_k / n_q; }
  int64_t VHead(int64_t q_head) const { return q_head * n_v / n_q; }
};

// True when the CUDA kernels support head dimension `head_dim`.
bool CudaSupportsHeadDim(int64_t head_dim);

// Process-wide: true makes every CUDA attention run our kernels, also where cuDNN would run (for
// benchmarks and parity tests that compare the two). Default false.
void SetCudaAttentionKernelsOnly(bool kernels_only);
bool CudaAttentionKernelsOnly();

[[nodiscard]] Status AttentionForward(ExecContext& ctx, const TensorView& q, const TensorView& k,
                                      const TensorView& v, const TensorView& out,
                                      const TensorView& lse);
[[nodiscard]] Status AttentionBackward(ExecContext& ctx, const TensorView& q, const TensorView& k,
                                       const TensorView& v, const TensorView& out,
                                       const TensorView& lse, const TensorView& dout,
                                       const TensorView& dq, const TensorView& dk,
                                       const TensorView& dv);

namespace internal {
// InvalidArgument unless n_k and n_v are >= 1 and divide n_q >= 1 (names the offending field).
[[nodiscard]] Status CheckHeadCounts(int64_t n_q, int64_t n_k, int64_t n_v);

// ---- The CUDA path (pure host logic, tested on the CPU) ----
enum class CudaAttentionPath { kCudnn, kKernels };
// cuDNN when cudnn_built, not kernels_only, dtype bf16 and head_dim a multiple of 8 up to 128 (what
// cuDNN's SDPA takes on sm_80 and later); our kernels otherwise. A shape cuDNN then declines falls
// back through the graph cache (SdpaGraphCache), not here.
CudaAttentionPath ChooseCudaAttentionPath(DType dtype, int64_t head_dim, bool cudnn_built,
                                          bool kernels_only);
// Whether this build has the cuDNN path (MOE_WITH_CUDNN).
bool CudnnAttentionBuilt();
// cuDNN SDPA graphs executed by this process so far (forward and backward), so that benchmarks and
// tests can tell which path ran.
int64_t CudnnAttentionRuns();

enum class AttentionPass { kForward, kBackward };
// What one cuDNN graph is built for: the device, the pass and the problem. Graphs are cached by it.
struct SdpaGraphKey {
  int device = 0;
  AttentionPass pass = AttentionPass::kForward;
  DType dtype = DType::kBF16;
  int64_t batch = 0, seq = 0, n_q = 0, n_k = 0, n_v = 0, head_dim = 0;

  friend bool operator==(const SdpaGraphKey&, const SdpaGraphKey&) = default;
};
SdpaGraphKey MakeSdpaGraphKey(int device, AttentionPass pass, const AttentionDims& dims,
                              DType dtype);
struct SdpaGraphKeyHash {
  size_t operator()(const SdpaGraphKey& key) const;
};

// Built graphs by key, each built once: Get(key, build) returns the cached graph, or calls
// build() (StatusOr<std::shared_ptr<G>>) the first time the key is seen and caches its result. A
// failed build is remembered as declined: Get returns null for that key from then on, without
// building again, and sets *declined_now (with the build's status in *reason) only on the call
// whose build failed, so the caller logs a decline once. Thread-safe (builds run under the lock).
template <typename G>
class SdpaGraphCache {
 public:
  using Build = std::function<StatusOr<std::shared_ptr<G>>()>;
  std::shared_ptr<G> Get(const SdpaGraphKey& key, const Build& build, bool* declined_now,
                         Status* reason) {
    *declined_now = false;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = graphs_.find(key);
    if (it != graphs_.end()) return it->second;
    ++builds_;
    StatusOr<std::shared_ptr<G>> built = build();
    std::shared_ptr<G> graph;
    if (built.ok() && *built != nullptr) {
      graph = *std::move(built);
    } else {
      *declined_now = true;
      *reason = built.ok() ? absl::InternalError("the build returned no graph") : built.status();
    }
    graphs_.emplace(key, graph);
    return graph;
  }
  // Keys seen (built or declined), and builds attempted.
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return graphs_.size();
  }
  int64_t builds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return builds_;
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<SdpaGraphKey, std::shared_ptr<G>, SdpaGraphKeyHash> graphs_;
  int64_t builds_ = 0;
};

// cuDNN SDPA (attention_core_cudnn.cc; builds without MOE_WITH_CUDNN have stubs that return
// false). Arguments validated by the caller, dtype bf16. Returns true when cuDNN ran the pass,
// false when it declines the shape (the caller then runs our kernels); an error when a built graph
// fails to run.
[[nodiscard]] StatusOr<bool> AttentionForwardCudnn(ExecContext& ctx, const AttentionDims& dims,
                                                   const void* q, const void* k, const void* v,
                                                   void* out, float* lse);
[[nodiscard]] StatusOr<bool> AttentionBackwardCudnn(ExecContext& ctx, const AttentionDims& dims,
                                                    const void* q, const void* k, const void* v,
                                                    const void* out, const float* lse,
                                                    const void* dout, void* dq, void* dk, void* dv);
[[nodiscard]] Status AttentionForwardCuda(ExecContext& ctx, const AttentionDims& dims, DType dtype,
                                          const void* q, const void* k, const void* v, void* out,
                                          float* lse);
[[nodiscard]] Status AttentionBackwardCuda(ExecContext& ctx, const AttentionDims& dims, DType dtype,
                                           const void* q, const void* k, const void* v,
                                           const void* out, const float* lse, const void* dout,
                                           void* dq, void* dk, void* dv);
}  // namespace internal
}  // namespace smoe
