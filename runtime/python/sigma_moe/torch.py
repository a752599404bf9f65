"""PyTorch modules running sigma-moe's kernels: the MoE layer (DESIGN.md section 5) and the
DiffQKV attention block (DiffQKVAttention, section 7; documented on the class).

MoE(model_dim, ffn_dim, num_experts, top_k=1, capacity_factor=0.0, lbl_coef=0.01, ...) is a
torch.nn.Module that owns its parameters as torch Parameters:
    w_gate [M, E] float32 (the router is fp32 whatever the activation dtype),
    w1, w3 [E, M, H] and w2 [E, H, M] in the layer's dtype (float32 or bfloat16).
forward(x [..., M]) returns y [..., M] = sum_k gate[t, k] * SwiGLU_{e(t, k)}(x[t]) (softmax router
over all E experts, top-K with ties to the lower index, gates not renormalized unless asked,
dropped choices contribute 0) and sets
    aux_loss    the weighted aux-loss total (lbl_coef * LBL + z_coef * z-loss + top1_lbl_coef *
                Top-1 LBL), a differentiable 0-dim float32 tensor: add it to the training loss;
    aux_values  {"lbl", "z_loss", "top1_lbl", "total"} as Python floats, for logging;
    last_state  the C++ MoEState of that forward (routing_stats(), dropped read it).

Gradients flow to x and to every parameter through a torch.autograd.Function whose backward
calls the C++ backward once; the gradient of aux_loss enters that same call scaled by the
incoming gradient of aux_loss (0 when aux_loss is not part of the loss). bf16 parameter
gradients come back from C++ in f32 and are cast to the parameter dtype here.

Inputs are checked: x must be a contiguous float tensor of the layer's dtype on the parameters'
device with last dimension M (ValueError otherwise). CUDA tensors run on torch's current CUDA
stream; each forward synchronizes that stream twice (expert offsets, aux-loss values, as the C++
layer does) and a backward that receives a gradient for aux_loss reads it on the host once.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from sigma_moe import _C

_DTYPE_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}


def current_stream(t: torch.Tensor) -> int:
    """The cudaStream_t of torch's current stream on t's device as an int (0 for CPU tensors)."""
    if t.is_cuda:
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


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


def _plain(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # torch refuses to export tensors that require grad through DLPack; the kernels never record a
    # graph, so the detached alias (same storage, no copy) is what crosses the boundary.
    return None if t is None else t.detach()


class _MoEFunction(torch.autograd.Function):
    """y, aux_total = MoE(x; w_gate, w1, w3, w2); `out` (a dict) receives the C++ state."""

    @staticmethod
    def forward(ctx, x, w_gate, w1, w3, w2, config, out):
        y = torch.empty_like(x)
        state, aux = _C.moe_forward(
            config, _plain(w_gate), _plain(w1), _plain(w3), _plain(w2), _plain(x), y,
            stream=current_stream(x))
        # The C++ state keeps a view of x: saving x keeps it alive, and torch's version counter
        # reports an in-place change of x or of a parameter before backward.
        ctx.save_for_backward(x, w_gate, w1, w3, w2)
        ctx.config = config
        ctx.state = state
        out["state"] = state
        out["aux"] = aux
        return y, torch.tensor(aux["total"], dtype=torch.float32, device=x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, d_aux):
        x, w_gate, w1, w3, w2 = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        grads = [torch.empty(w.shape, dtype=torch.float32, device=w.device)
                 for w in (w_gate, w1, w3, w2)]
        aux_scale = 0.0 if d_aux is None else float(d_aux)
        _C.moe_backward(
            ctx.config, _plain(w_gate), _plain(w1), _plain(w3), _plain(w2), ctx.state, dy, dx,
            *grads, aux_grad_scale=aux_scale, stream=current_stream(dy))
        need = ctx.needs_input_grad
        out = [dx if need[0] else None]
        for i, (w, g) in enumerate(zip((w_gate, w1, w3, w2), grads)):
            out.append((g if g.dtype == w.dtype else g.to(w.dtype)) if need[i + 1] else None)
        return (*out, None, None)


# torch.compile: dynamo cannot trace into the extension, so the layer is an explicit graph break
# (compiled code runs around it; the autograd.Function still provides the backward).
@torch.compiler.disable
def moe_forward(x: torch.Tensor, w_gate: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor, config: "_C.MoEConfig"):
    """Functional form: (y [T, M], aux_total, state, aux_values) for contiguous x [T, M].

    Differentiable with respect to x and the four weights (see the module docstring)."""
    out: dict = {}
    y, aux_total = _MoEFunction.apply(x, w_gate, w1, w3, w2, config, out)
    return y, aux_total, out["state"], out["aux"]


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
        self.aux_values: Optional[dict] = None
        self.last_state: Optional[_C.MoEState] = None

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
        y, aux_total, state, aux = moe_forward(x.reshape(-1, self.model_dim), w_gate, self.w1,
                                               self.w3, self.w2, self.config())
        self.aux_loss, self.aux_values, self.last_state = aux_total, aux, state
        return y.reshape(x.shape)

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

    def extra_repr(self) -> str:
        return (f"model_dim={self.model_dim}, ffn_dim={self.ffn_dim}, "
                f"num_experts={self.num_experts}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor}, lbl_coef={self.lbl_coef}, "
                f"dtype={self.dtype}")


class _DiffQkvFunction(torch.autograd.Function):
    """y = DiffQKV(x; w_q, w_k, w_v, w_o, [w_gate, w_up, w_down], [q_norm, k_norm]).

    Absent optional weights are None; `out` (a dict) receives the C++ state."""

    @staticmethod
    def forward(ctx, x, config, out, *weights):
        y = torch.empty_like(x)
        ctx.empty = x.numel() == 0
        if ctx.empty:
            # No token, no work: the C++ block's [B*S, ...] views reject T = 0.
            ctx.save_for_backward(x, *weights)
            out["state"] = None
            return y
        w = [_plain(t) for t in weights]
        state = _C.diffqkv_forward(
            config, *w[:4], _plain(x), y, w_gate=w[4], w_up=w[5], w_down=w[6], q_norm=w[7],
            k_norm=w[8], stream=current_stream(x))
        # The backward reads x and the weights again: saving them keeps them alive, and torch's
        # version counter reports an in-place change before backward.
        ctx.save_for_backward(x, *weights)
        ctx.config = config
        ctx.state = state
        out["state"] = state
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, *weights = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        # The block accumulates its weight gradients into zeroed f32 buffers (diffqkv.h).
        grads = [None if w is None else torch.zeros(w.shape, dtype=torch.float32, device=w.device)
                 for w in weights]
        w = [_plain(t) for t in weights]
        need = ctx.needs_input_grad
        if ctx.empty:
            return (dx if need[0] else None, None, None,
                    *[g if need[i + 3] else None for i, g in enumerate(grads)])
        _C.diffqkv_backward(
            ctx.config, *w[:4], _plain(x), ctx.state, dy, dx, *grads[:4], w_gate=w[4], w_up=w[5],
            w_down=w[6], q_norm=w[7], k_norm=w[8], grad_w_gate=grads[4], grad_w_up=grads[5],
            grad_w_down=grads[6], grad_q_norm=grads[7], grad_k_norm=grads[8],
            stream=current_stream(dy))
        grads = [g if g is None else g.to(w.dtype) for g, w in zip(grads, weights)]
        return (dx if need[0] else None, None, None,
                *[g if need[i + 3] else None for i, g in enumerate(grads)])


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
    out: dict = {}
    y = _DiffQkvFunction.apply(x, config, out, w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm,
                               k_norm)
    return y, out["state"]


class DiffQKVAttention(nn.Module):
    """Sigma's DiffQKV causal self-attention block (attention/diffqkv.h, DESIGN.md section 7).

        q = x W_q [B, S, n_q*D]; q' = W_down(silu(q W_gate) * (q W_up)) when d_aug > 0 (AugQ
        replaces q, no residual), else q; k = x W_k [.., n_k*D]; v = x W_v [.., n_v*D];
        with qk_norm, per-head RMSNorm (eps 1e-6) of q' and k scaled by q_norm, k_norm [D];
        RoPE (half-split, positions 0..S-1, base rope_theta) on q' and k;
        query head i reads K head floor(i*n_k/n_q) and V head floor(i*n_v/n_q):
        o_i = softmax_causal(q'_i k^T / sqrt(D)) v;  y = concat(o) W_o [B, S, M].

    Args:
      model_dim, n_q, n_k, n_v, head_dim: M, the query / key / value head counts (n_k and n_v
        divide n_q: MHA is n_k = n_v = n_q, GQA n_k = n_v < n_q) and D (even; 64, 96 or 128 on
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
        self.last_state: Optional[_C.DiffQkvState] = None

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
        optional = {name: getattr(self, name) for name in self._OPTIONAL}
        y, state = diffqkv_attention(x, self._config, self.w_q, self.w_k, self.w_v, self.w_o,
                                     **optional)
        self.last_state = state
        return y

    def __getstate__(self):
        # last_state holds C++ activations of one forward: neither copied nor pickled.
        state = self.__dict__.copy()
        state["last_state"] = None
        return state

    def extra_repr(self) -> str:
        return (f"model_dim={self.model_dim}, n_q={self.n_q}, n_k={self.n_k}, n_v={self.n_v}, "
                f"head_dim={self.head_dim}, d_aug={self.d_aug}, qk_norm={self.qk_norm}, "
                f"rope_theta={self.rope_theta}, dtype={self.dtype}")


__all__ = ["MoE", "moe_forward", "DiffQKVAttention", "diffqkv_attention", "current_stream"]
