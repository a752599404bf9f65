"""PyTorch modules running sigma-moe's kernels: the MoE layer (docs/design.md section 5) and the
DiffQKV attention block (DiffQKVAttention, section 7; documented on the class).

Both run through torch.library custom ops (sigma_moe.torch.custom_ops: torch.ops.sigma_moe.moe,
torch.ops.sigma_moe.diffqkv, with fake implementations and registered autograd), so
torch.compile(model, fullgraph=True) traces through them with no graph break.

MoE(model_dim, ffn_dim, num_experts, top_k=1, capacity_factor=0.0, lbl_coef=0.01, ...) is a
torch.nn.Module that owns its parameters as torch Parameters:
    w_gate [M, E] float32 (the router is fp32 whatever the activation dtype),
    w1, w3 [E, M, H] and w2 [E, H, M] in the layer's dtype (float32 or bfloat16).
(sigma_moe.torch.convert loads the per-expert nn.Linear and fused layouts of other frameworks.)
forward(x [..., M]) returns y [..., M] = sum_k gate[t, k] * SwiGLU_{e(t, k)}(x[t]) (softmax router
over all E experts, top-K with ties to the lower index, gates not renormalized unless asked,
dropped choices contribute 0) and sets
    aux_loss    the weighted aux-loss total (lbl_coef * LBL + z_coef * z-loss + top1_lbl_coef *
                Top-1 LBL), a differentiable 0-dim float32 tensor: add it to the training loss;
    aux_values  {"lbl", "z_loss", "top1_lbl", "total"} as Python floats, for logging (read from
                a CPU tensor the forward fills: no device sync);
    last_state  the C++ MoEState of that forward (routing_stats(), dropped read it).
All three survive torch.compile: the compiled forward sets the tensors behind them (aux_loss,
the aux-values tensor and the state handle), and aux_values / last_state are read from those
tensors on access, outside the compiled region.

Gradients flow to x and to every parameter through the op's registered backward, which calls the
C++ backward once; the gradient of aux_loss enters that same call scaled by the incoming
gradient of aux_loss (0 when aux_loss is not part of the loss). bf16 parameter gradients come
back from C++ in f32 and are cast to the parameter dtype.

Inputs are checked: x must be a contiguous float tensor of the layer's dtype on the parameters'
device with last dimension M (ValueError otherwise). CUDA tensors run on torch's current CUDA
stream; each forward synchronizes that stream twice, inside the C++ layer (the per-expert row
offsets the grouped GEMMs are launched with, and the aux-loss values; inside the op, so not a
graph break); the Python side adds no sync (aux_loss is filled on the device, aux_values is a CPU
tensor), and the backward has none (the gradient of aux_loss scales the aux gradient on the
device).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from sigma_moe import _C
from sigma_moe.torch import custom_ops
from sigma_moe.torch.custom_ops import _DTYPE_NAMES, aux_values_dict, current_stream


def _check_like_parameters(x: torch.Tensor, param: torch.Tensor, owner: str) -> None:
    """ValueError unless x has `param`'s dtype and device and is contiguous."""
    if x.dtype != param.dtype:
        raise ValueError(f"x: got dtype {x.dtype}, expected {param.dtype} (the {owner}'s dtype)")
    if x.device != param.device:
        raise ValueError(f"x: got device {x.device}, expected {param.device} (the {owner}'s "
                         "device)")
    if not x.is_contiguous():
        raise ValueError(f"x: got a non-contiguous tensor (strides {x.stride()}), expected a "
                         "contiguous one (call .contiguous())")


# The functional forms below return the C++ state objects and Python floats, which a compiled
# graph cannot hold: they run eagerly (an explicit graph break under torch.compile). Inside
# compiled code call the modules, or the custom ops torch.ops.sigma_moe.moe / .diffqkv directly.
@torch.compiler.disable
def moe_forward(x: torch.Tensor, w_gate: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor, config: "_C.MoEConfig"):
    """Functional form: (y [T, M], aux_total, state, aux_values) for contiguous x [T, M].

    Differentiable with respect to x and the four weights (see the module docstring). The
    config's M, H, E and dtype must be the weights' (ValueError naming w1 otherwise)."""
    expected = (config.num_experts, config.model_dim, config.ffn_dim)
    if tuple(w1.shape) != expected:
        raise ValueError(f"w1: got shape {tuple(w1.shape)}, expected [E, M, H] = "
                         f"{list(expected)} (the config's)")
    if _DTYPE_NAMES.get(w1.dtype) != config.dtype:
        raise ValueError(f"w1: got dtype {w1.dtype}, expected {config.dtype} (the config's)")
    y, aux_total, values, handle = torch.ops.sigma_moe.moe(
        x, w_gate, w1, w3, w2, config.top_k, config.capacity_factor, config.renormalize,
        config.lbl_coef, config.z_coef, config.top1_lbl_coef)
    return y, aux_total, _C.moe_state_from_handle(handle), aux_values_dict(values)


class MoE(nn.Module):
    """Sigma-MoE-Tiny MoE layer: softmax router, top-k, SwiGLU experts (see the module docstring).

    Args:
      model_dim, ffn_dim, num_experts: M, H (per expert), E.
      top_k: K, experts per token (change later with set_top_k).
      capacity_factor: > 0 keeps at most ceil(f * T * K / E) rows per expert (overflow dropped,
        first choices first); <= 0 is dropless.
      lbl_coef: weight of the Switch/GShard load-balancing loss E * sum_i f_i P_i in aux_loss.
      z_coef, top1_lbl_coef: weights of the z-loss and of Sigma-MoE-Tiny's Top-1 LBL.
      renormalize: divide the K gates of a token by their sum.
      dtype: float32 (default) or bfloat16: the expert weights and activations.
      device: where the parameters live.
    """

    def __init__(self, model_dim: int, ffn_dim: int, num_experts: int, top_k: int = 1,
                 capacity_factor: float = 0.0, lbl_coef: float = 0.01, z_coef: float = 0.0,
                 top1_lbl_coef: float = 0.0, renormalize: bool = False, *,
                 dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype: got {dtype}, expected torch.float32 or torch.bfloat16")
        # Validates every field (ValueError naming it) before any allocation.
        _C.MoEConfig(model_dim, ffn_dim, num_experts, top_k=top_k, renormalize=renormalize,
                     capacity_factor=capacity_factor, dtype=_DTYPE_NAMES[dtype],
                     lbl_coef=lbl_coef, z_coef=z_coef, top1_lbl_coef=top1_lbl_coef)
        self.model_dim, self.ffn_dim, self.num_experts = model_dim, ffn_dim, num_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.lbl_coef, self.z_coef, self.top1_lbl_coef = lbl_coef, z_coef, top1_lbl_coef
        self.renormalize = renormalize
        m, h, e = model_dim, ffn_dim, num_experts
        self.w_gate = nn.Parameter(torch.empty(m, e, dtype=torch.float32, device=device))
        self.w1 = nn.Parameter(torch.empty(e, m, h, dtype=dtype, device=device))
        self.w3 = nn.Parameter(torch.empty(e, m, h, dtype=dtype, device=device))
        self.w2 = nn.Parameter(torch.empty(e, h, m, dtype=dtype, device=device))
        self.reset_parameters()
        self.aux_loss: Optional[torch.Tensor] = None
        self._aux_values: Optional[torch.Tensor] = None  # [4] f64 CPU, custom_ops.AUX_KEYS
        self._state: Optional[torch.Tensor] = None  # the C++ state's handle

    def reset_parameters(self) -> None:
        """w_gate, w1, w3 ~ N(0, 1/M), w2 ~ N(0, 1/H) (as MoELayer::InitParameters), torch's RNG."""
        with torch.no_grad():
            std_in, std_hidden = 1.0 / math.sqrt(self.model_dim), 1.0 / math.sqrt(self.ffn_dim)
            for w, std in ((self.w_gate, std_in), (self.w1, std_in), (self.w3, std_in),
                           (self.w2, std_hidden)):
                w.copy_(torch.randn(w.shape, dtype=torch.float32, device=w.device) * std)

    @property
    def dtype(self) -> torch.dtype:
        return self.w1.dtype

    def set_top_k(self, k: int) -> None:
        """Progressive sparsification: later forwards route each token to k experts."""
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"top_k: got {k}, expected 1 <= top_k <= num_experts = "
                             f"{self.num_experts}")
        self.top_k = k

    def config(self) -> "_C.MoEConfig":
        if self.w1.dtype not in _DTYPE_NAMES:
            raise ValueError(f"MoE parameters: dtype {self.w1.dtype}, expected torch.float32 or "
                             "torch.bfloat16")
        return _C.MoEConfig(
            self.model_dim, self.ffn_dim, self.num_experts, top_k=self.top_k,
            renormalize=self.renormalize, capacity_factor=self.capacity_factor,
            dtype=_DTYPE_NAMES[self.w1.dtype], lbl_coef=self.lbl_coef, z_coef=self.z_coef,
            top1_lbl_coef=self.top1_lbl_coef)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: got {type(x).__name__}, expected a torch.Tensor")
        if x.dim() < 1 or x.shape[-1] != self.model_dim:
            raise ValueError(f"x: got shape {tuple(x.shape)}, expected [..., {self.model_dim}]")
        _check_like_parameters(x, self.w1, "layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        # The router runs in fp32 whatever the module was cast to (e.g. by .to(torch.bfloat16)).
        w_gate = self.w_gate if self.w_gate.dtype == torch.float32 else self.w_gate.float()
        y, aux_total, values, state = torch.ops.sigma_moe.moe(
            x.reshape(-1, self.model_dim), w_gate, self.w1, self.w3, self.w2, self.top_k,
            float(self.capacity_factor), bool(self.renormalize), float(self.lbl_coef),
            float(self.z_coef), float(self.top1_lbl_coef))
        self.aux_loss, self._aux_values, self._state = aux_total, values, state
        return y.reshape(x.shape)

    @property
    def aux_values(self) -> Optional[dict]:
        """{"lbl", "z_loss", "top1_lbl", "total"} of the last forward as Python floats."""
        return aux_values_dict(self._aux_values)

    @property
    def last_state(self) -> Optional["_C.MoEState"]:
        """The C++ MoEState of the last forward (kept alive by the module until the next)."""
        return None if self._state is None else _C.moe_state_from_handle(self._state)

    def routing_stats(self) -> dict:
        """Balance metrics of the last forward (routing_stats.h; host sync): tokens_per_expert,
        f, p_mean, max_rel_dev, min_rel_dev, dead_experts, entropy_mean_p, non_finite_rows."""
        if self.last_state is None:
            raise RuntimeError("routing_stats() before the first forward")
        return _C.moe_stats(self.last_state, stream=current_stream(self.w1))

    @property
    def dropped(self) -> int:
        """Rows dropped by capacity in the last forward."""
        return 0 if self.last_state is None else self.last_state.dropped

    def __getstate__(self):
        # The last forward's outputs (a graph node, a C++ state): neither copied nor pickled.
        state = self.__dict__.copy()
        state["aux_loss"] = state["_aux_values"] = state["_state"] = None
        return state

    def extra_repr(self) -> str:
        return (f"model_dim={self.model_dim}, ffn_dim={self.ffn_dim}, "
                f"num_experts={self.num_experts}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor}, lbl_coef={self.lbl_coef}, "
                f"dtype={self.dtype}")


@torch.compiler.disable
def diffqkv_attention(x: torch.Tensor, config: "_C.DiffQkvConfig", w_q: torch.Tensor,
                      w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, *,
                      w_gate: Optional[torch.Tensor] = None, w_up: Optional[torch.Tensor] = None,
                      w_down: Optional[torch.Tensor] = None,
                      q_norm: Optional[torch.Tensor] = None,
                      k_norm: Optional[torch.Tensor] = None):
    """Functional form: (y [B, S, M], DiffQkvState, or None when B * S = 0) for contiguous
    x [B, S, M].

    Differentiable with respect to x and every weight given (see DiffQKVAttention); w_gate, w_up,
    w_down exactly when config.d_aug > 0, q_norm and k_norm exactly when config.qk_norm."""
    for name, t, used in (("w_gate", w_gate, config.d_aug > 0), ("w_up", w_up, config.d_aug > 0),
                          ("w_down", w_down, config.d_aug > 0), ("q_norm", q_norm, config.qk_norm),
                          ("k_norm", k_norm, config.qk_norm)):
        if used and t is None:
            raise ValueError(f"{name}: got None, expected a tensor (config "
                             f"{'d_aug > 0' if name.startswith('w') else 'qk_norm'})")
        if not used and t is not None:
            raise ValueError(f"{name}: got a tensor, expected None (not config "
                             f"{'d_aug > 0' if name.startswith('w') else 'qk_norm'})")
    y, handle = torch.ops.sigma_moe.diffqkv(
        x, w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm, config.n_q, config.n_k,
        config.n_v, config.head_dim, config.rope_theta)
    return y, None if x.numel() == 0 else _C.diffqkv_state_from_handle(handle)


class DiffQKVAttention(nn.Module):
    """Sigma's DiffQKV causal self-attention block (attention/diffqkv.h, docs/design.md section 7).

        q = x W_q [B, S, n_q*D]; q' = W_down(silu(q W_gate) * (q W_up)) when d_aug > 0 (AugQ
        replaces q, no residual), else q; k = x W_k [.., n_k*D]; v = x W_v [.., n_v*D];
        with qk_norm, per-head RMSNorm (eps 1e-6) of q' and k scaled by q_norm, k_norm [D];
        RoPE (half-split, positions 0..S-1, base rope_theta) on q' and k;
        query head i reads K head floor(i*n_k/n_q) and V head floor(i*n_v/n_q):
        o_i = softmax_causal(q'_i k^T / sqrt(D)) v;  y = concat(o) W_o [B, S, M].

    Args:
      model_dim, n_q, n_k, n_v, head_dim: M, the query / key / value head counts (n_k and n_v
        divide n_q: MHA is n_k = n_v = n_q, GQA n_k = n_v < n_q) and D (even; 32, 64, 96 or 128 on
        CUDA).
      d_aug: width of the augmented-Q MLP (0: none).
      qk_norm: per-head RMSNorm of queries and keys.
      rope_theta: RoPE base.
      init_std, num_layers: initialization as the C++ Model::Init does: every projection
        ~ N(0, init_std), W_o ~ N(0, init_std / sqrt(2 * num_layers)) (GPT-2's depth scaling),
        q_norm and k_norm = 1.
      dtype: float32 (default) or bfloat16, for the parameters and activations alike (on CPU bf16
        runs the reference loops: correct, slow).
      device: where the parameters live.

    Parameters (torch Parameters in `dtype`): w_q [M, n_q*D], w_k [M, n_k*D], w_v [M, n_v*D],
    w_o [n_q*D, M]; w_gate, w_up [n_q*D, d_aug], w_down [d_aug, n_q*D] when d_aug > 0;
    q_norm, k_norm [D] when qk_norm. forward(x [B, S, M]) -> [B, S, M]; gradients reach x and
    every parameter through one C++ backward; last_state holds the C++ DiffQkvState of the last
    forward. x must be a contiguous tensor of the module's dtype on its device (ValueError
    otherwise). CUDA tensors run on torch's current stream with no host sync.
    """

    _OPTIONAL = ("w_gate", "w_up", "w_down", "q_norm", "k_norm")

    def __init__(self, model_dim: int, n_q: int, n_k: int, n_v: int, head_dim: int,
                 d_aug: int = 0, qk_norm: bool = False, rope_theta: float = 10000.0, *,
                 init_std: float = 0.02, num_layers: int = 1,
                 dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype: got {dtype}, expected torch.float32 or torch.bfloat16")
        if not init_std > 0:
            raise ValueError(f"init_std: got {init_std}, expected > 0")
        if num_layers < 1:
            raise ValueError(f"num_layers: got {num_layers}, expected >= 1")
        # Validates every field (ValueError naming it) before any allocation.
        self._config = _C.DiffQkvConfig(model_dim, n_q, n_k, n_v, head_dim, d_aug=d_aug,
                                        qk_norm=qk_norm, rope_theta=rope_theta)
        if torch.device(device if device is not None else "cpu").type == "cuda":
            self._config.validate(cuda=True)
        self.model_dim, self.n_q, self.n_k, self.n_v = model_dim, n_q, n_k, n_v
        self.head_dim, self.d_aug, self.qk_norm, self.rope_theta = (head_dim, d_aug, qk_norm,
                                                                    float(rope_theta))
        self.init_std, self.num_layers = init_std, num_layers
        m, qd = model_dim, n_q * head_dim
        new = dict(dtype=dtype, device=device)
        self.w_q = nn.Parameter(torch.empty(m, qd, **new))
        self.w_k = nn.Parameter(torch.empty(m, n_k * head_dim, **new))
        self.w_v = nn.Parameter(torch.empty(m, n_v * head_dim, **new))
        self.w_o = nn.Parameter(torch.empty(qd, m, **new))
        if d_aug > 0:
            self.w_gate = nn.Parameter(torch.empty(qd, d_aug, **new))
            self.w_up = nn.Parameter(torch.empty(qd, d_aug, **new))
            self.w_down = nn.Parameter(torch.empty(d_aug, qd, **new))
        else:
            for name in ("w_gate", "w_up", "w_down"):
                self.register_parameter(name, None)
        if qk_norm:
            self.q_norm = nn.Parameter(torch.empty(head_dim, **new))
            self.k_norm = nn.Parameter(torch.empty(head_dim, **new))
        else:
            for name in ("q_norm", "k_norm"):
                self.register_parameter(name, None)
        self.reset_parameters()
        self._state: Optional[torch.Tensor] = None  # the C++ state's handle

    def reset_parameters(self) -> None:
        """As Model::Init (see the class docstring), drawn from torch's RNG in float32."""
        out_std = self.init_std / math.sqrt(2.0 * self.num_layers)
        with torch.no_grad():
            for name in ("w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_down"):
                w = getattr(self, name)
                if w is not None:
                    std = out_std if name == "w_o" else self.init_std
                    w.copy_(torch.randn(w.shape, dtype=torch.float32, device=w.device) * std)
            for w in (self.q_norm, self.k_norm):
                if w is not None:
                    w.fill_(1.0)

    @property
    def dtype(self) -> torch.dtype:
        return self.w_q.dtype

    def config(self) -> "_C.DiffQkvConfig":
        return self._config

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: got {type(x).__name__}, expected a torch.Tensor")
        if x.dim() != 3 or x.shape[-1] != self.model_dim:
            raise ValueError(f"x: got shape {tuple(x.shape)}, expected [B, S, {self.model_dim}]")
        if self.w_q.dtype not in _DTYPE_NAMES:
            raise ValueError(f"DiffQKVAttention parameters: dtype {self.w_q.dtype}, expected "
                             "torch.float32 or torch.bfloat16")
        _check_like_parameters(x, self.w_q, "module")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        y, state = torch.ops.sigma_moe.diffqkv(
            x, self.w_q, self.w_k, self.w_v, self.w_o, self.w_gate, self.w_up, self.w_down,
            self.q_norm, self.k_norm, self.n_q, self.n_k, self.n_v, self.head_dim,
            self.rope_theta)
        self._state = None if x.numel() == 0 else state
        return y

    @property
    def last_state(self) -> Optional["_C.DiffQkvState"]:
        """The C++ DiffQkvState of the last forward (None after an empty input)."""
        return None if self._state is None else _C.diffqkv_state_from_handle(self._state)

    def __getstate__(self):
        # The C++ state of the last forward holds activations: neither copied nor pickled.
        state = self.__dict__.copy()
        state["_state"] = None
        return state

    def extra_repr(self) -> str:
        return (f"model_dim={self.model_dim}, n_q={self.n_q}, n_k={self.n_k}, n_v={self.n_v}, "
                f"head_dim={self.head_dim}, d_aug={self.d_aug}, qk_norm={self.qk_norm}, "
                f"rope_theta={self.rope_theta}, dtype={self.dtype}")


from sigma_moe.torch import convert  # noqa: E402

__all__ = ["MoE", "moe_forward", "DiffQKVAttention", "diffqkv_attention", "current_stream",
           "custom_ops", "convert"]
