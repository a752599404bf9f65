#include "runtime/train/trainer/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "moe/adapt/controller.h"
#include "runtime/comm/communicator.h"
#include "runtime/comm/staged_communicator.h"
#if MOE_WITH_NCCL
#include "runtime/comm/nccl_communicator.h"
#endif
#include "runtime/core/logging.h"
#include "runtime/core/op_profile.h"
#include "runtime/core/philox.h"
#include "runtime/core/thread_pool.h"
#include "runtime/nn/adamw.h"
#include "runtime/tensor/tensor_ops.h"
#include "runtime/train/checkpoint/checkpoint.h"
#include "runtime/train/data/batch_loader.h"
#include "runtime/train/data/dataset.h"
#include "runtime/train/trainer/comm_choice.h"
#include "runtime/train/trainer/memory_plan.h"

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
    MOE_ASSIGN_OR_RETURN(out.heldout, SyntheticSource(config.train().seed(), 1,
                                                      std::max<int64_t>(size / 16, 1 << 16)));
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

// This rank's elements of a host batch: the `device_tensor.numel()` starting at slice * numel.
Status UploadSlice(ExecContext& ctx, const std::vector<int32_t>& host, int slice,
                   const Tensor& device_tensor) {
  const int64_t n = device_tensor.numel();
  const TensorView view(const_cast<int32_t*>(host.data()) + slice * n, DType::kI32, {n},
                        Device::Cpu());
  return Copy(ctx, view, device_tensor);
}

// A checkpointed tensor of the model; `shard`: the expert parameter whose shard (this rank's
// slice of the global tensor) `view` holds, null for a replicated tensor.
struct StateTensor {
  std::string name;
  TensorView view;
  const ModelParam* shard = nullptr;
};

std::vector<StateTensor> ModelState(Model& model) {
  std::vector<StateTensor> out;
  for (ModelParam& p : model.params()) {
    const ModelParam* shard = p.expert_shard ? &p : nullptr;
    out.push_back({p.name, p.master, shard});
    out.push_back({p.name + ".adam_m", p.m, shard});
    out.push_back({p.name + ".adam_v", p.v, shard});
  }
  for (auto& [name, view] : model.Buffers()) out.push_back({name, view, nullptr});
  return out;
}

std::vector<NamedTensor> StateTensors(Model& model) {
  std::vector<NamedTensor> out;
  for (StateTensor& t : ModelState(model)) out.push_back({t.name, t.view});
  return out;
}

// The model state in the global logical layout. Collective on a multi-rank model: each expert
// shard is all-gathered into a global host tensor kept in *storage.
StatusOr<std::vector<NamedTensor>> GlobalStateTensors(ExecContext& ctx, Model& model,
                                                      std::vector<Tensor>* storage) {
  std::vector<NamedTensor> out;
  for (StateTensor& t : ModelState(model)) {
    if (t.shard == nullptr) {
      out.push_back({t.name, t.view});
      continue;
    }
    MOE_ASSIGN_OR_RETURN(Tensor full,
                         Tensor::Empty(model.GlobalShape(*t.shard), t.view.dtype(), Device::Cpu()));
    MOE_RETURN_IF_ERROR(model.GatherShards(ctx, *t.shard, t.view, full));
    out.push_back({t.name, full});
    storage->push_back(std::move(full));
  }
  return out;
}

// Restores the model state from a checkpoint in the global layout; an expert shard takes its slice.
Status RestoreModelState(ExecContext& ctx, const LoadedCheckpoint& checkpoint, Model& model) {
  std::vector<StateTensor> state = ModelState(model);
  std::vector<NamedTensor> named;
  std::vector<Tensor> full(state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    const StateTensor& t = state[i];
    if (t.shard == nullptr) {
      named.push_back({t.name, t.view});
      continue;
    }
    MOE_ASSIGN_OR_RETURN(full[i],
                         Tensor::Empty(model.GlobalShape(*t.shard), t.view.dtype(), Device::Cpu()));
    named.push_back({t.name, full[i]});
  }
  MOE_RETURN_IF_ERROR(RestoreTensors(ctx, checkpoint, named));
  for (size_t i = 0; i < state.size(); ++i) {
    if (state[i].shard == nullptr) continue;
    MOE_RETURN_IF_ERROR(model.ShardOf(ctx, *state[i].shard, full[i], state[i].view));
  }
  return absl::OkStatus();
}

// The ranks of this run: MPI's world when launched by mpirun with more than one rank, else the
// single-rank communicator (MPI is then never initialized, so a plain run stays as it was).
StatusOr<Communicator*> WorldCommunicator() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    const char* value = std::getenv(var);
    if (value != nullptr && std::atoi(value) > 1) {
#if MOE_WITH_MPI
      return MpiWorldCommunicator();
#else
      return absl::FailedPreconditionError(
          absl::StrCat("launched on ", value, " ranks (", var,
                       "), but this build has no MPI: rebuild with MPI "
                       "(libopenmpi-dev) for multi-rank training"));
#endif
    }
  }
  return SingleRankCommunicator();
}

#if MOE_WITH_NCCL
constexpr bool kNcclBuilt = true;
#else
constexpr bool kNcclBuilt = false;
#endif

// This rank's GPU: its local rank modulo the visible GPUs (one GPU per rank when they suffice; 2
// ranks on 1 GPU share cuda:0).
Device RankDevice(const LocalRank& local) {
  return Device::Cuda(local.rank % std::max(1, CudaDeviceCount()));
}

// Whether every node has a GPU per rank (collective over `host`: every rank must choose alike).
StatusOr<bool> EveryNodeFits(Communicator& host, const LocalRank& local) {
  MOE_ASSIGN_OR_RETURN(Tensor misfits, Tensor::Empty({1}, DType::kI32, Device::Cpu()));
  misfits.data<int32_t>()[0] = local.size <= CudaDeviceCount() ? 0 : 1;
  MOE_RETURN_IF_ERROR(host.AllReduceSum(ExecContext::Cpu(), misfits));
  return misfits.data<int32_t>()[0] == 0;
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
  // What one optimizer step did. Not applied: the loss or the gradient norm was not finite, and
  // the weights were left as they were.
  struct StepResult {
    bool applied = false;
    double loss = 0.0;       // mean over the micro-batches and ranks
    double aux = 0.0;        // aux losses' weighted total, likewise
    double grad_norm = 0.0;  // global, before clipping
  };

  Status Setup();
  // CUDA ranks: this rank's GPU and the communicator for device buffers (parallel.comm).
  Status ConnectDevices();
  Status MaybeResume();
  Status SaveCheckpoint();
  // Restores the newest checkpoint with the learning rate scaled down; false (after a warning)
  // when there is none to roll back to.
  StatusOr<bool> Rollback(absl::string_view reason);
  // A step whose loss or gradient norm was not finite, by train.nan_policy: abort, roll back, or
  // skip. A skip and a rollback both count toward train.max_skipped_steps; a rollback with no
  // checkpoint to return to is a skip.
  Status HandleNonFiniteStep(const StepResult& result);
  StatusOr<double> Evaluate();
  StatusOr<StepResult> Step(double lr);
  // All-reduces the replicated parameters' gradients (the experts' arrive reduced) and leaves the
  // squared global gradient norm in step_scalars_[0] + step_scalars_[1], on the device.
  Status ReduceGradients();
  // Whether any rank was asked to stop (collective).
  StatusOr<bool> StopRequested();
  // Statistics, evaluation, metrics, progress and checkpoints after applied step step_.
  // host_syncs_before: the context's count when the step began (the step's syncs include the
  // routing statistics').
  Status AfterStep(const StepResult& result, double lr, double seconds, int64_t host_syncs_before,
                   TrainSummary* summary);
  void WriteMetrics(const StepResult& result, double lr, double tokens_per_s, int64_t host_syncs,
                    const std::vector<RoutingStats>& stats, const std::vector<double>& bias_max_abs,
                    double eval_loss);
  void ShowProgress(double loss, double lr, double tokens_per_s, double imbalance, bool final_line);

  // Where several ranks truly work differently: CUDA devices per rank, the adaptive controller,
  // the parallel modes in the metrics. Everything else runs one path through comm_.
  bool distributed() const { return world_ > 1; }
  bool leader() const { return rank_ == 0; }
  // Replaces `values` by their means over the ranks, in f64 and rank order (exact on one rank).
  // Collective.
  Status MeanOverRanks(std::vector<double>* values);
  // Every rank's view of a checkpoint: the newest one under checkpoint.dir, the same on every rank
  // (an error on all ranks otherwise). Collective when distributed. Rank 0 chooses it, `at_start`
  // through PrepareCheckpointDir (invalid checkpoints moved aside, or a refusal when none is
  // valid), otherwise through LoadLatestCheckpoint; the other ranks then load and verify it.
  StatusOr<LoadedCheckpoint> LoadLatest(bool at_start);
  // Chooses every MoE layer's mode for this step (collective: the capacity buckets).
  Status ChooseModes();
  // Reports the measured MoE times of this step to the controller.
  Status ReportModes();

  proto::RunConfig config_;
  const proto::TrainConfig& train_;
  TrainerOptions options_;
  // The ranks (SingleRankCommunicator() on one). The host communicator (MPI) carries the flags,
  // means and the controller's timings; comm_ is the one the model and the gradient reductions use
  // (comm_choice.h): the host one on CPU ranks, NCCL with one GPU per rank, else the staged wrapper
  // of the host one (device buffers through the host).
  Communicator* comm_ = nullptr;
  Communicator* host_comm_ = nullptr;
  std::unique_ptr<Communicator> device_comm_;
  int world_ = 1, rank_ = 0;
  int64_t local_batch_ = 0;                         // sequences per micro-batch on this rank
  std::unique_ptr<AdaptiveController> controller_;  // several ranks only
  std::vector<AdaptKey> keys_;                      // per layer, this step's controller key
  std::vector<int64_t> prev_max_rows_;  // per layer, the previous step's largest expert load
  Device device_;
  std::unique_ptr<ExecContext> ctx_;
  std::unique_ptr<Model> model_;
  DataSources data_;
  std::unique_ptr<BatchLoader> loader_;
  std::vector<AuxLossValues> layer_aux_;  // per layer, mean over the last step's micro-batches
  Tensor ids_, targets_;
  // [2 + Model::StepScalarCount()] f32 on the device: the squared gradient norms of the replicated
  // and of the expert parameters, then the step's loss and aux sums; read once per step.
  Tensor step_scalars_;
  std::vector<int32_t> host_ids_, host_targets_;
  std::ofstream metrics_;
  int64_t step_ = 0;
  int64_t skipped_ = 0;
  int64_t rollbacks_ = 0;
  int64_t spikes_ = 0;
  double lr_scale_ = 1.0;
  double loss_ema_ = 0.0;
  int64_t ema_count_ = 0;
  bool tty_ = false;
  bool nan_injected_ = false;  // train.debug_nan_step already applied (once per process)
  double last_loss_ = 0.0;
  Clock::time_point start_;
  int64_t start_step_ = 0;
};

Status Trainer::Setup() {
  MOE_ASSIGN_OR_RETURN(host_comm_, WorldCommunicator());
  if (const double timeout_s = config_.parallel().collective_timeout_s(); timeout_s != 0) {
    MOE_RETURN_IF_ERROR(SetCollectiveTimeoutSeconds(std::max(0.0, timeout_s)));
  }
  comm_ = host_comm_;
  world_ = comm_->size();
  rank_ = comm_->rank();
  MOE_RETURN_IF_ERROR(ValidateWorld(config_, world_));
  MOE_ASSIGN_OR_RETURN(device_, ResolveDevice(config_));
  SetCpuThreads(train_.threads());  // 0: thread_pool.h's default (cores / ranks on the node)
  if (device_.is_cuda()) MOE_RETURN_IF_ERROR(ConnectDevices());
  MOE_ASSIGN_OR_RETURN(DType dtype, ResolveDType(config_, device_));
  if (device_.is_cuda()) {
    // Stop before allocating rather than fail late: the plan against the device's free memory.
    MOE_ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(config_, device_, dtype, world_));
    MOE_ASSIGN_OR_RETURN(DeviceMemory memory, CudaMemory(device_.index));
    MOE_RETURN_IF_ERROR(CheckPlanFits(plan, device_, static_cast<double>(memory.free_bytes)));
  }
  MOE_ASSIGN_OR_RETURN(ctx_, ExecContext::Create(device_));
  const int node_size = std::max(1, config_.parallel().node_size());
  MOE_ASSIGN_OR_RETURN(model_,
                       Model::Create(SpecFromConfig(config_, dtype), device_, comm_, node_size));
  MOE_RETURN_IF_ERROR(model_->Init(*ctx_, train_.seed()));
  MOE_ASSIGN_OR_RETURN(data_, OpenData(config_));
  const int64_t b = train_.batch_size(), s = train_.seq_len();
  local_batch_ = b / world_;
  // Every rank reads the global batch (so positions and data match the single-rank run) and
  // trains on its slice.
  loader_ = std::make_unique<BatchLoader>(data_.train.get(), b, s, train_.seed());
  MOE_ASSIGN_OR_RETURN(ids_, Tensor::Empty({local_batch_ * s}, DType::kI32, device_));
  MOE_ASSIGN_OR_RETURN(targets_, Tensor::Empty({local_batch_ * s}, DType::kI32, device_));
  MOE_ASSIGN_OR_RETURN(step_scalars_,
                       Tensor::Empty({2 + model_->StepScalarCount()}, DType::kF32, device_));
  tty_ = leader() && options_.progress_bar && isatty(fileno(stderr));
  if (distributed()) {
    const proto::ParallelConfig& pc = config_.parallel();
    AdaptConfig adapt;
    adapt.mode = pc.mode().empty() ? "auto" : pc.mode();
    adapt.trials = pc.trials() > 0 ? pc.trials() : 2;
    adapt.warmup = pc.warmup();
    adapt.table_path = pc.table_path();
    if (adapt.table_path.empty() && !config_.checkpoint().dir().empty()) {
      adapt.table_path = config_.checkpoint().dir() + "/adapt_table.txt";
    }
    StatusOr<std::unique_ptr<AdaptiveController>> controller = AdaptiveController::Create(
        adapt, ParallelCandidates(world_, node_size, model_->layout().shards), host_comm_);
    if (!controller.ok()) {
      return BadArgument(
          "parallel.mode", adapt.mode,
          absl::StrCat("auto or a candidate mode for ", world_, " ranks and node_size ", node_size,
                       " (", controller.status().message(), ")"));
    }
    controller_ = *std::move(controller);
    if (Status loaded = controller_->Load(); !loaded.ok()) {
      MOE_LOG(WARNING) << "ignoring the adapt table: " << loaded.message();
    }
    keys_.assign(config_.model().num_layers(), AdaptKey{});
    prev_max_rows_.assign(config_.model().num_layers(), 0);
  }
  if (!leader()) return absl::OkStatus();
  if (distributed()) {
    const ExpertShardLayout& layout = model_->layout();
    MOE_LOG(INFO) << world_ << " ranks: " << local_batch_ << " sequences per rank, "
                  << (layout.shards > 1
                          ? absl::StrCat("1 / ", layout.shards, " of an expert per rank")
                          : absl::StrCat(layout.local_experts, " experts per rank"))
                  << ", parallel mode "
                  << (controller_->forced() ? config_.parallel().mode() : "auto");
  }
  MOE_LOG(INFO) << "device " << device_.ToString() << ", dtype " << DTypeName(dtype) << ", "
                << model_->NumParameters() << " parameters (" << model_->NumActivatedParameters()
                << " activated), data " << data_.train->name() << " (" << data_.train->size()
                << " tokens), held-out " << data_.heldout->name();
  MOE_LOG(INFO) << absl::StrFormat("token-unigram entropy of the training data: %.3f nats",
                                   UnigramEntropy(*data_.train));
  return absl::OkStatus();
}

Status Trainer::ConnectDevices() {
  const LocalRank local = LocalRankFromEnvironment(rank_, world_);
  RankLayout layout{world_, true, local.size, CudaDeviceCount(), true};
  MOE_ASSIGN_OR_RETURN(layout.every_node_fits, EveryNodeFits(*host_comm_, local));
  MOE_ASSIGN_OR_RETURN(const CommChoice choice,
                       ChooseCommunicator(config_.parallel().comm(), layout, kNcclBuilt));
  if (choice.kind == CommKind::kHost) return absl::OkStatus();
  if (world_ > 1) device_ = RankDevice(local);
  if (leader()) {
    MOE_LOG(INFO) << "device collectives: " << choice.reason;
  }
  if (choice.kind == CommKind::kStaged) {
    device_comm_ = StagedCommunicator(host_comm_);
  } else {
#if MOE_WITH_NCCL
    NcclOptions options;
    options.timeout_s = CollectiveTimeoutSeconds();  // parallel.collective_timeout_s
    MOE_ASSIGN_OR_RETURN(device_comm_, CreateNcclCommunicator(*host_comm_, device_.index, options));
#endif
  }
  comm_ = device_comm_.get();
  return absl::OkStatus();
}

Status Trainer::MaybeResume() {
  // Also without checkpoint.resume: invalid checkpoints are moved aside before retention runs.
  if (config_.checkpoint().dir().empty()) return absl::OkStatus();
  StatusOr<LoadedCheckpoint> latest = LoadLatest(/*at_start=*/true);
  if (absl::IsNotFound(latest.status())) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(latest.status());
  MOE_RETURN_IF_ERROR(RestoreModelState(*ctx_, *latest, *model_));
  MOE_RETURN_IF_ERROR(model_->SyncComputeCopies(*ctx_));
  step_ = latest->meta.step;
  skipped_ = latest->meta.skipped_steps;
  lr_scale_ = latest->meta.lr_scale;
  loader_->Seek(latest->meta.data_position);
  MOE_LOG(INFO) << "resumed from " << latest->dir << " at step " << step_;
  return absl::OkStatus();
}

StatusOr<LoadedCheckpoint> Trainer::LoadLatest(bool at_start) {
  const std::string& root = config_.checkpoint().dir();
  auto choose = [&]() {
    return at_start ? PrepareCheckpointDir(root, config_.checkpoint().resume())
                    : LoadLatestCheckpoint(root);
  };
  // -1: none found, -2: an error; the ranks must agree, or none uses what it read.
  auto code = [](const StatusOr<LoadedCheckpoint>& c) -> int64_t {
    return c.ok() ? c->meta.step : absl::IsNotFound(c.status()) ? -1 : -2;
  };
  MOE_ASSIGN_OR_RETURN(Tensor mine, Tensor::Empty({1}, DType::kI64, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty({world_}, DType::kI64, Device::Cpu()));
  // Only rank 0 may move checkpoints aside, so it chooses first and the others follow.
  StatusOr<LoadedCheckpoint> latest =
      leader() ? choose() : absl::NotFoundError(absl::StrCat("no checkpoint under ", root));
  mine.data<int64_t>()[0] = leader() ? code(latest) : 0;
  MOE_RETURN_IF_ERROR(comm_->AllGather(*ctx_, mine, all));
  const int64_t chosen = all.data<int64_t>()[0];
  if (chosen == -2) {
    if (leader()) return latest.status();
    return absl::AbortedError(
        absl::StrCat("rank 0 could not use checkpoint.dir ", root, " (its error says why)"));
  }
  if (!leader() && chosen >= 0) {
    latest = LoadCheckpoint((std::filesystem::path(root) / CheckpointDirName(chosen)).string());
  }
  mine.data<int64_t>()[0] = code(latest);
  MOE_RETURN_IF_ERROR(comm_->AllGather(*ctx_, mine, all));
  for (int r = 0; r < world_; ++r) {
    if (all.data<int64_t>()[r] != mine.data<int64_t>()[0]) {
      if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
      return absl::InternalError(
          absl::StrCat("ranks disagree on the latest checkpoint under ", config_.checkpoint().dir(),
                       ": rank ", r, " read step ", all.data<int64_t>()[r], ", rank ", rank_,
                       " read ", mine.data<int64_t>()[0], " (-1: none, -2: unreadable)"));
    }
  }
  return latest;
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
  std::vector<Tensor> storage;
  MOE_ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors,
                       GlobalStateTensors(*ctx_, *model_, &storage));
  Status saved = absl::OkStatus();
  if (leader()) {
    saved = smoe::SaveCheckpoint(*ctx_, c.dir(), meta, tensors, c.keep_last());
    if (saved.ok() && controller_ != nullptr) saved = controller_->Save();
  }
  // Every rank learns whether rank 0 wrote it (and no rank reads it before it is complete).
  MOE_ASSIGN_OR_RETURN(Tensor failed, Tensor::Empty({1}, DType::kI32, Device::Cpu()));
  failed.data<int32_t>()[0] = saved.ok() ? 0 : 1;
  MOE_RETURN_IF_ERROR(comm_->AllReduceSum(*ctx_, failed));
  if (!saved.ok()) return saved;
  if (failed.data<int32_t>()[0] != 0) {
    return absl::InternalError(
        absl::StrCat("rank 0 failed to write the checkpoint of step ", step_, " under ", c.dir()));
  }
  return absl::OkStatus();
}

StatusOr<bool> Trainer::Rollback(absl::string_view reason) {
  StatusOr<LoadedCheckpoint> latest = LoadLatest(/*at_start=*/false);
  if (absl::IsNotFound(latest.status())) {
    MOE_LOG(WARNING) << reason << " at step " << step_ + 1
                     << ", but no checkpoint to roll back to (" << latest.status().message() << ")";
    return false;
  }
  MOE_RETURN_IF_ERROR(latest.status());
  MOE_RETURN_IF_ERROR(RestoreModelState(*ctx_, *latest, *model_));
  MOE_RETURN_IF_ERROR(model_->SyncComputeCopies(*ctx_));
  const int64_t from = step_ + 1;  // the step that failed, numbered as in metrics.jsonl
  step_ = latest->meta.step;
  // Skip the data that led to the spike: keep the loader where it is.
  lr_scale_ *= train_.spike_lr_factor() > 0 ? train_.spike_lr_factor() : 0.5;
  ++rollbacks_;
  ema_count_ = 0;
  MOE_LOG(WARNING) << reason << " at step " << from << ": rolled back to step " << step_
                   << " and scaled the learning rate by " << lr_scale_;
  return true;
}

Status Trainer::HandleNonFiniteStep(const StepResult& result) {
  ++skipped_;
  // Steps are numbered from 1 here, as in metrics.jsonl.
  MOE_LOG(WARNING) << "step " << step_ + 1 << ": non-finite loss (" << result.loss
                   << ") or gradient norm (" << result.grad_norm << "); update skipped ("
                   << skipped_ << " so far)";
  if (train_.nan_policy() == proto::TrainConfig::ABORT) {
    return absl::DataLossError(absl::StrCat("non-finite loss or gradient at step ", step_ + 1));
  }
  if (train_.max_skipped_steps() > 0 && skipped_ > train_.max_skipped_steps()) {
    return absl::DataLossError(absl::StrCat(
        skipped_,
        " non-finite steps: more than train.max_skipped_steps = ", train_.max_skipped_steps()));
  }
  if (train_.nan_policy() == proto::TrainConfig::ROLLBACK) {
    MOE_ASSIGN_OR_RETURN(const bool rolled_back, Rollback("non-finite loss or gradient"));
    if (rolled_back) return absl::OkStatus();
    MOE_LOG(WARNING) << "step " << step_ + 1 << " counts as skipped";
  }
  ++step_;
  return absl::OkStatus();
}

StatusOr<double> Trainer::Evaluate() {
  const int64_t s = train_.seq_len();
  BatchLoader heldout(data_.heldout.get(), train_.batch_size(), s, train_.seed() + 1);
  double total = 0.0;
  const int batches = std::max(1, train_.eval_batches());
  for (int i = 0; i < batches; ++i) {
    heldout.Next(&host_ids_, &host_targets_);
    MOE_RETURN_IF_ERROR(UploadSlice(*ctx_, host_ids_, rank_, ids_));
    MOE_RETURN_IF_ERROR(UploadSlice(*ctx_, host_targets_, rank_, targets_));
    MOE_ASSIGN_OR_RETURN(double loss, model_->Loss(*ctx_, ids_, targets_, local_batch_, s));
    total += loss;
  }
  std::vector<double> mean = {total};
  MOE_RETURN_IF_ERROR(MeanOverRanks(&mean));
  return mean[0] / batches;
}

Status Trainer::MeanOverRanks(std::vector<double>* values) {
  // The communicators reduce f32 at most, so the doubles travel as raw 64-bit words (AllGather
  // moves bytes) and are summed here in rank order.
  const int64_t n = static_cast<int64_t>(values->size());
  MOE_ASSIGN_OR_RETURN(Tensor mine, Tensor::Empty({n}, DType::kI64, Device::Cpu()));
  MOE_ASSIGN_OR_RETURN(Tensor all, Tensor::Empty({world_ * n}, DType::kI64, Device::Cpu()));
  std::memcpy(mine.data(), values->data(), n * sizeof(double));
  MOE_RETURN_IF_ERROR(host_comm_->AllGather(ExecContext::Cpu(), mine, all));
  const double* gathered = reinterpret_cast<const double*>(all.data());
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0;
    for (int r = 0; r < world_; ++r) sum += gathered[r * n + i];
    (*values)[i] = sum / world_;
  }
  return absl::OkStatus();
}

Status Trainer::ChooseModes() {
  std::vector<int> layers;
  std::vector<int64_t> loads;
  for (int l = 0; l < config_.model().num_layers(); ++l) {
    if (!model_->is_moe_layer(l)) continue;
    layers.push_back(l);
    loads.push_back(prev_max_rows_[l]);
  }
  // One collective for every layer's capacity bucket.
  MOE_ASSIGN_OR_RETURN(const std::vector<int64_t> buckets, AgreedCapacityBuckets(comm_, loads));
  for (size_t i = 0; i < layers.size(); ++i) {
    const int l = layers[i];
    keys_[l] = AdaptKey{l, buckets[i], model_->TopK(l)};
    MOE_ASSIGN_OR_RETURN(const ParallelMode mode, controller_->Choose(keys_[l]));
    model_->SetParallelMode(l, mode, /*measure=*/controller_->Measuring(keys_[l]));
  }
  model_->ResetMoEProfile();
  return absl::OkStatus();
}

Status Trainer::ReportModes() {
  for (int l = 0; l < config_.model().num_layers(); ++l) {
    if (!model_->is_moe_layer(l)) continue;
    MOE_RETURN_IF_ERROR(
        controller_->Report(keys_[l], model_->parallel_mode(l), model_->moe_ms()[l]));
    prev_max_rows_[l] = model_->moe_max_rows()[l];
  }
  return absl::OkStatus();
}

StatusOr<Trainer::StepResult> Trainer::Step(double lr) {
  const int64_t s = train_.seq_len();
  const int accum = std::max(1, train_.grad_accum());
  for (int l = 0; l < config_.model().num_layers(); ++l) {
    if (model_->is_moe_layer(l))
      MOE_RETURN_IF_ERROR(model_->SetTopK(l, TopKForLayer(config_, l, step_)));
  }
  if (controller_ != nullptr) MOE_RETURN_IF_ERROR(ChooseModes());
  MOE_RETURN_IF_ERROR(model_->ZeroGrads(*ctx_));
  StepResult result;
  // The global mean's gradient: each rank's local mean over W, each micro-batch's over accum.
  const float scale = 1.0f / static_cast<float>(accum * world_);
  // Loss and aux values stay on the device through the micro-batches and are read once, with the
  // gradient norm, below (the host-sync budget, docs/design.md section 4).
  MOE_RETURN_IF_ERROR(Fill(*ctx_, step_scalars_, 0.0));
  const TensorView sums(step_scalars_.data<float>() + 2, DType::kF32, {model_->StepScalarCount()},
                        device_);
  for (int micro = 0; micro < accum; ++micro) {
    loader_->Next(&host_ids_, &host_targets_);
    MOE_RETURN_IF_ERROR(UploadSlice(*ctx_, host_ids_, rank_, ids_));
    MOE_RETURN_IF_ERROR(UploadSlice(*ctx_, host_targets_, rank_, targets_));
    MOE_RETURN_IF_ERROR(model_->ForwardBackwardAccumulate(*ctx_, ids_, targets_, local_batch_, s,
                                                          scale, 1.0f / accum, sums));
  }
  if (controller_ != nullptr) MOE_RETURN_IF_ERROR(ReportModes());

  if (train_.debug_nan_step() == step_ + 1 && !nan_injected_) {
    // A deterministic non-finite gradient (train.debug_nan_step), to test nan_policy end to end;
    // once, so that a rollback does not meet it again.
    nan_injected_ = true;
    MOE_LOG(WARNING) << "train.debug_nan_step: poisoning the gradients of step " << step_ + 1
                     << " with NaN";
    MOE_RETURN_IF_ERROR(
        Fill(*ctx_, model_->params().front().grad, std::numeric_limits<double>::quiet_NaN()));
  }
  MOE_RETURN_IF_ERROR(ReduceGradients());
  MOE_ASSIGN_OR_RETURN(const Tensor host, CopyTo(*ctx_, step_scalars_, Device::Cpu()));  // the read
  const float* scalars = host.data<float>();
  result.grad_norm = std::sqrt(static_cast<double>(scalars[0]) + static_cast<double>(scalars[1]));
  const Model::StepScalars step = model_->ReadStepScalars(scalars + 2);
  std::vector<double> means = {step.loss, step.aux_total};
  for (const AuxLossValues& a : step.layer_aux) {
    means.insert(means.end(), {a.lbl, a.z_loss, a.top1_lbl, a.total});
  }
  MOE_RETURN_IF_ERROR(MeanOverRanks(&means));
  result.loss = means[0];
  result.aux = means[1];
  layer_aux_.assign(step.layer_aux.size(), AuxLossValues{});
  for (size_t l = 0; l < layer_aux_.size(); ++l) {
    layer_aux_[l] = {means[2 + 4 * l], means[3 + 4 * l], means[4 + 4 * l], means[5 + 4 * l]};
  }
  if (!std::isfinite(result.loss) || !std::isfinite(result.grad_norm)) return result;

  const OpScope optimizer(OpKind::kOptimizer);
  const double clip = train_.grad_clip();
  const float grad_scale =
      clip > 0 && result.grad_norm > clip ? static_cast<float>(clip / result.grad_norm) : 1.0f;
  for (ModelParam& p : model_->params()) {
    const AdamWConfig adam{static_cast<float>(lr), static_cast<float>(train_.beta1()),
                           static_cast<float>(train_.beta2()), static_cast<float>(train_.eps()),
                           p.decay ? static_cast<float>(train_.weight_decay()) : 0.0f};
    const bool shadow = p.compute.data() != p.master.data();
    MOE_RETURN_IF_ERROR(AdamWStep(*ctx_, adam, step_ + 1, grad_scale, p.master, p.grad, p.m, p.v,
                                  shadow ? p.compute.view() : TensorView()));
  }
  MOE_RETURN_IF_ERROR(model_->UpdateExpertBiases(*ctx_));
  result.applied = true;
  return result;
}

Status Trainer::ReduceGradients() {
  const OpScope optimizer(OpKind::kOptimizer);
  const TensorView replicated(step_scalars_.data(), DType::kF32, {1}, device_);
  const TensorView experts(step_scalars_.data<float>() + 1, DType::kF32, {1}, device_);
  for (ModelParam& p : model_->params()) {
    if (p.expert_shard) {
      // Already summed over the ranks by ParallelMoEBackward; each rank holds its own shard.
      MOE_RETURN_IF_ERROR(AccumulateSquaredNorm(*ctx_, p.grad, experts));
    } else {
      MOE_RETURN_IF_ERROR(comm_->AllReduceSum(*ctx_, p.grad));
      MOE_RETURN_IF_ERROR(AccumulateSquaredNorm(*ctx_, p.grad, replicated));
    }
  }
  return comm_->AllReduceSum(*ctx_, experts);
}

StatusOr<bool> Trainer::StopRequested() {
  MOE_ASSIGN_OR_RETURN(Tensor flag, Tensor::Empty({1}, DType::kI32, Device::Cpu()));
  flag.data<int32_t>()[0] =
      options_.stop_requested != nullptr && options_.stop_requested->load() ? 1 : 0;
  // A signal may reach the ranks at different steps: stop when any rank was asked to.
  MOE_RETURN_IF_ERROR(host_comm_->AllReduceSum(ExecContext::Cpu(), flag));
  return flag.data<int32_t>()[0] > 0;
}

void Trainer::WriteMetrics(const StepResult& result, double lr, double tokens_per_s,
                           int64_t host_syncs, const std::vector<RoutingStats>& stats,
                           const std::vector<double>& bias_max_abs, double eval_loss) {
  if (!metrics_.is_open()) return;
  // Model FLOPs at this step's top-k; peak memory: the allocator's high-water mark so far.
  const double tflops = tokens_per_s * model_->FlopsPerToken(train_.seq_len()) / 1e12;
  const double peak_mib = ctx_->allocator()->stats().peak_bytes_in_use / double(1 << 20);
  std::string line = absl::StrFormat(
      "{\"step\": %d, \"loss\": %.6f, \"aux_loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, "
      "\"tokens_per_s\": %.1f, \"tflops\": %.4g, \"peak_mem_mib\": %.1f, \"host_syncs\": %d, "
      "\"skipped_steps\": %d",
      step_, result.loss, result.aux, lr, result.grad_norm, tokens_per_s, tflops, peak_mib,
      host_syncs, skipped_);
  if (eval_loss >= 0) absl::StrAppend(&line, absl::StrFormat(", \"eval_loss\": %.6f", eval_loss));
  absl::StrAppend(&line, ", \"moe\": [");
  bool first = true;
  for (size_t l = 0; l < stats.size(); ++l) {
    if (!model_->is_moe_layer(static_cast<int>(l))) continue;
    const RoutingStats& st = stats[l];
    const AuxLossValues a = l < layer_aux_.size() ? layer_aux_[l] : AuxLossValues{};
    const std::string mode =
        distributed()
            ? absl::StrCat(", \"mode\": \"",
                           ParallelModeName(model_->parallel_mode(static_cast<int>(l))), "\"")
            : "";
    const std::string bias = l < bias_max_abs.size() && bias_max_abs[l] >= 0
                                 ? absl::StrFormat(", \"bias_max_abs\": %.6g", bias_max_abs[l])
                                 : "";
    absl::StrAppend(
        &line, first ? "" : ", ",
        absl::StrFormat("{\"layer\": %d, \"top_k\": %d, \"max_rel_dev\": %.4f, "
                        "\"min_rel_dev\": %.4f, \"dead_experts\": %d, "
                        "\"entropy_mean_p\": %.4f, \"lbl\": %.6g, \"z_loss\": %.6g, "
                        "\"top1_lbl\": %.6g, \"aux_total\": %.6g%s%s, "
                        "\"tokens_per_expert\": [%s], \"p_mean\": [%s]}",
                        l, model_->TopK(static_cast<int>(l)), st.max_rel_dev, st.min_rel_dev,
                        st.dead_experts, st.entropy_mean_p, a.lbl, a.z_loss, a.top1_lbl, a.total,
                        mode, bias, absl::StrJoin(st.tokens_per_expert, ", "),
                        absl::StrJoin(st.p_mean, ", ", [](std::string* out, double p) {
                          absl::StrAppend(out, absl::StrFormat("%.4g", p));
                        })));
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
  const std::string text =
      absl::StrFormat("step %d/%d  loss %.4f  %.0f tok/s  lr %.3g  imbalance %.2f  ETA %s", step_,
                      train_.steps(), loss, tokens_per_s, lr, imbalance, FormatEta(eta));
  if (tty_) {
    const int width = 24;
    const int filled =
        static_cast<int>(width * static_cast<double>(step_) / std::max<int64_t>(1, train_.steps()));
    std::fprintf(stderr, "\r[%s%s] %s\033[K", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), text.c_str());
    if (final_line) std::fputc('\n', stderr);
    std::fflush(stderr);
  } else {
    MOE_LOG(INFO) << text;
  }
}

Status Trainer::AfterStep(const StepResult& result, double lr, double seconds,
                          int64_t host_syncs_before, TrainSummary* summary) {
  const int64_t tokens_per_step = static_cast<int64_t>(train_.batch_size()) * train_.seq_len() *
                                  std::max(1, train_.grad_accum());
  const double tokens_per_s = tokens_per_step / std::max(seconds, 1e-9);
  MOE_ASSIGN_OR_RETURN(std::vector<RoutingStats> stats, model_->MoEStats(*ctx_));
  std::vector<double> bias_max_abs;  // read (a host sync per layer on a GPU) for the metrics only
  if (metrics_.is_open()) {
    MOE_ASSIGN_OR_RETURN(bias_max_abs, model_->ExpertBiasMaxAbs(*ctx_));
  }
  const int64_t host_syncs = ctx_->host_syncs() - host_syncs_before;
  double imbalance = 0.0;
  for (size_t l = 0; l < stats.size(); ++l) {
    if (model_->is_moe_layer(static_cast<int>(l)))
      imbalance = std::max(imbalance, stats[l].max_rel_dev);
  }
  double eval_loss = -1.0;
  const bool last = step_ == train_.steps();
  if ((train_.eval_interval() > 0 && step_ % train_.eval_interval() == 0) || last) {
    MOE_ASSIGN_OR_RETURN(eval_loss, Evaluate());
    summary->final_eval_loss = eval_loss;
    if (tty_) std::fputc('\n', stderr);
    if (leader()) {
      MOE_LOG(INFO) << absl::StrFormat("step %d: held-out loss %.4f (train %.4f)", step_, eval_loss,
                                       result.loss);
    }
  }
  WriteMetrics(result, lr, tokens_per_s, host_syncs, stats, bias_max_abs, eval_loss);
  const bool log_step = train_.log_interval() > 0 && step_ % train_.log_interval() == 0;
  if (leader() && (last || log_step || tty_)) {
    ShowProgress(result.loss, lr, tokens_per_s, imbalance, last);
  }
  const proto::CheckpointConfig& ckpt = config_.checkpoint();
  if (ckpt.interval() > 0 && (step_ % ckpt.interval() == 0 || last)) {
    MOE_RETURN_IF_ERROR(SaveCheckpoint());
  }
  return absl::OkStatus();
}

StatusOr<TrainSummary> Trainer::Run() {
  MOE_RETURN_IF_ERROR(Setup());
  MOE_RETURN_IF_ERROR(MaybeResume());
  std::string metrics_path = options_.metrics_path;
  if (metrics_path.empty() && !config_.checkpoint().dir().empty()) {
    metrics_path = config_.checkpoint().dir() + "/metrics.jsonl";
  }
  if (!metrics_path.empty() && leader()) {
    std::error_code ignored;
    std::filesystem::create_directories(std::filesystem::path(metrics_path).parent_path(), ignored);
    metrics_.open(metrics_path, std::ios::app);
    if (!metrics_) return absl::NotFoundError(absl::StrCat("cannot open ", metrics_path));
  }
  TrainSummary summary;
  start_ = Clock::now();
  start_step_ = step_;
  while (step_ < train_.steps()) {
    MOE_ASSIGN_OR_RETURN(summary.stopped_early, StopRequested());
    if (summary.stopped_early) break;
    const Clock::time_point t0 = Clock::now();
    const int64_t syncs_before = ctx_->host_syncs();
    const double lr = LearningRateAt(train_, step_) * lr_scale_;
    MOE_ASSIGN_OR_RETURN(const StepResult result, Step(lr));
    last_loss_ = result.loss;
    if (!result.applied) {
      MOE_RETURN_IF_ERROR(HandleNonFiniteStep(result));
      continue;
    }
    // A loss spike against the running mean of recent steps (once it has settled) rolls back.
    // With no checkpoint to return to, the step (already applied) stands.
    if (train_.spike_threshold() > 0 && ema_count_ >= 20 &&
        result.loss > train_.spike_threshold() * loss_ema_) {
      ++spikes_;
      MOE_ASSIGN_OR_RETURN(
          const bool rolled_back,
          Rollback(absl::StrFormat("loss spike %.4f > %.1f x running mean %.4f", result.loss,
                                   train_.spike_threshold(), loss_ema_)));
      if (rolled_back) continue;
      MOE_LOG(WARNING) << "step " << step_ + 1 << " stands: its update was applied";
    }
    loss_ema_ = ema_count_ == 0 ? result.loss : 0.95 * loss_ema_ + 0.05 * result.loss;
    ++ema_count_;
    ++step_;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (options_.on_step) options_.on_step(step_, seconds);
    MOE_RETURN_IF_ERROR(AfterStep(result, lr, seconds, syncs_before, &summary));
  }
  if (summary.stopped_early) {
    if (tty_) std::fputc('\n', stderr);
    MOE_LOG(INFO) << "stop requested: saving a checkpoint at step " << step_;
    MOE_RETURN_IF_ERROR(SaveCheckpoint());
  }
  summary.steps_done = step_;
  summary.final_loss = last_loss_;
  summary.skipped_steps = skipped_;
  summary.rollbacks = rollbacks_;
  summary.loss_spikes = spikes_;
  summary.leader = leader();
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

std::vector<ParallelMode> ParallelCandidates(int world, int node_size, int shards) {
  constexpr int kPipelineDegrees[] = {1, 2};
  return CandidateModes(world, node_size, shards, kPipelineDegrees);
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
  // Planned from the config alone: a model too large for this machine can still be planned.
  MOE_ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(config, device, dtype));
  const proto::TrainConfig& t = config.train();
  std::printf("sigma-moe-train dry run on %s (%s)\n", device.ToString().c_str(),
              std::string(DTypeName(dtype)).c_str());
  std::printf("  parameters       %lld total, %lld activated per token (%.1f%%)\n",
              static_cast<long long>(plan.parameters),
              static_cast<long long>(plan.activated_parameters),
              100.0 * plan.activated_parameters / plan.parameters);
  std::printf("  FLOPs per token  %.3g (forward + backward, at the final top-k)\n",
              plan.flops_per_token);
  std::printf("  tokens per step  %lld (%d x %d sequences of %d)\n",
              static_cast<long long>(t.batch_size()) * t.seq_len() * std::max(1, t.grad_accum()),
              std::max(1, t.grad_accum()), t.batch_size(), t.seq_len());
  std::printf("%s\n", DescribePlan(plan).c_str());
  std::printf(
      "  host syncs       %lld per step on a GPU (1 per MoE layer forward, 1 read of the "
      "loss, aux values and norm, 2 per MoE layer for the statistics, 1 more with an expert "
      "bias); metrics.jsonl has "
      "the measured count\n",
      static_cast<long long>(plan.host_syncs_per_step));
  if (device.is_cuda()) {
    MOE_ASSIGN_OR_RETURN(DeviceMemory memory, CudaMemory(device.index));
    const Status fits = CheckPlanFits(plan, device, static_cast<double>(memory.free_bytes));
    std::printf("  %s: %.2f GiB free of %.2f GiB: %s\n", device.ToString().c_str(),
                memory.free_bytes / double(1 << 30), memory.total_bytes / double(1 << 30),
                fits.ok() ? "fits" : "does NOT fit");
  }
  return absl::OkStatus();
}

StatusOr<std::string> Sample(const proto::RunConfig& config, const std::string& prompt,
                             int num_tokens, double temperature, uint64_t seed) {
  MOE_RETURN_IF_ERROR(ValidateConfig(config));
  MOE_ASSIGN_OR_RETURN(Device device, ResolveDevice(config));
  MOE_ASSIGN_OR_RETURN(DType dtype, ResolveDType(config, device));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExecContext> ctx, ExecContext::Create(device));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model,
                       Model::Create(SpecFromConfig(config, dtype), device));
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
      MOE_RETURN_IF_ERROR(
          Upload(*ctx, std::vector<int32_t>(tokens.end() - prefill, tokens.end()), ids));
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
    if (state.length() >= window)
      prefill = std::min<int64_t>(keep, static_cast<int64_t>(tokens.size()));
  }
  return out;
}

}  // namespace smoe
