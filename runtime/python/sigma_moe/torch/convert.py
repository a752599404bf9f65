"""Weight layouts: sigma_moe.torch.MoE's and the ones MoE checkpoints come in, both ways.

Ours (MoE's parameters; expert e computes (silu(x @ w1[e]) * (x @ w3[e])) @ w2[e]):
    w_gate [M, E] float32 (logits = x @ w_gate), w1 (gate) and w3 (up) [E, M, H],
    w2 (down) [E, H, M], in the layer's dtype (float32 or bfloat16).

Per-expert nn.Linear (Mixtral, Qwen-MoE, DeepSeek-MoE, ...): expert e is
    down_proj(silu(gate_proj(x)) * up_proj(x)), gate_proj, up_proj = Linear(M, H, bias=False),
    down_proj = Linear(H, M, bias=False); a Linear's weight is [out, in], so
    gate_proj.weight [H, M] = w1[e].T, up_proj.weight [H, M] = w3[e].T,
    down_proj.weight [M, H] = w2[e].T.
Fused (transformers' grouped experts, `gate_up_proj` / `down_proj` parameters):
    gate_up [E, 2H, M] with gate first, then up: gate_up[e] = cat([gate_proj.weight,
    up_proj.weight], dim=0), i.e. gate_up[e, :H] = w1[e].T and gate_up[e, H:] = w3[e].T
    (not the interleaved gate/up rows some checkpoints use); down [E, M, H], down[e] =
    down_proj.weight = w2[e].T.
Router: Linear(M, E, bias=False), weight [E, M] = w_gate.T; w_gate is always float32.

The routing must match too for a swapped block to compute the same function: ours is softmax over
all E logits, then top-K (ties to the lower index), gates = those probabilities, not
renormalized unless MoE(renormalize=True) (Qwen-MoE's norm_topk_prob=False is our default;
Mixtral's softmax over the K chosen logits equals renormalize=True). Our load-balancing loss is
E * sum_i f_i P_i with f_i the share of the T*K choices on expert i; transformers'
load_balancing_loss_func counts f per choice slot and is K times ours: its
router_aux_loss_coef = a matches lbl_coef = a * K.

Every function copies (the results are contiguous and own their memory) and checks its inputs:
a wrong shape, dtype, device, expert count, or a Linear with a bias is a ValueError naming the
tensor, e.g. "gate_proj[3].weight: got shape (8, 16), expected [24, 16] ([H, M])".
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

_LAYER_DTYPES = (torch.float32, torch.bfloat16)
WeightLike = Union[nn.Linear, torch.Tensor]

__all__ = ["experts_from_linear", "experts_to_linear", "experts_from_fused", "experts_to_fused",
           "router_from_linear", "router_to_linear", "load_moe_", "moe_from_linear"]


# ---------------------------------------------------------------------------------------------
# Checks


def _weight(obj, name: str) -> Tuple[torch.Tensor, str]:
    """(the weight tensor, its name) of a Linear or a tensor; ValueError for a Linear's bias."""
    if isinstance(obj, nn.Linear):
        if obj.bias is not None:
            raise ValueError(f"{name}.bias: got a bias of shape {tuple(obj.bias.shape)}, expected "
                             "none (sigma-moe's experts and router have no bias)")
        return obj.weight.detach(), f"{name}.weight"
    if isinstance(obj, torch.Tensor):
        return obj.detach(), name
    raise TypeError(f"{name}: got {type(obj).__name__}, expected an nn.Linear or a torch.Tensor")


class _Checker:
    """Checks a group of tensors against shapes and against the first tensor's dtype and device."""

    def __init__(self):
        self.dtype: Optional[torch.dtype] = None
        self.device: Optional[torch.device] = None
        self.first = ""

    def __call__(self, t: torch.Tensor, name: str, shape: Sequence[int], letters: str) -> None:
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {list(shape)} "
                             f"({letters})")
        if not t.is_floating_point():
            raise ValueError(f"{name}: got dtype {t.dtype}, expected a floating-point dtype")
        if self.dtype is None:
            self.dtype, self.device, self.first = t.dtype, t.device, name
        elif t.dtype != self.dtype:
            raise ValueError(f"{name}: got dtype {t.dtype}, expected {self.dtype} (as "
                             f"{self.first})")
        elif t.device != self.device:
            raise ValueError(f"{name}: got device {t.device}, expected {self.device} (as "
                             f"{self.first})")

    def layer_dtype(self, dtype: Optional[torch.dtype]) -> torch.dtype:
        """The output dtype: `dtype` if given, else the inputs' (which must then be one of ours)."""
        if dtype is None:
            if self.dtype not in _LAYER_DTYPES:
                raise ValueError(f"{self.first}: got dtype {self.dtype}, expected torch.float32 or "
                                 "torch.bfloat16 (or pass dtype= to convert)")
            return self.dtype
        if dtype not in _LAYER_DTYPES:
            raise ValueError(f"dtype: got {dtype}, expected torch.float32 or torch.bfloat16")
        return dtype


def _dims(t: torch.Tensor, name: str, rank: int, letters: str):
    if t.dim() != rank:
        raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {rank} dimensions "
                         f"({letters})")
    return tuple(t.shape)


def _experts_list(seq, name: str) -> list:
    if isinstance(seq, (nn.Linear, torch.Tensor)) or not isinstance(seq, (Sequence, nn.ModuleList)):
        raise TypeError(f"{name}: got {type(seq).__name__}, expected a sequence with one "
                        "nn.Linear (or weight tensor) per expert")
    items = list(seq)
    if not items:
        raise ValueError(f"{name}: got 0 experts, expected at least 1")
    return items


# ---------------------------------------------------------------------------------------------
# Experts


def experts_from_linear(gate_proj: Sequence[WeightLike], up_proj: Sequence[WeightLike],
                        down_proj: Sequence[WeightLike], *, dtype: Optional[torch.dtype] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-expert Linears (or their weights) -> (w1, w3 [E, M, H], w2 [E, H, M]).

    gate_proj[e], up_proj[e]: Linear(M, H, bias=False) or a weight [H, M]; down_proj[e]:
    Linear(H, M, bias=False) or a weight [M, H]; all one dtype and device. The result is on that
    device, in `dtype` (default: the inputs' dtype, which must then be float32 or bfloat16)."""
    gates = _experts_list(gate_proj, "gate_proj")
    ups = _experts_list(up_proj, "up_proj")
    downs = _experts_list(down_proj, "down_proj")
    e = len(gates)
    for name, items in (("up_proj", ups), ("down_proj", downs)):
        if len(items) != e:
            raise ValueError(f"{name}: got {len(items)} experts, expected {e} (as gate_proj)")
    first, first_name = _weight(gates[0], "gate_proj[0]")
    h, m = _dims(first, first_name, 2, "[H, M]")
    check = _Checker()
    w1, w3, w2 = [], [], []
    for i in range(e):
        for items, prefix, shape, letters, out in (
                (gates, "gate_proj", (h, m), "[H, M]", w1), (ups, "up_proj", (h, m), "[H, M]", w3),
                (downs, "down_proj", (m, h), "[M, H]", w2)):
            t, name = _weight(items[i], f"{prefix}[{i}]")
            check(t, name, shape, letters)
            out.append(t.t())
    out_dtype = check.layer_dtype(dtype)
    return tuple(torch.stack(ws).to(out_dtype).contiguous() for ws in (w1, w3, w2))


def _check_ours(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor):
    e, m, h = _dims(w1, "w1", 3, "[E, M, H]")
    check = _Checker()
    check(w1, "w1", (e, m, h), "[E, M, H]")
    check(w3, "w3", (e, m, h), "[E, M, H]")
    check(w2, "w2", (e, h, m), "[E, H, M]")
    return e, m, h


def experts_to_linear(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
                      ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
    """(w1, w3 [E, M, H], w2 [E, H, M]) -> lists of E weights (gate_proj [H, M], up_proj [H, M],
    down_proj [M, H]) in the inputs' dtype and device, for nn.Linear.weight.copy_(). Also maps
    gradients (w1.grad, ...) to the Linears' weight gradients."""
    e, _, _ = _check_ours(w1, w3, w2)
    return tuple([w[i].detach().t().contiguous() for i in range(e)] for w in (w1, w3, w2))


def experts_from_fused(gate_up: torch.Tensor, down: torch.Tensor, *,
                       dtype: Optional[torch.dtype] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused experts (gate_up [E, 2H, M], gate rows first; down [E, M, H]) -> (w1, w3, w2)."""
    gate_up, down = gate_up.detach(), down.detach()
    e, two_h, m = _dims(gate_up, "gate_up", 3, "[E, 2H, M]")
    if two_h % 2:
        raise ValueError(f"gate_up: got shape {tuple(gate_up.shape)}, expected [E, 2H, M] with an "
                         "even middle dimension (gate rows, then up rows)")
    h = two_h // 2
    check = _Checker()
    check(gate_up, "gate_up", (e, 2 * h, m), "[E, 2H, M]")
    check(down, "down", (e, m, h), "[E, M, H]")
    out_dtype = check.layer_dtype(dtype)
    w1 = gate_up[:, :h].transpose(1, 2)
    w3 = gate_up[:, h:].transpose(1, 2)
    w2 = down.transpose(1, 2)
    return tuple(w.to(out_dtype).contiguous() for w in (w1, w3, w2))


def experts_to_fused(w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w1, w3, w2) -> (gate_up [E, 2H, M], down [E, M, H]), the inputs' dtype and device."""
    _check_ours(w1, w3, w2)
    gate_up = torch.cat([w1.detach().transpose(1, 2), w3.detach().transpose(1, 2)], dim=1)
    return gate_up.contiguous(), w2.detach().transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Router


def router_from_linear(router: WeightLike) -> torch.Tensor:
    """Router Linear(M, E, bias=False) (or its weight [E, M]) -> w_gate [M, E] float32."""
    t, name = _weight(router, "router")
    e, m = _dims(t, name, 2, "[E, M]")
    _Checker()(t, name, (e, m), "[E, M]")
    return t.t().to(torch.float32).contiguous()


def router_to_linear(w_gate: torch.Tensor) -> torch.Tensor:
    """w_gate [M, E] -> the router Linear's weight [E, M] (w_gate's dtype and device)."""
    w_gate = w_gate.detach()
    m, e = _dims(w_gate, "w_gate", 2, "[M, E]")
    _Checker()(w_gate, "w_gate", (m, e), "[M, E]")
    return w_gate.t().contiguous()


# ---------------------------------------------------------------------------------------------
# Into a layer


def load_moe_(moe, router: WeightLike, *, gate_proj: Optional[Sequence[WeightLike]] = None,
              up_proj: Optional[Sequence[WeightLike]] = None,
              down_proj: Optional[Sequence[WeightLike]] = None,
              gate_up: Optional[torch.Tensor] = None, down: Optional[torch.Tensor] = None):
    """Copies a router and experts into a sigma_moe.torch.MoE's parameters (in place, keeping
    their dtype and device; the sources may be on another device) and returns the layer.

    Experts: either gate_proj, up_proj and down_proj (per-expert Linears or weights), or gate_up
    and down (fused). ValueError when a shape does not match the layer's M, H, E."""
    linear = (gate_proj, up_proj, down_proj)
    fused = (gate_up, down)
    if all(a is not None for a in linear) and all(a is None for a in fused):
        w1, w3, w2 = experts_from_linear(*linear, dtype=torch.float32)
        names = ("gate_proj", "up_proj", "down_proj")
    elif all(a is not None for a in fused) and all(a is None for a in linear):
        w1, w3, w2 = experts_from_fused(*fused, dtype=torch.float32)
        names = ("gate_up", "gate_up", "down")
    else:
        raise ValueError("experts: got " + ", ".join(
            n for n, a in zip(("gate_proj", "up_proj", "down_proj", "gate_up", "down"),
                              linear + fused) if a is not None) +
            "; expected gate_proj, up_proj and down_proj, or gate_up and down")
    w_gate = router_from_linear(router)
    e, m, h = moe.num_experts, moe.model_dim, moe.ffn_dim
    for name, ours, target, letters in (
            ("router", w_gate, moe.w_gate, "[M, E] transposed"),
            (names[0], w1, moe.w1, "w1 [E, M, H]"), (names[1], w3, moe.w3, "w3 [E, M, H]"),
            (names[2], w2, moe.w2, "w2 [E, H, M]")):
        if ours.shape != target.shape:
            raise ValueError(f"{name}: converts to shape {tuple(ours.shape)}, expected "
                             f"{tuple(target.shape)} ({letters} of the layer with M={m}, H={h}, "
                             f"E={e})")
    with torch.no_grad():
        for ours, target in ((w_gate, moe.w_gate), (w1, moe.w1), (w3, moe.w3), (w2, moe.w2)):
            target.copy_(ours)
    return moe


def moe_from_linear(router: WeightLike, experts: Sequence[nn.Module], *, top_k: int,
                    gate: str = "gate_proj", up: str = "up_proj", down: str = "down_proj",
                    dtype: Optional[torch.dtype] = None, device=None, **moe_kwargs):
    """A new sigma_moe.torch.MoE holding a router and per-expert SwiGLU modules' weights.

    experts[e] has Linear attributes named `gate`, `up`, `down` (Mixtral's w1 / w3 / w2 are
    gate="w1", up="w3", down="w2"). M, H and E come from the weights; dtype and device default to
    the router's (float32 if that is not float32 or bfloat16); moe_kwargs go to MoE (top_k is
    required: it is routing, not a weight)."""
    from sigma_moe.torch import MoE  # this module is imported by sigma_moe.torch

    experts = list(experts)
    if not experts:
        raise ValueError("experts: got 0 experts, expected at least 1")
    lists = []
    for attr in (gate, up, down):
        items = []
        for i, expert in enumerate(experts):
            if not hasattr(expert, attr):
                raise ValueError(f"experts[{i}]: has no attribute {attr!r} (pass gate=, up=, "
                                 "down= to name its Linears)")
            items.append(getattr(expert, attr))
        lists.append(items)
    w_router, _ = _weight(router, "router")
    first, first_name = _weight(lists[0][0], "gate_proj[0]")
    h, m = _dims(first, first_name, 2, "[H, M]")
    e = len(experts)
    if dtype is None:
        dtype = w_router.dtype if w_router.dtype in _LAYER_DTYPES else torch.float32
    layer = MoE(m, h, e, top_k=top_k, dtype=dtype,
                device=w_router.device if device is None else device, **moe_kwargs)
    return load_moe_(layer, router, gate_proj=lists[0], up_proj=lists[1], down_proj=lists[2])
