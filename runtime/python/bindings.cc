// sigma_moe._C: the pybind11 extension behind the `sigma_moe` package (issue 6).
//
// Every function takes tensors as DLPack-exportable objects (dlpack.h: zero-copy, checked for
// dtype, device and contiguity) and writes caller-allocated outputs, as the C++ ops do; the
// torch-facing allocation and autograd live in the Python package. CUDA work is enqueued on the
// stream passed as `stream` (torch.cuda.current_stream().cuda_stream; 0 is the legacy default
// stream) through an ExecContext cached per (device, stream). Errors: errors.h. The GIL is held
// throughout, so one ExecContext is never used by two threads at once.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moe/moe_layer.h"
#include "runtime/device/exec_context.h"
#include "runtime/python/attention_bindings.h"
#include "runtime/python/context.h"
#include "runtime/python/dlpack.h"
#include "runtime/python/errors.h"
#include "runtime/python/state_handle.h"

namespace smoe::python {
namespace {

namespace py = pybind11;
using py::arg;

py::dict AuxToDict(const AuxLossValues& aux) {
  py::dict d;
  d["lbl"] = aux.lbl;
  d["z_loss"] = aux.z_loss;
  d["top1_lbl"] = aux.top1_lbl;
  d["total"] = aux.total;
  return d;
}

py::dict StatsToDict(const RoutingStats& s) {
  py::dict d;
  d["tokens_per_expert"] = s.tokens_per_expert;
  d["f"] = s.f;
  d["p_mean"] = s.p_mean;
  d["max_rel_dev"] = s.max_rel_dev;
  d["min_rel_dev"] = s.min_rel_dev;
  d["dead_experts"] = s.dead_experts;
  d["entropy_mean_p"] = s.entropy_mean_p;
  d["non_finite_rows"] = s.non_finite_rows;
  return d;
}

std::vector<int64_t> CountsFromOffsets(const std::vector<int64_t>& offsets) {
  std::vector<int64_t> counts;
  for (size_t i = 0; i + 1 < offsets.size(); ++i) counts.push_back(offsets[i + 1] - offsets[i]);
  return counts;
}

Status CheckOffsets(const std::vector<int64_t>& offsets, int64_t experts, int64_t rows) {
  if (static_cast<int64_t>(offsets.size()) != experts + 1) {
    return BadArgument("offsets", absl::StrCat(offsets.size(), " entries"),
                       absl::StrCat("E + 1 = ", experts + 1));
  }
  if (offsets.front() != 0 || offsets.back() != rows) {
    return BadArgument("offsets",
                       absl::StrCat("[", offsets.front(), ", ..., ", offsets.back(), "]"),
                       absl::StrCat("0 first and R = ", rows, " last"));
  }
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] < offsets[i - 1]) {
      return BadArgument(absl::StrCat("offsets[", i, "]"), absl::StrCat(offsets[i]),
                         absl::StrCat(">= offsets[", i - 1, "] = ", offsets[i - 1]));
    }
  }
  return absl::OkStatus();
}

void BindMoE(py::module_& m) {
  py::class_<MoELayerConfig>(m, "MoEConfig", "MoELayerConfig of moe/moe_layer.h.")
      .def(py::init([](int64_t model_dim, int64_t ffn_dim, int num_experts, int top_k,
                       bool renormalize, float capacity_factor, const std::string& dtype,
                       float lbl_coef, bool global_lbl, float z_coef, float top1_lbl_coef) {
             MoELayerConfig c;
             c.model_dim = model_dim;
             c.ffn_dim = ffn_dim;
             c.num_experts = num_experts;
             c.top_k = top_k;
             c.renormalize = renormalize;
             c.capacity_factor = capacity_factor;
             c.dtype = ParseDTypeOrThrow(dtype);
             c.aux.lbl_coef = lbl_coef;
             c.aux.global_lbl = global_lbl;
             c.aux.z_coef = z_coef;
             c.aux.top1_lbl_coef = top1_lbl_coef;
             ThrowIfError(ValidateMoEConfig(c));
             return c;
           }),
           arg("model_dim"), arg("ffn_dim"), arg("num_experts"), py::kw_only(), arg("top_k") = 1,
           arg("renormalize") = false, arg("capacity_factor") = 0.0f, arg("dtype") = "f32",
           arg("lbl_coef") = 0.0f, arg("global_lbl") = false, arg("z_coef") = 0.0f,
           arg("top1_lbl_coef") = 0.0f)
      .def_readonly("model_dim", &MoELayerConfig::model_dim)
      .def_readonly("ffn_dim", &MoELayerConfig::ffn_dim)
      .def_readonly("num_experts", &MoELayerConfig::num_experts)
      .def_property(
          "top_k", [](const MoELayerConfig& c) { return c.top_k; },
          [](MoELayerConfig& c, int k) {
            MoELayerConfig next = c;
            next.top_k = k;
            ThrowIfError(ValidateMoEConfig(next));
            c.top_k = k;
          })
      .def_readonly("renormalize", &MoELayerConfig::renormalize)
      .def_readonly("capacity_factor", &MoELayerConfig::capacity_factor)
      .def_property_readonly(
          "dtype", [](const MoELayerConfig& c) { return std::string(DTypeName(c.dtype)); })
      .def_property_readonly("lbl_coef", [](const MoELayerConfig& c) { return c.aux.lbl_coef; })
      .def_property_readonly("z_coef", [](const MoELayerConfig& c) { return c.aux.z_coef; })
      .def_property_readonly("top1_lbl_coef",
                             [](const MoELayerConfig& c) { return c.aux.top1_lbl_coef; });

  py::class_<MoEState, std::shared_ptr<MoEState>>(
      m, "MoEState", "What moe_forward saved for moe_backward (activations, routing, plan).")
      .def_readonly("valid", &MoEState::valid)
      .def_readonly("top_k", &MoEState::top_k)
      .def_property_readonly("num_tokens", [](const MoEState& s) { return s.plan.num_tokens; })
      .def_property_readonly("capacity", [](const MoEState& s) { return s.plan.capacity; })
      .def_property_readonly("num_rows", [](const MoEState& s) { return s.plan.num_rows(); })
      .def_property_readonly("dropped", [](const MoEState& s) { return s.plan.dropped_host; })
      .def_property_readonly(
          "rows_per_expert",
          [](const MoEState& s) { return CountsFromOffsets(s.plan.offsets_host); })
      .def("logits", [](const MoEState& s) { return Export(s.logits); })
      .def("probs", [](const MoEState& s) { return Export(s.probs); })
      .def("topk_idx", [](const MoEState& s) { return Export(s.topk_idx); })
      .def("gates", [](const MoEState& s) { return Export(s.gates); })
      .def(
          "d_logits_aux", [](const MoEState& s) { return Export(s.d_logits_aux); },
          "[T, E] f32: the aux losses' gradient with respect to the router logits (scale 1).");

  m.def(
      "moe_forward",
      [](const MoELayerConfig& config, py::handle w_gate, py::handle w1, py::handle w3,
         py::handle w2, py::handle x, py::handle y, py::handle expert_bias, uintptr_t stream) {
        BorrowedTensor x_t = Take(x, "x"), y_t = Take(y, "y");
        BorrowedTensor wg = Take(w_gate, "w_gate"), w1_t = Take(w1, "w1"), w3_t = Take(w3, "w3"),
                       w2_t = Take(w2, "w2");
        BorrowedTensor bias = Take(expert_bias, "expert_bias", /*allow_none=*/true);
        DeviceGuard guard(x_t.view().device());
        ExecContext& ctx = ContextFor(x_t.view().device(), stream);
        auto state = std::make_shared<MoEState>();
        const AuxLossValues aux = ValueOrThrow(
            MoEForward(ctx, config, {wg, w1_t, w3_t, w2_t}, x_t, y_t, state.get(), nullptr, bias));
        return py::make_tuple(state, AuxToDict(aux));
      },
      arg("config"), arg("w_gate"), arg("w1"), arg("w3"), arg("w2"), arg("x"), arg("y"),
      py::kw_only(), arg("expert_bias") = py::none(), arg("stream") = 0,
      "Writes y [T, M]; returns (MoEState, aux-loss values). The caller keeps x alive and "
      "unchanged until moe_backward.");

  m.def(
      "moe_backward",
      [](const MoELayerConfig& config, py::handle w_gate, py::handle w1, py::handle w3,
         py::handle w2, const MoEState& saved, py::handle dy, py::handle dx, py::handle g_w_gate,
         py::handle g_w1, py::handle g_w3, py::handle g_w2, bool accumulate, float aux_grad_scale,
         py::handle x, uintptr_t stream) {
        BorrowedTensor dy_t = Take(dy, "dy"), dx_t = Take(dx, "dx");
        BorrowedTensor x_t = Take(x, "x", /*allow_none=*/true);
        // A copy of the state (its tensors are shared, not copied) reading the x given.
        MoEState state = saved;
        if (!x.is_none()) {
          const TensorView& xv = x_t.view();
          if (!saved.valid || xv.shape() != saved.x.shape() || xv.dtype() != saved.x.dtype() ||
              xv.device() != saved.x.device()) {
            ThrowIfError(BadArgument(
                "x",
                absl::StrCat(xv.shape().ToString(), " ", DTypeName(xv.dtype()), " on ",
                             xv.device().ToString()),
                absl::StrCat("the forward's x: ", saved.x.shape().ToString(), " ",
                             DTypeName(saved.x.dtype()), " on ", saved.x.device().ToString())));
          }
          state.x = xv;
        }
        BorrowedTensor wg = Take(w_gate, "w_gate"), w1_t = Take(w1, "w1"), w3_t = Take(w3, "w3"),
                       w2_t = Take(w2, "w2");
        BorrowedTensor gwg = Take(g_w_gate, "grad_w_gate"), gw1 = Take(g_w1, "grad_w1"),
                       gw3 = Take(g_w3, "grad_w3"), gw2 = Take(g_w2, "grad_w2");
        DeviceGuard guard(dy_t.view().device());
        ExecContext& ctx = ContextFor(dy_t.view().device(), stream);
        ThrowIfError(MoEBackward(ctx, config, {wg, w1_t, w3_t, w2_t}, state, dy_t, dx_t,
                                 {gwg, gw1, gw3, gw2}, accumulate, aux_grad_scale));
      },
      arg("config"), arg("w_gate"), arg("w1"), arg("w3"), arg("w2"), arg("state"), arg("dy"),
      arg("dx"), arg("grad_w_gate"), arg("grad_w1"), arg("grad_w3"), arg("grad_w2"), py::kw_only(),
      arg("accumulate") = false, arg("aux_grad_scale") = 1.0f, arg("x") = py::none(),
      arg("stream") = 0,
      "Writes dx (overwrite) and the f32 parameter gradients (overwrite, or add when accumulate); "
      "the aux losses' gradient enters scaled by aux_grad_scale. `x`, when given, is read instead "
      "of the forward's x (same shape, dtype, device, and the same values).");

  m.def(
      "moe_state_with_aux_buffer",
      [](const MoEState& saved) {
        if (!saved.valid) {
          ThrowIfError(absl::FailedPreconditionError("MoE state: not from a successful forward"));
        }
        // A copy (its tensors shared) whose aux gradient is a fresh buffer of the same shape.
        auto state = std::make_shared<MoEState>(saved);
        const Device device = saved.d_logits_aux.device();
        DeviceGuard guard(device);
        state->d_logits_aux =
            ValueOrThrow(Tensor::Empty(saved.d_logits_aux.shape(), DType::kF32, device));
        return py::make_tuple(state, Export(state->d_logits_aux));
      },
      arg("state"),
      "(a copy of `state` sharing its tensors but for d_logits_aux, that new uninitialized "
      "[T, E] f32 buffer as a DLPack capsule). Fill the buffer (e.g. with state.d_logits_aux() "
      "times the aux loss's incoming gradient, on the device) and pass the copy to moe_backward "
      "with aux_grad_scale=1: the aux gradient's scale never goes through the host.");

  m.def(
      "moe_state_handle",
      [](std::shared_ptr<MoEState> state) {
        return MakeStateHandle(std::move(state), StateKind::kMoE);
      },
      arg("state"),
      "A DLPack capsule of a [1] int64 CPU tensor that owns `state` (state_handle.h): "
      "torch.from_dlpack it, pass the tensor around, get the state back with "
      "moe_state_from_handle.");
  m.def(
      "moe_state_from_handle",
      [](py::handle handle) {
        return StateFromHandleOrThrow<MoEState>(handle, StateKind::kMoE, "handle");
      },
      arg("handle"), "The MoEState a moe_state_handle tensor owns (ValueError if none).");

  m.def(
      "moe_stats",
      [](const MoEState& state, uintptr_t stream) {
        if (!state.valid) ThrowIfError(absl::FailedPreconditionError("moe_stats before a forward"));
        const Device device = state.probs.device();
        DeviceGuard guard(device);
        return StatsToDict(ValueOrThrow(MoEStats(ContextFor(device, stream), state)));
      },
      arg("state"), py::kw_only(), arg("stream") = 0, "Routing statistics (host sync).");
}

void BindPieces(py::module_& m) {
  m.def(
      "router_forward",
      [](py::handle x, py::handle w_gate, py::handle logits, py::handle probs, py::handle topk_idx,
         py::handle topk_gates, bool renormalize, py::handle expert_bias, uintptr_t stream) {
        BorrowedTensor x_t = Take(x, "x"), wg = Take(w_gate, "w_gate"), lg = Take(logits, "logits"),
                       pr = Take(probs, "probs"), idx = Take(topk_idx, "topk_idx"),
                       gates = Take(topk_gates, "topk_gates"),
                       bias = Take(expert_bias, "expert_bias", true);
        const RouterConfig config{static_cast<int>(wg.view().rank() == 2 ? wg.view().dim(1) : 0),
                                  static_cast<int>(idx.view().rank() == 2 ? idx.view().dim(1) : 0),
                                  renormalize};
        DeviceGuard guard(x_t.view().device());
        ThrowIfError(RouterForward(ContextFor(x_t.view().device(), stream), config, x_t, wg, bias,
                                   lg, pr, idx, gates));
      },
      arg("x"), arg("w_gate"), arg("logits"), arg("probs"), arg("topk_idx"), arg("topk_gates"),
      py::kw_only(), arg("renormalize") = false, arg("expert_bias") = py::none(), arg("stream") = 0,
      "moe/router/router.h RouterForward; E from w_gate, K from topk_idx.");

  m.def(
      "router_backward",
      [](py::handle x, py::handle w_gate, py::handle probs, py::handle topk_idx,
         py::handle d_topk_gates, py::handle dx, py::handle dw_gate, bool renormalize,
         py::handle d_logits_extra, bool accumulate, uintptr_t stream) {
        BorrowedTensor x_t = Take(x, "x"), wg = Take(w_gate, "w_gate"), pr = Take(probs, "probs"),
                       idx = Take(topk_idx, "topk_idx"), dg = Take(d_topk_gates, "d_topk_gates"),
                       dx_t = Take(dx, "dx"), dwg = Take(dw_gate, "dw_gate"),
                       extra = Take(d_logits_extra, "d_logits_extra", true);
        const RouterConfig config{static_cast<int>(wg.view().rank() == 2 ? wg.view().dim(1) : 0),
                                  static_cast<int>(idx.view().rank() == 2 ? idx.view().dim(1) : 0),
                                  renormalize};
        DeviceGuard guard(x_t.view().device());
        ThrowIfError(RouterBackward(ContextFor(x_t.view().device(), stream), config, x_t, wg, pr,
                                    idx, dg, extra, dx_t, dwg, accumulate));
      },
      arg("x"), arg("w_gate"), arg("probs"), arg("topk_idx"), arg("d_topk_gates"), arg("dx"),
      arg("dw_gate"), py::kw_only(), arg("renormalize") = false, arg("d_logits_extra") = py::none(),
      arg("accumulate") = false, arg("stream") = 0, "moe/router/router.h RouterBackward.");

  m.def(
      "aux_loss",
      [](py::handle logits, py::handle probs, py::handle topk_idx, py::handle d_logits,
         float lbl_coef, float z_coef, float top1_lbl_coef, uintptr_t stream) {
        BorrowedTensor lg = Take(logits, "logits"), pr = Take(probs, "probs"),
                       idx = Take(topk_idx, "topk_idx"), dl = Take(d_logits, "d_logits");
        AuxLossConfig config;
        config.lbl_coef = lbl_coef;
        config.z_coef = z_coef;
        config.top1_lbl_coef = top1_lbl_coef;
        DeviceGuard guard(lg.view().device());
        return AuxToDict(ValueOrThrow(AuxLossForwardBackward(ContextFor(lg.view().device(), stream),
                                                             config, lg, pr, idx, nullptr, dl)));
      },
      arg("logits"), arg("probs"), arg("topk_idx"), arg("d_logits"), py::kw_only(),
      arg("lbl_coef") = 0.0f, arg("z_coef") = 0.0f, arg("top1_lbl_coef") = 0.0f, arg("stream") = 0,
      "moe/router/aux_loss.h: returns the values, writes d total / d logits (host sync on CUDA).");

  m.def(
      "routing_stats",
      [](py::handle probs, py::handle topk_idx, uintptr_t stream) {
        BorrowedTensor pr = Take(probs, "probs"), idx = Take(topk_idx, "topk_idx");
        DeviceGuard guard(pr.view().device());
        return StatsToDict(
            ValueOrThrow(ComputeRoutingStats(ContextFor(pr.view().device(), stream), pr, idx)));
      },
      arg("probs"), arg("topk_idx"), py::kw_only(), arg("stream") = 0);

  py::class_<RoutingPlan, std::shared_ptr<RoutingPlan>>(
      m, "RoutingPlan", "moe/dispatch/routing_plan.h; tensors are exported through DLPack.")
      .def_readonly("num_tokens", &RoutingPlan::num_tokens)
      .def_readonly("top_k", &RoutingPlan::top_k)
      .def_readonly("num_experts", &RoutingPlan::num_experts)
      .def_readonly("capacity", &RoutingPlan::capacity)
      .def_readonly("offsets", &RoutingPlan::offsets_host)
      .def_readonly("dropped", &RoutingPlan::dropped_host)
      .def_property_readonly("num_rows", &RoutingPlan::num_rows)
      .def("counts_tensor", [](const RoutingPlan& p) { return Export(p.counts); })
      .def("offsets_tensor", [](const RoutingPlan& p) { return Export(p.offsets); })
      .def("slots_tensor", [](const RoutingPlan& p) { return Export(p.slots); })
      .def("row_token_tensor", [](const RoutingPlan& p) { return Export(p.row_token); })
      .def("row_choice_tensor", [](const RoutingPlan& p) { return Export(p.row_choice); });

  m.def(
      "build_routing_plan",
      [](py::handle topk_idx, int num_experts, float capacity_factor, uintptr_t stream) {
        BorrowedTensor idx = Take(topk_idx, "topk_idx");
        const PlanConfig config{num_experts,
                                static_cast<int>(idx.view().rank() == 2 ? idx.view().dim(1) : 0),
                                capacity_factor};
        auto plan = std::make_shared<RoutingPlan>();
        DeviceGuard guard(idx.view().device());
        ThrowIfError(
            BuildRoutingPlan(ContextFor(idx.view().device(), stream), config, idx, plan.get()));
        return plan;
      },
      arg("topk_idx"), arg("num_experts"), py::kw_only(), arg("capacity_factor") = 0.0f,
      arg("stream") = 0, "Host sync on CUDA (the offsets).");

  m.def(
      "permute",
      [](const RoutingPlan& plan, py::handle x, py::handle xs, uintptr_t stream) {
        BorrowedTensor x_t = Take(x, "x"), xs_t = Take(xs, "xs");
        DeviceGuard guard(x_t.view().device());
        ThrowIfError(Permute(ContextFor(x_t.view().device(), stream), plan, x_t, xs_t));
      },
      arg("plan"), arg("x"), arg("xs"), py::kw_only(), arg("stream") = 0);
  m.def(
      "permute_backward",
      [](const RoutingPlan& plan, py::handle dxs, py::handle dx, uintptr_t stream) {
        BorrowedTensor dxs_t = Take(dxs, "dxs"), dx_t = Take(dx, "dx");
        DeviceGuard guard(dx_t.view().device());
        ThrowIfError(PermuteBackward(ContextFor(dx_t.view().device(), stream), plan, dxs_t, dx_t));
      },
      arg("plan"), arg("dxs"), arg("dx"), py::kw_only(), arg("stream") = 0);
  m.def(
      "combine",
      [](const RoutingPlan& plan, py::handle ys, py::handle gates, py::handle y, uintptr_t stream) {
        BorrowedTensor ys_t = Take(ys, "ys"), g = Take(gates, "gates"), y_t = Take(y, "y");
        DeviceGuard guard(y_t.view().device());
        ThrowIfError(Combine(ContextFor(y_t.view().device(), stream), plan, ys_t, g, y_t));
      },
      arg("plan"), arg("ys"), arg("gates"), arg("y"), py::kw_only(), arg("stream") = 0);
  m.def(
      "combine_backward",
      [](const RoutingPlan& plan, py::handle dy, py::handle ys, py::handle gates, py::handle dys,
         py::handle dgates, uintptr_t stream) {
        BorrowedTensor dy_t = Take(dy, "dy"), ys_t = Take(ys, "ys"), g = Take(gates, "gates"),
                       dys_t = Take(dys, "dys"), dg = Take(dgates, "dgates");
        DeviceGuard guard(dy_t.view().device());
        ThrowIfError(CombineBackward(ContextFor(dy_t.view().device(), stream), plan, dy_t, ys_t, g,
                                     dys_t, dg));
      },
      arg("plan"), arg("dy"), arg("ys"), arg("gates"), arg("dys"), arg("dgates"), py::kw_only(),
      arg("stream") = 0);

  m.def(
      "experts_forward",
      [](py::handle w1, py::handle w3, py::handle w2, py::handle xs,
         const std::vector<int64_t>& offsets, py::handle h1, py::handle h3, py::handle act,
         py::handle ys, uintptr_t stream) {
        BorrowedTensor w1_t = Take(w1, "w1"), w3_t = Take(w3, "w3"), w2_t = Take(w2, "w2"),
                       xs_t = Take(xs, "xs"), h1_t = Take(h1, "h1"), h3_t = Take(h3, "h3"),
                       act_t = Take(act, "act"), ys_t = Take(ys, "ys");
        ThrowIfError(CheckOffsets(offsets, w1_t.view().rank() == 3 ? w1_t.view().dim(0) : 0,
                                  xs_t.view().rank() >= 1 ? xs_t.view().dim(0) : 0));
        DeviceGuard guard(xs_t.view().device());
        ThrowIfError(ExpertsForward(ContextFor(xs_t.view().device(), stream), {w1_t, w3_t, w2_t},
                                    xs_t, std::span<const int64_t>(offsets), {h1_t, h3_t, act_t},
                                    ys_t));
      },
      arg("w1"), arg("w3"), arg("w2"), arg("xs"), arg("offsets"), arg("h1"), arg("h3"), arg("act"),
      arg("ys"), py::kw_only(), arg("stream") = 0,
      "moe/experts/experts.h ExpertsForward; offsets: host list of E + 1 row offsets.");
  m.def(
      "experts_backward",
      [](py::handle w1, py::handle w3, py::handle w2, py::handle xs,
         const std::vector<int64_t>& offsets, py::handle h1, py::handle h3, py::handle act,
         py::handle dys, py::handle dxs, py::handle dw1, py::handle dw3, py::handle dw2,
         bool accumulate, uintptr_t stream) {
        BorrowedTensor w1_t = Take(w1, "w1"), w3_t = Take(w3, "w3"), w2_t = Take(w2, "w2"),
                       xs_t = Take(xs, "xs"), h1_t = Take(h1, "h1"), h3_t = Take(h3, "h3"),
                       act_t = Take(act, "act"), dys_t = Take(dys, "dys"), dxs_t = Take(dxs, "dxs"),
                       dw1_t = Take(dw1, "dw1"), dw3_t = Take(dw3, "dw3"), dw2_t = Take(dw2, "dw2");
        ThrowIfError(CheckOffsets(offsets, w1_t.view().rank() == 3 ? w1_t.view().dim(0) : 0,
                                  xs_t.view().rank() >= 1 ? xs_t.view().dim(0) : 0));
        DeviceGuard guard(xs_t.view().device());
        ThrowIfError(ExpertsBackward(ContextFor(xs_t.view().device(), stream), {w1_t, w3_t, w2_t},
                                     xs_t, std::span<const int64_t>(offsets), {h1_t, h3_t, act_t},
                                     dys_t, dxs_t, {dw1_t, dw3_t, dw2_t}, accumulate));
      },
      arg("w1"), arg("w3"), arg("w2"), arg("xs"), arg("offsets"), arg("h1"), arg("h3"), arg("act"),
      arg("dys"), arg("dxs"), arg("dw1"), arg("dw3"), arg("dw2"), py::kw_only(),
      arg("accumulate") = false, arg("stream") = 0, "moe/experts/experts.h ExpertsBackward.");
}

}  // namespace
}  // namespace smoe::python

PYBIND11_MODULE(_C, m) {
  m.doc() = "sigma-moe kernels (use the sigma_moe package rather than this module directly)";
  m.def("built_with_cuda", &smoe::BuiltWithCuda);
  m.def("cuda_device_count", &smoe::CudaDeviceCount);
  smoe::python::BindMoE(m);
  smoe::python::BindPieces(m);
  smoe::python::BindAttention(m);
}
