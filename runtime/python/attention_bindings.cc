#include "runtime/python/attention_bindings.h"

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "attention/diffqkv.h"
#include "runtime/python/context.h"
#include "runtime/python/dlpack.h"
#include "runtime/python/errors.h"
#include "runtime/python/state_handle.h"

namespace smoe::python {
namespace {

namespace py = pybind11;
using py::arg;

// What diffqkv_forward saved, with what it was computed from, so that a backward with another
// config, device or dtype is refused instead of reading tensors of the wrong shape.
struct DiffQkvState {
  bool valid = false;
  DiffQkvConfig config;
  Device device;
  DType dtype = DType::kF32;
  int64_t batch = 0;
  int64_t seq = 0;
  DiffQkvSaved saved;
};

bool SameConfig(const DiffQkvConfig& a, const DiffQkvConfig& b) {
  return a.model_dim == b.model_dim && a.n_q == b.n_q && a.n_k == b.n_k && a.n_v == b.n_v &&
         a.head_dim == b.head_dim && a.d_aug == b.d_aug && a.qk_norm == b.qk_norm &&
         a.rope_theta == b.rope_theta;
}

std::string ConfigRepr(const DiffQkvConfig& c) {
  return absl::StrCat("DiffQkvConfig(model_dim=", c.model_dim, ", n_q=", c.n_q, ", n_k=", c.n_k,
                      ", n_v=", c.n_v, ", head_dim=", c.head_dim, ", d_aug=", c.d_aug,
                      ", qk_norm=", c.qk_norm ? "True" : "False", ", rope_theta=", c.rope_theta,
                      ")");
}

// An optional tensor argument that must be given exactly when `used` (the config's d_aug > 0 or
// qk_norm): a stray or missing one is a ValueError naming it and the config field.
BorrowedTensor TakeOptional(py::handle object, const char* name, bool used, const char* because) {
  if (used && object.is_none()) {
    ThrowIfError(BadArgument(name, "None", absl::StrCat("a tensor (config.", because, ")")));
  }
  if (!used && !object.is_none()) {
    ThrowIfError(BadArgument(name, "a tensor", absl::StrCat("None (not config.", because, ")")));
  }
  return Take(object, name, /*allow_none=*/true);
}

// The borrowed tensors behind a DiffQkvParams (they must outlive the call that uses the views).
struct BorrowedParams {
  BorrowedTensor w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm;

  DiffQkvParams View() const {
    return {w_q, w_k, w_v, w_o, {w_gate, w_up, w_down}, q_norm, k_norm};
  }
};

BorrowedParams TakeParams(const DiffQkvConfig& c, const char* prefix, py::handle w_q,
                          py::handle w_k, py::handle w_v, py::handle w_o, py::handle w_gate,
                          py::handle w_up, py::handle w_down, py::handle q_norm,
                          py::handle k_norm) {
  const bool aug = c.d_aug > 0;
  auto name = [&](const char* field) { return absl::StrCat(prefix, field); };
  BorrowedParams p;
  p.w_q = Take(w_q, name("w_q").c_str());
  p.w_k = Take(w_k, name("w_k").c_str());
  p.w_v = Take(w_v, name("w_v").c_str());
  p.w_o = Take(w_o, name("w_o").c_str());
  p.w_gate = TakeOptional(w_gate, name("w_gate").c_str(), aug, "d_aug > 0");
  p.w_up = TakeOptional(w_up, name("w_up").c_str(), aug, "d_aug > 0");
  p.w_down = TakeOptional(w_down, name("w_down").c_str(), aug, "d_aug > 0");
  p.q_norm = TakeOptional(q_norm, name("q_norm").c_str(), c.qk_norm, "qk_norm");
  p.k_norm = TakeOptional(k_norm, name("k_norm").c_str(), c.qk_norm, "qk_norm");
  return p;
}

}  // namespace

void BindAttention(py::module_& m) {
  py::class_<DiffQkvConfig>(m, "DiffQkvConfig", "DiffQkvConfig of attention/diffqkv.h.")
      .def(py::init([](int64_t model_dim, int64_t n_q, int64_t n_k, int64_t n_v, int64_t head_dim,
                       int64_t d_aug, bool qk_norm, double rope_theta) {
             DiffQkvConfig c;
             c.model_dim = model_dim;
             c.n_q = n_q;
             c.n_k = n_k;
             c.n_v = n_v;
             c.head_dim = head_dim;
             c.d_aug = d_aug;
             c.qk_norm = qk_norm;
             c.rope_theta = rope_theta;
             ThrowIfError(ValidateDiffQkvConfig(c, Device::Cpu()));
             return c;
           }),
           arg("model_dim"), arg("n_q"), arg("n_k"), arg("n_v"), arg("head_dim"), py::kw_only(),
           arg("d_aug") = 0, arg("qk_norm") = false, arg("rope_theta") = 10000.0,
           "Validated for the CPU; validate(cuda=True) adds the CUDA kernels' head_dim limits.")
      .def_readonly("model_dim", &DiffQkvConfig::model_dim)
      .def_readonly("n_q", &DiffQkvConfig::n_q)
      .def_readonly("n_k", &DiffQkvConfig::n_k)
      .def_readonly("n_v", &DiffQkvConfig::n_v)
      .def_readonly("head_dim", &DiffQkvConfig::head_dim)
      .def_readonly("d_aug", &DiffQkvConfig::d_aug)
      .def_readonly("qk_norm", &DiffQkvConfig::qk_norm)
      .def_readonly("rope_theta", &DiffQkvConfig::rope_theta)
      .def(
          "validate",
          [](const DiffQkvConfig& c, bool cuda) {
            ThrowIfError(ValidateDiffQkvConfig(c, cuda ? Device::Cuda() : Device::Cpu()));
          },
          py::kw_only(), arg("cuda") = false, "ValueError naming the field unless usable there.")
      .def("__repr__", &ConfigRepr)
      .def(py::pickle(  // modules holding a config can be deep-copied and saved whole
          [](const DiffQkvConfig& c) {
            return py::make_tuple(c.model_dim, c.n_q, c.n_k, c.n_v, c.head_dim, c.d_aug, c.qk_norm,
                                  c.rope_theta);
          },
          [](const py::tuple& t) {
            if (t.size() != 8) {
              ThrowIfError(
                  BadArgument("DiffQkvConfig state", absl::StrCat(t.size(), " fields"), "8"));
            }
            DiffQkvConfig c;
            c.model_dim = t[0].cast<int64_t>();
            c.n_q = t[1].cast<int64_t>();
            c.n_k = t[2].cast<int64_t>();
            c.n_v = t[3].cast<int64_t>();
            c.head_dim = t[4].cast<int64_t>();
            c.d_aug = t[5].cast<int64_t>();
            c.qk_norm = t[6].cast<bool>();
            c.rope_theta = t[7].cast<double>();
            ThrowIfError(ValidateDiffQkvConfig(c, Device::Cpu()));
            return c;
          }));

  py::class_<DiffQkvState, std::shared_ptr<DiffQkvState>>(
      m, "DiffQkvState",
      "What diffqkv_forward saved for diffqkv_backward (projections, RoPE'd q and k, attention "
      "output, softmax log-sum-exp). Opaque; the accessors export views for inspection.")
      .def_readonly("valid", &DiffQkvState::valid)
      .def_readonly("batch", &DiffQkvState::batch)
      .def_readonly("seq", &DiffQkvState::seq)
      .def_property_readonly("config", [](const DiffQkvState& s) { return s.config; })
      .def_property_readonly("dtype",
                             [](const DiffQkvState& s) { return std::string(DTypeName(s.dtype)); })
      .def_property_readonly("device", [](const DiffQkvState& s) { return s.device.ToString(); })
      .def(
          "q_rope", [](const DiffQkvState& s) { return Export(s.saved.q_rope); },
          "[B, S, n_q, D]: the attention's queries (after AugQ, QK-norm, RoPE).")
      .def(
          "k_rope", [](const DiffQkvState& s) { return Export(s.saved.k_rope); },
          "[B, S, n_k, D]: the attention's keys (after QK-norm, RoPE).")
      .def(
          "v", [](const DiffQkvState& s) { return Export(s.saved.v); }, "[B, S, n_v, D].")
      .def(
          "attention_output", [](const DiffQkvState& s) { return Export(s.saved.o); },
          "[B, S, n_q, D]: concat(o_i) before W_o.")
      .def(
          "lse", [](const DiffQkvState& s) { return Export(s.saved.lse); },
          "[B, n_q, S] f32: log-sum-exp of every softmax row.");

  m.def(
      "diffqkv_state_handle",
      [](std::shared_ptr<DiffQkvState> state) {
        return MakeStateHandle(std::move(state), StateKind::kDiffQkv);
      },
      arg("state"),
      "A DLPack capsule of a [1] int64 CPU tensor that owns `state` (state_handle.h).");
  m.def(
      "diffqkv_state_from_handle",
      [](py::handle handle) {
        return StateFromHandleOrThrow<DiffQkvState>(handle, StateKind::kDiffQkv, "handle");
      },
      arg("handle"), "The DiffQkvState a diffqkv_state_handle tensor owns (ValueError if none).");

  m.def(
      "diffqkv_forward",
      [](const DiffQkvConfig& config, py::handle w_q, py::handle w_k, py::handle w_v,
         py::handle w_o, py::handle x, py::handle y, py::handle w_gate, py::handle w_up,
         py::handle w_down, py::handle q_norm, py::handle k_norm, uintptr_t stream) {
        BorrowedTensor x_t = Take(x, "x"), y_t = Take(y, "y");
        const BorrowedParams p =
            TakeParams(config, "", w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm);
        const Device device = x_t.view().device();
        DeviceGuard guard(device);
        ExecContext& ctx = ContextFor(device, stream);
        auto state = std::make_shared<DiffQkvState>();
        ThrowIfError(DiffQkvForward(ctx, config, p.View(), x_t, y_t, &state->saved));
        state->valid = true;
        state->config = config;
        state->device = device;
        state->dtype = x_t.view().dtype();
        state->batch = x_t.view().dim(0);
        state->seq = x_t.view().dim(1);
        return state;
      },
      arg("config"), arg("w_q"), arg("w_k"), arg("w_v"), arg("w_o"), arg("x"), arg("y"),
      py::kw_only(), arg("w_gate") = py::none(), arg("w_up") = py::none(),
      arg("w_down") = py::none(), arg("q_norm") = py::none(), arg("k_norm") = py::none(),
      arg("stream") = 0,
      "attention/diffqkv.h DiffQkvForward: writes y [B, S, M] from x [B, S, M]; returns the "
      "DiffQkvState for diffqkv_backward. w_gate/w_up/w_down exactly when d_aug > 0, q_norm/k_norm "
      "exactly when qk_norm. The caller keeps x and the weights unchanged until the backward.");

  m.def(
      "diffqkv_backward",
      [](const DiffQkvConfig& config, py::handle w_q, py::handle w_k, py::handle w_v,
         py::handle w_o, py::handle x, const DiffQkvState& state, py::handle dy, py::handle dx,
         py::handle grad_w_q, py::handle grad_w_k, py::handle grad_w_v, py::handle grad_w_o,
         py::handle w_gate, py::handle w_up, py::handle w_down, py::handle q_norm,
         py::handle k_norm, py::handle grad_w_gate, py::handle grad_w_up, py::handle grad_w_down,
         py::handle grad_q_norm, py::handle grad_k_norm, uintptr_t stream) {
        if (!state.valid) {
          ThrowIfError(absl::FailedPreconditionError("diffqkv_backward: state of no forward"));
        }
        if (!SameConfig(config, state.config)) {
          ThrowIfError(absl::FailedPreconditionError(
              absl::StrCat("diffqkv_backward: config ", ConfigRepr(config),
                           " differs from the forward's ", ConfigRepr(state.config))));
        }
        BorrowedTensor x_t = Take(x, "x"), dy_t = Take(dy, "dy"), dx_t = Take(dx, "dx");
        const BorrowedParams p =
            TakeParams(config, "", w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm);
        const BorrowedParams g =
            TakeParams(config, "grad_", grad_w_q, grad_w_k, grad_w_v, grad_w_o, grad_w_gate,
                       grad_w_up, grad_w_down, grad_q_norm, grad_k_norm);
        const TensorView& xv = x_t.view();
        if (xv.device() != state.device || xv.dtype() != state.dtype || xv.rank() != 3 ||
            xv.dim(0) != state.batch || xv.dim(1) != state.seq) {
          ThrowIfError(
              BadArgument("x",
                          absl::StrCat(xv.shape().ToString(), " ", DTypeName(xv.dtype()), " on ",
                                       xv.device().ToString()),
                          absl::StrCat("the forward's x: [", state.batch, ", ", state.seq, ", ",
                                       state.config.model_dim, "] ", DTypeName(state.dtype), " on ",
                                       state.device.ToString())));
        }
        DeviceGuard guard(state.device);
        ExecContext& ctx = ContextFor(state.device, stream);
        ThrowIfError(
            DiffQkvBackward(ctx, config, p.View(), x_t, state.saved, dy_t, dx_t, g.View()));
      },
      arg("config"), arg("w_q"), arg("w_k"), arg("w_v"), arg("w_o"), arg("x"), arg("state"),
      arg("dy"), arg("dx"), arg("grad_w_q"), arg("grad_w_k"), arg("grad_w_v"), arg("grad_w_o"),
      py::kw_only(), arg("w_gate") = py::none(), arg("w_up") = py::none(),
      arg("w_down") = py::none(), arg("q_norm") = py::none(), arg("k_norm") = py::none(),
      arg("grad_w_gate") = py::none(), arg("grad_w_up") = py::none(),
      arg("grad_w_down") = py::none(), arg("grad_q_norm") = py::none(),
      arg("grad_k_norm") = py::none(), arg("stream") = 0,
      "attention/diffqkv.h DiffQkvBackward: overwrites dx and accumulates into every gradient "
      "(f32, zeroed by the caller; grad_w_gate/... and grad_q_norm/... exactly when the config "
      "uses them). The state is not consumed: a second backward from it adds the same result.");
}

}  // namespace smoe::python
