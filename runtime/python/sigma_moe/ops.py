"""The MoE layer's pieces as torch functions, for frameworks that mix them with their own.

Each function allocates its outputs with torch (on the input's device, on torch's current CUDA
stream) and calls one C++ op (no autograd: pair a *_forward with its *_backward yourself).
Shapes use T tokens, M model dim, H expert dim, E experts, K choices, R kept rows.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.utils.dlpack

from sigma_moe import _C
from sigma_moe.torch import current_stream


def _d(t):
    return None if t is None else t.detach()


def route(x: torch.Tensor, w_gate: torch.Tensor, top_k: int, *, renormalize: bool = False,
          expert_bias: Optional[torch.Tensor] = None):
    """Router forward (moe/router/router.h): x [T, M] f32|bf16, w_gate [M, E] f32 ->
    (logits [T, E] f32, probs [T, E] f32, topk_idx [T, K] int32, gates [T, K] f32)."""
    t, e = x.shape[0], w_gate.shape[-1]
    f32 = dict(dtype=torch.float32, device=x.device)
    logits, probs = torch.empty(t, e, **f32), torch.empty(t, e, **f32)
    topk_idx = torch.empty(t, top_k, dtype=torch.int32, device=x.device)
    gates = torch.empty(t, top_k, **f32)
    _C.router_forward(_d(x), _d(w_gate), logits, probs, topk_idx, gates, renormalize=renormalize,
                      expert_bias=_d(expert_bias), stream=current_stream(x))
    return logits, probs, topk_idx, gates


def route_backward(x, w_gate, probs, topk_idx, d_gates, *, renormalize=False,
                   d_logits_extra=None):
    """Router backward: (dx [T, M] in x's dtype, dw_gate [M, E] f32)."""
    dx = torch.empty_like(x)
    dw_gate = torch.empty(w_gate.shape, dtype=torch.float32, device=w_gate.device)
    _C.router_backward(_d(x), _d(w_gate), probs, topk_idx, _d(d_gates).contiguous(), dx, dw_gate,
                       renormalize=renormalize, d_logits_extra=_d(d_logits_extra),
                       stream=current_stream(x))
    return dx, dw_gate


def aux_loss(logits, probs, topk_idx, *, lbl_coef=0.0, z_coef=0.0, top1_lbl_coef=0.0):
    """Aux-loss values (dict of floats) and d total / d logits [T, E] f32 (host sync on CUDA)."""
    d_logits = torch.empty_like(logits)
    values = _C.aux_loss(logits, probs, topk_idx, d_logits, lbl_coef=lbl_coef, z_coef=z_coef,
                         top1_lbl_coef=top1_lbl_coef, stream=current_stream(logits))
    return values, d_logits


def routing_plan(topk_idx: torch.Tensor, num_experts: int, *,
                 capacity_factor: float = 0.0) -> "_C.RoutingPlan":
    """moe/dispatch/routing_plan.h for topk_idx [T, K] int32 (host sync on CUDA)."""
    return _C.build_routing_plan(topk_idx, num_experts, capacity_factor=capacity_factor,
                                 stream=current_stream(topk_idx))


def plan_tensors(plan: "_C.RoutingPlan") -> dict:
    """The plan's device tensors as torch tensors sharing its memory: counts [E] int32,
    offsets [E + 1] int64, slots [T, K] int32, row_token and row_choice [T * K] int32."""
    from_dlpack = torch.utils.dlpack.from_dlpack
    return {name: from_dlpack(getattr(plan, name + "_tensor")())
            for name in ("counts", "offsets", "slots", "row_token", "row_choice")}


def permute(plan, x):
    """xs [R, M]: the token rows in expert order."""
    xs = torch.empty(plan.num_rows, x.shape[1], dtype=x.dtype, device=x.device)
    _C.permute(plan, _d(x), xs, stream=current_stream(x))
    return xs


def permute_backward(plan, dxs, num_tokens):
    dx = torch.empty(num_tokens, dxs.shape[1], dtype=dxs.dtype, device=dxs.device)
    _C.permute_backward(plan, _d(dxs), dx, stream=current_stream(dxs))
    return dx


def combine(plan, ys, gates):
    """y [T, M] = sum over kept k of gates[t, k] * ys[slot(t, k)]."""
    y = torch.empty(plan.num_tokens, ys.shape[1], dtype=ys.dtype, device=ys.device)
    _C.combine(plan, _d(ys), _d(gates), y, stream=current_stream(ys))
    return y


def combine_backward(plan, dy, ys, gates):
    """(dys [R, M], dgates [T, K] f32)."""
    dys = torch.empty_like(ys)
    dgates = torch.empty(gates.shape, dtype=torch.float32, device=gates.device)
    _C.combine_backward(plan, _d(dy).contiguous(), _d(ys), _d(gates), dys, dgates,
                        stream=current_stream(dy))
    return dys, dgates


def _offsets(plan_or_offsets) -> Sequence[int]:
    return plan_or_offsets.offsets if hasattr(plan_or_offsets, "offsets") else plan_or_offsets


def experts_forward(w1, w3, w2, xs, plan_or_offsets):
    """SwiGLU experts over ragged groups (moe/experts/experts.h): (ys [R, M], saved), where
    saved = (h1, h3, act) [R, H] is what experts_backward needs."""
    r, h = xs.shape[0], w1.shape[-1]
    h1, h3, act = (torch.empty(r, h, dtype=xs.dtype, device=xs.device) for _ in range(3))
    ys = torch.empty_like(xs)
    _C.experts_forward(_d(w1), _d(w3), _d(w2), _d(xs), list(_offsets(plan_or_offsets)), h1, h3,
                       act, ys, stream=current_stream(xs))
    return ys, (h1, h3, act)


def experts_backward(w1, w3, w2, xs, plan_or_offsets, saved, dys):
    """(dxs [R, M], (dw1, dw3, dw2) f32)."""
    dxs = torch.empty_like(xs)
    grads = [torch.empty(w.shape, dtype=torch.float32, device=w.device) for w in (w1, w3, w2)]
    _C.experts_backward(_d(w1), _d(w3), _d(w2), _d(xs), list(_offsets(plan_or_offsets)), *saved,
                        _d(dys).contiguous(), dxs, *grads, stream=current_stream(xs))
    return dxs, tuple(grads)
