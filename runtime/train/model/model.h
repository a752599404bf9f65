// The language model that sigma-moe-train trains (docs/design.md section 8):
//   embedding -> L x [RMSNorm, DiffQKV attention, residual, RMSNorm, MoE (or dense SwiGLU),
//   residual]
//   -> RMSNorm -> LM head (tied to the embedding or not) -> cross-entropy (fp32) + the layers' aux
//   losses.
// Hand-written backward through the whole model.
//
// Parameters: each has an fp32 master copy (what AdamW updates), a compute copy in the model's
// dtype (the same tensor when that is f32), an f32 gradient and AdamW moments. RMSNorm gains and
// the router stay f32 in every dtype. Gradients accumulate: ZeroGrads, then any number of
// ForwardBackward calls (gradient accumulation), then the optimizer.
// Token ids and targets are device tensors [B * S] i32 (B sequences of S tokens).
//
// Multi-rank (Create with a communicator of W > 1 ranks; docs/design.md section 6): the W ranks are
// one data-parallel group and one MoE group. Every parameter is replicated except the MoE experts
// (moe/parallel_moe_layer.h ExpertShardLayout), in master, compute copy, gradient and moments of
// layers.<l>.moe.w1/w3/w2 (ModelParam::expert_shard): with E >= W rank g holds its E_l = E / W
// whole experts; with E < W (s = W / E ranks per expert) it holds shard j = g mod s of expert
// floor(g / s): w1, w3 [1, M, H / s] (columns j H / s .. of W1[e], W3[e]) and w2 [1, H / s, M]
// (the same rows of W2[e]). Init gives each rank exactly its slices of the single-rank init. Each
// MoE layer runs
// ParallelMoEForward/Backward in the mode set by SetParallelMode (every rank the same), so the
// expert gradients come back summed over ranks for the owned experts, while the replicated
// gradients are this rank's own (the trainer all-reduces them). Every call that runs a forward
// (ForwardBackward, Loss, LastLogits, Prefill, DecodeStep) is then a collective. CPU only: the
// MPI communicator takes host buffers. With W = 1 (or no communicator) nothing changes: the
// single-rank MoEForward path, bit for bit.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/diffqkv.h"
#include "attention/kv_cache.h"
#include "moe/adapt/parallel_mode.h"
#include "moe/moe_layer.h"
#include "moe/parallel_moe_layer.h"
#include "runtime/core/status.h"
#include "runtime/device/exec_context.h"
#include "runtime/tensor/tensor.h"
#include "runtime/train/model/sync_budget.h"

namespace smoe {

struct ModelSpec {
  int64_t vocab_size = 256;
  int64_t num_layers = 1;
  int64_t model_dim = 128;
  bool tie_embeddings = true;
  float norm_eps = 1e-6f;
  float init_std = 0.02f;
  DType dtype = DType::kF32;      // compute dtype (activations, compute copies)
  DiffQkvConfig attention;        // model_dim filled from model_dim
  MoELayerConfig moe;             // model_dim, dtype filled from the above
  std::vector<int> dense_layers;  // layers with a dense SwiGLU FFN instead of MoE
  int64_t dense_ffn_dim = 0;
  // Aux-loss-free balancing (moe/router/expert_load.h): each MoE layer keeps an expert bias [E]
  // f32 that enters top-K selection only; UpdateExpertBiases moves it by `bias_update_rate`
  // towards balance, within [-bias_bound, bias_bound]. 0 disables (no bias tensor).
  float bias_update_rate = 0.0f;
  float bias_bound = 0.0f;
};

struct ModelParam {
  std::string name;
  Tensor master;      // f32
  Tensor compute;     // model dtype (aliases master when that is f32), or f32 for gains/router
  Tensor grad;        // f32
  Tensor m, v;        // AdamW moments, f32
  bool decay = true;  // weight decay on matrices only
  // Multi-rank MoE experts: this rank's rows [first_expert, first_expert + E_l) along dim 0 of the
  // global [E, ...] tensor and, with s > 1 shards per expert, its H / s wide slice along
  // `ffn_axis` (the H axis: 2 for w1, w3 [E, M, H]; 1 for w2 [E, H, M]).
  bool expert_shard = false;
  int ffn_axis = 0;
};

// Incremental decoding state (Model::Prefill, Model::DecodeStep): one KV cache per layer holding
// the keys and values of B sequences of equal length.
struct DecodeState {
  std::vector<KvCache> caches;  // one per layer
  int64_t batch() const { return caches.empty() ? 0 : caches.front().batch(); }
  int64_t length() const { return caches.empty() ? 0 : caches.front().length(); }
  int64_t capacity() const { return caches.empty() ? 0 : caches.front().capacity(); }
};

struct ModelLoss {
  double loss = 0.0;       // mean cross-entropy over the tokens
  double aux_total = 0.0;  // sum over layers of the aux losses' weighted total
};

class Model {
 public:
  // `comm` (outlives the model): the ranks of a multi-rank run; null or one rank = single rank.
  // node_size: ranks per node for the 2dh all-to-all (divides W). InvalidArgument naming
  // model.moe.num_experts when E >= W is not a multiple of W or E < W does not divide W,
  // model.moe.ffn_dim when E < W and W / E does not divide H. With a CUDA device and W > 1, comm
  // must take device buffers (NCCL, or StagedCommunicator around MPI).
  [[nodiscard]] static StatusOr<std::unique_ptr<Model>> Create(const ModelSpec& spec, Device device,
                                                               Communicator* comm = nullptr,
                                                               int node_size = 1);
  ~Model();

  // Deterministic from the seed (Philox); master and compute copies and moments initialized.
  [[nodiscard]] Status Init(ExecContext& ctx, uint64_t seed);
  // Compute copies from masters (after loading masters from a checkpoint or an optimizer step).
  [[nodiscard]] Status SyncComputeCopies(ExecContext& ctx);
  [[nodiscard]] Status ZeroGrads(ExecContext& ctx);

  // Progressive sparsification: routes layer `layer` to k experts from the next forward on.
  [[nodiscard]] Status SetTopK(int layer, int k);
  int TopK(int layer) const;

  // Forward and backward over one micro-batch; gradients (of loss * grad_scale, aux included)
  // are added to the f32 grads. Host syncs: one per MoE layer (its expert offsets) and one to
  // read the loss and the aux values (LastAuxLosses) at the end.
  [[nodiscard]] StatusOr<ModelLoss> ForwardBackward(ExecContext& ctx, const TensorView& ids,
                                                    const TensorView& targets, int64_t batch,
                                                    int64_t seq_len, float grad_scale);
  // ForwardBackward for the training loop's sync budget (docs/design.md section 4): the loss and
  // the aux values stay on the device, added times `weight` into sums [StepScalarCount()] f32 on
  // the model's device: [0] the mean cross-entropy, [1] the layers' aux total, then per layer
  // (kAuxLossValues each) lbl, z_loss, top1_lbl, total (zeros for a dense layer). The caller zeroes
  // `sums` and reads it once per optimizer step (ReadStepScalars). Host syncs on one rank: one per
  // MoE layer forward (its expert offsets) and none in the backward; several ranks add the
  // parallel layer's own (moe/parallel_moe_layer.h). LastAuxLosses is not updated.
  [[nodiscard]] Status ForwardBackwardAccumulate(ExecContext& ctx, const TensorView& ids,
                                                 const TensorView& targets, int64_t batch,
                                                 int64_t seq_len, float grad_scale, float weight,
                                                 const TensorView& sums);
  int64_t StepScalarCount() const;
  struct StepScalars {
    double loss = 0.0, aux_total = 0.0;
    std::vector<AuxLossValues> layer_aux;  // per layer
  };
  // `sums` [StepScalarCount()] on the host, as ForwardBackwardAccumulate lays it out.
  StepScalars ReadStepScalars(const float* sums) const;
  // Forward only: the mean cross-entropy (evaluation).
  [[nodiscard]] StatusOr<double> Loss(ExecContext& ctx, const TensorView& ids,
                                      const TensorView& targets, int64_t batch, int64_t seq_len);
  // Logits [B, V] f32 (on the host) of the last position of each sequence, for sampling.
  [[nodiscard]] StatusOr<Tensor> LastLogits(ExecContext& ctx, const TensorView& ids, int64_t batch,
                                            int64_t seq_len);

  // Incremental decoding (inference: no gradients; the model's routing statistics are untouched).
  // Prefill runs the forward over ids [B * S] i32 on the model's device (B sequences of S >= 1
  // tokens, RoPE positions 0..S-1), (re)sets `state` to one KV cache per layer of `capacity` >= S
  // positions holding them (caches of the same B and capacity are reused), and returns the last
  // position's logits [B, V] f32 on the host.
  // DecodeStep feeds one more token per sequence, ids [B] i32 on the device, at position
  // state->length() (InvalidArgument "state.length" when the caches are full, or "state" when
  // Prefill has not filled it for B sequences) and returns its logits [B, V] f32 on the host.
  // Both give what LastLogits gives over the whole sequences so far (up to rounding: the attention
  // paths differ), except that MoE layers route dropless here (capacity_factor is ignored: at
  // inference a token's output must not depend on the other tokens of the batch). Top-k is each
  // layer's current one (SetTopK). Host syncs: one per MoE layer and the logits' copy.
  [[nodiscard]] StatusOr<Tensor> Prefill(ExecContext& ctx, const TensorView& ids, int64_t batch,
                                         int64_t seq_len, int64_t capacity, DecodeState* state);
  [[nodiscard]] StatusOr<Tensor> DecodeStep(ExecContext& ctx, const TensorView& ids,
                                            DecodeState* state);

  // Charges the host syncs of ForwardBackwardAccumulate (forward, backward, one micro-batch each)
  // and MoEStats to `ledger` from now on (null: none); the ledger outlives its use.
  void set_sync_ledger(SyncLedger* ledger) { sync_ledger_ = ledger; }

  // Routing statistics of every MoE layer's last forward (host sync); empty entries for dense
  // layers.
  [[nodiscard]] StatusOr<std::vector<RoutingStats>> MoEStats(ExecContext& ctx) const;
  // Aux-loss values of every layer's last ForwardBackward; zeros for dense layers.
  const std::vector<AuxLossValues>& LastAuxLosses() const { return last_aux_; }

  // One aux-loss-free balancing step (when spec.bias_update_rate > 0; a no-op otherwise): each MoE
  // layer's expert bias moves by the rate towards balancing the expert loads of its last training
  // forward. The trainer calls it once per optimizer step.
  [[nodiscard]] Status UpdateExpertBiases(ExecContext& ctx);
  // max_i |bias_i| of every layer's expert bias, for logging (host sync); -1 for layers without
  // one (dense layers, or bias_update_rate == 0).
  [[nodiscard]] StatusOr<std::vector<double>> ExpertBiasMaxAbs(ExecContext& ctx) const;
  // Model state that is not a parameter but must survive a checkpoint (the expert biases), by name.
  std::vector<std::pair<std::string, TensorView>> Buffers() const;

  // Multi-rank: the parallel mode of MoE layer `layer` from the next forward on (default
  // r1.d1.flat); every rank must set the same. Ignored on a single rank. `measure`: time the
  // layer's training forwards and backwards from now on (StreamTimer: on CUDA two stream syncs
  // each, so only while the adaptive controller explores).
  void SetParallelMode(int layer, const ParallelMode& mode, bool measure = false);
  const ParallelMode& parallel_mode(int layer) const { return modes_[layer]; }
  // Multi-rank, per layer, over the training forwards since ResetMoEProfile: milliseconds spent in
  // ParallelMoEForward + ParallelMoEBackward while measured (else 0), and the most rows any one
  // expert got from this rank's tokens (the plan). Zeros on a single rank.
  void ResetMoEProfile();
  const std::vector<double>& moe_ms() const { return moe_ms_; }
  const std::vector<int64_t>& moe_max_rows() const { return moe_max_rows_; }

  bool distributed() const { return world_ > 1; }
  int world() const { return world_; }
  Communicator* comm() const { return comm_; }
  // Which experts (or expert shard) this rank holds; E_l = E, s = 1 on a single rank.
  const ExpertShardLayout& layout() const { return layout_; }
  // The global shape of a parameter ([E, M, H] or [E, H, M] for expert shards).
  Shape GlobalShape(const ModelParam& p) const;
  // Expert shards; `global` on the host. ShardOf: `local` (p's local shape and dtype) = this
  // rank's slice of `global` (GlobalShape); without ctx `local` must be on the host
  // (FailedPrecondition otherwise), with ctx it may be on ctx's device (synchronizes ctx).
  // GatherShards (collective): `global` = every rank's `local` (host or device) put in place.
  [[nodiscard]] Status ShardOf(const ModelParam& p, const TensorView& global,
                               const TensorView& local) const;
  [[nodiscard]] Status ShardOf(ExecContext& ctx, const ModelParam& p, const TensorView& global,
                               const TensorView& local) const;
  [[nodiscard]] Status GatherShards(ExecContext& ctx, const ModelParam& p, const TensorView& local,
                                    const TensorView& global) const;

  std::vector<ModelParam>& params() { return params_; }
  const ModelSpec& spec() const { return spec_; }
  Device device() const { return device_; }
  bool is_moe_layer(int layer) const;
  // Counts are global (all ranks' experts).
  int64_t NumParameters() const;
  // Parameters a token touches: all but the unrouted experts (top-k of E per MoE layer).
  int64_t NumActivatedParameters() const;
  // Forward + backward FLOPs per token (matrix products: attention projections and scores,
  // router, experts at the current top-k, LM head), for MFU.
  double FlopsPerToken(int64_t seq_len) const;

 private:
  struct Layer;
  struct Activations;
  Model(const ModelSpec& spec, Device device);
  [[nodiscard]] Status AddParam(const std::string& name, Shape shape, DType compute_dtype,
                                bool decay, bool expert_shard = false, int ffn_axis = 0);
  int64_t GlobalNumel(const ModelParam& p) const;
  // Copies between the expert shard `local` (p's local shape) of the rank with `layout` and
  // `global` (host, [E', ...] holding the experts from first_expert_in_global on, full H), either
  // way.
  [[nodiscard]] Status CopyShard(const ModelParam& p, const ExpertShardLayout& layout,
                                 int first_expert_in_global, const TensorView& global,
                                 const TensorView& local, bool to_global) const;
  // CopyShard with `global` and `local` on the host or on ctx's device: device tensors go through
  // host copies (synchronizes ctx; for init and checkpoints only).
  [[nodiscard]] Status CopyShardStaged(ExecContext& ctx, const ModelParam& p,
                                       const ExpertShardLayout& layout, int first_expert_in_global,
                                       const TensorView& global, const TensorView& local,
                                       bool to_global) const;
  ModelParam& P(int index) { return params_[index]; }
  const ModelParam& P(int index) const { return params_[index]; }
  // The attention block's compute-dtype weights, or (grads) their f32 gradients.
  DiffQkvParams AttentionParams(const Layer& layer, bool grads = false);
  struct ForwardState;
  // How a block runs: over whole sequences for training (kTrain: the aux values are kept and
  // measured MoE layers timed) or evaluation (kFull), the same then storing its keys and values
  // into an empty cache (kPrefill), or one new token per sequence against the cache (kDecode,
  // seq_len 1).
  enum class Pass { kTrain, kFull, kPrefill, kDecode };
  // Block `l`'s forward over h_in [B * S, M]; `s` receives what its backward needs, the MoE layer
  // runs with `moe_config` into `moe_state` (multi-rank: `parallel_state`), which keep its aux-loss
  // values on the device. Returns h_out.
  [[nodiscard]] StatusOr<Tensor> BlockForward(ExecContext& ctx, int l, Pass pass, KvCache* cache,
                                              const MoELayerConfig& moe_config, MoEState* moe_state,
                                              ParallelMoEState* parallel_state, const Tensor& h_in,
                                              int64_t batch, int64_t seq_len, Activations* s);
  // Block `l`'s backward from dh_out [B * S, M] and the activations of its kTrain forward: returns
  // dh_in and adds the block's weight gradients (loss scaled by grad_scale).
  [[nodiscard]] StatusOr<Tensor> BlockBackward(ExecContext& ctx, int l, const Activations& s,
                                               const Tensor& dh_out, float grad_scale);
  // The one place that runs an MoE layer: the single-rank layer (one host sync, the offsets; the
  // aux values stay in state->aux_values), or on several ranks the parallel one in the layer's
  // mode (values in parallel_state->local.aux_values), timed while measured (training only).
  [[nodiscard]] Status MoELayerForward(ExecContext& ctx, int l, bool training,
                                       const MoELayerConfig& config, MoEState* state,
                                       ParallelMoEState* parallel_state, const TensorView& x,
                                       const TensorView& y);
  [[nodiscard]] Status MoELayerBackward(ExecContext& ctx, int l, const TensorView& dy,
                                        const TensorView& dx, float grad_scale);
  // The routing state of layer l's last training or evaluation forward.
  const MoEState& RoutedState(int l) const;
  // Final RMSNorm (into *nf, *rstd) and LM head: logits [T, V] f32 of h [T, M].
  [[nodiscard]] StatusOr<Tensor> Head(ExecContext& ctx, const Tensor& h, Tensor* nf, Tensor* rstd);
  // Embedding -> blocks (kTrain when training, else kFull, into the model's routing states) ->
  // head, keeping what Backward needs in *state.
  [[nodiscard]] Status Forward(ExecContext& ctx, const TensorView& ids, int64_t batch,
                               int64_t seq_len, bool training, ForwardState* state);
  // From dlogits [T, V] f32 back through the head, the blocks (BlockBackward) and the embedding,
  // adding to the f32 gradients.
  [[nodiscard]] Status Backward(ExecContext& ctx, const TensorView& ids, const ForwardState& state,
                                const Tensor& dlogits, float grad_scale);
  // Embedding -> blocks (kPrefill or kDecode with their caches) -> the last position's logits on
  // the host.
  [[nodiscard]] StatusOr<Tensor> InferenceForward(ExecContext& ctx, const TensorView& ids,
                                                  int64_t batch, int64_t seq_len, Pass pass,
                                                  DecodeState* state);

  ModelSpec spec_;
  Device device_;
  std::vector<ModelParam> params_;
  std::vector<Layer> layers_;
  std::vector<MoEState> moe_states_;
  Communicator* comm_ = nullptr;  // never null: SingleRankCommunicator() on one rank
  // Multi-rank.
  int world_ = 1;
  ExpertShardLayout layout_;
  std::unique_ptr<RowExchanger> exchanger_;
  std::unique_ptr<ExpertShardGroups> shard_groups_;  // over comm_, for the r | s slice groups
  std::vector<ParallelMoEState> parallel_states_;
  std::vector<ParallelMode> modes_;
  std::vector<bool> measured_;  // per layer: time the MoE layer (SetParallelMode)
  std::vector<double> moe_ms_;
  std::vector<int64_t> moe_max_rows_;
  std::vector<AuxLossValues> last_aux_;
  SyncLedger* sync_ledger_ = nullptr;
  int embedding_ = -1, final_norm_ = -1, lm_head_ = -1;
};

}  // namespace smoe
