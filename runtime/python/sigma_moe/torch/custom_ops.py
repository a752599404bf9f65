"""sigma-moe's layers as torch.library custom ops (namespace `sigma_moe`), for torch.compile.

    torch.ops.sigma_moe.moe(x, w_gate, w1, w3, w2, top_k, capacity_factor, renormalize,
                            lbl_coef, z_coef, top1_lbl_coef)
        -> (y [T, M], aux_total [] f32, aux_values [4] f64 CPU, state [1] int64 CPU)
    torch.ops.sigma_moe.diffqkv(x, w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm,
                                n_q, n_k, n_v, head_dim, rope_theta)
        -> (y [B, S, M], state [1] int64 CPU)

Each op calls one C++ forward; its backward (torch.ops.sigma_moe.moe_backward /
diffqkv_backward, registered with torch.library.register_autograd) calls one C++ backward.
Fake (meta) implementations give every output's shape without running anything: the MoE output
is x-shaped whatever the routing, and the saved state is a fixed-size tensor.

The saved state (routing, plan, expert activations; projections and softmax statistics for
attention) stays in C++: `state` is a handle, a [1] int64 CPU tensor whose storage owns the C++
state (runtime/python/state_handle.h), so it lives exactly as long as that tensor: autograd (or
the compiled graph) saves it for the backward and frees it with the graph. `state` and
`aux_values` are not differentiable. _C.moe_state_from_handle / _C.diffqkv_state_from_handle
give the C++ state object back (routing statistics, dropped rows, exported activations).

aux_values holds (lbl, z_loss, top1_lbl, total) as computed on the host by the forward, for
logging without a device read; aux_total is `total` on x's device (written by a fill, not copied
from the host), differentiable: its incoming gradient scales the saved aux gradient on the device
before the C++ backward (on a CPU it is simply read).

Host syncs on CUDA are only those of the C++ layers: the MoE forward syncs its stream for the
per-expert row offsets (the grouped GEMMs are launched from the host) and for the aux-loss values;
the ops add none, and the backwards and the attention forward have none. Inside a compiled graph
the syncs stay inside the op, which is opaque to dynamo and Inductor: no graph break. The ops are
not CUDA-graph capturable.
"""

import functools
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from sigma_moe import _C

_DTYPE_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16"}
AUX_KEYS = ("lbl", "z_loss", "top1_lbl", "total")


def current_stream(t: torch.Tensor) -> int:
    """The cudaStream_t of torch's current stream on t's device as an int (0 for CPU tensors)."""
    if t.is_cuda:
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def _plain(t: Optional[Tensor]) -> Optional[Tensor]:
    # torch refuses to export tensors that require grad through DLPack; the kernels never record a
    # graph, so the detached alias (same storage, no copy) is what crosses the boundary.
    return None if t is None else t.detach().contiguous()


def _handle(capsule) -> Tensor:
    """The torch tensor of a DLPack capsule from _C (shares its storage)."""
    return torch.utils.dlpack.from_dlpack(capsule)


# ---------------------------------------------------------------------------------------------
# MoE


@functools.lru_cache(maxsize=64)
def moe_config(model_dim: int, ffn_dim: int, num_experts: int, top_k: int,
               capacity_factor: float, renormalize: bool, dtype: str, lbl_coef: float,
               z_coef: float, top1_lbl_coef: float) -> "_C.MoEConfig":
    """The validated C++ MoEConfig (ValueError naming a bad field), cached."""
    return _C.MoEConfig(model_dim, ffn_dim, num_experts, top_k=top_k, renormalize=renormalize,
                        capacity_factor=capacity_factor, dtype=dtype, lbl_coef=lbl_coef,
                        z_coef=z_coef, top1_lbl_coef=top1_lbl_coef)


def _moe_config_for(w1: Tensor, top_k, capacity_factor, renormalize, lbl_coef, z_coef,
                    top1_lbl_coef) -> "_C.MoEConfig":
    if w1.dim() != 3:
        raise ValueError(f"w1: got shape {tuple(w1.shape)}, expected [E, M, H]")
    if w1.dtype not in _DTYPE_NAMES:
        raise ValueError(f"w1: got dtype {w1.dtype}, expected torch.float32 or torch.bfloat16")
    e, m, h = w1.shape
    return moe_config(m, h, e, top_k, float(capacity_factor), bool(renormalize),
                      _DTYPE_NAMES[w1.dtype], float(lbl_coef), float(z_coef),
                      float(top1_lbl_coef))


def _check_moe_shapes(x, w_gate, w1, w3, w2):
    if x.dim() != 2 or w1.dim() != 3:
        raise ValueError(f"x: got shape {tuple(x.shape)} with w1 {tuple(w1.shape)}, expected "
                         "x [T, M] and w1 [E, M, H]")
    e, m, h = w1.shape
    for name, t, shape in (("x", x, (x.shape[0], m)), ("w_gate", w_gate, (m, e)),
                           ("w3", w3, (e, m, h)), ("w2", w2, (e, h, m))):
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected {list(shape)}")


@torch.library.custom_op("sigma_moe::moe", mutates_args=())
def moe(x: Tensor, w_gate: Tensor, w1: Tensor, w3: Tensor, w2: Tensor, top_k: int,
        capacity_factor: float = 0.0, renormalize: bool = False, lbl_coef: float = 0.0,
        z_coef: float = 0.0, top1_lbl_coef: float = 0.0
        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """MoE layer forward (moe/moe_layer.h): x [T, M] in w1's dtype, w_gate [M, E] f32,
    w1, w3 [E, M, H], w2 [E, H, M] -> (y [T, M], aux_total [] f32 on x's device,
    aux_values [4] f64 CPU (lbl, z_loss, top1_lbl, total), state handle [1] int64 CPU)."""
    config = _moe_config_for(w1, top_k, capacity_factor, renormalize, lbl_coef, z_coef,
                             top1_lbl_coef)
    x = x.contiguous()
    y = torch.empty_like(x)
    state, aux = _C.moe_forward(config, _plain(w_gate), _plain(w1), _plain(w3), _plain(w2),
                                _plain(x), y, stream=current_stream(x))
    values = torch.tensor([aux[k] for k in AUX_KEYS], dtype=torch.float64)
    total = torch.full((), aux["total"], dtype=torch.float32, device=x.device)  # a fill, no copy
    return y, total, values, _handle(_C.moe_state_handle(state))


@moe.register_fake
def _moe_fake(x, w_gate, w1, w3, w2, top_k, capacity_factor=0.0, renormalize=False,
              lbl_coef=0.0, z_coef=0.0, top1_lbl_coef=0.0):
    _check_moe_shapes(x, w_gate, w1, w3, w2)
    return (torch.empty_like(x), x.new_empty((), dtype=torch.float32),
            torch.empty(4, dtype=torch.float64, device="cpu"),
            torch.empty(1, dtype=torch.int64, device="cpu"))


def _with_scaled_aux(saved: "_C.MoEState", aux_grad: Tensor) -> "_C.MoEState":
    """A copy of `saved` (its tensors shared) whose aux gradient d_logits_aux is saved's times
    aux_grad, computed by torch on the device, in stream order; `saved` is left as it was."""
    scaled, buffer = _C.moe_state_with_aux_buffer(saved)
    torch.mul(_handle(saved.d_logits_aux()), aux_grad.to(torch.float32), out=_handle(buffer))
    return scaled


@torch.library.custom_op("sigma_moe::moe_backward", mutates_args=())
def moe_backward(dy: Tensor, aux_grad: Optional[Tensor], x: Tensor, state: Tensor,
                 w_gate: Tensor, w1: Tensor, w3: Tensor, w2: Tensor, top_k: int,
                 capacity_factor: float = 0.0, renormalize: bool = False, lbl_coef: float = 0.0,
                 z_coef: float = 0.0, top1_lbl_coef: float = 0.0
                 ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of sigma_moe::moe from its state handle: (dx [T, M] in x's dtype, and the f32
    gradients of w_gate, w1, w3, w2). aux_grad: d loss / d aux_total (None: 0); on a CPU it is
    read on the host, on a GPU it scales the saved aux gradient on the device (no host sync)."""
    config = _moe_config_for(w1, top_k, capacity_factor, renormalize, lbl_coef, z_coef,
                             top1_lbl_coef)
    saved = _C.moe_state_from_handle(state)
    x = x.contiguous()
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    grads = [torch.empty(w.shape, dtype=torch.float32, device=w.device)
             for w in (w_gate, w1, w3, w2)]
    if aux_grad is None:
        aux_scale = 0.0
    elif aux_grad.device.type == "cpu":
        aux_scale = float(aux_grad)
    else:
        # Reading aux_grad on the host would wait for the whole forward and loss.
        saved, aux_scale = _with_scaled_aux(saved, aux_grad), 1.0
    _C.moe_backward(config, _plain(w_gate), _plain(w1), _plain(w3), _plain(w2), saved,
                    _plain(dy), dx, *grads, aux_grad_scale=aux_scale, x=_plain(x),
                    stream=current_stream(dy))
    return (dx, *grads)


@moe_backward.register_fake
def _moe_backward_fake(dy, aux_grad, x, state, w_gate, w1, w3, w2, top_k, capacity_factor=0.0,
                       renormalize=False, lbl_coef=0.0, z_coef=0.0, top1_lbl_coef=0.0):
    return (torch.empty_like(x),
            *[torch.empty(w.shape, dtype=torch.float32, device=w.device)
              for w in (w_gate, w1, w3, w2)])


def _moe_setup_context(ctx, inputs, output):
    x, w_gate, w1, w3, w2, *config = inputs
    _, _, aux_values, state = output
    # x and the weights are saved for their version counters (an in-place change before the
    # backward is torch's error) and because the C++ state reads them.
    ctx.save_for_backward(x, w_gate, w1, w3, w2, state)
    ctx.config = tuple(config)
    ctx.mark_non_differentiable(aux_values, state)


def _moe_backward_autograd(ctx, dy, d_aux_total, _d_aux_values, _d_state):
    x, w_gate, w1, w3, w2, state = ctx.saved_tensors
    dx, *grads = torch.ops.sigma_moe.moe_backward(dy, d_aux_total, x, state, w_gate, w1, w3, w2,
                                                  *ctx.config)
    need = ctx.needs_input_grad
    out = [dx if need[0] else None]
    for i, (w, g) in enumerate(zip((w_gate, w1, w3, w2), grads)):
        out.append((g if g.dtype == w.dtype else g.to(w.dtype)) if need[i + 1] else None)
    return (*out, *[None] * len(ctx.config))


torch.library.register_autograd("sigma_moe::moe", _moe_backward_autograd,
                                setup_context=_moe_setup_context)


# ---------------------------------------------------------------------------------------------
# DiffQKV attention


@functools.lru_cache(maxsize=64)
def diffqkv_config(model_dim: int, n_q: int, n_k: int, n_v: int, head_dim: int, d_aug: int,
                   qk_norm: bool, rope_theta: float) -> "_C.DiffQkvConfig":
    """The validated C++ DiffQkvConfig (ValueError naming a bad field), cached."""
    return _C.DiffQkvConfig(model_dim, n_q, n_k, n_v, head_dim, d_aug=d_aug, qk_norm=qk_norm,
                            rope_theta=rope_theta)


def _diffqkv_config_for(w_q, w_gate, q_norm, n_q, n_k, n_v, head_dim, rope_theta):
    d_aug = 0 if w_gate is None else int(w_gate.shape[-1])
    return diffqkv_config(int(w_q.shape[0]), n_q, n_k, n_v, head_dim, d_aug, q_norm is not None,
                          float(rope_theta))


_OPTIONAL = ("w_gate", "w_up", "w_down", "q_norm", "k_norm")


@torch.library.custom_op("sigma_moe::diffqkv", mutates_args=())
def diffqkv(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor,
            w_gate: Optional[Tensor], w_up: Optional[Tensor], w_down: Optional[Tensor],
            q_norm: Optional[Tensor], k_norm: Optional[Tensor], n_q: int, n_k: int, n_v: int,
            head_dim: int, rope_theta: float = 10000.0) -> Tuple[Tensor, Tensor]:
    """DiffQKV causal self-attention (attention/diffqkv.h): x [B, S, M] -> (y [B, S, M], state
    handle [1] int64 CPU). d_aug is w_gate's width (w_gate, w_up, w_down all given or all
    None), qk_norm is whether q_norm and k_norm are given. B * S = 0 runs nothing and gives the
    handle 0, which owns no state."""
    config = _diffqkv_config_for(w_q, w_gate, q_norm, n_q, n_k, n_v, head_dim, rope_theta)
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        # No token, no work: the C++ block's [B*S, ...] views reject T = 0.
        return y, torch.zeros(1, dtype=torch.int64)
    w = [_plain(t) for t in (w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm)]
    state = _C.diffqkv_forward(config, *w[:4], _plain(x), y, w_gate=w[4], w_up=w[5],
                               w_down=w[6], q_norm=w[7], k_norm=w[8], stream=current_stream(x))
    return y, _handle(_C.diffqkv_state_handle(state))


@diffqkv.register_fake
def _diffqkv_fake(x, w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm, n_q, n_k, n_v,
                  head_dim, rope_theta=10000.0):
    if x.dim() != 3 or x.shape[-1] != w_q.shape[0]:
        raise ValueError(f"x: got shape {tuple(x.shape)}, expected [B, S, {w_q.shape[0]}]")
    return torch.empty_like(x), torch.empty(1, dtype=torch.int64, device="cpu")


@torch.library.custom_op("sigma_moe::diffqkv_backward", mutates_args=())
def diffqkv_backward(dy: Tensor, x: Tensor, state: Tensor, w_q: Tensor, w_k: Tensor,
                     w_v: Tensor, w_o: Tensor, w_gate: Optional[Tensor], w_up: Optional[Tensor],
                     w_down: Optional[Tensor], q_norm: Optional[Tensor],
                     k_norm: Optional[Tensor], n_q: int, n_k: int, n_v: int, head_dim: int,
                     rope_theta: float = 10000.0) -> List[Tensor]:
    """Backward of sigma_moe::diffqkv from its state handle: [dx, dw_q, dw_k, dw_v, dw_o] and then
    the gradients of the optional weights that are given, in the order w_gate, w_up, w_down,
    q_norm, k_norm; all in the block's dtype."""
    config = _diffqkv_config_for(w_q, w_gate, q_norm, n_q, n_k, n_v, head_dim, rope_theta)
    weights = (w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm)
    x = x.contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return [dx] + [torch.zeros_like(w) for w in weights if w is not None]
    # The block accumulates its weight gradients into zeroed f32 buffers (diffqkv.h); they are
    # returned in the weights' dtype.
    grads = [None if w is None else torch.zeros(w.shape, dtype=torch.float32, device=w.device)
             for w in weights]
    saved = _C.diffqkv_state_from_handle(state)
    w = [_plain(t) for t in weights]
    _C.diffqkv_backward(
        config, *w[:4], _plain(x), saved, _plain(dy), dx, *grads[:4], w_gate=w[4], w_up=w[5],
        w_down=w[6], q_norm=w[7], k_norm=w[8], grad_w_gate=grads[4], grad_w_up=grads[5],
        grad_w_down=grads[6], grad_q_norm=grads[7], grad_k_norm=grads[8],
        stream=current_stream(dy))
    return [dx] + [g.to(w.dtype) for g, w in zip(grads, weights) if g is not None]


@diffqkv_backward.register_fake
def _diffqkv_backward_fake(dy, x, state, w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm,
                           k_norm, n_q, n_k, n_v, head_dim, rope_theta=10000.0):
    weights = (w_q, w_k, w_v, w_o, w_gate, w_up, w_down, q_norm, k_norm)
    return [torch.empty_like(x)] + [torch.empty_like(w) for w in weights if w is not None]


def _diffqkv_setup_context(ctx, inputs, output):
    x, *rest = inputs
    weights, config = rest[:9], rest[9:]
    _, state = output
    ctx.present = [w is not None for w in weights]
    ctx.save_for_backward(x, state, *weights)
    ctx.config = tuple(config)
    ctx.mark_non_differentiable(state)


def _diffqkv_backward_autograd(ctx, dy, _d_state):
    x, state, *weights = ctx.saved_tensors
    dx, *grads = torch.ops.sigma_moe.diffqkv_backward(dy, x, state, *weights, *ctx.config)
    need = ctx.needs_input_grad
    grads = iter(grads)
    out = [dx if need[0] else None]
    for i, present in enumerate(ctx.present):
        g = next(grads) if present else None
        out.append(g if need[i + 1] else None)
    return (*out, *[None] * len(ctx.config))


torch.library.register_autograd("sigma_moe::diffqkv", _diffqkv_backward_autograd,
                                setup_context=_diffqkv_setup_context)


def aux_values_dict(values: Optional[Tensor]) -> Optional[dict]:
    """The aux_values output of sigma_moe::moe as {"lbl", "z_loss", "top1_lbl", "total"}."""
    return None if values is None else dict(zip(AUX_KEYS, values.tolist()))


__all__ = ["moe", "moe_backward", "diffqkv", "diffqkv_backward", "moe_config",
           "diffqkv_config", "aux_values_dict", "current_stream", "AUX_KEYS"]
