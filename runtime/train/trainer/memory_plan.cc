#include "runtime/train/trainer/memory_plan.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/train/model/sync_budget.h"

namespace smoe {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// cuBLAS/cuBLASLt workspaces, CUB temporaries, the caching allocator's size rounding.
constexpr double kCudaReserveBytes = 1.0 * kGiB;

// The largest top-k layer `layer` routes to over the run (the progressive schedule's phases).
int MaxTopK(const proto::MoeConfig& moe, int layer) {
  int k = std::max(1, moe.top_k());
  for (const proto::TopKScheduleEntry& e : moe.topk_schedule()) {
    if (layer >= e.first_layer() && layer <= e.last_layer()) k = std::max(k, e.k());
  }
  return k;
}

bool IsDense(const proto::MoeConfig& moe, int layer) {
  return std::find(moe.dense_layers().begin(), moe.dense_layers().end(), layer) !=
         moe.dense_layers().end();
}

}  // namespace

StatusOr<MemoryPlan> PlanMemory(const proto::RunConfig& config, Device device, DType dtype,
                                int world) {
  MOE_RETURN_IF_ERROR(ValidateWorld(config, world));
  world = std::max(1, world);
  const proto::ModelConfig& mc = config.model();
  const proto::AttentionConfig& ac = mc.attention();
  const proto::MoeConfig& moe = mc.moe();
  const double c = static_cast<double>(DTypeSize(dtype));
  const double m = mc.model_dim(), v = mc.vocab_size();
  const double d = ac.head_dim(), qd = ac.n_q() * d, kd = ac.n_k() * d, vd = ac.n_v() * d;
  const double aug = ac.d_aug();
  const double e = moe.num_experts(), h = moe.ffn_dim(), hd = moe.dense_ffn_dim();
  // Expert tensors per rank: E / W whole experts, or an H / s shard of one expert (s = W / E):
  // a 1 / W share either way (model.h).
  const double local_expert_share = 1.0 / world;

  MemoryPlan plan;
  const int64_t local_batch = config.train().batch_size() / world;
  plan.tokens = local_batch * static_cast<int64_t>(config.train().seq_len());
  const double t = static_cast<double>(plan.tokens);

  // Parameters: matrices (compute copy in `dtype`) and f32-only gains / router.
  double matrices = v * m * (mc.tie_embeddings() ? 1 : 2), local_matrices = matrices;
  double f32_only = m;            // final norm
  double layer_grad_scratch = 0;  // the largest layer's attention gradients, staged (model.cc)
  double act = 0, moe_transient = 0, attention_transient = 0;
  // Activated parameters and matmul FLOPs at the final top-k (Model::FlopsPerToken's count).
  double inactive = 0, matmul_params = v * m, attention_scores = 0;
  for (int l = 0; l < mc.num_layers(); ++l) {
    const double attn = m * qd + m * kd + m * vd + qd * m + (aug > 0 ? 3 * qd * aug : 0);
    const double norms = ac.qk_norm() ? 2 * d : 0;
    matrices += attn + norms;
    local_matrices += attn + norms;
    f32_only += 2 * m;  // attention and FFN norms
    layer_grad_scratch = std::max(layer_grad_scratch, attn + norms);
    matmul_params += attn;
    attention_scores += 2.0 * qd * config.train().seq_len();
    // Block inputs and norm outputs [T, M], their rstd [T] f32.
    act += 4 * t * m * c + 2 * t * 4;
    // DiffQKV saved: q, q_rope, o (+ q_aug and AugQ's gate, up, h), k, k_rope, v, lse, rstds.
    act += t * (3 * qd + 2 * kd + vd) * c + t * ac.n_q() * 4;
    if (aug > 0) act += t * qd * c + 3 * t * aug * c;
    if (ac.qk_norm()) act += t * (ac.n_q() + ac.n_k()) * 4;
    attention_transient = std::max(
        attention_transient, t * (4 * qd + 2 * kd + 2 * vd) * c + (aug > 0 ? 4 * t * aug * c : 0));
    if (IsDense(moe, l)) {
      matrices += 3 * m * hd;
      local_matrices += 3 * m * hd;
      matmul_params += 3 * m * hd;
      act += 3 * t * hd * c;
      moe_transient =
          std::max(moe_transient, 2 * t * hd * c + (c == 4 ? t * m * 4 : 3 * m * hd * c));
      continue;
    }
    const double k = MaxTopK(moe, l);
    plan.max_top_k = std::max(plan.max_top_k, static_cast<int>(k));
    const double rows = t * k;
    matrices += 3 * e * m * h;
    const double final_k = std::max(1, moe.top_k());
    inactive += (e - final_k) * 3 * m * h;
    matmul_params += m * e + final_k * 3 * m * h;
    local_matrices += 3 * e * m * h * local_expert_share;
    f32_only += m * e;  // router
    // Routing (f32 logits, probabilities, aux-loss gradient; top-k ids and gates; the plan's
    // per-row slots), dispatched rows xs, ys [R, M] and h1, h3, act [R, H].
    act += 3 * t * e * 4 + 2 * t * k * 4 + rows * 16 + 2 * rows * m * c + 3 * rows * h * c;
    // Backward: dys, dxs [R, M], dh1, dh3 [R, H], in f32 an [R, M] f32 term (calibrated, see
    // below), in bf16 the three bf16 weight-gradient products of the local experts
    // (moe/experts/experts.h), the router's dx [T, M] and scaled aux gradient [T, E] f32, and the
    // router's f32 copy of x.
    const double grad_products = c == 4 ? rows * m * 4 : 3 * e * local_expert_share * m * h * c;
    moe_transient = std::max(moe_transient, 2 * rows * m * c + 2 * rows * h * c + grad_products +
                                                t * m * c + t * e * 4 + t * m * 4);
  }
  plan.parameters = static_cast<int64_t>(matrices + f32_only);
  plan.local_parameters = static_cast<int64_t>(local_matrices + f32_only);
  plan.activated_parameters = static_cast<int64_t>(matrices + f32_only - inactive);
  plan.flops_per_token = 3.0 * (2.0 * matmul_params + attention_scores);
  const double compute_copies = dtype == DType::kF32 ? 0 : local_matrices * c;
  plan.state_bytes = 16.0 * (local_matrices + f32_only) + compute_copies;

  // Head: final norm output [T, M] and rstd, f32 logits [T, V] (kept through the backward).
  act += t * m * c + t * 4 + t * v * 4;
  plan.activation_bytes = act;
  // The head's backward keeps dlogits (f32, plus a compute-dtype copy) while the layers run
  // backward, with the flowing [T, M] gradients (dh, dn2, dh_mid, dn1, dh_in) and the larger of
  // a layer's MoE/FFN and attention buffers and its staged attention gradients (+ f32 scratch).
  const double head_backward = t * v * 4 + (dtype == DType::kF32 ? 0 : t * v * c);
  const double layer_backward =
      std::max(moe_transient, attention_transient + layer_grad_scratch * (c + 4));
  plan.transient_bytes = head_backward + 5 * t * m * c + layer_backward;
  if (world > 1) plan.transient_bytes += 3 * e * m * h * c;  // r = 0 gathers every expert
  // Buffers too small to itemize (routing metadata, norms' partial sums, loss scalars) and the
  // allocator's size rounding: a quarter of the itemized activations and transients, calibrated
  // against the CPU allocator's measured peak (memory_plan_test).
  plan.transient_bytes += 0.25 * (plan.activation_bytes + plan.transient_bytes);
  int moe_layers = 0;
  for (int l = 0; l < mc.num_layers(); ++l) moe_layers += IsDense(moe, l) ? 0 : 1;
  // With aux-loss-free balancing the metrics line also reads each layer's max |bias|.
  plan.host_syncs_per_step =
      SyncBudget().StepTotal(moe_layers, std::max(1, config.train().grad_accum())) +
      (moe.bias_update_rate() > 0 ? moe_layers : 0);
  plan.reserve_bytes = device.is_cuda() ? kCudaReserveBytes : 0;
  return plan;
}

std::string DescribePlan(const MemoryPlan& p) {
  auto gib = [](double bytes) { return bytes / kGiB; };
  return absl::StrFormat(
      "  memory plan      %.2f GiB per rank: state %.2f GiB (%d parameters here: f32 master, "
      "grad, AdamW m and v, compute copy), activations %.2f GiB (%d tokens per micro-batch, "
      "top-k up to %d), backward transients %.2f GiB, runtime reserve %.2f GiB",
      gib(p.total_bytes()), gib(p.state_bytes), p.local_parameters, gib(p.activation_bytes),
      p.tokens, p.max_top_k, gib(p.transient_bytes), gib(p.reserve_bytes));
}

Status CheckPlanFits(const MemoryPlan& plan, Device device, double free_bytes) {
  if (plan.total_bytes() <= free_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "the run needs about %.2f GiB on %s but %.2f GiB are free (state %.2f GiB, activations "
      "%.2f GiB, transients %.2f GiB, reserve %.2f GiB). Reduce train.batch_size (raise "
      "train.grad_accum to keep the global batch) or train.seq_len for the activations, "
      "model.num_layers or the model's width for the state, or spread the experts over more "
      "ranks (mpirun -np W); `sigma-moe-train --dry_run` prints the plan",
      plan.total_bytes() / kGiB, device.ToString(), free_bytes / kGiB, plan.state_bytes / kGiB,
      plan.activation_bytes / kGiB, plan.transient_bytes / kGiB, plan.reserve_bytes / kGiB));
}

}  // namespace smoe
