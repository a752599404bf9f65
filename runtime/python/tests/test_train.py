"""A small torch model with sigma_moe.torch.MoE as its FFN trains on CPU: its loss falls, and
it follows the same model with the plain PyTorch layer (moe_reference.ReferenceMoE)."""

import copy

import torch
from torch import nn

from moe_reference import ReferenceMoE
from sigma_moe.torch import MoE

VOCAB, M, H, E, SEQ, BATCH = 32, 32, 48, 4, 16, 4


class TinyModel(nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, M)
        self.norm = nn.LayerNorm(M)
        self.moe = moe
        self.head = nn.Linear(M, VOCAB)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.moe(self.norm(h))
        return self.head(h), self.moe.aux_loss


def batches(steps):
    g = torch.Generator().manual_seed(5)
    # A learnable rule: the next token is (3 * token + 1) mod VOCAB.
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
        yield tokens, (3 * tokens + 1) % VOCAB


def train(model, steps=50):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for tokens, targets in batches(steps):
        logits, aux = model(tokens)
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad()
        (loss + aux).backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_loss_falls_and_matches_plain_pytorch():
    torch.manual_seed(0)
    ours = TinyModel(MoE(M, H, E, top_k=2, lbl_coef=0.01))
    plain = copy.deepcopy(ours)
    plain.moe = ReferenceMoE(ours.moe)
    losses = train(ours)
    losses_ref = train(plain)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    # Same parameters, same data: the curves agree step by step (fp32 rounding only; a routing
    # flip late in training would show as a small divergence, hence the tolerance).
    for step, (a, b) in enumerate(zip(losses, losses_ref)):
        assert abs(a - b) <= 2e-3 * max(1.0, abs(b)), (step, a, b)
    for name in ("w_gate", "w1", "w2"):
        torch.testing.assert_close(getattr(ours.moe, name), getattr(plain.moe, name),
                                   rtol=1e-2, atol=1e-3)
