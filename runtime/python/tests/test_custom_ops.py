"""The torch.library custom ops (sigma_moe.torch.custom_ops) and torch.compile: schemas, fake
implementations, registered autograd, state-handle lifetime, and a small transformer of our
layers compiled with fullgraph=True (no graph break) matching eager, forward and gradients."""

import copy
import gc

import pytest
import torch
from torch import nn
import torch._dynamo.utils
from torch._subclasses.fake_tensor import FakeTensorMode

from sigma_moe import _C
from sigma_moe.torch import DiffQKVAttention, MoE, custom_ops, moe_forward

M, H, E = 16, 24, 6


def moe_args(layer, x):
    return (x, layer.w_gate, layer.w1, layer.w3, layer.w2, layer.top_k,
            float(layer.capacity_factor), layer.renormalize, float(layer.lbl_coef),
            float(layer.z_coef), float(layer.top1_lbl_coef))


def diffqkv_args(layer, x):
    return (x, layer.w_q, layer.w_k, layer.w_v, layer.w_o, layer.w_gate, layer.w_up,
            layer.w_down, layer.q_norm, layer.k_norm, layer.n_q, layer.n_k, layer.n_v,
            layer.head_dim, layer.rope_theta)


# The ops' outputs include a handle whose value differs from call to call, so opcheck's
# eager-vs-compiled comparison (test_aot_dispatch_*) does not apply; compile is tested below.
OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("capacity_factor", [0.0, 0.75])
def test_moe_op_opcheck(capacity_factor):
    layer = MoE(M, H, E, top_k=2, capacity_factor=capacity_factor, lbl_coef=0.05, z_coef=0.01)
    x = torch.randn(11, M, requires_grad=True)
    torch.library.opcheck(torch.ops.sigma_moe.moe.default, moe_args(layer, x),
                          test_utils=OPCHECKS)


@pytest.mark.parametrize("d_aug,qk_norm", [(0, False), (8, True)])
def test_diffqkv_op_opcheck(d_aug, qk_norm):
    layer = DiffQKVAttention(M, 4, 1, 2, 8, d_aug=d_aug, qk_norm=qk_norm)
    x = torch.randn(2, 5, M, requires_grad=True)
    torch.library.opcheck(torch.ops.sigma_moe.diffqkv.default, diffqkv_args(layer, x),
                          test_utils=OPCHECKS)


def test_fake_shapes_do_not_depend_on_routing_and_run_nothing():
    layer = MoE(M, H, E, top_k=2, capacity_factor=0.5)
    attn = DiffQKVAttention(M, 4, 2, 4, 8, d_aug=8, qk_norm=True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(7, M))
        y, total, values, state = torch.ops.sigma_moe.moe(*moe_args(layer, x))
        xa = mode.from_tensor(torch.randn(2, 3, M))
        ya, state_a = torch.ops.sigma_moe.diffqkv(*diffqkv_args(attn, xa))
    assert y.shape == (7, M) and y.dtype == torch.float32
    assert total.shape == () and values.shape == (4,) and values.dtype == torch.float64
    assert state.shape == (1,) and state.dtype == torch.int64 and state.device.type == "cpu"
    assert ya.shape == (2, 3, M) and state_a.shape == (1,)


def test_op_outputs_match_the_module_and_state_round_trips():
    layer = MoE(M, H, E, top_k=2, lbl_coef=0.05)
    x = torch.randn(9, M)
    y, total, values, state = torch.ops.sigma_moe.moe(*moe_args(layer, x))
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    assert values.tolist() == [layer.aux_values[k] for k in custom_ops.AUX_KEYS]
    assert total.item() == pytest.approx(values[3].item(), rel=1e-6)
    assert not values.requires_grad and not state.requires_grad
    saved = _C.moe_state_from_handle(state)
    assert saved.valid and saved.num_tokens == 9 and sum(saved.rows_per_expert) == 18
    with pytest.raises(ValueError, match="handle.*MoEState"):
        _C.diffqkv_state_from_handle(state)


def test_state_handle_lives_as_long_as_its_tensor():
    layer = MoE(M, H, E, top_k=2)
    x = torch.randn(9, M, requires_grad=True)
    _, _, _, state = torch.ops.sigma_moe.moe(*moe_args(layer, x))
    copy_of_handle = state.clone()
    assert _C.moe_state_from_handle(copy_of_handle).num_tokens == 9
    del state
    gc.collect()
    with pytest.raises(ValueError, match="state is gone"):
        _C.moe_state_from_handle(copy_of_handle)
    with pytest.raises(ValueError, match="handle"):
        _C.moe_state_from_handle(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="state is gone"):
        _C.moe_state_from_handle(torch.zeros(1, dtype=torch.int64))
    # The autograd graph holds the state until its backward has run and the graph is freed.
    y = layer(x)
    handle = layer._state.clone()
    layer._state = None
    assert _C.moe_state_from_handle(handle).valid
    y.sum().backward()
    del y
    gc.collect()
    with pytest.raises(ValueError, match="state is gone"):
        _C.moe_state_from_handle(handle)


def test_aux_gradient_scaled_on_the_device_matches_the_host_scale():
    # moe_backward's GPU path (the saved aux gradient times the incoming one into a fresh buffer,
    # then aux_grad_scale=1: no host read), run here on the CPU against the host-scale path.
    layer = MoE(M, H, E, top_k=2, lbl_coef=0.3, z_coef=0.05, top1_lbl_coef=0.1)
    x = torch.randn(11, M)
    y, _, _, state = torch.ops.sigma_moe.moe(*moe_args(layer, x))
    saved = _C.moe_state_from_handle(state)
    before = custom_ops._handle(saved.d_logits_aux()).clone()
    dy = torch.randn_like(y)
    weights = [w.detach() for w in (layer.w_gate, layer.w1, layer.w3, layer.w2)]

    def backward(st, scale):
        dx = torch.empty_like(x)
        grads = [torch.empty_like(w) for w in weights]
        _C.moe_backward(layer.config(), *weights, st, dy, dx, *grads, aux_grad_scale=scale, x=x)
        return [dx, *grads]

    expected = backward(saved, 0.7)
    copy_of_state = custom_ops._with_scaled_aux(saved, torch.tensor(0.7, dtype=torch.float64))
    for got, want in zip(backward(copy_of_state, 1.0), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # The saved state is left as it was (a second backward, retain_graph, reads it again).
    assert torch.equal(custom_ops._handle(saved.d_logits_aux()), before)
    assert not torch.equal(custom_ops._handle(copy_of_state.d_logits_aux()), before)


def test_functional_form_checks_the_config_against_the_weights():
    layer = MoE(M, H, E, top_k=2)
    x = torch.randn(5, M)
    y, total, state, aux = moe_forward(x, layer.w_gate, layer.w1, layer.w3, layer.w2,
                                       layer.config())
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    assert state.valid and aux == layer.aux_values
    with pytest.raises(ValueError, match=r"w1: got shape \(6, 16, 24\).*\[6, 16, 32\]"):
        moe_forward(x, layer.w_gate, layer.w1, layer.w3, layer.w2, MoE(M, 32, E).config())
    with pytest.raises(ValueError, match="w1: got dtype torch.float32, expected bf16"):
        moe_forward(x, layer.w_gate, layer.w1, layer.w3, layer.w2,
                    MoE(M, H, E, dtype=torch.bfloat16).config())


def test_modules_deepcopy_after_a_forward():
    layer = MoE(M, H, E, top_k=2)
    attn = DiffQKVAttention(M, 4, 2, 4, 8)
    layer(torch.randn(4, M, requires_grad=True))
    attn(torch.randn(1, 4, M))
    twin, twin_attn = copy.deepcopy(layer), copy.deepcopy(attn)
    assert twin.last_state is None and twin.aux_loss is None and twin.aux_values is None
    assert twin_attn.last_state is None and attn.last_state is not None
    assert torch.equal(twin.w1, layer.w1)


# ---------------------------------------------------------------------------------------------
# torch.compile


class Block(nn.Module):
    def __init__(self, dim, moe_kwargs):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim)
        self.attn = DiffQKVAttention(dim, 4, 1, 2, 8, d_aug=8, qk_norm=True, init_std=0.1)
        self.norm2 = nn.RMSNorm(dim)
        self.moe = MoE(dim, 32, 6, **moe_kwargs)

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.moe(self.norm2(h))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=32, dim=M, layers=2, **moe_kwargs):
        super().__init__()
        moe_kwargs = {"top_k": 2, "lbl_coef": 0.05, "z_coef": 0.01, **moe_kwargs}
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, moe_kwargs) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens, targets):
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.norm(h))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss + sum(block.moe.aux_loss for block in self.blocks)


def batch(seq=10, seed=3):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 32, (3, seq), generator=g)
    return tokens, torch.roll(tokens, 1, dims=1)


def step(model, fn, tokens, targets):
    model.zero_grad(set_to_none=True)
    loss = fn(tokens, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    aux = [b.moe.aux_values for b in model.blocks]
    stats = [b.moe.routing_stats()["tokens_per_expert"] for b in model.blocks]
    return loss.detach(), grads, aux, stats


def test_explain_reports_no_graph_break():
    model = TinyTransformer()
    explanation = torch._dynamo.explain(model)(*batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_transformer_matches_eager(backend):
    torch._dynamo.reset()
    model = TinyTransformer(capacity_factor=1.0)
    tokens, targets = batch()
    loss, grads, aux, stats = step(model, model, tokens, targets)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss_c, grads_c, aux_c, stats_c = step(model, compiled, tokens, targets)
    tol = dict(rtol=1e-5, atol=1e-6) if backend == "aot_eager" else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_c, loss, **tol)
    assert grads_c.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], **tol, msg=name)
    # The module attributes set inside the compiled graph are there after it ran.
    assert stats_c == stats
    for a, b in zip(aux_c, aux):
        assert a == pytest.approx(b, rel=1e-4)
    assert model.blocks[0].attn.last_state.valid
    assert model.blocks[1].moe.last_state.num_tokens == tokens.numel()


def test_compile_dynamic_sequence_length_needs_one_graph():
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    model = TinyTransformer(layers=1)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for seq in (6, 9, 13):
        tokens, targets = batch(seq)
        loss_c, grads_c, _, _ = step(model, compiled, tokens, targets)
        loss, grads, _, _ = step(model, model, tokens, targets)
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads_c["blocks.0.moe.w1"], grads["blocks.0.moe.w1"],
                                   rtol=1e-5, atol=1e-6)
    # One graph for every length. (Counting backend calls would count 2: under dynamic=True dynamo
    # first traces the op's float arguments as symbolic, then restarts the analysis once with
    # them specialized, within the same compile.)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_compiled_layer_with_frozen_experts_and_no_aux_in_the_loss():
    torch._dynamo.reset()
    layer = MoE(M, H, E, top_k=2, lbl_coef=0.5)
    for p in (layer.w1, layer.w3):
        p.requires_grad_(False)

    def f(x):
        return (layer(x) ** 2).sum()

    x = torch.randn(13, M, requires_grad=True)
    f(x).backward()
    expected = (x.grad.clone(), layer.w_gate.grad.clone(), layer.w2.grad.clone())
    x.grad = None
    layer.zero_grad(set_to_none=True)
    torch.compile(f, fullgraph=True, backend="aot_eager")(x).backward()
    assert layer.w1.grad is None and layer.w3.grad is None
    for got, want in zip((x.grad, layer.w_gate.grad, layer.w2.grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
