"""sigma_moe.torch.DiffQKVAttention against a plain PyTorch block written here from the math
(docs/design.md section 7, attention/diffqkv.h): forward, the gradients of x and of every parameter,
for MHA, GQA and DiffQKV head maps with and without augmented Q and QK-norm; the saved state; a
tiny model that trains; bad inputs that raise; CUDA against CPU (skipped without a GPU)."""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import requires_cuda
from sigma_moe import _C, DiffQkvConfig, DiffQkvState
from sigma_moe.torch import DiffQKVAttention, diffqkv_attention

B, S, M, D = 2, 13, 24, 8  # S not a multiple of 16
RMS_EPS = 1e-6
PARAMS = ("w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_down", "q_norm", "k_norm")

# (n_q, n_k, n_v): MHA, GQA, DiffQKV (n_k < n_v < n_q).
HEADS = {"mha": (4, 4, 4), "gqa": (4, 2, 2), "diffqkv": (4, 1, 2)}


# ---------------------------------------------------------------------------------------------
# The reference, from the math only.

def rope(t, theta):
    """Half-split RoPE of t [B, S, H, D] at positions 0..S-1: pair (j, j + D/2) rotated by
    s * theta^(-2j/D)."""
    s, d = t.shape[1], t.shape[-1]
    half = d // 2
    inv_freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angle = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [S, D/2]
    cos = angle.cos().to(t.dtype)[None, :, None, :]
    sin = angle.sin().to(t.dtype)[None, :, None, :]
    x1, x2 = t[..., :half], t[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def head_rms_norm(t, w):
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + RMS_EPS) * w


def reference(x, p, n_q, n_k, n_v, head_dim, d_aug, qk_norm, rope_theta, details=None):
    """y [B, S, M] of the DiffQKV block; p maps PARAMS names to tensors (None when unused)."""
    b, s, _ = x.shape
    q = x @ p["w_q"]
    if d_aug > 0:
        # AugQ replaces q (no residual): attention/aug_q.h, docs/design.md section 7.
        q = (nn.functional.silu(q @ p["w_gate"]) * (q @ p["w_up"])) @ p["w_down"]
    q = q.reshape(b, s, n_q, head_dim)
    k = (x @ p["w_k"]).reshape(b, s, n_k, head_dim)
    v = (x @ p["w_v"]).reshape(b, s, n_v, head_dim)
    if qk_norm:
        q, k = head_rms_norm(q, p["q_norm"]), head_rms_norm(k, p["k_norm"])
    q, k = rope(q, rope_theta), rope(k, rope_theta)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    heads = []
    for i in range(n_q):
        kh, vh = i * n_k // n_q, i * n_v // n_q
        scores = q[:, :, i] @ k[:, :, kh].transpose(1, 2) / math.sqrt(head_dim)  # [B, S, S]
        scores = scores.masked_fill(~causal, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, :, vh])  # [B, S, D]
    o = torch.stack(heads, dim=2)  # [B, S, n_q, D]
    if details is not None:
        details.update(q_rope=q, k_rope=k, v=v, o=o)
    return o.reshape(b, s, n_q * head_dim) @ p["w_o"]


def reference_of(layer, x, dtype=torch.float64, details=None):
    """The reference over float64 copies of layer's parameters (leaves requiring grad)."""
    p = {n: (None if getattr(layer, n) is None else
             getattr(layer, n).detach().to(dtype).cpu().requires_grad_(True)) for n in PARAMS}
    x_ref = x.detach().to(dtype).cpu().requires_grad_(True)
    y = reference(x_ref, p, layer.n_q, layer.n_k, layer.n_v, layer.head_dim, layer.d_aug,
                  layer.qk_norm, layer.rope_theta, details)
    return y, x_ref, p


# ---------------------------------------------------------------------------------------------
# Helpers.

def randomize(layer, seed=3):
    """Weights scaled so that every softmax is far from uniform and every path carries signal
    (the default init_std = 0.02 makes attention nearly uniform), norms away from 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in PARAMS:
            w = getattr(layer, name)
            if w is None:
                continue
            if name in ("q_norm", "k_norm"):
                value = 1.0 + 0.5 * torch.randn(w.shape, generator=g)
            else:
                value = torch.randn(w.shape, generator=g) / math.sqrt(w.shape[0])
                if name in ("w_q", "w_k"):
                    value *= 2.0
            w.copy_(value.to(w.dtype))
    return layer


def assert_close(ours, expected, tol, what):
    ours, expected = ours.double().cpu(), expected.double().cpu()
    assert ours.shape == expected.shape, (what, ours.shape, expected.shape)
    scale = max(expected.abs().max().item(), 1e-6)
    err = (ours - expected).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def assert_relative_norm(ours, expected, tol, what):
    ours, expected = ours.double().cpu(), expected.double().cpu()
    err = ((ours - expected).norm() / expected.norm()).item()
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def run_both(layer, x, seed=7):
    """loss = <y, r> through our layer and through the reference; (ours, theirs) dicts of y and
    the gradients of x and of every parameter."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(x.shape, generator=g)
    x_ours = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    y = layer(x_ours)
    (y.float() * r.to(y.device)).sum().backward()
    y_ref, x_ref, p = reference_of(layer, x)
    (y_ref * r.double()).sum().backward()
    ours = dict(y=y.detach(), x=x_ours.grad)
    theirs = dict(y=y_ref.detach(), x=x_ref.grad)
    for name in PARAMS:
        if getattr(layer, name) is not None:
            ours[name] = getattr(layer, name).grad
            theirs[name] = p[name].grad
    return ours, theirs


# ---------------------------------------------------------------------------------------------
# Forward and gradients against the reference.

@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("d_aug", [0, 12])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_forward_and_gradients_match_reference_fp32(heads, d_aug, qk_norm):
    n_q, n_k, n_v = HEADS[heads]
    layer = randomize(DiffQKVAttention(M, n_q, n_k, n_v, D, d_aug=d_aug, qk_norm=qk_norm))
    ours, theirs = run_both(layer, torch.randn(B, S, M))
    expected = {"y", "x", "w_q", "w_k", "w_v", "w_o"}
    expected |= {"w_gate", "w_up", "w_down"} if d_aug else set()
    expected |= {"q_norm", "k_norm"} if qk_norm else set()
    assert set(ours) == expected
    for name in ours:
        assert ours[name] is not None, name
        assert ours[name].dtype == torch.float32, name
        assert_close(ours[name], theirs[name], 1e-4, name)
    # Every gradient carries signal (a kernel that wrote zeros would pass a loose check).
    for name in expected - {"y"}:
        assert theirs[name].abs().max() > 1e-3, name


def test_bf16_on_cpu_matches_reference_within_dtype_tolerance():
    layer = randomize(DiffQKVAttention(M, 4, 1, 2, D, d_aug=12, qk_norm=True,
                                       dtype=torch.bfloat16))
    x = torch.randn(B, S, M).bfloat16()
    ours, theirs = run_both(layer, x)
    for name in ours:
        assert ours[name].dtype == torch.bfloat16, name
        # Every intermediate (q, AugQ, norms, RoPE, o) is rounded to bf16 (eps 2^-8); the query
        # path's gradients go through the RMSNorm backward's cancellation, hence the wider bound.
        assert_relative_norm(ours[name], theirs[name], 1.5e-2 if name == "y" else 6e-2, name)


def test_rope_theta_and_long_sequence():
    # S = 37 with a small base: large angles, so a sign or pairing error in RoPE shows.
    layer = randomize(DiffQKVAttention(M, 4, 2, 4, D, rope_theta=100.0))
    ours, theirs = run_both(layer, torch.randn(1, 37, M))
    for name in ours:
        assert_close(ours[name], theirs[name], 1e-4, name)


def test_causality_future_tokens_do_not_change_the_past():
    layer = randomize(DiffQKVAttention(M, 4, 1, 2, D, d_aug=8, qk_norm=True))
    x = torch.randn(B, S, M)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(B, S - 7, M)
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    torch.testing.assert_close(y[:, :7], y2[:, :7], rtol=0, atol=0)
    assert (y[:, 7:] - y2[:, 7:]).abs().max() > 1e-3
    # Position 0 attends only to itself: o_i(0) = v of its V head at 0.
    state = layer.last_state
    o = torch.from_dlpack(state.attention_output())
    v = torch.from_dlpack(state.v())
    for i in range(4):
        torch.testing.assert_close(o[:, 0, i], v[:, 0, i * 2 // 4])


def test_state_exports_match_reference_intermediates():
    layer = randomize(DiffQKVAttention(M, 4, 1, 2, D, d_aug=12, qk_norm=True))
    x = torch.randn(B, S, M)
    with torch.no_grad():
        layer(x)
    state = layer.last_state
    assert isinstance(state, DiffQkvState)
    assert state.valid and (state.batch, state.seq) == (B, S)
    assert state.dtype == "f32" and state.device == "cpu"
    assert state.config.n_k == 1 and state.config.d_aug == 12
    details = {}
    reference_of(layer, x, details=details)
    for name, ours in (("q_rope", state.q_rope()), ("k_rope", state.k_rope()), ("v", state.v()),
                       ("o", state.attention_output())):
        assert_close(torch.from_dlpack(ours), details[name].detach(), 1e-4, name)
    lse = torch.from_dlpack(state.lse())
    assert lse.shape == (B, 4, S) and lse.dtype == torch.float32


def test_empty_and_single_token_inputs():
    layer = randomize(DiffQKVAttention(M, 4, 1, 2, D, d_aug=8, qk_norm=True))
    for shape in ((2, 0, M), (0, 3, M)):
        x = torch.randn(*shape, requires_grad=True)
        y = layer(x)
        y.sum().backward()
        assert y.shape == shape and x.grad.shape == shape and layer.last_state is None
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in layer.parameters())
    # One token attends to itself alone: y does not depend on q or k, so their weights get no
    # gradient (up to rounding), and the rest matches the reference.
    ours, theirs = run_both(layer, torch.randn(1, 1, M))
    for name in ours:
        if name in ("w_q", "w_k", "w_gate", "w_up", "w_down", "q_norm", "k_norm"):
            assert ours[name].abs().max() < 1e-5, name
        else:
            assert_close(ours[name], theirs[name], 1e-4, name)


def test_second_backward_from_one_state_gives_the_same_gradients():
    layer = randomize(DiffQKVAttention(M, 4, 2, 2, D, d_aug=8))
    x = torch.randn(B, S, M, requires_grad=True)
    y = layer(x)
    r = torch.randn_like(y)
    (y * r).sum().backward(retain_graph=True)
    first = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad(set_to_none=True)
    (y * r).sum().backward()
    second = [x.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_functional_form_and_frozen_weights():
    layer = randomize(DiffQKVAttention(M, 4, 2, 4, D, qk_norm=True))
    x = torch.randn(B, S, M)
    w = {n: getattr(layer, n) for n in PARAMS}
    layer.w_v.requires_grad_(False)
    y, state = diffqkv_attention(x, layer.config(), w["w_q"], w["w_k"], w["w_v"], w["w_o"],
                                 q_norm=w["q_norm"], k_norm=w["k_norm"])
    y.sum().backward()
    assert layer.w_v.grad is None
    assert layer.w_q.grad is not None and layer.k_norm.grad is not None
    assert state.valid
    with torch.no_grad():
        y_ref, _, _ = reference_of(layer, x)
    assert_close(y.detach(), y_ref, 1e-4, "y")


def test_default_initialization_follows_the_cpp_model():
    torch.manual_seed(0)
    layer = DiffQKVAttention(256, 8, 2, 4, 32, d_aug=64, qk_norm=True, num_layers=8)
    for name in ("w_q", "w_k", "w_v", "w_gate", "w_up", "w_down"):
        assert getattr(layer, name).std().item() == pytest.approx(0.02, rel=0.05), name
    assert layer.w_o.std().item() == pytest.approx(0.02 / 4.0, rel=0.05)
    assert torch.equal(layer.q_norm, torch.ones(32)) and torch.equal(layer.k_norm, torch.ones(32))
    names = {n for n, _ in layer.named_parameters()}
    assert names == set(PARAMS)
    layer(torch.randn(1, 3, 256))
    twin = copy.deepcopy(layer)  # the config pickles; the C++ state of the forward stays behind
    assert twin.last_state is None and layer.last_state is not None
    assert repr(twin.config()) == repr(layer.config())
    assert torch.equal(twin.w_q, layer.w_q)
    plain = DiffQKVAttention(16, 2, 1, 1, 8)
    assert {n for n, _ in plain.named_parameters()} == {"w_q", "w_k", "w_v", "w_o"}
    assert plain.w_gate is None and plain.q_norm is None
    assert "n_k=1" in repr(plain)


# ---------------------------------------------------------------------------------------------
# A tiny model trains.

VOCAB, TM, TS, TB = 16, 32, 12, 8


class TinyModel(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, TM)
        self.norm = nn.LayerNorm(TM)
        self.attn = attn
        self.head = nn.Linear(TM, VOCAB)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.attn(self.norm(h))
        return self.head(h)


class ReferenceAttention(nn.Module):
    """The reference as a module over its own copies of a DiffQKVAttention's parameters."""

    def __init__(self, layer):
        super().__init__()
        self.spec = {k: getattr(layer, k) for k in
                     ("n_q", "n_k", "n_v", "head_dim", "d_aug", "qk_norm", "rope_theta")}
        self.params = nn.ParameterDict({n: nn.Parameter(getattr(layer, n).detach().clone())
                                        for n in PARAMS if getattr(layer, n) is not None})

    def forward(self, x):
        p = {n: self.params[n] if n in self.params else None for n in PARAMS}
        return reference(x, p, **self.spec)


def batches(steps):
    g = torch.Generator().manual_seed(5)
    # Only attention can solve it: the target at position s is the token at s - 1 (s = 0: 0).
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (TB, TS), generator=g)
        targets = torch.cat([torch.zeros(TB, 1, dtype=tokens.dtype), tokens[:, :-1]], dim=1)
        yield tokens, targets


def train(model, steps=40):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for tokens, targets in batches(steps):
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tiny_model_trains_and_follows_plain_pytorch():
    torch.manual_seed(0)
    ours = TinyModel(DiffQKVAttention(TM, 4, 1, 2, 8, d_aug=16, qk_norm=True, init_std=0.2))
    plain = copy.deepcopy(ours)
    plain.attn = ReferenceAttention(ours.attn)
    losses = train(ours)
    losses_ref = train(plain)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    for step, (a, b) in enumerate(zip(losses, losses_ref)):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (step, a, b)
    for name in ("w_q", "w_k", "w_v", "w_o", "w_gate", "q_norm"):
        torch.testing.assert_close(getattr(ours.attn, name).detach(),
                                   plain.attn.params[name].detach(), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad inputs raise Python exceptions with the C++ message.

@pytest.mark.parametrize("args, kwargs, field", [
    ((0, 4, 2, 2, 8), {}, "model_dim"),
    ((M, 0, 1, 1, 8), {}, "n_q"),
    ((M, 4, 3, 2, 8), {}, "n_k"),     # 3 does not divide 4
    ((M, 4, 2, 3, 8), {}, "n_v"),
    ((M, 4, 8, 4, 8), {}, "n_k"),     # more K heads than Q heads
    ((M, 4, 2, 2, 7), {}, "head_dim"),  # odd: no RoPE pairs
    ((M, 4, 2, 2, 8), dict(d_aug=-1), "d_aug"),
    ((M, 4, 2, 2, 8), dict(rope_theta=0.0), "rope_theta"),
])
def test_bad_config_is_value_error_naming_the_field(args, kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiffQKVAttention(*args, **kwargs)
    with pytest.raises(ValueError, match=field):
        DiffQkvConfig(*args, **kwargs)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="dtype"):
        DiffQKVAttention(M, 4, 2, 2, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="init_std"):
        DiffQKVAttention(M, 4, 2, 2, D, init_std=0.0)
    with pytest.raises(ValueError, match="num_layers"):
        DiffQKVAttention(M, 4, 2, 2, D, num_layers=0)
    # head_dim 8 is fine on CPU, not for the CUDA kernels (checked without a GPU).
    config = DiffQkvConfig(M, 4, 2, 2, D)
    config.validate()
    with pytest.raises(ValueError, match="head_dim: got 8, expected 32, 64, 96 or 128 on CUDA"):
        config.validate(cuda=True)


def test_wrong_input_shape_dtype_contiguity():
    layer = DiffQKVAttention(M, 4, 2, 2, D)
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(S, M))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(B, S, M + 1))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(B, S, M, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(B, S, M).bfloat16())
    with pytest.raises(ValueError, match="non-contiguous"):
        layer(torch.randn(S, B, M).transpose(0, 1))
    with pytest.raises(TypeError):
        layer([[0.0] * M] * S)
    bf16 = DiffQKVAttention(M, 4, 2, 2, D, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        bf16(torch.randn(B, S, M))


def weights(layer):
    return {n: (None if getattr(layer, n) is None else getattr(layer, n).detach())
            for n in PARAMS}


def forward_args(layer, x):
    w = weights(layer)
    return (layer.config(), w["w_q"], w["w_k"], w["w_v"], w["w_o"], x, torch.empty_like(x))


def test_low_level_checks_carry_the_cpp_message():
    layer = DiffQKVAttention(M, 4, 2, 2, D, d_aug=8, qk_norm=True)
    w = weights(layer)
    opt = {n: w[n] for n in ("w_gate", "w_up", "w_down", "q_norm", "k_norm")}
    x = torch.randn(B, S, M)
    config, w_q, w_k, w_v, w_o, _, y = forward_args(layer, x)
    _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, x, y, **opt)  # the valid call
    with pytest.raises(ValueError, match=r"^y.shape: got \[2, 14, 24\], expected \[2, 13, 24\]$"):
        _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, x, torch.empty(B, S + 1, M), **opt)
    with pytest.raises(ValueError, match=r"w_k.shape"):
        _C.diffqkv_forward(config, w_q, w_k[:, :-1].contiguous(), w_v, w_o, x, y, **opt)
    with pytest.raises(ValueError, match="w_q: got a non-contiguous tensor"):
        _C.diffqkv_forward(config, torch.randn(4 * D, M).t(), w_k, w_v, w_o, x, y, **opt)
    with pytest.raises(ValueError, match="x.dtype: got float64"):
        _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, x.double(), y.double(), **opt)
    with pytest.raises(ValueError, match=r"w_gate: got None, expected a tensor \(config.d_aug"):
        _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, x, y, **{**opt, "w_gate": None})
    with pytest.raises(ValueError, match="k_norm: got None"):
        _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, x, y, **{**opt, "k_norm": None})
    with pytest.raises(ValueError, match="x: got None"):
        _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, None, y, **opt)
    # torch refuses to export a tensor that requires grad: reported, not crashed.
    with pytest.raises(ValueError, match="w_o"):
        _C.diffqkv_forward(config, w_q, w_k, w_v, layer.w_o, x, y, **opt)
    plain = DiffQkvConfig(M, 4, 2, 2, D)
    with pytest.raises(ValueError, match=r"w_up: got a tensor, expected None"):
        _C.diffqkv_forward(plain, w_q, w_k, w_v, w_o, x, y, w_up=w["w_up"])
    with pytest.raises(ValueError, match=r"q_norm: got a tensor, expected None"):
        _C.diffqkv_forward(plain, w_q, w_k, w_v, w_o, x, y, q_norm=w["q_norm"])


def test_backward_checks_state_config_and_shapes():
    layer = DiffQKVAttention(M, 4, 2, 2, D, qk_norm=True)
    w = weights(layer)
    x = torch.randn(B, S, M)
    config, w_q, w_k, w_v, w_o, _, y = forward_args(layer, x)
    norms = dict(q_norm=w["q_norm"], k_norm=w["k_norm"])
    state = _C.diffqkv_forward(config, w_q, w_k, w_v, w_o, x, y, **norms)
    grads = [torch.empty_like(t) for t in (w_q, w_k, w_v, w_o)]
    gnorms = dict(grad_q_norm=torch.empty(D), grad_k_norm=torch.empty(D))
    dy, dx = torch.randn(B, S, M), torch.empty(B, S, M)
    _C.diffqkv_backward(config, w_q, w_k, w_v, w_o, x, state, dy, dx, *grads, **norms, **gnorms)
    with pytest.raises(RuntimeError, match="FAILED_PRECONDITION.*differs from the forward"):
        _C.diffqkv_backward(DiffQkvConfig(M, 4, 2, 2, D, qk_norm=True, rope_theta=500.0), w_q,
                            w_k, w_v, w_o, x, state, dy, dx, *grads, **norms, **gnorms)
    with pytest.raises(ValueError, match=r"^x: got \[2, 12, 24\] f32 on cpu, expected the "):
        _C.diffqkv_backward(config, w_q, w_k, w_v, w_o, x[:, :-1].contiguous(), state,
                            dy[:, :-1].contiguous(), dx[:, :-1].contiguous(), *grads, **norms,
                            **gnorms)
    with pytest.raises(ValueError, match="grad_q_norm: got None"):
        _C.diffqkv_backward(config, w_q, w_k, w_v, w_o, x, state, dy, dx, *grads, **norms,
                            grad_k_norm=gnorms["grad_k_norm"])
    with pytest.raises(ValueError, match=r"dw_v.shape"):
        _C.diffqkv_backward(config, w_q, w_k, w_v, w_o, x, state, dy, dx, grads[0], grads[1],
                            torch.empty(M, 3 * D), grads[3], **norms, **gnorms)
    with pytest.raises(ValueError, match=r"dy.shape"):
        _C.diffqkv_backward(config, w_q, w_k, w_v, w_o, x, state, dy[:1].contiguous(), dx,
                            *grads, **norms, **gnorms)
    with pytest.raises(TypeError):
        _C.diffqkv_backward(config, w_q, w_k, w_v, w_o, x, None, dy, dx, *grads, **norms,
                            **gnorms)


def test_in_place_change_before_backward_is_reported():
    layer = DiffQKVAttention(M, 4, 2, 2, D)
    x = torch.randn(B, S, M, requires_grad=True)
    y = layer(x)
    with torch.no_grad():
        layer.w_k.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# ---------------------------------------------------------------------------------------------
# CUDA against CPU (run on a GPU machine; skipped here). The CUDA kernels take D in {32, 64, 96, 128}.

def cuda_vs_cpu(dtype, heads, d_aug, qk_norm, tol, relative_norm=False):
    n_q, n_k, n_v = heads
    torch.manual_seed(11)
    cpu = randomize(DiffQKVAttention(32, n_q, n_k, n_v, 64, d_aug=d_aug, qk_norm=qk_norm,
                                     dtype=dtype))
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(B, 19, 32).to(dtype)
    r = torch.randn(B, 19, 32)
    results = []
    for layer, device in ((cpu, "cpu"), (gpu, "cuda")):
        xi = x.to(device).requires_grad_(True)
        y = layer(xi)
        (y.float() * r.to(device)).sum().backward()
        results.append({"y": y.detach(), "x": xi.grad,
                        **{n: p.grad for n, p in layer.named_parameters()}})
    torch.cuda.synchronize()
    for name, expected in results[0].items():
        assert results[1][name].is_cuda, name
        (assert_relative_norm if relative_norm else assert_close)(results[1][name], expected,
                                                                   tol, name)


@requires_cuda
@pytest.mark.parametrize("heads", [(4, 4, 4), (4, 2, 2), (4, 1, 2)])
@pytest.mark.parametrize("d_aug, qk_norm", [(0, False), (16, True)])
def test_cuda_matches_cpu_fp32(heads, d_aug, qk_norm):
    cuda_vs_cpu(torch.float32, heads, d_aug, qk_norm, 2e-4)


@requires_cuda
def test_cuda_matches_cpu_bf16():
    cuda_vs_cpu(torch.bfloat16, (4, 1, 2), 16, True, 6e-2, relative_norm=True)


@requires_cuda
def test_cuda_on_a_side_stream():
    layer = randomize(DiffQKVAttention(32, 4, 1, 2, 64, device="cuda"))
    x = torch.randn(B, S, 32, device="cuda")
    expected = layer(x).detach()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(y.detach(), expected, rtol=0, atol=0)


@requires_cuda
def test_cuda_device_mismatch_and_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        DiffQKVAttention(32, 4, 2, 2, 8, device="cuda")
    layer = DiffQKVAttention(32, 4, 2, 2, 64, device="cuda")
    with pytest.raises(ValueError, match="device"):
        layer(torch.randn(B, S, 32))
    w = weights(layer)
    x = torch.randn(B, S, 32, device="cuda")
    with pytest.raises(ValueError, match="w_q"):
        _C.diffqkv_forward(layer.config(), w["w_q"].cpu(), w["w_k"], w["w_v"], w["w_o"], x,
                           torch.empty_like(x), stream=torch.cuda.current_stream().cuda_stream)
