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

// fp32 within 1e-5 relative; the absolute floor covers elements that cancel to near zero.
inline Tolerance EquivalenceTolerance() { return {2e-6, 1e-5}; }

// Runs `c` on this rank over `exchanger`'s group and checks every output and gradient.
inline void ExpectModeMatchesReference(RowExchanger& exchanger, const EquivalenceCase& c) {
  SCOPED_TRACE(CaseName(c));
  ExecContext& ctx = Cpu();
  Communicator& comm = exchanger.comm();
  const MoELayerConfig config = EquivalenceConfig(c);
  const int64_t m = config.model_dim, h = config.ffn_dim, e = config.num_experts, t = c.tokens;
  const int64_t el = e / comm.size(), first = comm.rank() * el;

  // The global weights, identical on every rank; the router scaled up for decisive routing.
  MoEParams full;
  full.w_gate = RandomNormal({m, e}, DType::kF32, 101, 1.0f);
  full.w1 = RandomNormal({e, m, h}, DType::kF32, 102, 1.0f / std::sqrt(float(m)));
  full.w3 = RandomNormal({e, m, h}, DType::kF32, 103, 1.0f / std::sqrt(float(m)));
  full.w2 = RandomNormal({e, h, m}, DType::kF32, 104, 1.0f / std::sqrt(float(h)));
  const MoEParamViews full_views{full.w_gate, full.w1, full.w3, full.w2};
  const MoEParamViews local{full.w_gate, full.w1.view().Rows(first, first + el),
                            full.w3.view().Rows(first, first + el),
                            full.w2.view().Rows(first, first + el)};
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
                            {g_ref.w_gate, g_ref.w1, g_ref.w3, g_ref.w2}, false,
                            c.aux_grad_scale));
  for (const Tensor* g : {&g_ref.w1, &g_ref.w3, &g_ref.w2}) {
    MOE_ASSERT_OK(comm.AllReduceSum(ctx, *g));
  }

  // The mode under test, its gradients starting from random values when accumulating.
  Tensor y = HostTensor({t, m}), dx = HostTensor({t, m});
  MoEParams grads;
  grads.w_gate = RandomNormal({m, e}, DType::kF32, 3000 + c.seed);
  grads.w1 = RandomNormal({el, m, h}, DType::kF32, 3001 + c.seed);
  grads.w3 = RandomNormal({el, m, h}, DType::kF32, 3002 + c.seed);
  grads.w2 = RandomNormal({el, h, m}, DType::kF32, 3003 + c.seed);
  struct Expected {
    const char* name;
    const Tensor& actual;
    TensorView reference;
    Tensor value;
  };
  Expected expected[] = {{"dw_gate", grads.w_gate, g_ref.w_gate, {}},
                         {"dw1", grads.w1, g_ref.w1.view().Rows(first, first + el), {}},
                         {"dw3", grads.w3, g_ref.w3.view().Rows(first, first + el), {}},
                         {"dw2", grads.w2, g_ref.w2.view().Rows(first, first + el), {}}};
  for (Expected& ex : expected) {
    ex.value = HostTensor(ex.reference.shape());
    MOE_ASSERT_OK(Copy(ctx, ex.reference, ex.value));
    if (c.accumulate_grads) {
      MOE_ASSERT_OK(Axpy(ctx, ex.value, 1.0f, ex.actual, ex.value));
    }
  }
  ParallelMoEState state;
  MOE_ASSERT_OK_AND_ASSIGN(const AuxLossValues aux,
                           ParallelMoEForward(ctx, config, local, x, y, &state, exchanger, c.mode));
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
