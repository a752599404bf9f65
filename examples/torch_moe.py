"""A small PyTorch transformer whose FFN is sigma-moe's MoE layer, trained for a few steps.

    PYTHONPATH=build/runtime/python:runtime/python python3 examples/torch_moe.py [--device cuda]

(or `pip install .` first). The task is predicting the previous token of a random sequence;
the loss falls over the default 30 steps, and the routing statistics of the last step are printed.
The MoE routers stay fp32 with --dtype bfloat16 (MoE keeps w_gate in float32).
"""

import argparse

import torch
from torch import nn

from sigma_moe.torch import MoE


class Block(nn.Module):
    def __init__(self, dim, heads, ffn_dim, experts, top_k, dtype):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, dtype=dtype)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, dtype=dtype)
        self.moe = MoE(dim, ffn_dim, experts, top_k=top_k, lbl_coef=0.01, dtype=dtype)

    def forward(self, h, mask):
        a = self.norm1(h)
        h = h + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        return h + self.moe(self.norm2(h))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=64, dim=64, heads=4, ffn_dim=128, experts=8, top_k=2, layers=2,
                 dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, dtype=dtype)
        self.blocks = nn.ModuleList(
            Block(dim, heads, ffn_dim, experts, top_k, dtype) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, dtype=dtype)
        self.head = nn.Linear(dim, vocab, dtype=dtype)

    def forward(self, tokens):
        seq = tokens.shape[1]
        mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=tokens.device), 1)
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h, mask)
        aux = sum(block.moe.aux_loss for block in self.blocks)
        return self.head(self.norm(h)), aux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    vocab = 64
    model = TinyTransformer(vocab=vocab, dtype=dtype).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        tokens = torch.randint(0, vocab, (8, 32), device=device)
        targets = torch.roll(tokens, shifts=1, dims=1)  # predict the previous token
        logits, aux = model(tokens)
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        (loss + aux).backward()
        opt.step()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}  aux {aux.item():.4f}")
    stats = model.blocks[0].moe.routing_stats()
    print("layer 0 tokens per expert:", stats["tokens_per_expert"],
          f"max rel dev {stats['max_rel_dev']:.2f}, dead experts {stats['dead_experts']}")


if __name__ == "__main__":
    main()
