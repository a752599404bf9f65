// The overrides (for ApplyOverrides on the `tiny` preset) of a training run small enough that a
// step takes milliseconds on one CPU core: one layer of 4 experts, DiffQKV with AugQ, 2 x 16
// tokens, no evaluation. Trainer tests add their checkpoint settings and what they vary.
#pragma once

#include <string>
#include <vector>

namespace smoe::testing {

inline std::vector<std::string> SmallRunOverrides(int steps) {
  return {"model.num_layers=1",
          "model.model_dim=32",
          "attention.n_q=2",
          "attention.n_k=1",
          "attention.n_v=2",
          "attention.head_dim=16",
          "attention.d_aug=32",
          "moe.num_experts=4",
          "moe.ffn_dim=16",
          "moe.topk_schedule=[]",
          "train.batch_size=2",
          "train.seq_len=16",
          "train.steps=" + std::to_string(steps),
          "train.warmup_steps=1",
          "train.eval_interval=0",
          "train.device=cpu",
          "data.synthetic_size=20000"};
}

}  // namespace smoe::testing
