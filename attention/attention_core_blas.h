// The CPU fast path of causal DiffQKV attention in f32: per (sequence, query head) the S x S score
// matrix is formed with OpenBLAS sgemm, masked and normalized row by row, and multiplied with V.
// Same contract and results (within fp32 rounding) as the plain-loop reference of
// attention_core_cpu.h, which stays the readable definition and the oracle of the tests; this path
// is what the trainer runs on CPUs. Memory: two S x S float buffers.
#pragma once

#include "attention/attention_core.h"

namespace smoe::attention_internal {

void AttentionForwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                          float* out, float* lse);
void AttentionBackwardBlas(const AttentionDims& d, const float* q, const float* k, const float* v,
                           const float* out, const float* lse, const float* dout, float* dq,
                           float* dk, float* dv);

}  // namespace smoe::attention_internal
