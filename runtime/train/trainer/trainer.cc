#include "runtime/train/trainer/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/core/logging.h"
#include "runtime/core/philox.h"
#include "runtime/nn/adamw.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/checkpoint/checkpoint.h"
#include "runtime/train/data/batch_loader.h"
#include "runtime/train/data/dataset.h"

namespace smoe {
namespace {

using Clock = std::chrono::steady_clock;

// Tokens [begin, end) of another source: the held-out tail of a single file.
class RangeSource final : public TokenSource {
 public:
  RangeSource(std::unique_ptr<TokenSource> base, int64_t begin, int64_t end, std::string tag)
      : base_(std::move(base)), begin_(begin), end_(end), tag_(std::move(tag)) {}
  int64_t size() const override { return end_ - begin_; }
  int vocab_size() const override { return base_->vocab_size(); }
  std::string name() const override { return absl::StrCat(base_->name(), " (", tag_, ")"); }
  void Read(int64_t begin, int64_t n, int32_t* out) const override {
    base_->Read(begin_ + begin, n, out);
  }

 private:
  std::unique_ptr<TokenSource> base_;
  int64_t begin_, end_;
  std::string tag_;
};

struct DataSources {
  std::unique_ptr<TokenSource> train, heldout;
};

StatusOr<std::unique_ptr<TokenSource>> OpenFile(const proto::DataConfig& data,
                                                const std::string& path, int vocab) {
  if (data.kind() == proto::DataConfig::TEXT) return TextFileSource(path);
  return TokenFileSource(path, vocab);
}

StatusOr<DataSources> OpenData(const proto::RunConfig& config) {
  const proto::DataConfig& data = config.data();
  const int vocab = config.model().vocab_size();
  DataSources out;
  if (data.kind() == proto::DataConfig::SYNTHETIC) {
    const int64_t size = data.synthetic_size();
    MOE_ASSIGN_OR_RETURN(out.train, SyntheticSource(config.train().seed(), 0, size));
    MOE_ASSIGN_OR_RETURN(out.heldout, SyntheticSource(config.train().seed(), 1, std::max<int64_t>(size / 16, 1 << 16)));
  } else if (!data.heldout_path().empty()) {
    MOE_ASSIGN_OR_RETURN(out.train, OpenFile(data, data.path(), vocab));
    MOE_ASSIGN_OR_RETURN(out.heldout, OpenFile(data, data.heldout_path(), vocab));
  } else {
    // Hold out the last 5% of the one file (never read by the training windows).
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<TokenSource> a, OpenFile(data, data.path(), vocab));
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<TokenSource> b, OpenFile(data, data.path(), vocab));
    const int64_t size = a->size(), split = size - size / 20;
    out.train = std::make_unique<RangeSource>(std::move(a), 0, split, "train");
    out.heldout = std::make_unique<RangeSource>(std::move(b), split, size, "held-out tail");
  }
  if (out.train->vocab_size() > vocab) {
    return BadArgument("model.vocab_size", absl::StrCat(vocab),
                       absl::StrCat(">= ", out.train->vocab_size(), " (the data's vocabulary, ",
                                    out.train->name(), ")"));
  }
  return out;
}

// Entropy in nats of the token-unigram distribution of a source (the loss of a model that ignores
// context), read in chunks; logged at start so a run's held-out loss can be judged against it.
double UnigramEntropy(const TokenSource& source) {
  std::vector<int64_t> counts(source.vocab_size(), 0);
  std::vector<int32_t> chunk(1 << 16);
  for (int64_t begin = 0; begin < source.size(); begin += static_cast<int64_t>(chunk.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(chunk.size()), source.size() - begin);
    source.Read(begin, n, chunk.data());
    for (int64_t i = 0; i < n; ++i) ++counts[chunk[i]];
  }
  double entropy = 0.0;
  for (int64_t c : counts) {
    if (c > 0) {
      const double p = static_cast<double>(c) / source.size();
      entropy -= p * std::log(p);
    }
  }
  return entropy;
}

// Host batch -> device tensors.
Status Upload(ExecContext& ctx, const std::vector<int32_t>& host, const Tensor& device_tensor) {
  const TensorView view(const_cast<int32_t*>(host.data()), DType::kI32,
                        {static_cast<int64_t>(host.size())}, Device::Cpu());
  return Copy(ctx, view, device_tensor);
}

std::vector<NamedTensor> StateTensors(Model& model) {
  std::vector<NamedTensor> out;
  for (ModelParam& p : model.params()) {
    out.push_back({p.name, p.master});
    out.push_back({p.name + ".adam_m", p.m});
    out.push_back({p.name + ".adam_v", p.v});
  }
  for (auto& [name, view] : model.Buffers()) out.push_back({name, view});
  return out;
}

// The progress line (terminal) or log line.
std::string FormatEta(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const int s = static_cast<int>(seconds);
  return s >= 3600 ? absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60)
                   : absl::StrFormat("%dm%02ds", s / 60, s % 60);
}

class Trainer {
 public:
  Trainer(const proto::RunConfig& config, const TrainerOptions& options)
      : config_(config), train_(config.train()), options_(options) {}

  StatusOr<TrainSummary> Run();

 private:
  Status Setup();
  Status MaybeResume();
  Status SaveCheckpoint();
  Status Rollback(absl::string_view reason);
  StatusOr<double> Evaluate();
  // One optimizer step; returns false when it was skipped (non-finite).
  StatusOr<bool> Step(double* loss, double* aux, double* grad_norm, double lr);
  void WriteMetrics(double loss, double aux, double grad_norm, double lr, double tokens_per_s,
                    const std::vector<RoutingStats>& stats, double eval_loss);
  void ShowProgress(double loss, double lr, double tokens_per_s, double imbalance, bool final_line);

  proto::RunConfig config_;
  const proto::TrainConfig& train_;
  TrainerOptions options_;
  Device device_;
  std::unique_ptr<ExecContext> ctx_;
  std::unique_ptr<Model> model_;
  DataSources data_;
  std::unique_ptr<BatchLoader> loader_;
  std::vector<AuxLossValues> layer_aux_;  // per layer, mean over the last step's micro-batches
  Tensor ids_, targets_, norm_sq_;
  std::vector<int32_t> host_ids_, host_targets_;
  std::ofstream metrics_;
  int64_t step_ = 0;
  int64_t skipped_ = 0;
  int64_t rollbacks_ = 0;
  double lr_scale_ = 1.0;
  double loss_ema_ = 0.0;
  int64_t ema_count_ = 0;
  bool tty_ = false;
  Clock::time_point start_;
  int64_t start_step_ = 0;
};

Status Trainer::Setup() {
  MOE_ASSIGN_OR_RETURN(device_, ResolveDevice(config_));
  MOE_ASSIGN_OR_RETURN(DType dtype, ResolveDType(config_, device_));
  MOE_ASSIGN_OR_RETURN(ctx_, ExecContext::Create(device_));
  MOE_ASSIGN_OR_RETURN(model_, Model::Create(SpecFromConfig(config_, dtype), device_));
  MOE_RETURN_IF_ERROR(model_->Init(*ctx_, train_.seed()));
  MOE_ASSIGN_OR_RETURN(data_, OpenData(config_));
  const int64_t b = train_.batch_size(), s = train_.seq_len();
  loader_ = std::make_unique<BatchLoader>(data_.train.get(), b, s, train_.seed());
  MOE_ASSIGN_OR_RETURN(ids_, Tensor::Empty({b * s}, DType::kI32, device_));
  MOE_ASSIGN_OR_RETURN(targets_, Tensor::Empty({b * s}, DType::kI32, device_));
  MOE_ASSIGN_OR_RETURN(norm_sq_, Tensor::Empty({1}, DType::kF32, device_));
  tty_ = options_.progress_bar && isatty(fileno(stderr));
  MOE_LOG(INFO) << "device " << device_.ToString() << ", dtype " << DTypeName(dtype) << ", "
                << model_->NumParameters() << " parameters (" << model_->NumActivatedParameters()
                << " activated), data " << data_.train->name() << " (" << data_.train->size()
                << " tokens), held-out " << data_.heldout->name();
  MOE_LOG(INFO) << absl::StrFormat("token-unigram entropy of the training data: %.3f nats",
                                   UnigramEntropy(*data_.train));
  return absl::OkStatus();
}

Status Trainer::MaybeResume() {
  if (!config_.checkpoint().resume() || config_.checkpoint().dir().empty()) return absl::OkStatus();
  StatusOr<LoadedCheckpoint> latest = LoadLatestCheckpoint(config_.checkpoint().dir());
  if (absl::IsNotFound(latest.status())) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(latest.status());
  MOE_RETURN_IF_ERROR(RestoreTensors(*ctx_, *latest, StateTensors(*model_)));
  MOE_RETURN_IF_ERROR(model_->SyncComputeCopies(*ctx_));
  step_ = latest->meta.step;
  skipped_ = latest->meta.skipped_steps;
  lr_scale_ = latest->meta.lr_scale;
  loader_->Seek(latest->meta.data_position);
  MOE_LOG(INFO) << "resumed from " << latest->dir << " at step " << step_;
  return absl::OkStatus();
}

Status Trainer::SaveCheckpoint() {
  const proto::CheckpointConfig& c = config_.checkpoint();
  if (c.dir().empty()) return absl::OkStatus();
  CheckpointMeta meta;
  meta.config_text = ConfigToText(config_);
  meta.step = step_;
  meta.data_position = loader_->position();
  meta.rng_seed = train_.seed();
  meta.skipped_steps = skipped_;
  meta.lr_scale = lr_scale_;
  return smoe::SaveCheckpoint(*ctx_, c.dir(), meta, StateTensors(*model_), c.keep_last());
}

Status Trainer::Rollback(absl::string_view reason) {
  StatusOr<LoadedCheckpoint> latest = LoadLatestCheckpoint(config_.checkpoint().dir());
  if (!latest.ok()) {
    MOE_LOG(WARNING) << reason << " at step " << step_ << ", but no checkpoint to roll back to ("
                     << latest.status().message() << "); continuing";
    return absl::OkStatus();
  }
  MOE_RETURN_IF_ERROR(RestoreTensors(*ctx_, *latest, StateTensors(*model_)));
  MOE_RETURN_IF_ERROR(model_->SyncComputeCopies(*ctx_));
  const int64_t from = step_;
  step_ = latest->meta.step;
  // Skip the data that led to the spike: keep the loader where it is.
  lr_scale_ *= train_.spike_lr_factor() > 0 ? train_.spike_lr_factor() : 0.5;
  ++rollbacks_;
  ema_count_ = 0;
  MOE_LOG(WARNING) << reason << " at step " << from << ": rolled back to step " << step_
                   << " and scaled the learning rate by " << lr_scale_;
  return absl::OkStatus();
}

StatusOr<double> Trainer::Evaluate() {
  const int64_t b = train_.batch_size(), s = train_.seq_len();
  BatchLoader heldout(data_.heldout.get(), b, s, train_.seed() + 1);
  double total = 0.0;
  const int batches = std::max(1, train_.eval_batches());
  for (int i = 0; i < batches; ++i) {
    heldout.Next(&host_ids_, &host_targets_);
    MOE_RETURN_IF_ERROR(Upload(*ctx_, host_ids_, ids_));
    MOE_RETURN_IF_ERROR(Upload(*ctx_, host_targets_, targets_));
    MOE_ASSIGN_OR_RETURN(double loss, model_->Loss(*ctx_, ids_, targets_, b, s));
    total += loss;
  }
  return total / batches;
}

StatusOr<bool> Trainer::Step(double* loss, double* aux, double* grad_norm, double lr) {
  const int64_t b = train_.batch_size(), s = train_.seq_len();
  const int accum = std::max(1, train_.grad_accum());
  for (int l = 0; l < config_.model().num_layers(); ++l) {
    if (model_->is_moe_layer(l)) MOE_RETURN_IF_ERROR(model_->SetTopK(l, TopKForLayer(config_, l, step_)));
  }
  MOE_RETURN_IF_ERROR(model_->ZeroGrads(*ctx_));
  *loss = 0.0;
  *aux = 0.0;
  layer_aux_.assign(config_.model().num_layers(), AuxLossValues{});
  for (int micro = 0; micro < accum; ++micro) {
    loader_->Next(&host_ids_, &host_targets_);
    MOE_RETURN_IF_ERROR(Upload(*ctx_, host_ids_, ids_));
    MOE_RETURN_IF_ERROR(Upload(*ctx_, host_targets_, targets_));
    MOE_ASSIGN_OR_RETURN(ModelLoss ml, model_->ForwardBackward(*ctx_, ids_, targets_, b, s, 1.0f / accum));
    *loss += ml.loss / accum;
    *aux += ml.aux_total / accum;
    for (size_t l = 0; l < layer_aux_.size(); ++l) {
      const AuxLossValues& a = model_->LastAuxLosses()[l];
      layer_aux_[l].lbl += a.lbl / accum;
      layer_aux_[l].z_loss += a.z_loss / accum;
      layer_aux_[l].top1_lbl += a.top1_lbl / accum;
      layer_aux_[l].total += a.total / accum;
    }
  }
  MOE_RETURN_IF_ERROR(Fill(*ctx_, norm_sq_, 0.0));
  for (ModelParam& p : model_->params()) MOE_RETURN_IF_ERROR(AccumulateSquaredNorm(*ctx_, p.grad, norm_sq_));
  MOE_ASSIGN_OR_RETURN(Tensor norm_host, CopyTo(*ctx_, norm_sq_, Device::Cpu()));
  *grad_norm = std::sqrt(static_cast<double>(norm_host.data<float>()[0]));
  if (!std::isfinite(*loss) || !std::isfinite(*grad_norm)) return false;
  const double clip = train_.grad_clip();
  const float grad_scale =
      clip > 0 && *grad_norm > clip ? static_cast<float>(clip / *grad_norm) : 1.0f;
  for (ModelParam& p : model_->params()) {
    const AdamWConfig adam{static_cast<float>(lr), static_cast<float>(train_.beta1()),
                           static_cast<float>(train_.beta2()), static_cast<float>(train_.eps()),
                           p.decay ? static_cast<float>(train_.weight_decay()) : 0.0f};
    const bool shadow = p.compute.data() != p.master.data();
    MOE_RETURN_IF_ERROR(AdamWStep(*ctx_, adam, step_ + 1, grad_scale, p.master, p.grad, p.m, p.v,
                                  shadow ? p.compute.view() : TensorView()));
  }
  MOE_RETURN_IF_ERROR(model_->UpdateExpertBiases(*ctx_));
  return true;
}

void Trainer::WriteMetrics(double loss, double aux, double grad_norm, double lr,
                           double tokens_per_s, const std::vector<RoutingStats>& stats,
                           double eval_loss) {
  if (!metrics_.is_open()) return;
  std::string line = absl::StrFormat(
      "{\"step\": %d, \"loss\": %.6f, \"aux_loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, "
      "\"tokens_per_s\": %.1f, \"skipped_steps\": %d",
      step_, loss, aux, lr, grad_norm, tokens_per_s, skipped_);
  if (eval_loss >= 0) absl::StrAppend(&line, absl::StrFormat(", \"eval_loss\": %.6f", eval_loss));
  absl::StrAppend(&line, ", \"moe\": [");
  bool first = true;
  for (size_t l = 0; l < stats.size(); ++l) {
    if (!model_->is_moe_layer(static_cast<int>(l))) continue;
    const RoutingStats& st = stats[l];
    const AuxLossValues a = l < layer_aux_.size() ? layer_aux_[l] : AuxLossValues{};
    absl::StrAppend(&line, first ? "" : ", ",
                    absl::StrFormat("{\"layer\": %d, \"top_k\": %d, \"max_rel_dev\": %.4f, "
                                    "\"min_rel_dev\": %.4f, \"dead_experts\": %d, "
                                    "\"entropy_mean_p\": %.4f, \"lbl\": %.6g, \"z_loss\": %.6g, "
                                    "\"top1_lbl\": %.6g, \"aux_total\": %.6g}",
                                    l, model_->TopK(static_cast<int>(l)), st.max_rel_dev,
                                    st.min_rel_dev, st.dead_experts, st.entropy_mean_p, a.lbl,
                                    a.z_loss, a.top1_lbl, a.total));
    first = false;
  }
  absl::StrAppend(&line, "]}\n");
  metrics_ << line;
  metrics_.flush();
}

void Trainer::ShowProgress(double loss, double lr, double tokens_per_s, double imbalance,
                           bool final_line) {
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  const int64_t done = step_ - start_step_;
  const double eta = done > 0 ? elapsed / done * (train_.steps() - step_) : -1;
  const std::string text = absl::StrFormat(
      "step %d/%d  loss %.4f  %.0f tok/s  lr %.3g  imbalance %.2f  ETA %s", step_, train_.steps(),
      loss, tokens_per_s, lr, imbalance, FormatEta(eta));
  if (tty_) {
    const int width = 24;
    const int filled = static_cast<int>(width * static_cast<double>(step_) / std::max<int64_t>(1, train_.steps()));
    std::fprintf(stderr, "\r[%s%s] %s\033[K", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), text.c_str());
    if (final_line) std::fputc('\n', stderr);
    std::fflush(stderr);
  } else {
    MOE_LOG(INFO) << text;
  }
}

StatusOr<TrainSummary> Trainer::Run() {
  MOE_RETURN_IF_ERROR(Setup());
  MOE_RETURN_IF_ERROR(MaybeResume());
  std::string metrics_path = options_.metrics_path;
  if (metrics_path.empty() && !config_.checkpoint().dir().empty()) {
    metrics_path = config_.checkpoint().dir() + "/metrics.jsonl";
  }
  if (!metrics_path.empty()) {
    std::error_code ignored;
    std::filesystem::create_directories(std::filesystem::path(metrics_path).parent_path(), ignored);
    metrics_.open(metrics_path, std::ios::app);
    if (!metrics_) return absl::NotFoundError(absl::StrCat("cannot open ", metrics_path));
  }
  TrainSummary summary;
  start_ = Clock::now();
  start_step_ = step_;
  const int64_t tokens_per_step = static_cast<int64_t>(train_.batch_size()) * train_.seq_len() *
                                  std::max(1, train_.grad_accum());
  const proto::CheckpointConfig& ckpt = config_.checkpoint();
  double loss = 0.0;
  while (step_ < train_.steps()) {
    if (options_.stop_requested != nullptr && options_.stop_requested->load()) {
      summary.stopped_early = true;
      break;
    }
    const Clock::time_point t0 = Clock::now();
    const double lr = LearningRateAt(train_, step_) * lr_scale_;
    double aux = 0.0, grad_norm = 0.0;
    MOE_ASSIGN_OR_RETURN(bool applied, Step(&loss, &aux, &grad_norm, lr));
    if (!applied) {
      ++skipped_;
      MOE_LOG(WARNING) << "step " << step_ << ": non-finite loss (" << loss << ") or gradient norm ("
                       << grad_norm << "); update skipped (" << skipped_ << " so far)";
      if (train_.nan_policy() == proto::TrainConfig::ABORT) {
        return absl::DataLossError(absl::StrCat("non-finite loss or gradient at step ", step_));
      }
      if (train_.nan_policy() == proto::TrainConfig::ROLLBACK) {
        MOE_RETURN_IF_ERROR(Rollback("non-finite loss or gradient"));
        continue;
      }
      if (train_.max_skipped_steps() > 0 && skipped_ > train_.max_skipped_steps()) {
        return absl::DataLossError(absl::StrCat(skipped_, " non-finite steps: more than train.max_skipped_steps = ",
                                                train_.max_skipped_steps()));
      }
      ++step_;
      continue;
    }
    // Loss spike: compare with the running mean of recent steps (after it has settled).
    if (train_.spike_threshold() > 0 && ema_count_ >= 20 &&
        loss > train_.spike_threshold() * loss_ema_) {
      MOE_RETURN_IF_ERROR(Rollback(absl::StrFormat("loss spike %.4f > %.1f x running mean %.4f",
                                                   loss, train_.spike_threshold(), loss_ema_)));
      continue;
    }
    loss_ema_ = ema_count_ == 0 ? loss : 0.95 * loss_ema_ + 0.05 * loss;
    ++ema_count_;
    ++step_;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double tokens_per_s = tokens_per_step / std::max(seconds, 1e-9);
    MOE_ASSIGN_OR_RETURN(std::vector<RoutingStats> stats, model_->MoEStats(*ctx_));
    double imbalance = 0.0;
    for (size_t l = 0; l < stats.size(); ++l) {
      if (model_->is_moe_layer(static_cast<int>(l))) imbalance = std::max(imbalance, stats[l].max_rel_dev);
    }
    double eval_loss = -1.0;
    const bool last = step_ == train_.steps();
    if ((train_.eval_interval() > 0 && step_ % train_.eval_interval() == 0) || last) {
      MOE_ASSIGN_OR_RETURN(eval_loss, Evaluate());
      summary.final_eval_loss = eval_loss;
      if (tty_) std::fputc('\n', stderr);
      MOE_LOG(INFO) << absl::StrFormat("step %d: held-out loss %.4f (train %.4f)", step_, eval_loss, loss);
    }
    WriteMetrics(loss, aux, grad_norm, lr, tokens_per_s, stats, eval_loss);
    if (last || (train_.log_interval() > 0 && step_ % train_.log_interval() == 0) || tty_) {
      ShowProgress(loss, lr, tokens_per_s, imbalance, last);
    }
    if (ckpt.interval() > 0 && (step_ % ckpt.interval() == 0 || last)) {
      MOE_RETURN_IF_ERROR(SaveCheckpoint());
    }
  }
  if (summary.stopped_early) {
    if (tty_) std::fputc('\n', stderr);
    MOE_LOG(INFO) << "stop requested: saving a checkpoint at step " << step_;
    MOE_RETURN_IF_ERROR(SaveCheckpoint());
  }
  summary.steps_done = step_;
  summary.final_loss = loss;
  summary.skipped_steps = skipped_;
  summary.rollbacks = rollbacks_;
  return summary;
}

}  // namespace

StatusOr<Device> ResolveDevice(const proto::RunConfig& config) {
  const std::string& text = config.train().device();
  if (text.empty() || text == "auto") return CudaAvailable() ? Device::Cuda(0) : Device::Cpu();
  StatusOr<Device> device = ParseDevice(text);
  if (!device.ok()) return BadArgument("train.device", text, "auto, cpu, cuda or cuda:N (visible)");
  return device;
}

StatusOr<DType> ResolveDType(const proto::RunConfig& config, Device device) {
  const std::string& text = config.train().dtype();
  if (text.empty() || text == "auto") return device.is_cuda() ? DType::kBF16 : DType::kF32;
  if (text == "f32") return DType::kF32;
  if (text == "bf16") return DType::kBF16;
  return BadArgument("train.dtype", text, "auto, f32 or bf16");
}

ModelSpec SpecFromConfig(const proto::RunConfig& config, DType dtype) {
  const proto::ModelConfig& m = config.model();
  ModelSpec spec;
  spec.vocab_size = m.vocab_size();
  spec.num_layers = m.num_layers();
  spec.model_dim = m.model_dim();
  spec.tie_embeddings = m.tie_embeddings();
  spec.norm_eps = static_cast<float>(m.norm_eps());
  spec.init_std = static_cast<float>(m.init_std());
  spec.dtype = dtype;
  const proto::AttentionConfig& a = m.attention();
  spec.attention.model_dim = m.model_dim();
  spec.attention.n_q = a.n_q();
  spec.attention.n_k = a.n_k();
  spec.attention.n_v = a.n_v();
  spec.attention.head_dim = a.head_dim();
  spec.attention.d_aug = a.d_aug();
  spec.attention.qk_norm = a.qk_norm();
  spec.attention.rope_theta = a.rope_theta();
  const proto::MoeConfig& e = m.moe();
  spec.moe.model_dim = m.model_dim();
  spec.moe.ffn_dim = e.ffn_dim();
  spec.moe.num_experts = e.num_experts();
  spec.moe.top_k = e.top_k();
  spec.moe.renormalize = e.renormalize();
  spec.moe.capacity_factor = static_cast<float>(e.capacity_factor());
  spec.moe.dtype = dtype;
  spec.moe.aux.lbl_coef = static_cast<float>(e.lbl_coef());
  spec.moe.aux.global_lbl = e.global_lbl();
  spec.moe.aux.z_coef = static_cast<float>(e.z_coef());
  spec.moe.aux.top1_lbl_coef = static_cast<float>(e.top1_lbl_coef());
  spec.dense_layers.assign(e.dense_layers().begin(), e.dense_layers().end());
  spec.dense_ffn_dim = e.dense_ffn_dim();
  spec.bias_update_rate = static_cast<float>(e.bias_update_rate());
  spec.bias_bound = static_cast<float>(e.bias_bound());
  return spec;
}

double LearningRateAt(const proto::TrainConfig& train, int64_t step) {
  const double lr = train.lr(), min_lr = train.min_lr();
  const int64_t warmup = train.warmup_steps(), total = train.steps();
  if (warmup > 0 && step < warmup) return lr * static_cast<double>(step + 1) / warmup;
  if (total <= warmup) return lr;
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / (total - warmup));
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

StatusOr<TrainSummary> Train(const proto::RunConfig& config, const TrainerOptions& options) {
  MOE_RETURN_IF_ERROR(ValidateConfig(config));
  Trainer trainer(config, options);
  return trainer.Run();
}

Status DryRun(const proto::RunConfig& config) {
  MOE_RETURN_IF_ERROR(ValidateConfig(config));
  MOE_ASSIGN_OR_RETURN(Device device, ResolveDevice(config));
  MOE_ASSIGN_OR_RETURN(DType dtype, ResolveDType(config, device));
  // Parameters are counted on a model built on the host with the same shapes.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(SpecFromConfig(config, dtype), Device::Cpu()));
  const proto::TrainConfig& t = config.train();
  const int64_t total = model->NumParameters(), active = model->NumActivatedParameters();
  const int64_t tokens = static_cast<int64_t>(t.batch_size()) * t.seq_len();
  const double per_param_bytes = 4.0 * 4 + (dtype == DType::kBF16 ? 2.0 : 0.0);  // master, grad, m, v (+ compute)
  const proto::ModelConfig& m = config.model();
  // Activations kept for backward per layer, roughly: ~12 [T, M] tensors, attention projections,
  // the MoE rows (3 [T*K, H] + 2 [T*K, M]) and the logits (2 [T, V] f32).
  const double act_elems =
      tokens * (12.0 * m.model_dim() + 3.0 * m.attention().n_q() * m.attention().head_dim() +
                3.0 * m.moe().top_k() * m.moe().ffn_dim() + 2.0 * m.moe().top_k() * m.model_dim());
  const double act_bytes = act_elems * DTypeSize(dtype) * m.num_layers() + 8.0 * tokens * m.vocab_size();
  std::printf("sigma-moe-train dry run on %s (%s)\n", device.ToString().c_str(), std::string(DTypeName(dtype)).c_str());
  std::printf("  parameters       %lld total, %lld activated per token (%.1f%%)\n",
              static_cast<long long>(total), static_cast<long long>(active), 100.0 * active / total);
  std::printf("  FLOPs per token  %.3g (forward + backward, at the final top-k)\n", model->FlopsPerToken(t.seq_len()));
  std::printf("  memory plan      parameters+optimizer %.1f MiB, activations ~%.1f MiB per micro-batch of %lld tokens\n",
              total * per_param_bytes / (1 << 20), act_bytes / (1 << 20), static_cast<long long>(tokens));
  return absl::OkStatus();
}

StatusOr<std::string> Sample(const proto::RunConfig& config, const std::string& prompt,
                             int num_tokens, double temperature, uint64_t seed) {
  MOE_RETURN_IF_ERROR(ValidateConfig(config));
  MOE_ASSIGN_OR_RETURN(Device device, ResolveDevice(config));
  MOE_ASSIGN_OR_RETURN(DType dtype, ResolveDType(config, device));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(device));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(SpecFromConfig(config, dtype), device));
  MOE_ASSIGN_OR_RETURN(LoadedCheckpoint latest, LoadLatestCheckpoint(config.checkpoint().dir()));
  MOE_RETURN_IF_ERROR(RestoreTensors(*ctx, latest, StateTensors(*model)));
  MOE_RETURN_IF_ERROR(model->SyncComputeCopies(*ctx));
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  if (tokens.empty()) tokens.push_back('\n');
  const int64_t v = config.model().vocab_size();
  auto next_token = [&](const Tensor& logits, int i) {
    const float* row = logits.data<float>();
    int next = 0;
    if (temperature <= 0) {
      for (int j = 1; j < v; ++j) next = row[j] > row[next] ? j : next;
    } else {
      double max = row[0];
      for (int j = 1; j < v; ++j) max = std::max<double>(max, row[j]);
      std::vector<double> p(v);
      double sum = 0;
      for (int j = 0; j < v; ++j) sum += p[j] = std::exp((row[j] - max) / temperature);
      double u = PhiloxUniform(seed, i) * sum;
      for (next = 0; next + 1 < v && u >= p[next]; ++next) u -= p[next];
    }
    return next;
  };
  // The caches hold at most train.seq_len positions, so RoPE never sees a position the model was
  // not trained on. When they are full, the last half of the text is prefilled again.
  const int64_t window = config.train().seq_len();
  const int64_t keep = std::max<int64_t>(1, window / 2);
  DecodeState state;
  int64_t prefill = std::min<int64_t>(window, static_cast<int64_t>(tokens.size()));
  std::string out;
  for (int i = 0; i < num_tokens; ++i) {
    Tensor logits;
    if (prefill > 0) {
      MOE_ASSIGN_OR_RETURN(Tensor ids, Tensor::Empty({prefill}, DType::kI32, device));
      MOE_RETURN_IF_ERROR(Upload(*ctx, std::vector<int32_t>(tokens.end() - prefill, tokens.end()), ids));
      MOE_ASSIGN_OR_RETURN(logits, model->Prefill(*ctx, ids, 1, prefill, window, &state));
      prefill = 0;
    } else {
      MOE_ASSIGN_OR_RETURN(Tensor ids, Tensor::Empty({1}, DType::kI32, device));
      MOE_RETURN_IF_ERROR(Upload(*ctx, {tokens.back()}, ids));
      MOE_ASSIGN_OR_RETURN(logits, model->DecodeStep(*ctx, ids, &state));
    }
    const int next = next_token(logits, i);
    tokens.push_back(next);
    out.push_back(static_cast<char>(next));
    if (state.length() >= window) prefill = std::min<int64_t>(keep, static_cast<int64_t>(tokens.size()));
  }
  return out;
}

}  // namespace smoe
