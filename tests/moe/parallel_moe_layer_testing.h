// Mode equivalence for the expert-parallel MoE layer (moe/parallel_moe_layer.h), shared by the
// single-rank unit test and the mpirun test: on this rank, one ParallelMoEForward/Backward against
// the reference "data parallel with replicated experts" (MoEForward/MoEBackward with all E experts
// on this rank's tokens, the expert gradients all-reduced over the group).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "moe/parallel_moe_layer.h"
#include "runtime/tensor/tensor_ops.h"
#include "tests/testing/compare.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/tensors.h"

namespace smoe::testing {

struct EquivalenceCase {
  ParallelMode mode;
  int64_t tokens = 0;  // T_g of this rank
  int num_experts = 8;
  int top_k = 1;
  float capacity_factor = 0.0f;
  uint64_t seed = 1;  // this rank's tokens and output gradient; weights are the same on every rank
  bool accumulate_grads = false;
  float aux_grad_scale = 1.0f;
};

inline std::string CaseName(const EquivalenceCase& c) {
  return ParallelModeName(c.mode) + " T" + std::to_string(c.tokens) + " E" +
         std::to_string(c.num_experts) + " K" + std::to_string(c.top_k) + " cf" +
         std::to_string(c.capacity_factor) + (c.accumulate_grads ? " accumulate" : "");
}

inline MoELayerConfig EquivalenceConfig(const EquivalenceCase& c) {
  MoELayerConfig config;
  config.model_dim = 16;
  config.ffn_dim = 8;
  config.num_experts = c.num_experts;
  config.top_k = c.top_k;
  config.capacity_factor = c.capacity_factor;
  config.aux.lbl_coef = 0.03f;
  config.aux.z_coef = 0.002f;
  config.aux.top1_lbl_coef = 0.05f;
  return config;
}

// This rank's part of a global expert tensor `full` (f32, on the host): the experts
// [first_expert, first_expert + E_l) whole, or (E < W) the shard of H: columns [ShardBegin,
// ShardBegin + H_s) of [E, M, H] (`h_last`, w1 and w3) or those rows of [E, H, M] (w2).
inline Tensor OwnedShard(const Tensor& full, const ExpertShardLayout& layout, bool h_last) {
  const int64_t el = layout.local_experts, d1 = full.dim(1), d2 = full.dim(2);
  const int64_t hs = layout.ShardWidth(h_last ? d2 : d1),
                begin = layout.ShardBegin(h_last ? d2 : d1);
  Tensor out = h_last ? HostTensor({el, d1, hs}) : HostTensor({el, hs, d2});
  const float* src = full.data<float>();
  float* dst = out.data<float>();
  for (int64_t e = 0; e < el; ++e) {
    const float* expert = src + (layout.first_expert + e) * d1 * d2;
    for (int64_t i = 0; i < out.dim(1); ++i) {
      for (int64_t j = 0; j < out.dim(2); ++j) {
        const int64_t row = h_last ? i : begin + i, col = h_last ? begin + j : j;
        dst[(e * out.dim(1) + i) * out.dim(2) + j] = expert[row * d2 + col];
      }
    }
  }
  return out;
}

// fp32 within 1e-5 relative; the absolute floor covers elements that cancel to near zero.
inline Tolerance EquivalenceTolerance() { return {2e-6, 1e-5}; }

// Runs `c` on this rank over `exchanger`'s group and checks every output and gradient.
// `shard_groups` (over the exchanger's communicator) serves the modes that need it (E < W, r < s).
inline void ExpectModeMatchesReference(RowExchanger& exchanger, const EquivalenceCase& c,
                                       ExpertShardGroups* shard_groups = nullptr) {
  SCOPED_TRACE(CaseName(c));
  ExecContext& ctx = Cpu();
  Communicator& comm = exchanger.comm();
  const MoELayerConfig config = EquivalenceConfig(c);
  const int64_t m = config.model_dim, h = config.ffn_dim, e = config.num_experts, t = c.tokens;
  MOE_ASSERT_OK_AND_ASSIGN(const ExpertShardLayout layout,
                           MakeExpertShardLayout(c.num_experts, comm.size(), comm.rank(), h));
  const int64_t el = layout.local_experts, hs = layout.ShardWidth(h);

  // The global weights, identical on every rank; the router scaled up for decisive routing.
  MoEParams full;
  full.w_gate = RandomNormal({m, e}, DType::kF32, 101, 1.0f);
  full.w1 = RandomNormal({e, m, h}, DType::kF32, 102, 1.0f / std::sqrt(float(m)));
  full.w3 = RandomNormal({e, m, h}, DType::kF32, 103, 1.0f / std::sqrt(float(m)));
  full.w2 = RandomNormal({e, h, m}, DType::kF32, 104, 1.0f / std::sqrt(float(h)));
  const MoEParamViews full_views{full.w_gate, full.w1, full.w3, full.w2};
  const Tensor local_w1 = OwnedShard(full.w1, layout, true);
  const Tensor local_w3 = OwnedShard(full.w3, layout, true);
  const Tensor local_w2 = OwnedShard(full.w2, layout, false);
  const MoEParamViews local{full.w_gate, local_w1, local_w3, local_w2};
  const Tensor x = RandomNormal({t, m}, DType::kF32, 1000 + c.seed);
  const Tensor dy = RandomNormal({t, m}, DType::kF32, 2000 + c.seed);

  // Reference: all experts on this rank's tokens, expert gradients summed over the group.
  Tensor y_ref = HostTensor({t, m}), dx_ref = HostTensor({t, m});
  MoEParams g_ref;
  g_ref.w_gate = HostTensor({m, e});
  g_ref.w1 = HostTensor({e, m, h});
  g_ref.w3 = HostTensor({e, m, h});
  g_ref.w2 = HostTensor({e, h, m});
  MoEState ref_state;
  MOE_ASSERT_OK_AND_ASSIGN(const AuxLossValues aux_ref,
                           MoEForward(ctx, config, full_views, x, y_ref, &ref_state));
  MOE_ASSERT_OK(MoEBackward(ctx, config, full_views, ref_state, dy, dx_ref,
                            {g_ref.w_gate, g_ref.w1, g_ref.w3, g_ref.w2}, false, c.aux_grad_scale));
  for (const Tensor* g : {&g_ref.w1, &g_ref.w3, &g_ref.w2}) {
    MOE_ASSERT_OK(comm.AllReduceSum(ctx, *g));
  }

  // The mode under test, its gradients starting from random values when accumulating.
  Tensor y = HostTensor({t, m}), dx = HostTensor({t, m});
  MoEParams grads;
  grads.w_gate = RandomNormal({m, e}, DType::kF32, 3000 + c.seed);
  grads.w1 = RandomNormal({el, m, hs}, DType::kF32, 3001 + c.seed);
  grads.w3 = RandomNormal({el, m, hs}, DType::kF32, 3002 + c.seed);
  grads.w2 = RandomNormal({el, hs, m}, DType::kF32, 3003 + c.seed);
  struct Expected {
    const char* name;
    const Tensor& actual;
    Tensor value;
  };
  Tensor dw_gate_ref = HostTensor({m, e});
  MOE_ASSERT_OK(Copy(ctx, g_ref.w_gate, dw_gate_ref));
  Expected expected[] = {{"dw_gate", grads.w_gate, dw_gate_ref},
                         {"dw1", grads.w1, OwnedShard(g_ref.w1, layout, true)},
                         {"dw3", grads.w3, OwnedShard(g_ref.w3, layout, true)},
                         {"dw2", grads.w2, OwnedShard(g_ref.w2, layout, false)}};
  for (Expected& ex : expected) {
    if (c.accumulate_grads) {
      MOE_ASSERT_OK(Axpy(ctx, ex.value, 1.0f, ex.actual, ex.value));
    }
  }
  ParallelMoEState state;
  MOE_ASSERT_OK_AND_ASSIGN(const AuxLossValues aux,
                           ParallelMoEForward(ctx, config, local, x, y, &state, exchanger, c.mode,
                                              nullptr, {}, shard_groups));
  MOE_ASSERT_OK(ParallelMoEBackward(ctx, config, local, state, dy, dx,
                                    {grads.w_gate, grads.w1, grads.w3, grads.w2},
                                    c.accumulate_grads, c.aux_grad_scale));

  const Tolerance tol = EquivalenceTolerance();
  EXPECT_TRUE(AllClose(y, y_ref, tol)) << "y";
  EXPECT_TRUE(AllClose(dx, dx_ref, tol)) << "dx";
  for (const Expected& ex : expected) EXPECT_TRUE(AllClose(ex.actual, ex.value, tol)) << ex.name;
  EXPECT_EQ(aux.lbl, aux_ref.lbl);
  EXPECT_EQ(aux.z_loss, aux_ref.z_loss);
  EXPECT_EQ(aux.top1_lbl, aux_ref.top1_lbl);
  EXPECT_EQ(aux.total, aux_ref.total);
  EXPECT_EQ(state.local.plan.dropped_host, ref_state.plan.dropped_host);
  EXPECT_EQ(state.local.plan.offsets_host, ref_state.plan.offsets_host);
  if (c.capacity_factor > 0.0f && t > 0) {
    EXPECT_EQ(state.local.plan.capacity, ref_state.plan.capacity);
  }
}

}  // namespace smoe::testing
