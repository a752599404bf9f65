"""The lower-level pieces (sigma_moe.ops, sigma_moe._C) compose to the layer, accept NumPy arrays
and torch tensors without copies, and export plan tensors through DLPack."""

import numpy as np
import pytest
import torch

import moe_reference as ref
from sigma_moe import _C, ops
from sigma_moe.torch import MoE

T, M, H, E = 29, 12, 20, 5


def test_pieces_compose_to_the_layer_forward_and_backward():
    layer = MoE(M, H, E, top_k=2, capacity_factor=0.8, lbl_coef=0.0)
    x = torch.randn(T, M)
    logits, probs, topk_idx, gates = ops.route(x, layer.w_gate, 2)
    plan = ops.routing_plan(topk_idx, E, capacity_factor=0.8)
    xs = ops.permute(plan, x)
    ys, saved = ops.experts_forward(layer.w1, layer.w3, layer.w2, xs, plan)
    y = ops.combine(plan, ys, gates)
    assert plan.dropped > 0 and plan.num_rows == T * 2 - plan.dropped
    assert torch.equal(y, layer(x))

    dy = torch.randn(T, M)
    dys, dgates = ops.combine_backward(plan, dy, ys, gates)
    dxs, (dw1, dw3, dw2) = ops.experts_backward(layer.w1, layer.w3, layer.w2, xs, plan, saved, dys)
    dx_experts = ops.permute_backward(plan, dxs, T)
    dx_router, dw_gate = ops.route_backward(x, layer.w_gate, probs, topk_idx, dgates)
    xg = x.clone().requires_grad_(True)
    (layer(xg) * dy).sum().backward()
    torch.testing.assert_close(dx_experts + dx_router, xg.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw_gate, layer.w_gate.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw2, layer.w2.grad, rtol=1e-5, atol=1e-6)


def test_router_matches_reference_and_aux_loss():
    x, w_gate = torch.randn(T, M), torch.randn(M, E)
    logits, probs, topk_idx, gates = ops.route(x, w_gate, 2)
    logits_r, probs_r, idx_r, gates_r = ref.route(x.double(), w_gate.double(), 2)
    torch.testing.assert_close(probs.double(), probs_r, rtol=1e-5, atol=1e-6)
    assert torch.equal(topk_idx.long(), idx_r)
    values, d_logits = ops.aux_loss(logits, probs, topk_idx, lbl_coef=1.0)
    lg = logits_r.detach().requires_grad_(True)
    lbl = ref.aux_losses(lg, torch.softmax(lg, -1), idx_r, E)["lbl"]
    lbl.backward()
    assert values["lbl"] == pytest.approx(lbl.item(), rel=1e-5)
    torch.testing.assert_close(d_logits.double(), lg.grad, rtol=1e-4, atol=1e-7)


def test_plan_tensors_through_dlpack():
    topk_idx = torch.randint(0, E, (T, 1), dtype=torch.int32)
    plan = ops.routing_plan(topk_idx, E)
    t = ops.plan_tensors(plan)
    counts = torch.bincount(topk_idx.reshape(-1).long(), minlength=E)
    assert torch.equal(t["counts"].long(), counts)
    assert t["offsets"].tolist() == plan.offsets == [0] + torch.cumsum(counts, 0).tolist()
    assert t["slots"].shape == (T, 1) and t["slots"].dtype == torch.int32
    # Every kept pair has its own row: slots are a permutation of [0, R).
    assert sorted(t["slots"].reshape(-1).tolist()) == list(range(T))
    # The export shares memory and outlives the plan object.
    del plan
    assert t["counts"].sum().item() == T


def test_numpy_arrays_cross_without_copies():
    x = np.random.default_rng(0).standard_normal((T, M)).astype(np.float32)
    w_gate = np.random.default_rng(1).standard_normal((M, E)).astype(np.float32)
    logits, probs = np.empty((T, E), np.float32), np.empty((T, E), np.float32)
    topk_idx, gates = np.empty((T, 1), np.int32), np.empty((T, 1), np.float32)
    _C.router_forward(x, w_gate, logits, probs, topk_idx, gates)
    np.testing.assert_allclose(logits, x @ w_gate, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(topk_idx[:, 0], np.argmax(logits, axis=1))
    # A capsule works too (torch's to_dlpack), and the outputs were written in place.
    xt = torch.from_numpy(x)
    out = torch.empty(T, E)
    _C.router_forward(torch.utils.dlpack.to_dlpack(xt), w_gate, out, torch.empty(T, E),
                      torch.empty(T, 1, dtype=torch.int32), torch.empty(T, 1))
    np.testing.assert_allclose(out.numpy(), logits, rtol=0, atol=0)


def test_experts_forward_matches_reference_per_group():
    w1, w3, w2 = torch.randn(E, M, H), torch.randn(E, M, H), torch.randn(E, H, M)
    offsets = [0, 3, 3, 10, 11, 15]  # expert 1 has no rows
    xs = torch.randn(15, M)
    ys, _ = ops.experts_forward(w1, w3, w2, xs, offsets)
    for e in range(E):
        a, b = offsets[e], offsets[e + 1]
        expected = ref.swiglu(xs[a:b].double(), w1[e].double(), w3[e].double(), w2[e].double())
        torch.testing.assert_close(ys[a:b].double(), expected, rtol=1e-4, atol=1e-4)
