"""Drop sigma-moe into an existing PyTorch MoE model: swap each MoE block, keep the weights.

    PYTHONPATH=build/runtime/python:runtime/python python3 examples/drop_in_moe.py \
        [--device cuda] [--steps 20] [--compile]

(or `pip install .` first). The model below is what a user already has: a small decoder whose
FFNs are MoE blocks written in plain PyTorch, Qwen-MoE / DeepSeek-MoE style (a router Linear,
softmax over all experts, top-k, gates not renormalized; per-expert SwiGLU experts with
gate_proj / up_proj / down_proj Linears). The script

  1. builds that model and runs it (the reference),
  2. replaces every `block.mlp` by sigma_moe.torch.MoE holding the same router and expert
     weights (sigma_moe.torch.convert.moe_from_linear: [H, M] Linear weights -> our [E, M, H]),
  3. checks that logits, loss and gradients agree with the reference,
  4. trains the swapped model for a few steps (optionally under torch.compile(fullgraph=True):
     our layers are custom ops, so the whole model is one graph) and checks the loss falls.

Routing must match for the swap to compute the same function: Mixtral's softmax over the top-k
logits is MoE(renormalize=True); the load-balancing loss of transformers'
load_balancing_loss_func with router_aux_loss_coef a is our lbl_coef = a * top_k.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import sigma_moe.torch as smt


# ---------------------------------------------------------------------------------------------
# The user's model, plain PyTorch.


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoEBlock(nn.Module):
    """Router + top-k experts; aux_loss is the Switch load-balancing loss times aux_coef."""

    def __init__(self, dim, hidden, num_experts, top_k, aux_coef):
        super().__init__()
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(num_experts))
        self.top_k, self.aux_coef = top_k, aux_coef
        self.aux_loss = None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        gates, chosen = torch.topk(probs, self.top_k, dim=-1)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            y = y.index_add(0, token, gates[token, slot, None].to(x.dtype) * expert(x[token]))
        # Switch LBL: E * sum_i f_i P_i, f_i the share of the T*K choices on expert i.
        share = F.one_hot(chosen, len(self.experts)).float().mean(dim=(0, 1))
        self.aux_loss = self.aux_coef * len(self.experts) * (share * probs.mean(0)).sum()
        return y.reshape(shape)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, s, m = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, m // self.heads).unbind(2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, s, m))


class Block(nn.Module):
    def __init__(self, dim, heads, moe_args):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp = SparseMoEBlock(dim, **moe_args)

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class MoETransformer(nn.Module):
    def __init__(self, vocab=64, dim=32, heads=4, layers=2, hidden=48, num_experts=8, top_k=2,
                 aux_coef=0.01):
        super().__init__()
        moe_args = dict(hidden=hidden, num_experts=num_experts, top_k=top_k, aux_coef=aux_coef)
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, moe_args) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens, targets):
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.norm(h))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        # Both MoE blocks, the plain one and sigma-moe's, expose aux_loss after a forward.
        return logits, loss + sum(block.mlp.aux_loss for block in self.blocks)


# ---------------------------------------------------------------------------------------------
# The swap.


def swap_in_sigma_moe(model: MoETransformer) -> MoETransformer:
    """Replaces every block's SparseMoEBlock by sigma_moe.torch.MoE with the same weights."""
    for block in model.blocks:
        plain = block.mlp
        block.mlp = smt.convert.moe_from_linear(
            plain.gate, plain.experts, top_k=plain.top_k,
            # Ours is E * sum_i f_i P_i with the same f: the same coefficient.
            lbl_coef=plain.aux_coef)
    return model


def batch(vocab, device, generator, size=(8, 24)):
    tokens = torch.randint(0, vocab, size, device="cpu", generator=generator).to(device)
    return tokens, torch.roll(tokens, shifts=1, dims=1)  # predict the previous token


def forward_backward(model, fn, tokens, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = fn(tokens, targets)
    loss.backward()
    return logits.detach(), loss.detach()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", nargs="?", const="inductor", default=None,
                        metavar="BACKEND", help="torch.compile(fullgraph=True) the swapped model "
                        "for training (default backend: inductor)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    vocab = 64
    model = MoETransformer(vocab=vocab).to(device)
    g = torch.Generator().manual_seed(1)
    tokens, targets = batch(vocab, device, g)

    # 1. The reference: the plain model's logits, loss and gradients.
    ref_logits, ref_loss = forward_backward(model, model, tokens, targets)
    ref_grads = {
        "blocks.0.attn.qkv.weight": model.blocks[0].attn.qkv.weight.grad.clone(),
        "blocks.1.mlp.gate.weight": model.blocks[1].mlp.gate.weight.grad.clone(),
        "blocks.1.mlp.experts.3.up_proj.weight":
            model.blocks[1].mlp.experts[3].up_proj.weight.grad.clone(),
    }

    # 2. Swap. Every parameter outside the MoE blocks is untouched.
    swap_in_sigma_moe(model)
    print(model.blocks[0].mlp)

    # 3. Same function, same gradients (mapped back to the Linear layout through convert).
    logits, loss = forward_backward(model, model, tokens, targets)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, **tol)
    torch.testing.assert_close(loss, ref_loss, **tol)
    moe = model.blocks[1].mlp
    _, up_grads, _ = smt.convert.experts_to_linear(moe.w1.grad, moe.w3.grad, moe.w2.grad)
    got = {
        "blocks.0.attn.qkv.weight": model.blocks[0].attn.qkv.weight.grad,
        "blocks.1.mlp.gate.weight": smt.convert.router_to_linear(moe.w_gate.grad),
        "blocks.1.mlp.experts.3.up_proj.weight": up_grads[3],
    }
    for name, want in ref_grads.items():
        torch.testing.assert_close(got[name], want, **tol, msg=name)
    print(f"swapped model matches the plain one: loss {loss.item():.5f} "
          f"(plain {ref_loss.item():.5f}), logits and gradients within {tol}")

    # 4. Train the swapped model a few steps.
    fn = model
    if args.compile:
        fn = torch.compile(model, fullgraph=True, backend=args.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        tokens, targets = batch(vocab, device, g)
        _, loss = forward_backward(model, fn, tokens, targets)
        opt.step()
        losses.append(loss.item())
        if step % 5 == 0 or step == args.steps - 1:
            aux = model.blocks[0].mlp.aux_values
            print(f"step {step:3d}  loss {losses[-1]:.4f}  layer 0 lbl {aux['lbl']:.3f}  "
                  f"dropped {model.blocks[0].mlp.dropped}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s"
          + (f" (torch.compile, {args.compile})" if args.compile else ""))
    if args.steps >= 10 and not min(losses[-3:]) < losses[0]:
        raise SystemExit(f"loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
