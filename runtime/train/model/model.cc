#include "runtime/train/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "moe/experts/experts.h"
#include "moe/router/expert_load.h"
#include "runtime/blas/gemm.h"
#include "runtime/core/op_profile.h"
#include "runtime/device/stream_timer.h"
#include "runtime/nn/cross_entropy.h"
#include "runtime/nn/embedding.h"
#include "runtime/nn/rmsnorm.h"
#include "runtime/tensor/tensor_ops.h"

namespace smoe {

// Indices into params_ of one block's weights.
struct Model::Layer {
  bool moe = true;
  MoELayerConfig moe_config;  // per layer: top_k follows the progressive schedule
  int attn_norm = -1, w_q = -1, w_k = -1, w_v = -1, w_o = -1;
  int aug_gate = -1, aug_up = -1, aug_down = -1, q_norm = -1, k_norm = -1;
  int ffn_norm = -1, router = -1, w1 = -1, w3 = -1, w2 = -1;
  Tensor expert_bias;    // [E] f32, MoE layers with aux-loss-free balancing only (else undefined)
  Tensor expert_counts;  // [E] i64 scratch for UpdateExpertBiases
};

// What one block's forward keeps for its backward.
struct Model::Activations {
  int64_t seq_len = 0;
  Tensor h_in, n1, rstd1, h_mid, n2, rstd2;
  DiffQkvSaved attn;
  Tensor dense_h1, dense_h3, dense_act;  // dense SwiGLU layers only
};

// What a training or evaluation forward keeps for the backward and the loss.
struct Model::ForwardState {
  std::vector<Activations> blocks;
  Tensor h;         // the last block's output [T, M]
  Tensor nf, rstd;  // final RMSNorm output and rstd
  Tensor logits;    // [T, V] f32
};

Model::Model(const ModelSpec& spec, Device device) : spec_(spec), device_(device) {}
Model::~Model() = default;

Status Model::AddParam(const std::string& name, Shape shape, DType compute_dtype, bool decay,
                       bool expert_shard, int ffn_axis) {
  ModelParam p;
  p.name = name;
  p.decay = decay;
  p.expert_shard = expert_shard;
  p.ffn_axis = ffn_axis;
  MOE_ASSIGN_OR_RETURN(p.master, Tensor::Empty(shape, DType::kF32, device_));
  p.compute = p.master;
  if (compute_dtype != DType::kF32) {
    MOE_ASSIGN_OR_RETURN(p.compute, Tensor::Empty(shape, compute_dtype, device_));
  }
  MOE_ASSIGN_OR_RETURN(p.grad, Tensor::Empty(shape, DType::kF32, device_));
  MOE_ASSIGN_OR_RETURN(p.m, Tensor::Empty(shape, DType::kF32, device_));
  MOE_ASSIGN_OR_RETURN(p.v, Tensor::Empty(shape, DType::kF32, device_));
  params_.push_back(std::move(p));
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<Model>> Model::Create(const ModelSpec& spec_in, Device device,
                                               Communicator* comm, int node_size) {
  ModelSpec spec = spec_in;
  spec.attention.model_dim = spec.model_dim;
  spec.moe.model_dim = spec.model_dim;
  spec.moe.dtype = spec.dtype;
  if (spec.vocab_size <= 0)
    return BadArgument("model.vocab_size", absl::StrCat(spec.vocab_size), "> 0");
  if (spec.num_layers <= 0)
    return BadArgument("model.num_layers", absl::StrCat(spec.num_layers), "> 0");
  if (!IsFloating(spec.dtype)) return BadArgument("dtype", DTypeName(spec.dtype), "f32 or bf16");
  MOE_RETURN_IF_ERROR(ValidateDiffQkvConfig(spec.attention, device));
  MOE_RETURN_IF_ERROR(ValidateMoEConfig(spec.moe));
  if (!(spec.bias_update_rate >= 0.0f) || !std::isfinite(spec.bias_update_rate)) {
    return BadArgument("moe.bias_update_rate", absl::StrCat(spec.bias_update_rate),
                       "finite and >= 0");
  }
  if (spec.bias_update_rate > 0.0f && !(spec.bias_bound > 0.0f && std::isfinite(spec.bias_bound))) {
    return BadArgument("moe.bias_bound", absl::StrCat(spec.bias_bound),
                       "finite and > 0 when moe.bias_update_rate > 0");
  }
  for (int layer : spec.dense_layers) {
    if (layer < 0 || layer >= spec.num_layers) {
      return BadArgument("moe.dense_layers", absl::StrCat(layer),
                         absl::StrCat("a layer index in [0, ", spec.num_layers, ")"));
    }
    if (spec.dense_ffn_dim <= 0) {
      return BadArgument("moe.dense_ffn_dim", absl::StrCat(spec.dense_ffn_dim),
                         "> 0 with dense layers");
    }
  }
  std::unique_ptr<Model> model(new Model(spec, device));
  model->comm_ = comm != nullptr ? comm : SingleRankCommunicator();
  int64_t local_experts = spec.moe.num_experts;
  if (comm != nullptr && comm->size() > 1) {
    const int w = comm->size();
    const int e = spec.moe.num_experts;
    if (e >= w && e % w != 0) {
      return BadArgument("model.moe.num_experts", absl::StrCat(e),
                         absl::StrCat("a multiple of the world size ", w));
    }
    if (e < w && w % e != 0) {
      return BadArgument("model.moe.num_experts", absl::StrCat(e),
                         absl::StrCat("a multiple or a divisor of the world size ", w));
    }
    if (e < w && spec.moe.ffn_dim % (w / e) != 0) {
      return BadArgument("model.moe.ffn_dim", absl::StrCat(spec.moe.ffn_dim),
                         absl::StrCat("a multiple of world size / experts = ", w / e,
                                      " (each expert is sharded over ", w / e, " ranks)"));
    }
    model->comm_ = comm;
    model->world_ = w;
    MOE_ASSIGN_OR_RETURN(model->layout_,
                         MakeExpertShardLayout(e, w, comm->rank(), spec.moe.ffn_dim));
    MOE_ASSIGN_OR_RETURN(model->exchanger_, RowExchanger::Create(comm, node_size));
    model->shard_groups_ = std::make_unique<ExpertShardGroups>(comm);
    local_experts = model->layout_.local_experts;
  } else {
    MOE_ASSIGN_OR_RETURN(model->layout_,
                         MakeExpertShardLayout(spec.moe.num_experts, 1, 0, spec.moe.ffn_dim));
  }
  const DType dt = spec.dtype;
  const int64_t m = spec.model_dim, v = spec.vocab_size;
  const DiffQkvConfig& a = spec.attention;
  const int64_t qd = a.n_q * a.head_dim;
  Model& md = *model;
  auto add = [&](const std::string& name, Shape shape, DType dtype, bool decay,
                 bool expert_shard = false, int ffn_axis = 0) -> StatusOr<int> {
    MOE_RETURN_IF_ERROR(md.AddParam(name, shape, dtype, decay, expert_shard, ffn_axis));
    return static_cast<int>(md.params_.size()) - 1;
  };
  MOE_ASSIGN_OR_RETURN(md.embedding_, add("embedding", {v, m}, dt, true));
  for (int l = 0; l < spec.num_layers; ++l) {
    Layer layer;
    const std::string p = absl::StrCat("layers.", l, ".");
    layer.moe =
        std::find(spec.dense_layers.begin(), spec.dense_layers.end(), l) == spec.dense_layers.end();
    layer.moe_config = spec.moe;
    MOE_ASSIGN_OR_RETURN(layer.attn_norm, add(p + "attn_norm", {m}, DType::kF32, false));
    MOE_ASSIGN_OR_RETURN(layer.w_q, add(p + "attn.w_q", {m, qd}, dt, true));
    MOE_ASSIGN_OR_RETURN(layer.w_k, add(p + "attn.w_k", {m, a.n_k * a.head_dim}, dt, true));
    MOE_ASSIGN_OR_RETURN(layer.w_v, add(p + "attn.w_v", {m, a.n_v * a.head_dim}, dt, true));
    MOE_ASSIGN_OR_RETURN(layer.w_o, add(p + "attn.w_o", {qd, m}, dt, true));
    if (a.d_aug > 0) {
      MOE_ASSIGN_OR_RETURN(layer.aug_gate, add(p + "attn.aug_gate", {qd, a.d_aug}, dt, true));
      MOE_ASSIGN_OR_RETURN(layer.aug_up, add(p + "attn.aug_up", {qd, a.d_aug}, dt, true));
      MOE_ASSIGN_OR_RETURN(layer.aug_down, add(p + "attn.aug_down", {a.d_aug, qd}, dt, true));
    }
    if (a.qk_norm) {
      MOE_ASSIGN_OR_RETURN(layer.q_norm, add(p + "attn.q_norm", {a.head_dim}, dt, false));
      MOE_ASSIGN_OR_RETURN(layer.k_norm, add(p + "attn.k_norm", {a.head_dim}, dt, false));
    }
    MOE_ASSIGN_OR_RETURN(layer.ffn_norm, add(p + "ffn_norm", {m}, DType::kF32, false));
    if (layer.moe) {
      const int64_t e = spec.moe.num_experts, el = local_experts;
      const int64_t h = md.layout_.ShardWidth(spec.moe.ffn_dim);
      const bool shard = md.world_ > 1;
      MOE_ASSIGN_OR_RETURN(layer.router, add(p + "moe.w_gate", {m, e}, DType::kF32, true));
      MOE_ASSIGN_OR_RETURN(layer.w1, add(p + "moe.w1", {el, m, h}, dt, true, shard, 2));
      MOE_ASSIGN_OR_RETURN(layer.w3, add(p + "moe.w3", {el, m, h}, dt, true, shard, 2));
      MOE_ASSIGN_OR_RETURN(layer.w2, add(p + "moe.w2", {el, h, m}, dt, true, shard, 1));
      if (spec.bias_update_rate > 0.0f) {
        MOE_ASSIGN_OR_RETURN(layer.expert_bias, Tensor::Empty({e}, DType::kF32, device));
        MOE_ASSIGN_OR_RETURN(layer.expert_counts, Tensor::Empty({e}, DType::kI64, device));
      }
    } else {
      const int64_t h = spec.dense_ffn_dim;
      MOE_ASSIGN_OR_RETURN(layer.w1, add(p + "ffn.w1", {1, m, h}, dt, true));
      MOE_ASSIGN_OR_RETURN(layer.w3, add(p + "ffn.w3", {1, m, h}, dt, true));
      MOE_ASSIGN_OR_RETURN(layer.w2, add(p + "ffn.w2", {1, h, m}, dt, true));
    }
    md.layers_.push_back(layer);
  }
  MOE_ASSIGN_OR_RETURN(md.final_norm_, add("final_norm", {m}, DType::kF32, false));
  if (!spec.tie_embeddings) {
    MOE_ASSIGN_OR_RETURN(md.lm_head_, add("lm_head", {m, v}, dt, true));
  }
  md.moe_states_.resize(spec.num_layers);
  md.parallel_states_.resize(spec.num_layers);
  md.modes_.resize(spec.num_layers);
  md.measured_.assign(spec.num_layers, false);
  md.moe_ms_.assign(spec.num_layers, 0.0);
  md.moe_max_rows_.assign(spec.num_layers, 0);
  md.last_aux_.resize(spec.num_layers);
  return model;
}

Status Model::Init(ExecContext& ctx, uint64_t seed) {
  // Output projections (attention w_o, FFN w2) are scaled down by sqrt(2L) so that the residual
  // stream's variance does not grow with depth (GPT-2's rule).
  const float out_std = spec_.init_std / std::sqrt(2.0f * static_cast<float>(spec_.num_layers));
  uint64_t offset = 0;
  for (ModelParam& p : params_) {
    const bool gain = !p.decay;
    const bool output = absl::EndsWith(p.name, "w_o") || absl::EndsWith(p.name, "w2");
    // An expert shard takes the stream offsets of its rows in the global tensor, so the ranks
    // together hold exactly the single-rank init.
    const uint64_t per_expert =
        p.expert_shard ? static_cast<uint64_t>(GlobalNumel(p) / spec_.moe.num_experts) : 0;
    const uint64_t first = static_cast<uint64_t>(layout_.first_expert) * per_expert;
    if (gain) {
      MOE_RETURN_IF_ERROR(Fill(ctx, p.master, 1.0));
    } else if (p.expert_shard && layout_.shards > 1) {
      // A column slice of a row-major matrix is no contiguous range of the stream: draw the whole
      // expert and keep the slice.
      Shape whole = GlobalShape(p);
      whole[0] = p.master.dim(0);
      MOE_ASSIGN_OR_RETURN(Tensor full, Tensor::Empty(whole, DType::kF32, device_));
      MOE_RETURN_IF_ERROR(
          FillNormal(ctx, full, seed, offset + first, 0.0f, output ? out_std : spec_.init_std));
      MOE_RETURN_IF_ERROR(CopyShardStaged(ctx, p, layout_,
                                          /*first_expert_in_global=*/layout_.first_expert, full,
                                          p.master, /*to_global=*/false));
    } else {
      MOE_RETURN_IF_ERROR(
          FillNormal(ctx, p.master, seed, offset + first, 0.0f, output ? out_std : spec_.init_std));
    }
    offset += static_cast<uint64_t>(GlobalNumel(p));
    MOE_RETURN_IF_ERROR(Fill(ctx, p.m, 0.0));
    MOE_RETURN_IF_ERROR(Fill(ctx, p.v, 0.0));
  }
  for (Layer& layer : layers_) {
    if (layer.expert_bias.defined()) MOE_RETURN_IF_ERROR(Fill(ctx, layer.expert_bias, 0.0));
  }
  return SyncComputeCopies(ctx);
}

Status Model::SyncComputeCopies(ExecContext& ctx) {
  for (ModelParam& p : params_) {
    if (p.compute.data() != p.master.data()) MOE_RETURN_IF_ERROR(Cast(ctx, p.master, p.compute));
  }
  return absl::OkStatus();
}

Status Model::ZeroGrads(ExecContext& ctx) {
  for (ModelParam& p : params_) MOE_RETURN_IF_ERROR(Fill(ctx, p.grad, 0.0));
  return absl::OkStatus();
}

bool Model::is_moe_layer(int layer) const { return layers_[layer].moe; }

void Model::SetParallelMode(int layer, const ParallelMode& mode, bool measure) {
  modes_[layer] = mode;
  measured_[layer] = measure;
}

void Model::ResetMoEProfile() {
  std::fill(moe_ms_.begin(), moe_ms_.end(), 0.0);
  std::fill(moe_max_rows_.begin(), moe_max_rows_.end(), int64_t{0});
}

Shape Model::GlobalShape(const ModelParam& p) const {
  Shape shape = p.master.shape();
  if (p.expert_shard) {
    shape[0] = spec_.moe.num_experts;
    shape[p.ffn_axis] *= layout_.shards;
  }
  return shape;
}

Status Model::CopyShard(const ModelParam& p, const ExpertShardLayout& layout,
                        int first_expert_in_global, const TensorView& global,
                        const TensorView& local, bool to_global) const {
  if (!p.expert_shard) return BadArgument("p", p.name, "an expert shard");
  if (!global.device().is_cpu() || !local.device().is_cpu()) {
    return absl::FailedPreconditionError(
        absl::StrCat("expert shards of ", p.name, " are copied on the host only"));
  }
  MOE_RETURN_IF_ERROR(
      CheckTensor("local", local, p.master.dtype(), Device::Cpu(), p.master.shape()));
  MOE_RETURN_IF_ERROR(CheckContiguous("local", local));
  MOE_RETURN_IF_ERROR(CheckContiguous("global", global));
  const int kept = 3 - p.ffn_axis;  // the axis that is not H (M)
  if (global.dtype() != local.dtype() || global.rank() != 3 ||
      global.dim(kept) != local.dim(kept) ||
      global.dim(p.ffn_axis) != local.dim(p.ffn_axis) * layout.shards ||
      first_expert_in_global > layout.first_expert ||
      global.dim(0) < layout.first_expert - first_expert_in_global + local.dim(0)) {
    return BadArgument("global", global.shape().ToString(),
                       absl::StrCat("the global shape of ", p.name));
  }
  // Global [E, D1, D2], local [E_l, d1, d2] with d_a = D_a / s along the H axis a, offset j d_a.
  const int64_t el = local.dim(0), d1 = local.dim(1), d2 = local.dim(2);
  const int64_t big1 = global.dim(1), big2 = global.dim(2);
  const int64_t off1 = p.ffn_axis == 1 ? layout.shard * d1 : 0;
  const int64_t off2 = p.ffn_axis == 2 ? layout.shard * d2 : 0;
  const size_t elem = DTypeSize(local.dtype());
  char* g = static_cast<char*>(global.data());
  char* l = static_cast<char*>(local.data());
  for (int64_t e = 0; e < el; ++e) {
    for (int64_t a = 0; a < d1; ++a) {
      const int64_t gi =
          ((layout.first_expert - first_expert_in_global + e) * big1 + off1 + a) * big2 + off2;
      const int64_t li = (e * d1 + a) * d2;
      char* gp = g + gi * elem;
      char* lp = l + li * elem;
      if (to_global) {
        std::memcpy(gp, lp, d2 * elem);
      } else {
        std::memcpy(lp, gp, d2 * elem);
      }
    }
  }
  return absl::OkStatus();
}

Status Model::ShardOf(const ModelParam& p, const TensorView& global,
                      const TensorView& local) const {
  MOE_RETURN_IF_ERROR(
      CheckTensor("global", global, p.master.dtype(), Device::Cpu(), GlobalShape(p)));
  return CopyShard(p, layout_, 0, global, local, /*to_global=*/false);
}

Status Model::ShardOf(ExecContext& ctx, const ModelParam& p, const TensorView& global,
                      const TensorView& local) const {
  MOE_RETURN_IF_ERROR(
      CheckTensor("global", global, p.master.dtype(), Device::Cpu(), GlobalShape(p)));
  return CopyShardStaged(ctx, p, layout_, 0, global, local, /*to_global=*/false);
}

Status Model::CopyShardStaged(ExecContext& ctx, const ModelParam& p,
                              const ExpertShardLayout& layout, int first_expert_in_global,
                              const TensorView& global, const TensorView& local,
                              bool to_global) const {
  if (global.device().is_cpu() && local.device().is_cpu()) {
    return CopyShard(p, layout, first_expert_in_global, global, local, to_global);
  }
  for (const TensorView* t : {&global, &local}) {
    if (!t->device().is_cpu() && t->device() != ctx.device()) {
      return BadArgument(t == &global ? "global.device" : "local.device", t->device().ToString(),
                         absl::StrCat("cpu or ctx's device ", ctx.device().ToString()));
    }
  }
  // Host copies of the device tensors (Copy to the host synchronizes, so they are ready).
  Tensor global_host, local_host;
  TensorView g = global, l = local;
  if (!global.device().is_cpu()) {
    MOE_ASSIGN_OR_RETURN(global_host, CopyTo(ctx, global, Device::Cpu()));
    g = global_host.view();
  }
  if (!local.device().is_cpu()) {
    MOE_ASSIGN_OR_RETURN(local_host, CopyTo(ctx, local, Device::Cpu()));
    l = local_host.view();
  }
  MOE_RETURN_IF_ERROR(CopyShard(p, layout, first_expert_in_global, g, l, to_global));
  const TensorView& dst = to_global ? global : local;
  if (dst.device().is_cpu()) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(Copy(ctx, to_global ? g : l, dst));
  // The copy reads host memory freed on return.
  return ctx.Synchronize();
}

Status Model::GatherShards(ExecContext& ctx, const ModelParam& p, const TensorView& local,
                           const TensorView& global) const {
  MOE_RETURN_IF_ERROR(
      CheckTensor("global", global, p.master.dtype(), Device::Cpu(), GlobalShape(p)));
  const int64_t n = p.master.numel();
  MOE_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty({world_ * n}, p.master.dtype(), Device::Cpu()));
  const TensorView in(local.data(), local.dtype(), {n}, local.device());
  MOE_RETURN_IF_ERROR(comm_->AllGather(ctx, in, all));
  for (int rank = 0; rank < world_; ++rank) {
    MOE_ASSIGN_OR_RETURN(
        const ExpertShardLayout layout,
        MakeExpertShardLayout(spec_.moe.num_experts, world_, rank, spec_.moe.ffn_dim));
    const TensorView piece(static_cast<char*>(all.data()) + rank * n * DTypeSize(all.dtype()),
                           all.dtype(), p.master.shape(), Device::Cpu());
    MOE_RETURN_IF_ERROR(CopyShard(p, layout, 0, global, piece, /*to_global=*/true));
  }
  return absl::OkStatus();
}

int64_t Model::GlobalNumel(const ModelParam& p) const {
  return p.master.numel() * (p.expert_shard ? world_ : 1);
}

Status Model::SetTopK(int layer, int k) {
  if (layer < 0 || layer >= spec_.num_layers) {
    return BadArgument("layer", absl::StrCat(layer), absl::StrCat("[0, ", spec_.num_layers, ")"));
  }
  if (k < 1 || k > spec_.moe.num_experts) {
    return BadArgument("top_k", absl::StrCat(k),
                       absl::StrCat("1 <= top_k <= num_experts = ", spec_.moe.num_experts));
  }
  layers_[layer].moe_config.top_k = k;
  return absl::OkStatus();
}

int Model::TopK(int layer) const { return layers_[layer].moe_config.top_k; }

DiffQkvParams Model::AttentionParams(const Layer& L, bool grads) {
  auto view = [&](int index) {
    if (index < 0) return TensorView();
    return grads ? P(index).grad.view() : P(index).compute.view();
  };
  return DiffQkvParams{view(L.w_q),
                       view(L.w_k),
                       view(L.w_v),
                       view(L.w_o),
                       AugQWeights{view(L.aug_gate), view(L.aug_up), view(L.aug_down)},
                       view(L.q_norm),
                       view(L.k_norm)};
}

StatusOr<ModelLoss> Model::ForwardBackward(ExecContext& ctx, const TensorView& ids,
                                           const TensorView& targets, int64_t batch,
                                           int64_t seq_len, float grad_scale) {
  MOE_ASSIGN_OR_RETURN(Tensor sums, Tensor::Empty({StepScalarCount()}, DType::kF32, device_));
  MOE_RETURN_IF_ERROR(Fill(ctx, sums, 0.0));
  MOE_RETURN_IF_ERROR(
      ForwardBackwardAccumulate(ctx, ids, targets, batch, seq_len, grad_scale, 1.0f, sums));
  MOE_ASSIGN_OR_RETURN(Tensor host, CopyTo(ctx, sums, Device::Cpu()));  // the one read
  const StepScalars scalars = ReadStepScalars(host.data<float>());
  for (size_t l = 0; l < layers_.size(); ++l) last_aux_[l] = scalars.layer_aux[l];
  return ModelLoss{scalars.loss, scalars.aux_total};
}

int64_t Model::StepScalarCount() const {
  return 2 + kAuxLossValues * static_cast<int64_t>(layers_.size());
}

Model::StepScalars Model::ReadStepScalars(const float* sums) const {
  StepScalars out;
  out.loss = sums[0];
  out.aux_total = sums[1];
  out.layer_aux.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const float* a = sums + 2 + kAuxLossValues * l;
    out.layer_aux[l] = AuxLossValues{a[0], a[1], a[2], a[3]};
  }
  return out;
}

Status Model::ForwardBackwardAccumulate(ExecContext& ctx, const TensorView& ids,
                                        const TensorView& targets, int64_t batch, int64_t seq_len,
                                        float grad_scale, float weight, const TensorView& sums) {
  const int64_t t = batch * seq_len;
  MOE_RETURN_IF_ERROR(CheckTensor("targets", targets, DType::kI32, device_, {t}));
  MOE_RETURN_IF_ERROR(CheckTensor("sums", sums, DType::kF32, device_, {StepScalarCount()}));
  ForwardState state;
  Tensor dlogits;
  {
    SyncLedger::Scope forward = SyncLedger::Charge(sync_ledger_, SyncLedger::Phase::kForward);
    MOE_RETURN_IF_ERROR(Forward(ctx, ids, batch, seq_len, /*training=*/true, &state));
    const OpScope head(OpKind::kHead);
    MOE_ASSIGN_OR_RETURN(dlogits, Tensor::Empty({t, spec_.vocab_size}, DType::kF32, device_));
    MOE_ASSIGN_OR_RETURN(Tensor loss, Tensor::Empty({1}, DType::kF32, device_));
    MOE_RETURN_IF_ERROR(
        CrossEntropyForwardBackwardAsync(ctx, state.logits, targets, grad_scale, dlogits, loss));
    // The step's scalars stay on the device: sums += weight * (loss, aux total, layers' values).
    auto slice = [&](int64_t begin, int64_t n) {
      return TensorView(sums.data<float>() + begin, DType::kF32, {n}, device_);
    };
    MOE_RETURN_IF_ERROR(Axpy(ctx, slice(0, 1), weight, loss, slice(0, 1)));
    for (size_t l = 0; l < layers_.size(); ++l) {
      if (!layers_[l].moe) continue;
      const Tensor& values = RoutedState(static_cast<int>(l)).aux_values;
      const TensorView total(values.data<float>() + 3, DType::kF32, {1}, device_);
      MOE_RETURN_IF_ERROR(Axpy(ctx, slice(1, 1), weight, total, slice(1, 1)));
      const TensorView layer = slice(2 + kAuxLossValues * static_cast<int64_t>(l), kAuxLossValues);
      MOE_RETURN_IF_ERROR(Axpy(ctx, layer, weight, values, layer));
    }
  }
  {
    SyncLedger::Scope backward = SyncLedger::Charge(sync_ledger_, SyncLedger::Phase::kBackward);
    MOE_RETURN_IF_ERROR(Backward(ctx, ids, state, dlogits, grad_scale));
  }
  if (sync_ledger_ != nullptr) sync_ledger_->AddMicroBatch();
  return absl::OkStatus();
}

StatusOr<double> Model::Loss(ExecContext& ctx, const TensorView& ids, const TensorView& targets,
                             int64_t batch, int64_t seq_len) {
  MOE_RETURN_IF_ERROR(CheckTensor("targets", targets, DType::kI32, device_, {batch * seq_len}));
  ForwardState state;
  MOE_RETURN_IF_ERROR(Forward(ctx, ids, batch, seq_len, /*training=*/false, &state));
  return CrossEntropyLoss(ctx, state.logits, targets);
}

StatusOr<Tensor> Model::LastLogits(ExecContext& ctx, const TensorView& ids, int64_t batch,
                                   int64_t seq_len) {
  ForwardState state;
  MOE_RETURN_IF_ERROR(Forward(ctx, ids, batch, seq_len, /*training=*/false, &state));
  MOE_ASSIGN_OR_RETURN(Tensor host, CopyTo(ctx, state.logits, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor last,
                       Tensor::Empty({batch, spec_.vocab_size}, DType::kF32, Device::Cpu()));
  for (int64_t b = 0; b < batch; ++b) {
    const float* row = host.data<float>() + ((b + 1) * seq_len - 1) * spec_.vocab_size;
    std::copy(row, row + spec_.vocab_size, last.data<float>() + b * spec_.vocab_size);
  }
  return last;
}

StatusOr<Tensor> Model::BlockForward(ExecContext& ctx, int l, Pass pass, KvCache* cache,
                                     const MoELayerConfig& moe_config, MoEState* moe_state,
                                     ParallelMoEState* parallel_state, const Tensor& h_in,
                                     int64_t batch, int64_t seq_len, Activations* s) {
  const Layer& L = layers_[l];
  const int64_t t = batch * seq_len, m = spec_.model_dim;
  const DType dt = spec_.dtype;
  const Device dev = device_;
  const Shape tokens{t, m};
  const Shape bsm{batch, seq_len, m};
  auto empty = [&](Shape shape, DType dtype) { return Tensor::Empty(shape, dtype, dev); };
  auto as_bsm = [&](const Tensor& x) { return TensorView(x.data(), x.dtype(), bsm, dev); };

  s->seq_len = seq_len;
  s->h_in = h_in;
  std::optional<OpScope> scope(std::in_place, OpKind::kNorms);
  MOE_ASSIGN_OR_RETURN(s->n1, empty(tokens, dt));
  MOE_ASSIGN_OR_RETURN(s->rstd1, empty({t}, DType::kF32));
  MOE_RETURN_IF_ERROR(
      RMSNormForward(ctx, s->h_in, P(L.attn_norm).compute, spec_.norm_eps, s->n1, s->rstd1));
  scope.emplace(OpKind::kAttention);
  MOE_ASSIGN_OR_RETURN(Tensor attn_out, empty(tokens, dt));
  if (pass == Pass::kDecode) {
    MOE_RETURN_IF_ERROR(DiffQkvDecodeStep(ctx, spec_.attention, AttentionParams(L), as_bsm(s->n1),
                                          cache, as_bsm(attn_out)));
  } else {
    MOE_RETURN_IF_ERROR(DiffQkvForward(ctx, spec_.attention, AttentionParams(L), as_bsm(s->n1),
                                       as_bsm(attn_out), &s->attn));
    if (pass == Pass::kPrefill) MOE_RETURN_IF_ERROR(DiffQkvPrefillCache(ctx, s->attn, cache));
  }
  scope.emplace(OpKind::kNorms);
  MOE_ASSIGN_OR_RETURN(s->h_mid, empty(tokens, dt));
  MOE_RETURN_IF_ERROR(Axpy(ctx, s->h_in, 1.0f, attn_out, s->h_mid));
  MOE_ASSIGN_OR_RETURN(s->n2, empty(tokens, dt));
  MOE_ASSIGN_OR_RETURN(s->rstd2, empty({t}, DType::kF32));
  MOE_RETURN_IF_ERROR(
      RMSNormForward(ctx, s->h_mid, P(L.ffn_norm).compute, spec_.norm_eps, s->n2, s->rstd2));
  MOE_ASSIGN_OR_RETURN(Tensor ffn_out, empty(tokens, dt));
  scope.reset();  // the MoE layer marks its own phases
  if (L.moe) {
    MOE_RETURN_IF_ERROR(MoELayerForward(ctx, l, pass == Pass::kTrain, moe_config, moe_state,
                                        parallel_state, s->n2, ffn_out));
  } else {
    const OpScope experts(OpKind::kExperts);
    const int64_t hd = spec_.dense_ffn_dim;
    MOE_ASSIGN_OR_RETURN(s->dense_h1, empty({t, hd}, dt));
    MOE_ASSIGN_OR_RETURN(s->dense_h3, empty({t, hd}, dt));
    MOE_ASSIGN_OR_RETURN(s->dense_act, empty({t, hd}, dt));
    const int64_t offsets[2] = {0, t};
    MOE_RETURN_IF_ERROR(ExpertsForward(ctx, {P(L.w1).compute, P(L.w3).compute, P(L.w2).compute},
                                       s->n2, offsets, {s->dense_h1, s->dense_h3, s->dense_act},
                                       ffn_out));
  }
  scope.emplace(OpKind::kNorms);
  MOE_ASSIGN_OR_RETURN(Tensor h_out, empty(tokens, dt));
  MOE_RETURN_IF_ERROR(Axpy(ctx, s->h_mid, 1.0f, ffn_out, h_out));
  return h_out;
}

StatusOr<Tensor> Model::Head(ExecContext& ctx, const Tensor& h, Tensor* nf, Tensor* rstd) {
  const OpScope scope(OpKind::kHead);
  const int64_t t = h.dim(0);
  MOE_ASSIGN_OR_RETURN(*nf, Tensor::Empty({t, spec_.model_dim}, spec_.dtype, device_));
  MOE_ASSIGN_OR_RETURN(*rstd, Tensor::Empty({t}, DType::kF32, device_));
  MOE_RETURN_IF_ERROR(RMSNormForward(ctx, h, P(final_norm_).compute, spec_.norm_eps, *nf, *rstd));
  // LM head in fp32 output: logits = nf E^T (tied) or nf W_head.
  const bool tied = spec_.tie_embeddings;
  const Tensor& head = tied ? P(embedding_).compute : P(lm_head_).compute;
  MOE_ASSIGN_OR_RETURN(Tensor logits, Tensor::Empty({t, spec_.vocab_size}, DType::kF32, device_));
  MOE_RETURN_IF_ERROR(Gemm(ctx, *nf, head, logits, {false, tied}));
  return logits;
}

StatusOr<Tensor> Model::Prefill(ExecContext& ctx, const TensorView& ids, int64_t batch,
                                int64_t seq_len, int64_t capacity, DecodeState* state) {
  if (batch <= 0) return BadArgument("batch", absl::StrCat(batch), "> 0");
  if (seq_len <= 0) return BadArgument("seq_len", absl::StrCat(seq_len), "> 0");
  if (capacity < seq_len) {
    return BadArgument("capacity", absl::StrCat(capacity), absl::StrCat(">= seq_len = ", seq_len));
  }
  MOE_RETURN_IF_ERROR(CheckTensor("ids", ids, DType::kI32, device_, {batch * seq_len}));
  const DiffQkvConfig& a = spec_.attention;
  const bool reuse = state->caches.size() == layers_.size() && state->batch() == batch &&
                     state->capacity() == capacity;
  if (reuse) {
    for (KvCache& cache : state->caches) cache.Clear();
  } else {
    state->caches.clear();
    for (size_t l = 0; l < layers_.size(); ++l) {
      MOE_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(ctx, batch, capacity, a.n_k, a.n_v,
                                                          a.head_dim, spec_.dtype));
      state->caches.push_back(std::move(cache));
    }
  }
  return InferenceForward(ctx, ids, batch, seq_len, Pass::kPrefill, state);
}

StatusOr<Tensor> Model::DecodeStep(ExecContext& ctx, const TensorView& ids, DecodeState* state) {
  const int64_t batch = state->batch();
  if (state->caches.size() != layers_.size() || batch <= 0) {
    return BadArgument("state", absl::StrCat(state->caches.size(), " caches of batch ", batch),
                       absl::StrCat(layers_.size(), " caches filled by Prefill"));
  }
  if (state->length() >= state->capacity()) {
    return BadArgument("state.length", absl::StrCat(state->length()),
                       absl::StrCat("< capacity = ", state->capacity(), " (the caches are full)"));
  }
  MOE_RETURN_IF_ERROR(CheckTensor("ids", ids, DType::kI32, device_, {batch}));
  return InferenceForward(ctx, ids, batch, 1, Pass::kDecode, state);
}

StatusOr<Tensor> Model::InferenceForward(ExecContext& ctx, const TensorView& ids, int64_t batch,
                                         int64_t seq_len, Pass pass, DecodeState* state) {
  const int64_t t = batch * seq_len;
  MOE_ASSIGN_OR_RETURN(Tensor h, Tensor::Empty({t, spec_.model_dim}, spec_.dtype, device_));
  MOE_RETURN_IF_ERROR(EmbeddingForward(ctx, ids, P(embedding_).compute, h));
  for (size_t l = 0; l < layers_.size(); ++l) {
    MoELayerConfig moe_config = layers_[l].moe_config;
    moe_config.capacity_factor = 0.0f;
    // Scratch: the training state (moe_states_, read by MoEStats) is left as it was.
    MoEState moe_state;
    ParallelMoEState parallel_state;
    Activations s;
    MOE_ASSIGN_OR_RETURN(
        h, BlockForward(ctx, static_cast<int>(l), pass, &state->caches[l], moe_config, &moe_state,
                        &parallel_state, h, batch, seq_len, &s));
  }
  // Only the last position of each sequence is needed: the final norm and head act per row.
  Tensor last = h;
  if (seq_len > 1) {
    MOE_ASSIGN_OR_RETURN(last, Tensor::Empty({batch, spec_.model_dim}, spec_.dtype, device_));
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = (b + 1) * seq_len - 1;
      MOE_RETURN_IF_ERROR(Copy(ctx, h.view().Rows(row, row + 1), last.view().Rows(b, b + 1)));
    }
  }
  Tensor nf, rstd;
  MOE_ASSIGN_OR_RETURN(Tensor logits, Head(ctx, last, &nf, &rstd));
  return CopyTo(ctx, logits, Device::Cpu());
}

Status Model::MoELayerForward(ExecContext& ctx, int l, bool training, const MoELayerConfig& config,
                              MoEState* state, ParallelMoEState* parallel_state,
                              const TensorView& x, const TensorView& y) {
  const Layer& L = layers_[l];
  const MoEParamViews views{P(L.router).compute, P(L.w1).compute, P(L.w3).compute, P(L.w2).compute};
  if (!distributed()) {
    // The aux values stay on the device (state->aux_values): the offsets are the one sync.
    return MoEForwardDeferAux(ctx, config, views, x, y, state, nullptr, L.expert_bias);
  }
  const bool timed = training && measured_[l];
  StreamTimer timer = StreamTimer::For(ctx);
  if (timed) MOE_RETURN_IF_ERROR(timer.Start());
  // Returns the values on the host as well (a sync); they are also in parallel_state->local.
  MOE_RETURN_IF_ERROR(ParallelMoEForward(ctx, config, views, x, y, parallel_state, *exchanger_,
                                         modes_[l], comm_, L.expert_bias, shard_groups_.get())
                          .status());
  if (timed) {
    MOE_ASSIGN_OR_RETURN(const double ms, timer.StopMs());
    moe_ms_[l] += ms;
  }
  if (training) {
    const std::vector<int64_t>& offsets = parallel_state->local.plan.offsets_host;
    for (size_t e = 0; e + 1 < offsets.size(); ++e) {
      moe_max_rows_[l] = std::max(moe_max_rows_[l], offsets[e + 1] - offsets[e]);
    }
  }
  return absl::OkStatus();
}

Status Model::MoELayerBackward(ExecContext& ctx, int l, const TensorView& dy, const TensorView& dx,
                               float grad_scale) {
  const Layer& L = layers_[l];
  const MoEParamViews views{P(L.router).compute, P(L.w1).compute, P(L.w3).compute, P(L.w2).compute};
  const MoEGradViews grads{P(L.router).grad, P(L.w1).grad, P(L.w3).grad, P(L.w2).grad};
  if (!distributed()) {
    return MoEBackward(ctx, L.moe_config, views, moe_states_[l], dy, dx, grads,
                       /*accumulate_grads=*/true, grad_scale);
  }
  StreamTimer timer = StreamTimer::For(ctx);
  if (measured_[l]) MOE_RETURN_IF_ERROR(timer.Start());
  MOE_RETURN_IF_ERROR(ParallelMoEBackward(ctx, L.moe_config, views, parallel_states_[l], dy, dx,
                                          grads, /*accumulate_grads=*/true, grad_scale));
  if (measured_[l]) {
    MOE_ASSIGN_OR_RETURN(const double ms, timer.StopMs());
    moe_ms_[l] += ms;
  }
  return absl::OkStatus();
}

Status Model::Forward(ExecContext& ctx, const TensorView& ids, int64_t batch, int64_t seq_len,
                      bool training, ForwardState* state) {
  const int64_t t = batch * seq_len;
  MOE_RETURN_IF_ERROR(CheckTensor("ids", ids, DType::kI32, device_, {t}));
  MOE_ASSIGN_OR_RETURN(Tensor h, Tensor::Empty({t, spec_.model_dim}, spec_.dtype, device_));
  {
    const OpScope scope(OpKind::kHead);
    MOE_RETURN_IF_ERROR(EmbeddingForward(ctx, ids, P(embedding_).compute, h));
  }
  state->blocks.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    MOE_ASSIGN_OR_RETURN(
        h, BlockForward(ctx, static_cast<int>(l), training ? Pass::kTrain : Pass::kFull, nullptr,
                        layers_[l].moe_config, &moe_states_[l], &parallel_states_[l], h, batch,
                        seq_len, &state->blocks[l]));
  }
  state->h = h;
  MOE_ASSIGN_OR_RETURN(state->logits, Head(ctx, h, &state->nf, &state->rstd));
  return absl::OkStatus();
}

Status Model::Backward(ExecContext& ctx, const TensorView& ids, const ForwardState& state,
                       const Tensor& dlogits, float grad_scale) {
  const int64_t t = state.h.dim(0);
  const DType dt = spec_.dtype;
  std::optional<OpScope> scope(std::in_place, OpKind::kHead);
  Tensor dlogits_c = dlogits;
  if (dt != DType::kF32) {
    MOE_ASSIGN_OR_RETURN(dlogits_c, Tensor::Empty(dlogits.shape(), dt, device_));
    MOE_RETURN_IF_ERROR(Cast(ctx, dlogits, dlogits_c));
  }
  // logits = nf E^T (tied) or nf W_head.
  const bool tied = spec_.tie_embeddings;
  ModelParam& head = tied ? P(embedding_) : P(lm_head_);
  MOE_ASSIGN_OR_RETURN(Tensor dnf, Tensor::Empty({t, spec_.model_dim}, dt, device_));
  MOE_RETURN_IF_ERROR(Gemm(ctx, dlogits_c, head.compute, dnf, {false, !tied}));
  if (tied) {
    MOE_RETURN_IF_ERROR(Gemm(ctx, dlogits_c, state.nf, head.grad, {true, false, 1.0f, 1.0f}));
  } else {
    MOE_RETURN_IF_ERROR(Gemm(ctx, state.nf, dlogits_c, head.grad, {true, false, 1.0f, 1.0f}));
  }
  MOE_ASSIGN_OR_RETURN(Tensor dh, Tensor::Empty({t, spec_.model_dim}, dt, device_));
  MOE_RETURN_IF_ERROR(RMSNormBackward(ctx, state.h, P(final_norm_).compute, state.rstd, dnf, dh,
                                      P(final_norm_).grad));
  scope.reset();
  for (int l = static_cast<int>(layers_.size()) - 1; l >= 0; --l) {
    MOE_ASSIGN_OR_RETURN(dh, BlockBackward(ctx, l, state.blocks[l], dh, grad_scale));
  }
  scope.emplace(OpKind::kHead);
  return EmbeddingBackward(ctx, ids, dh, P(embedding_).grad);
}

StatusOr<Tensor> Model::BlockBackward(ExecContext& ctx, int l, const Activations& s,
                                      const Tensor& dh_out, float grad_scale) {
  Layer& L = layers_[l];
  const int64_t t = dh_out.dim(0), m = spec_.model_dim;
  const Shape bsm{t / s.seq_len, s.seq_len, m};
  const DType dt = spec_.dtype;
  auto empty = [&]() { return Tensor::Empty({t, m}, dt, device_); };
  auto as_bsm = [&](const Tensor& x) { return TensorView(x.data(), x.dtype(), bsm, device_); };

  // h_out = h_mid + FFN(norm(h_mid))
  MOE_ASSIGN_OR_RETURN(Tensor dn2, empty());
  if (L.moe) {
    MOE_RETURN_IF_ERROR(MoELayerBackward(ctx, l, dh_out, dn2, grad_scale));
  } else {
    const OpScope experts(OpKind::kExperts);
    const int64_t offsets[2] = {0, t};
    MOE_RETURN_IF_ERROR(ExpertsBackward(ctx, {P(L.w1).compute, P(L.w3).compute, P(L.w2).compute},
                                        s.n2, offsets, {s.dense_h1, s.dense_h3, s.dense_act},
                                        dh_out, dn2, {P(L.w1).grad, P(L.w3).grad, P(L.w2).grad},
                                        /*accumulate=*/true));
  }
  std::optional<OpScope> scope(std::in_place, OpKind::kNorms);
  MOE_ASSIGN_OR_RETURN(Tensor dh_mid, empty());
  MOE_RETURN_IF_ERROR(RMSNormBackward(ctx, s.h_mid, P(L.ffn_norm).compute, s.rstd2, dn2, dh_mid,
                                      P(L.ffn_norm).grad));
  MOE_RETURN_IF_ERROR(Axpy(ctx, dh_mid, 1.0f, dh_out, dh_mid));
  // h_mid = h_in + Attention(norm(h_in))
  scope.emplace(OpKind::kAttention);
  MOE_ASSIGN_OR_RETURN(Tensor dn1, empty());
  MOE_RETURN_IF_ERROR(DiffQkvBackward(ctx, spec_.attention, AttentionParams(L), as_bsm(s.n1),
                                      s.attn, as_bsm(dh_mid), as_bsm(dn1),
                                      AttentionParams(L, /*grads=*/true)));
  scope.emplace(OpKind::kNorms);
  MOE_ASSIGN_OR_RETURN(Tensor dh_in, empty());
  MOE_RETURN_IF_ERROR(RMSNormBackward(ctx, s.h_in, P(L.attn_norm).compute, s.rstd1, dn1, dh_in,
                                      P(L.attn_norm).grad));
  MOE_RETURN_IF_ERROR(Axpy(ctx, dh_in, 1.0f, dh_mid, dh_in));
  return dh_in;
}

const MoEState& Model::RoutedState(int l) const {
  return distributed() ? parallel_states_[l].local : moe_states_[l];
}

Status Model::UpdateExpertBiases(ExecContext& ctx) {
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& layer = layers_[l];
    const MoEState& state = RoutedState(static_cast<int>(l));
    if (!layer.expert_bias.defined() || !state.valid) continue;
    MOE_RETURN_IF_ERROR(CountExperts(ctx, state.topk_idx, layer.expert_counts));
    // The world's counts, so every rank's bias moves identically (and as on one rank).
    MOE_RETURN_IF_ERROR(comm_->AllReduceSum(ctx, layer.expert_counts));
    MOE_RETURN_IF_ERROR(UpdateExpertBias(ctx, layer.expert_counts, spec_.bias_update_rate,
                                         spec_.bias_bound, layer.expert_bias));
  }
  return absl::OkStatus();
}

std::vector<std::pair<std::string, TensorView>> Model::Buffers() const {
  std::vector<std::pair<std::string, TensorView>> buffers;
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!layers_[l].expert_bias.defined()) continue;
    buffers.emplace_back(absl::StrCat("layers.", l, ".moe.expert_bias"), layers_[l].expert_bias);
  }
  return buffers;
}

StatusOr<std::vector<double>> Model::ExpertBiasMaxAbs(ExecContext& ctx) const {
  SyncLedger::Scope charge = SyncLedger::Charge(sync_ledger_, SyncLedger::Phase::kStats);
  std::vector<double> max_abs(layers_.size(), -1.0);
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!layers_[l].expert_bias.defined()) continue;
    MOE_ASSIGN_OR_RETURN(Tensor host, CopyTo(ctx, layers_[l].expert_bias, Device::Cpu()));
    const float* b = host.data<float>();
    double m = 0.0;
    for (int64_t i = 0; i < host.numel(); ++i) m = std::max(m, std::fabs(double(b[i])));
    max_abs[l] = m;
  }
  return max_abs;
}

StatusOr<std::vector<RoutingStats>> Model::MoEStats(ExecContext& ctx) const {
  SyncLedger::Scope charge = SyncLedger::Charge(sync_ledger_, SyncLedger::Phase::kStats);
  std::vector<RoutingStats> stats(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!layers_[l].moe) continue;
    MOE_ASSIGN_OR_RETURN(stats[l], smoe::MoEStats(ctx, RoutedState(static_cast<int>(l))));
  }
  return stats;
}

int64_t Model::NumParameters() const {
  int64_t total = 0;
  for (const ModelParam& p : params_) total += GlobalNumel(p);
  return total;
}

int64_t Model::NumActivatedParameters() const {
  int64_t total = NumParameters();
  for (const Layer& L : layers_) {
    if (!L.moe) continue;
    const int64_t e = L.moe_config.num_experts, k = L.moe_config.top_k;
    const int64_t per_expert = GlobalNumel(P(L.w1)) / e * 3;
    total -= (e - k) * per_expert;
  }
  return total;
}

double Model::FlopsPerToken(int64_t seq_len) const {
  // 2 FLOPs per multiply-add, x3 for forward + backward (input and weight gradients).
  const DiffQkvConfig& a = spec_.attention;
  double matmul_params = static_cast<double>(spec_.vocab_size) * spec_.model_dim;  // LM head
  double attention_scores = 0.0;
  for (const Layer& L : layers_) {
    for (int index : {L.w_q, L.w_k, L.w_v, L.w_o, L.aug_gate, L.aug_up, L.aug_down}) {
      if (index >= 0) matmul_params += static_cast<double>(P(index).master.numel());
    }
    if (L.moe) {
      const int64_t e = L.moe_config.num_experts;
      matmul_params += static_cast<double>(P(L.router).master.numel());
      matmul_params += static_cast<double>(GlobalNumel(P(L.w1))) / e * 3 * L.moe_config.top_k;
    } else {
      matmul_params += 3.0 * static_cast<double>(P(L.w1).master.numel());
    }
    // q.k and p.v over the causal half of the sequence on average: 2 * 2 * n_q * D * S / 2.
    attention_scores += 2.0 * a.n_q * a.head_dim * static_cast<double>(seq_len);
  }
  return 3.0 * (2.0 * matmul_params + attention_scores);
}

}  // namespace smoe
