"""A drop-in PyTorch MoE layer running sigma-moe's kernels (DESIGN.md section 5).

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
        if x.dtype != self.w1.dtype:
            raise ValueError(f"x: got dtype {x.dtype}, expected {self.w1.dtype} (the layer's dtype)")
        if x.device != self.w1.device:
            raise ValueError(f"x: got device {x.device}, expected {self.w1.device} (the layer's "
                             "device)")
        if not x.is_contiguous():
            raise ValueError(f"x: got a non-contiguous tensor (strides {x.stride()}), expected a "
                             "contiguous one (call .contiguous())")

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


__all__ = ["MoE", "moe_forward", "current_stream"]
