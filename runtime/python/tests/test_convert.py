"""sigma_moe.torch.convert: layout round trips, errors naming the tensor, and a plain PyTorch MoE
block (router Linear + per-expert SwiGLU Linears, Mixtral / Qwen-MoE style) that gives the same
output and gradients as sigma_moe.torch.MoE after conversion."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sigma_moe.torch import MoE, convert

T, M, H, E = 29, 16, 24, 6


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PlainMoEBlock(nn.Module):
    """Softmax over all experts, then top-k; gates are those probabilities, not renormalized.
    Also the Mixtral-style load-balancing loss (f counted per choice slot)."""

    def __init__(self, dim, hidden, experts, top_k):
        super().__init__()
        self.gate = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))
        self.top_k = top_k
        self.aux_loss = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        gates, chosen = torch.topk(probs, self.top_k, dim=-1)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel():
                y = y.index_add(0, token, gates[token, slot, None].to(x.dtype) * expert(x[token]))
        mask = F.one_hot(chosen, len(self.experts)).float()  # [T, K, E]
        self.aux_loss = len(self.experts) * (mask.mean(0) * probs.mean(0)).sum()
        return y.reshape(shape)


def linears(block, attr):
    return [getattr(expert, attr) for expert in block.experts]


def test_linear_round_trip_and_layout():
    block = PlainMoEBlock(M, H, E, 2)
    w1, w3, w2 = convert.experts_from_linear(linears(block, "gate_proj"),
                                             linears(block, "up_proj"),
                                             linears(block, "down_proj"))
    assert w1.shape == (E, M, H) and w3.shape == (E, M, H) and w2.shape == (E, H, M)
    assert all(w.is_contiguous() for w in (w1, w3, w2))
    x = torch.randn(M)
    torch.testing.assert_close(x @ w1[3], block.experts[3].gate_proj(x))
    torch.testing.assert_close(x @ w3[3], block.experts[3].up_proj(x))
    hid = torch.randn(H)
    torch.testing.assert_close(hid @ w2[3], block.experts[3].down_proj(hid))
    gate, up, down = convert.experts_to_linear(w1, w3, w2)
    for e in range(E):
        assert torch.equal(gate[e], block.experts[e].gate_proj.weight)
        assert torch.equal(up[e], block.experts[e].up_proj.weight)
        assert torch.equal(down[e], block.experts[e].down_proj.weight)
    # Weight tensors work as well as Linears.
    again = convert.experts_from_linear(gate, up, down)
    assert all(torch.equal(a, b) for a, b in zip(again, (w1, w3, w2)))


def test_fused_round_trip_gate_rows_first():
    gate_up = torch.randn(E, 2 * H, M)
    down = torch.randn(E, M, H)
    w1, w3, w2 = convert.experts_from_fused(gate_up, down)
    assert torch.equal(w1[2], gate_up[2, :H].t()) and torch.equal(w3[2], gate_up[2, H:].t())
    assert torch.equal(w2[2], down[2].t())
    gate_up2, down2 = convert.experts_to_fused(w1, w3, w2)
    assert torch.equal(gate_up2, gate_up) and torch.equal(down2, down)
    # Fused and per-expert Linears agree: gate_up[e] = cat(gate_proj.weight, up_proj.weight).
    gate, up, down_l = convert.experts_to_linear(w1, w3, w2)
    for e in range(E):
        assert torch.equal(torch.cat([gate[e], up[e]]), gate_up[e])
        assert torch.equal(down_l[e], down[e])


def test_router_round_trip():
    router = nn.Linear(M, E, bias=False)
    w_gate = convert.router_from_linear(router)
    assert w_gate.shape == (M, E) and w_gate.dtype == torch.float32
    x = torch.randn(5, M)
    torch.testing.assert_close(x @ w_gate, router(x))
    assert torch.equal(convert.router_to_linear(w_gate), router.weight)
    assert convert.router_from_linear(router.weight.bfloat16()).dtype == torch.float32


def test_dtype_conversion():
    gate_up, down = torch.randn(E, 2 * H, M, dtype=torch.float64), torch.randn(E, M, H,
                                                                              dtype=torch.float64)
    w1, w3, w2 = convert.experts_from_fused(gate_up, down, dtype=torch.bfloat16)
    assert w1.dtype == w3.dtype == w2.dtype == torch.bfloat16
    assert torch.equal(w1, gate_up[:, :H].transpose(1, 2).bfloat16())
    with pytest.raises(ValueError, match=r"gate_up: got dtype torch.float64.*dtype="):
        convert.experts_from_fused(gate_up, down)
    with pytest.raises(ValueError, match="dtype: got torch.float16"):
        convert.experts_from_fused(gate_up, down, dtype=torch.float16)


def test_errors_name_the_tensor():
    block = PlainMoEBlock(M, H, E, 2)
    g, u, d = (linears(block, a) for a in ("gate_proj", "up_proj", "down_proj"))
    with pytest.raises(ValueError, match=r"up_proj: got 5 experts, expected 6"):
        convert.experts_from_linear(g, u[:5], d)
    bad = list(d)
    bad[4] = nn.Linear(H + 1, M, bias=False)
    with pytest.raises(ValueError, match=r"down_proj\[4\]\.weight: got shape \(16, 25\), "
                                         r"expected \[16, 24\] \(\[M, H\]\)"):
        convert.experts_from_linear(g, u, bad)
    bad = list(u)
    bad[2] = nn.Linear(M, H, bias=True)
    with pytest.raises(ValueError, match=r"up_proj\[2\]\.bias: got a bias"):
        convert.experts_from_linear(g, bad, d)
    bad = [lin.weight.detach() for lin in g]
    bad[1] = bad[1].double()
    with pytest.raises(ValueError, match=r"gate_proj\[1\]: got dtype torch.float64, expected "
                                         r"torch.float32 \(as gate_proj\[0\]\)"):
        convert.experts_from_linear(bad, u, d)
    bad[1] = torch.zeros(H, M, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"gate_proj\[1\]: got dtype torch.int64, expected a "
                                         "floating-point dtype"):
        convert.experts_from_linear(bad, u, d)
    bad[1] = torch.zeros(H, M, device="meta")
    with pytest.raises(ValueError, match=r"gate_proj\[1\]: got device meta, expected cpu"):
        convert.experts_from_linear(bad, u, d)
    with pytest.raises(ValueError, match=r"gate_proj: got 0 experts"):
        convert.experts_from_linear([], u, d)
    with pytest.raises(TypeError, match="gate_proj"):
        convert.experts_from_linear(g[0], u, d)
    w1, w3, w2 = convert.experts_from_linear(g, u, d)
    with pytest.raises(ValueError, match=r"w2: got shape \(6, 16, 24\), expected \[6, 24, 16\]"):
        convert.experts_to_linear(w1, w3, w2.transpose(1, 2))
    with pytest.raises(ValueError, match=r"w3: got device meta"):
        convert.experts_to_fused(w1, w3.to("meta"), w2)
    with pytest.raises(ValueError, match=r"w1: got shape \(6, 16\), expected 3 dimensions"):
        convert.experts_to_fused(w1[:, :, 0], w3, w2)
    with pytest.raises(ValueError, match=r"gate_up: got shape \(6, 47, 16\).*even"):
        convert.experts_from_fused(torch.randn(E, 2 * H - 1, M), torch.randn(E, M, H))
    with pytest.raises(ValueError, match=r"down: got shape \(6, 24, 16\), expected \[6, 16, 24\]"):
        convert.experts_from_fused(torch.randn(E, 2 * H, M), torch.randn(E, H, M))
    with pytest.raises(ValueError, match=r"router\.bias: got a bias"):
        convert.router_from_linear(nn.Linear(M, E))
    with pytest.raises(ValueError, match=r"router: got shape \(6,\), expected 2 dimensions"):
        convert.router_from_linear(torch.randn(E))
    with pytest.raises(ValueError, match=r"w_gate: got dtype torch.int32"):
        convert.router_to_linear(torch.zeros(M, E, dtype=torch.int32))
    layer = MoE(M, H + 8, E)
    with pytest.raises(ValueError, match=r"gate_proj: converts to shape \(6, 16, 24\), expected "
                                         r"\(6, 16, 32\).*H=32"):
        convert.load_moe_(layer, block.gate, gate_proj=g, up_proj=u, down_proj=d)
    with pytest.raises(ValueError, match=r"expected gate_proj, up_proj and down_proj, or gate_up "
                                         "and down"):
        convert.load_moe_(layer, block.gate, gate_proj=g, down=torch.randn(E, M, H))


@pytest.mark.parametrize("top_k", [1, 2])
def test_block_equivalence_output_and_gradients(top_k):
    torch.manual_seed(top_k)
    block = PlainMoEBlock(M, H, E, top_k)
    layer = convert.moe_from_linear(block.gate, block.experts, top_k=top_k, lbl_coef=0.0)
    assert (layer.model_dim, layer.ffn_dim, layer.num_experts) == (M, H, E)
    x = torch.randn(3, T // 3 + 1, M)
    r = torch.randn_like(x)
    x_ours, x_plain = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours, y_plain = layer(x_ours), block(x_plain)
    torch.testing.assert_close(y_ours, y_plain, rtol=1e-5, atol=1e-6)
    (y_ours * r).sum().backward()
    (y_plain * r).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_plain.grad, rtol=1e-5, atol=1e-6)
    # Our gradients, mapped back through the converters, are the plain block's.
    torch.testing.assert_close(convert.router_to_linear(layer.w_gate.grad), block.gate.weight.grad,
                               rtol=1e-5, atol=1e-6)
    grads = convert.experts_to_linear(layer.w1.grad, layer.w3.grad, layer.w2.grad)
    for attr, ours in zip(("gate_proj", "up_proj", "down_proj"), grads):
        for e in range(E):
            theirs = getattr(block.experts[e], attr).weight.grad
            if theirs is None:  # an expert no token chose
                theirs = torch.zeros_like(ours[e])
            torch.testing.assert_close(ours[e], theirs, rtol=1e-5, atol=1e-6,
                                       msg=f"{attr}[{e}]")
    # Mixtral-style LBL (f per choice slot) is K times ours.
    assert block.aux_loss.item() == pytest.approx(top_k * layer.aux_values["lbl"], rel=1e-5)


def test_fused_weights_load_into_a_bf16_layer():
    torch.manual_seed(0)
    block = PlainMoEBlock(M, H, E, 2)
    w1, w3, w2 = convert.experts_from_linear(linears(block, "gate_proj"),
                                             linears(block, "up_proj"),
                                             linears(block, "down_proj"))
    gate_up, down = convert.experts_to_fused(w1, w3, w2)
    layer = MoE(M, H, E, top_k=2, dtype=torch.bfloat16)
    convert.load_moe_(layer, block.gate.weight, gate_up=gate_up, down=down)
    assert layer.w1.dtype == torch.bfloat16 and layer.w_gate.dtype == torch.float32
    assert torch.equal(layer.w1, w1.bfloat16()) and torch.equal(layer.w2, w2.bfloat16())
    x = torch.randn(T, M)
    with torch.no_grad():
        y = layer(x.bfloat16()).float()
        y_plain = block(x)
    assert (y - y_plain).abs().max() <= 4e-2 * y_plain.abs().max()


def test_moe_from_linear_with_mixtral_names():
    class MixtralExpert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Linear(M, H, bias=False)
            self.w3 = nn.Linear(M, H, bias=False)
            self.w2 = nn.Linear(H, M, bias=False)

    experts = [MixtralExpert() for _ in range(E)]
    router = nn.Linear(M, E, bias=False)
    layer = convert.moe_from_linear(router, experts, top_k=2, gate="w1", up="w3", down="w2",
                                    renormalize=True)
    assert layer.renormalize and layer.top_k == 2
    assert torch.equal(layer.w3[1], experts[1].w3.weight.t())
    with pytest.raises(ValueError, match=r"experts\[0\]: has no attribute 'gate_proj'"):
        convert.moe_from_linear(router, experts, top_k=2)
