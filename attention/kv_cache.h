// Inference KV cache and single-token decode attention (DiffQKV: K and V cached separately, with
// their own head counts; neither is ever repeated to n_q heads).
//
// KvCache holds k [B, capacity, n_k, D] and v [B, capacity, n_v, D] for B sequences of equal
// length `length()`. Append writes new positions [length, length + S_new) of every sequence
// (async copies on ctx's stream); InvalidArgument ("cache.capacity") when they would not fit.
//
// DecodeAttention: one new query token per sequence, q [B, n_q, D] (RoPE'd at position
// length - 1, its own k/v already appended), out [B, n_q, D]:
//   out[b, i] = sum_{t < length} softmax_t(q[b, i] . k[b, t, kh(i)] / sqrt(D)) v[b, t, vh(i)]
// with kh(i) = floor(i * n_k / n_q) and vh(i) = floor(i * n_v / n_q): the last row of causal
// attention over the cached tokens. f32 or bf16 (the cache's dtype); fp32 accumulation on CUDA.
// CUDA (D in {32, 64, 96, 128}) splits the cache into chunks of kDecodeChunk positions: scores per
// (chunk, K head) for all the query heads that share it, softmax statistics per query head, then
// V per (chunk, V head): each cache element is read from memory once. Workspace:
// B * n_q * (length + 2 + chunks * D) floats. Deterministic; no host sync.
#pragma once

#include <cstdint>

#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"

namespace smoe {

constexpr int64_t kDecodeChunk = 256;

class KvCache {
 public:
  // An empty cache on ctx's device (memory from ctx's allocator, not initialized).
  [[nodiscard]] static StatusOr<KvCache> Create(ExecContext& ctx, int64_t batch, int64_t capacity,
                                                int64_t n_k, int64_t n_v, int64_t head_dim,
                                                DType dtype);

  // k_new [B, S_new, n_k, D], v_new [B, S_new, n_v, D] in the cache's dtype, on its device.
  [[nodiscard]] Status Append(ExecContext& ctx, const TensorView& k_new, const TensorView& v_new);
  void Clear() { length_ = 0; }

  int64_t batch() const { return k_.dim(0); }
  int64_t capacity() const { return k_.dim(1); }
  int64_t n_k() const { return k_.dim(2); }
  int64_t n_v() const { return v_.dim(2); }
  int64_t head_dim() const { return k_.dim(3); }
  int64_t length() const { return length_; }
  DType dtype() const { return k_.dtype(); }
  const Tensor& k() const { return k_; }  // [B, capacity, n_k, D]; positions >= length unset
  const Tensor& v() const { return v_; }  // [B, capacity, n_v, D]

 private:
  Tensor k_, v_;
  int64_t length_ = 0;
};

[[nodiscard]] Status DecodeAttention(ExecContext& ctx, const TensorView& q, const KvCache& cache,
                                     const TensorView& out);

namespace internal {
struct DecodeProblem {
  int64_t batch, capacity, length, n_q, n_k, n_v, head_dim;
  DType dtype;
  const void* q;
  const void* k;
  const void* v;
  void* out;
};
[[nodiscard]] Status DecodeAttentionCuda(ExecContext& ctx, const DecodeProblem& p);
}  // namespace internal
}  // namespace smoe
