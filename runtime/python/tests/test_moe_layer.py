"""sigma_moe.torch.MoE against the plain PyTorch layer of moe_reference.py: forward, aux losses,
gradients, routing statistics; fp32 (tight, against a float64 reference) and bf16 (dtype
tolerance)."""

import pytest
import torch

import moe_reference as ref
from conftest import requires_cuda
from sigma_moe.torch import MoE

T, M, H, E = 37, 16, 24, 6  # T not a multiple of anything


def assert_close(ours, expected, tol, what):
    ours, expected = ours.double().cpu(), expected.double().cpu()
    scale = max(expected.abs().max().item(), 1e-6)
    err = (ours - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def run_both(layer, x, ref_dtype=torch.float64, with_aux=True, seed=7):
    """loss = <y, r> (+ aux_loss) for our layer and the reference; returns both sides."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device)
    x_ours = x.clone().requires_grad_(True)
    y = layer(x_ours)
    loss = (y.float() * r).sum() + (layer.aux_loss if with_aux else 0.0)
    loss.backward()

    params = {n: p.detach().to(ref_dtype).cpu().requires_grad_(True)
              for n, p in layer.named_parameters()}
    x_ref = x.detach().to(ref_dtype).cpu().requires_grad_(True)
    y_ref, aux_ref, details = ref.moe(
        x_ref.reshape(-1, M), params["w_gate"], params["w1"], params["w3"], params["w2"],
        top_k=layer.top_k, capacity_factor=layer.capacity_factor, lbl_coef=layer.lbl_coef,
        z_coef=layer.z_coef, top1_lbl_coef=layer.top1_lbl_coef, renormalize=layer.renormalize)
    loss_ref = (y_ref.reshape(x.shape) * r.to(ref_dtype).cpu()).sum() + (
        aux_ref if with_aux else 0.0)
    loss_ref.backward()
    ours = dict(y=y.detach(), x=x_ours.grad, aux=layer.aux_loss.detach(),
                **{n: p.grad for n, p in layer.named_parameters()})
    theirs = dict(y=y_ref.detach().reshape(x.shape), x=x_ref.grad, aux=aux_ref.detach(),
                  **{n: p.grad for n, p in params.items()})
    return ours, theirs, details


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [0.0, 0.75])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_match_reference(top_k, capacity_factor, dtype):
    layer = MoE(M, H, E, top_k=top_k, capacity_factor=capacity_factor, lbl_coef=0.05, dtype=dtype)
    x = torch.randn(T, M).to(dtype)
    ours, theirs, details = run_both(layer, x)
    tol = 1e-5 if dtype == torch.float32 else 4e-2
    for name in ("y", "aux", "x", "w_gate", "w1", "w3", "w2"):
        assert_close(ours[name], theirs[name], tol, name)
    for name in ("w_gate", "w1", "w3", "w2"):
        assert getattr(layer, name).grad.dtype == getattr(layer, name).dtype
    assert layer.dropped == details["dropped"]
    if capacity_factor > 0:
        assert layer.dropped > 0  # 0.75 < 1: the capacity is below the mean load
    else:
        assert layer.dropped == 0
    assert layer.aux_values["lbl"] == pytest.approx(details["lbl"].item(), rel=1e-4)


def test_all_aux_losses_and_renormalized_gates():
    layer = MoE(M, H, E, top_k=2, lbl_coef=0.1, z_coef=0.01, top1_lbl_coef=0.05,
                renormalize=True)
    ours, theirs, details = run_both(layer, torch.randn(T, M))
    for name in ("y", "aux", "x", "w_gate", "w1", "w3", "w2"):
        assert_close(ours[name], theirs[name], 1e-5, name)
    for key in ("lbl", "z_loss", "top1_lbl"):
        assert layer.aux_values[key] == pytest.approx(details[key].item(), rel=1e-5)


def test_aux_gradient_only_when_aux_loss_is_used():
    layer = MoE(M, H, E, top_k=2, lbl_coef=0.5, z_coef=0.1)
    ours, theirs, _ = run_both(layer, torch.randn(T, M), with_aux=False)
    for name in ("x", "w_gate", "w1"):
        assert_close(ours[name], theirs[name], 1e-5, name)


def test_batched_input_shape_and_routing_stats():
    layer = MoE(M, H, E, top_k=2)
    x = torch.randn(3, 5, M)
    y = layer(x)
    assert y.shape == x.shape
    _, _, details = ref.moe(x.reshape(-1, M).double(), layer.w_gate.detach().double(),
                            layer.w1.detach().double(), layer.w3.detach().double(),
                            layer.w2.detach().double(), top_k=2)
    stats = layer.routing_stats()
    assert stats["tokens_per_expert"] == details["counts"].long().tolist()
    assert sum(stats["tokens_per_expert"]) == 15 * 2
    assert stats["p_mean"] == pytest.approx(details["probs"].mean(0).tolist(), rel=1e-5)
    assert stats["non_finite_rows"] == 0
    assert layer.last_state.num_tokens == 15
    assert sum(layer.last_state.rows_per_expert) == 30


def test_progressive_sparsification_set_top_k():
    layer = MoE(M, H, E, top_k=3)
    layer.set_top_k(1)
    ours, theirs, _ = run_both(layer, torch.randn(T, M))
    assert_close(ours["y"], theirs["y"], 1e-5, "y")
    with pytest.raises(ValueError, match="top_k"):
        layer.set_top_k(E + 1)


def test_requires_grad_edge_cases():
    layer = MoE(M, H, E, top_k=2)
    x = torch.randn(T, M)
    # Inference: no graph, nothing saved for backward.
    with torch.no_grad():
        y0 = layer(x)
    assert not y0.requires_grad
    # x without grad: parameters still get gradients, x none.
    y = layer(x)
    assert y.requires_grad
    y.sum().backward()
    assert x.grad is None and layer.w1.grad is not None
    assert torch.equal(y.detach(), y0)
    # Frozen experts: their grads stay None, the router and x still learn.
    layer.zero_grad(set_to_none=True)
    for p in (layer.w1, layer.w3, layer.w2):
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    (layer(xg).sum() + layer.aux_loss).backward()
    assert layer.w1.grad is None and layer.w_gate.grad is not None and xg.grad is not None
    # A second backward through a freed graph is torch's error, not a crash.
    y = layer(xg)
    y.sum().backward()
    with pytest.raises(RuntimeError):
        y.sum().backward()


def test_gradients_accumulate_over_two_backwards():
    layer = MoE(M, H, E, top_k=1)
    x = torch.randn(T, M)
    layer(x).sum().backward()
    once = layer.w2.grad.clone()
    layer(x).sum().backward()
    torch.testing.assert_close(layer.w2.grad, 2 * once)


def test_retain_graph_backward_twice_gives_the_same_gradients():
    layer = MoE(M, H, E, top_k=2)
    x = torch.randn(T, M, requires_grad=True)
    loss = layer(x).square().sum()
    (g1,) = torch.autograd.grad(loss, [x], retain_graph=True)
    (g2,) = torch.autograd.grad(loss, [x])
    assert torch.equal(g1, g2)


def test_in_place_change_of_x_before_backward_is_detected():
    layer = MoE(M, H, E)
    x = torch.randn(T, M, requires_grad=True)
    x2 = x * 1.0
    y = layer(x2)
    with torch.no_grad():
        x2.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 2])
def test_cuda_matches_reference(dtype, top_k):
    layer = MoE(M, H, E, top_k=top_k, capacity_factor=1.0, lbl_coef=0.05, dtype=dtype,
                device="cuda")
    x = torch.randn(T, M, device="cuda").to(dtype)
    ours, theirs, _ = run_both(layer, x)
    tol = 1e-4 if dtype == torch.float32 else 4e-2
    for name in ("y", "aux", "x", "w_gate", "w1", "w3", "w2"):
        assert ours[name].device.type == "cuda" or name == "aux"
        assert_close(ours[name], theirs[name], tol, name)


@requires_cuda
def test_cuda_runs_on_torch_current_stream():
    layer = MoE(M, H, E, top_k=2, device="cuda")
    x = torch.randn(T, M, device="cuda")
    expected = layer(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = layer(x)
        y.sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(y, expected)


def test_torch_compile_runs_the_layer_as_a_graph_break():
    layer = MoE(M, H, E, top_k=2, lbl_coef=0.05)
    proj = torch.nn.Linear(M, M)
    x = torch.randn(T, M)

    def step(x):
        return (layer(proj(x)) * 2).sum() + layer.aux_loss

    expected = step(x)
    expected.backward()
    grads = [p.grad.clone() for p in (proj.weight, layer.w1)]
    proj.zero_grad(), layer.zero_grad()
    # aot_eager: dynamo and AOTAutograd as in the default backend, without compiling kernels.
    got = torch.compile(step, backend="aot_eager")(x)
    got.backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, (proj.weight, layer.w1)):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
