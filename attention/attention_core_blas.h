// The CPU fast path of causal DiffQKV attention in f32: per (sequence, query head), in blocks of 64
// queries, the causal part of the score
// matrix is formed with OpenBLAS sgemm, masked and normalized row by row (exp vectorized), and
// multiplied with V; (sequence, head) pairs (backward: sequences) run in parallel in the CPU pool.
// Same contract and results (within fp32 rounding) as the plain-loop reference of
// attention_core_cpu.h, which stays the readable definition and the oracle of the tests; this path
// is what the trainer runs on CPUs. Memory: two 64 x S float buffers per thread.
#pragma once

#include "attention/attention_core.h"

namespace smoe::attention_internal {

void AttentionForwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                          float* out, float* lse);
void AttentionBackwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                           const float* out, const float* lse, const float* dout, float* dq,
                           float* dk, float* dv);

}  // namespace smoe::attention_internal
