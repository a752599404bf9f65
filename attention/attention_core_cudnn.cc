// cuDNN backend of attention_core.h (bf16 training attention): cuDNN's fused flash attention
// (SDPA) forward and backward through the cuDNN frontend's graph API. Built with MOE_WITH_CUDNN.
//
// Our [B, S, heads, D] row-major tensors are cuDNN's (B, H, S, D) dims with strides
// (S H D, D, H D, 1); lse [B, n_q, S] is its (B, n_q, S, 1) Stats (f32, natural log). K and V
// keep their own head counts: cuDNN checks n_q % n_k and n_q % n_v separately, maps query head i
// to K head floor(i n_k / n_q) and V head floor(i n_v / n_q), and reduces dK and dV over their
// query groups itself. Causal: the diagonal band with right bound 0, top-left aligned (S_q = S_kv).
//
// One graph per SdpaGraphKey (device, pass, shape), built on first use and kept for the process;
// a graph that does not build (cuDNN declines the shape, or this cuDNN lacks the engine) is logged
// once and the caller runs our kernels. One cuDNN handle per device and thread, bound to the
// context's stream before each launch.
#include <cuda_runtime.h>
#include <cudnn.h>

#include <atomic>
#include <cmath>
#include <exception>
#include <memory>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "attention/attention_core.h"
#include "runtime/core/logging.h"

// The frontend's JSON (de)serialization is not used: leaving it out saves compile time.
#define CUDNN_FRONTEND_SKIP_JSON_LIB 1
#include <cudnn_frontend.h>

namespace smoe::internal {
namespace {

namespace fe = cudnn_frontend;
using Graph = fe::graph::Graph;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

std::atomic<int64_t> runs{0};

SdpaGraphCache<Graph>& Cache() {
  static auto* cache = new SdpaGraphCache<Graph>();  // never destroyed: outlives every caller
  return *cache;
}

Status FeStatus(fe::error_t error, absl::string_view what) {
  if (error.is_good()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("cuDNN ", what, ": ", error.get_message()));
}

StatusOr<cudnnHandle_t> Handle(ExecContext& ctx) {
  thread_local std::unordered_map<int, cudnnHandle_t> handles;  // released with the process
  cudnnHandle_t& handle = handles[ctx.device().index];
  if (handle == nullptr) {
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) return absl::InternalError("cudaGetDevice");
    if (previous != ctx.device().index) (void)cudaSetDevice(ctx.device().index);
    const cudnnStatus_t status = cudnnCreate(&handle);
    if (previous != ctx.device().index) (void)cudaSetDevice(previous);
    if (status != CUDNN_STATUS_SUCCESS) {
      handle = nullptr;
      return absl::FailedPreconditionError(
          absl::StrCat("cudnnCreate: ", cudnnGetErrorString(status)));
    }
  }
  const cudnnStatus_t status = cudnnSetStream(handle, ctx.stream());
  if (status != CUDNN_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cudnnSetStream: ", cudnnGetErrorString(status)));
  }
  return handle;
}

// Sets t to our [B, S, heads, D] layout.
TensorPtr Bshd(const TensorPtr& t, Uid uid, const SdpaGraphKey& key, int64_t heads) {
  const int64_t d = key.head_dim;
  t->set_uid(uid)
      .set_dim({key.batch, heads, key.seq, d})
      .set_stride({key.seq * heads * d, d, heads * d, 1});
  return t;
}

TensorPtr Input(Graph& graph, const char* name, Uid uid, const SdpaGraphKey& key, int64_t heads) {
  return Bshd(graph.tensor(fe::graph::Tensor_attributes().set_name(name)), uid, key, heads);
}

// lse [B, n_q, S] as Stats (B, n_q, S, 1), f32.
TensorPtr Stats(const TensorPtr& t, const SdpaGraphKey& key) {
  t->set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim({key.batch, key.n_q, key.seq, 1})
      .set_stride({key.n_q * key.seq, key.seq, 1, 1});
  return t;
}

std::shared_ptr<Graph> NewGraph() {
  auto graph = std::make_shared<Graph>();
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return graph;
}

float Scale(const SdpaGraphKey& key) { return 1.0f / std::sqrt(static_cast<float>(key.head_dim)); }

// Validates the graph and builds its plans (heuristics mode A); an error is a decline.
Status Finish(Graph& graph, cudnnHandle_t handle) {
  MOE_RETURN_IF_ERROR(FeStatus(graph.validate(), "validate"));
  MOE_RETURN_IF_ERROR(FeStatus(graph.build_operation_graph(handle), "build_operation_graph"));
  MOE_RETURN_IF_ERROR(
      FeStatus(graph.create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans"));
  MOE_RETURN_IF_ERROR(FeStatus(graph.check_support(), "check_support"));
  return FeStatus(graph.build_plans(handle), "build_plans");
}

StatusOr<std::shared_ptr<Graph>> BuildForward(cudnnHandle_t handle, const SdpaGraphKey& key) {
  std::shared_ptr<Graph> graph = NewGraph();
  const TensorPtr q = Input(*graph, "q", kQ, key, key.n_q);
  const TensorPtr k = Input(*graph, "k", kK, key, key.n_k);
  const TensorPtr v = Input(*graph, "v", kV, key, key.n_v);
  auto options = fe::graph::SDPA_attributes()
                     .set_name("diffqkv_attention")
                     .set_generate_stats(true)
                     .set_attn_scale(Scale(key))
                     .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                     .set_diagonal_band_right_bound(0);
  auto [o, stats] = graph->sdpa(q, k, v, options);
  Bshd(o, kO, key, key.n_q)->set_output(true);
  Stats(stats, key)->set_output(true);
  MOE_RETURN_IF_ERROR(Finish(*graph, handle));
  return graph;
}

StatusOr<std::shared_ptr<Graph>> BuildBackward(cudnnHandle_t handle, const SdpaGraphKey& key) {
  std::shared_ptr<Graph> graph = NewGraph();
  const TensorPtr q = Input(*graph, "q", kQ, key, key.n_q);
  const TensorPtr k = Input(*graph, "k", kK, key, key.n_k);
  const TensorPtr v = Input(*graph, "v", kV, key, key.n_v);
  const TensorPtr o = Input(*graph, "o", kO, key, key.n_q);
  const TensorPtr d_o = Input(*graph, "dO", kDO, key, key.n_q);
  const TensorPtr stats = Stats(graph->tensor(fe::graph::Tensor_attributes().set_name("lse")), key);
  auto options = fe::graph::SDPA_backward_attributes()
                     .set_name("diffqkv_attention_backward")
                     .set_attn_scale(Scale(key))
                     .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                     .set_diagonal_band_right_bound(0)
                     .set_deterministic_algorithm(true);
  auto [dq, dk, dv] = graph->sdpa_backward(q, k, v, o, d_o, stats, options);
  Bshd(dq, kDQ, key, key.n_q)->set_output(true);
  Bshd(dk, kDK, key, key.n_k)->set_output(true);
  Bshd(dv, kDV, key, key.n_v)->set_output(true);
  MOE_RETURN_IF_ERROR(Finish(*graph, handle));
  return graph;
}

// The graph for `key` (built on first use), or null when cuDNN declines it (logged once).
StatusOr<std::shared_ptr<Graph>> GraphFor(const SdpaGraphKey& key, cudnnHandle_t handle) {
  bool declined_now = false;
  Status reason;
  std::shared_ptr<Graph> graph = Cache().Get(
      key,
      [&]() -> StatusOr<std::shared_ptr<Graph>> {
        try {
          return key.pass == AttentionPass::kForward ? BuildForward(handle, key)
                                                     : BuildBackward(handle, key);
        } catch (const std::exception& e) {
          return absl::FailedPreconditionError(absl::StrCat("cuDNN frontend: ", e.what()));
        }
      },
      &declined_now, &reason);
  if (declined_now) {
    MOE_LOG(WARNING) << "cuDNN declines the attention "
                     << (key.pass == AttentionPass::kForward ? "forward" : "backward")
                     << " for B=" << key.batch << " S=" << key.seq << " n_q=" << key.n_q
                     << " n_k=" << key.n_k << " n_v=" << key.n_v << " D=" << key.head_dim << " ("
                     << reason.message() << "); that shape runs our attention kernels";
  }
  return graph;
}

StatusOr<bool> Execute(ExecContext& ctx, AttentionPass pass, const AttentionDims& dims,
                       std::unordered_map<int64_t, void*>& pack) {
  MOE_ASSIGN_OR_RETURN(cudnnHandle_t handle, Handle(ctx));
  const SdpaGraphKey key = MakeSdpaGraphKey(ctx.device().index, pass, dims, DType::kBF16);
  MOE_ASSIGN_OR_RETURN(std::shared_ptr<Graph> graph, GraphFor(key, handle));
  if (graph == nullptr) return false;
  int64_t bytes = 0;
  MOE_RETURN_IF_ERROR(FeStatus(graph->get_workspace_size(bytes), "get_workspace_size"));
  void* workspace = nullptr;
  if (bytes > 0) {
    MOE_ASSIGN_OR_RETURN(workspace, ctx.Workspace(static_cast<size_t>(bytes)));
  }
  MOE_RETURN_IF_ERROR(FeStatus(graph->execute(handle, pack, workspace), "execute (attention)"));
  runs.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void* Mutable(const void* p) { return const_cast<void*>(p); }

}  // namespace

int64_t CudnnAttentionRuns() { return runs.load(std::memory_order_relaxed); }

StatusOr<bool> AttentionForwardCudnn(ExecContext& ctx, const AttentionDims& dims, const void* q,
                                     const void* k, const void* v, void* out, float* lse) {
  std::unordered_map<int64_t, void*> pack = {
      {kQ, Mutable(q)}, {kK, Mutable(k)}, {kV, Mutable(v)}, {kO, out}, {kStats, lse}};
  return Execute(ctx, AttentionPass::kForward, dims, pack);
}

StatusOr<bool> AttentionBackwardCudnn(ExecContext& ctx, const AttentionDims& dims, const void* q,
                                      const void* k, const void* v, const void* out,
                                      const float* lse, const void* dout, void* dq, void* dk,
                                      void* dv) {
  std::unordered_map<int64_t, void*> pack = {{kQ, Mutable(q)},
                                             {kK, Mutable(k)},
                                             {kV, Mutable(v)},
                                             {kO, Mutable(out)},
                                             {kStats, Mutable(lse)},
                                             {kDO, Mutable(dout)},
                                             {kDQ, dq},
                                             {kDK, dk},
                                             {kDV, dv}};
  return Execute(ctx, AttentionPass::kBackward, dims, pack);
}

}  // namespace smoe::internal
