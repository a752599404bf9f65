// The OpenBLAS fast path of causal DiffQKV attention against the plain-loop reference (run in
// double), forward and backward, over head layouts that share K and V heads differently.
#include <vector>

#include "attention/attention_core_blas.h"
#include "attention/attention_core_cpu.h"
#include "gtest/gtest.h"
#include "runtime/core/philox.h"
#include "tests/testing/compare.h"

namespace smoe {
namespace {

std::vector<float> Random(size_t n, uint64_t seed) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = PhiloxNormal(seed, i);
  return out;
}

std::vector<double> Wide(const std::vector<float>& v) { return {v.begin(), v.end()}; }

class AttentionBlasTest : public ::testing::TestWithParam<AttentionDims> {};

TEST_P(AttentionBlasTest, MatchesReference) {
  const AttentionDims d = GetParam();
  const size_t nq = d.batch * d.seq * d.n_q * d.head_dim, nk = d.batch * d.seq * d.n_k * d.head_dim,
               nv = d.batch * d.seq * d.n_v * d.head_dim, nl = d.batch * d.n_q * d.seq;
  const std::vector<float> q = Random(nq, 1), k = Random(nk, 2), v = Random(nv, 3),
                           dout = Random(nq, 4);
  std::vector<float> out(nq), lse(nl), dq(nq), dk(nk, 7.0f), dv(nv, 7.0f);  // dk, dv overwritten
  attention_internal::AttentionForwardBlas(d, q.data(), k.data(), v.data(), out.data(), lse.data());
  attention_internal::AttentionBackwardBlas(d, q.data(), k.data(), v.data(), out.data(), lse.data(),
                                            dout.data(), dq.data(), dk.data(), dv.data());

  const std::vector<double> qd = Wide(q), kd = Wide(k), vd = Wide(v), dod = Wide(dout);
  std::vector<double> out_ref(nq), lse_ref(nl), dq_ref(nq), dk_ref(nk), dv_ref(nv);
  attention_internal::AttentionForwardCpu(d, qd.data(), kd.data(), vd.data(), out_ref.data(),
                                          lse_ref.data());
  attention_internal::AttentionBackwardCpu(d, qd.data(), kd.data(), vd.data(), out_ref.data(),
                                           lse_ref.data(), dod.data(), dq_ref.data(), dk_ref.data(),
                                           dv_ref.data());
  const testing::Tolerance tol{2e-5, 2e-4};
  EXPECT_TRUE(testing::AllClose(Wide(out), out_ref, tol)) << "out";
  EXPECT_TRUE(testing::AllClose(Wide(lse), lse_ref, tol)) << "lse";
  EXPECT_TRUE(testing::AllClose(Wide(dq), dq_ref, tol)) << "dq";
  EXPECT_TRUE(testing::AllClose(Wide(dk), dk_ref, tol)) << "dk";
  EXPECT_TRUE(testing::AllClose(Wide(dv), dv_ref, tol)) << "dv";
}

INSTANTIATE_TEST_SUITE_P(
    Heads, AttentionBlasTest,
    ::testing::Values(AttentionDims{1, 1, 1, 1, 1, 4},     // T = 1
                      AttentionDims{2, 37, 4, 4, 4, 8},    // MHA, B > 1
                      AttentionDims{2, 33, 4, 1, 2, 16},   // DiffQKV (n_k < n_v)
                      AttentionDims{1, 29, 6, 2, 3, 5},    // non-nested K/V groups, odd D
                      AttentionDims{1, 64, 2, 1, 1, 8},    // exactly one causal block of 64
                      AttentionDims{3, 150, 4, 1, 2, 32}));  // 3 blocks, the last partial

}  // namespace
}  // namespace smoe
