"""A plain PyTorch MoE layer, written from docs/design.md section 5, to check sigma_moe against.

Softmax router over all E experts (fp32 or wider), top-K by logit with ties to the lower index,
gates = probs at the chosen experts (optionally renormalized), Tutel priority order for capacity
(all first choices in token order, then the second choices, ...), SwiGLU experts, and the aux
losses: LBL = E * sum_i f_i P_i (f from counts before drops, constant), z-loss =
mean_t logsumexp(logits_t)^2, Top-1 LBL = E * sum_i P_i^2 / mean_t max_i p_ti.
Everything is differentiable by autograd; run it in float64 for tight comparisons.
"""

import math

import torch
import torch.nn.functional as F


def capacity(capacity_factor, num_tokens, top_k, num_experts):
    if capacity_factor <= 0:
        return -1
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


def route(x, w_gate, top_k, renormalize=False):
    logits = x @ w_gate
    probs = torch.softmax(logits, dim=-1)
    order = torch.sort(logits.detach(), dim=-1, descending=True, stable=True).indices
    topk_idx = order[:, :top_k]
    gates = probs.gather(1, topk_idx)
    if renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return logits, probs, topk_idx, gates


def keep_mask(topk_idx, num_experts, cap):
    """kept[t, k]: whether (t, k) gets a slot, in priority order k * T + t."""
    t_count, k_count = topk_idx.shape
    kept = torch.ones(t_count, k_count, dtype=torch.bool)
    if cap < 0:
        return kept
    used = [0] * num_experts
    idx = topk_idx.cpu().tolist()
    for k in range(k_count):
        for t in range(t_count):
            e = idx[t][k]
            kept[t, k] = used[e] < cap
            used[e] += 1
    return kept


def aux_losses(logits, probs, topk_idx, num_experts):
    t_count, k_count = topk_idx.shape
    counts = torch.bincount(topk_idx.reshape(-1), minlength=num_experts).to(probs.dtype)
    f = counts / (t_count * k_count)
    p_mean = probs.mean(dim=0)
    lbl = num_experts * (f * p_mean).sum()
    z_loss = (torch.logsumexp(logits, dim=-1) ** 2).mean()
    top1_lbl = num_experts * (p_mean ** 2).sum() / probs.max(dim=-1).values.mean()
    return {"lbl": lbl, "z_loss": z_loss, "top1_lbl": top1_lbl, "counts": counts}


def swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1) * (x @ w3)) @ w2


def moe(x, w_gate, w1, w3, w2, top_k=1, capacity_factor=0.0, lbl_coef=0.0, z_coef=0.0,
        top1_lbl_coef=0.0, renormalize=False):
    """Returns (y [T, M], aux_total, details) for x [T, M]; all math in x's dtype."""
    t_count, _ = x.shape
    num_experts = w_gate.shape[1]
    logits, probs, topk_idx, gates = route(x, w_gate, top_k, renormalize)
    cap = capacity(capacity_factor, t_count, top_k, num_experts)
    kept = keep_mask(topk_idx, num_experts, cap)
    y = torch.zeros_like(x)
    for e in range(num_experts):
        tk = ((topk_idx.cpu() == e) & kept).nonzero()
        if tk.numel() == 0:
            continue
        tokens, choices = tk[:, 0].to(x.device), tk[:, 1].to(x.device)
        out = swiglu(x[tokens], w1[e], w3[e], w2[e])
        y = y.index_add(0, tokens, gates[tokens, choices].unsqueeze(1) * out)
    aux = aux_losses(logits, probs, topk_idx, num_experts)
    total = lbl_coef * aux["lbl"] + z_coef * aux["z_loss"] + top1_lbl_coef * aux["top1_lbl"]
    details = dict(aux, topk_idx=topk_idx, kept=kept, dropped=int((~kept).sum()), probs=probs)
    return y, total, details


class ReferenceMoE(torch.nn.Module):
    """The same layer as sigma_moe.torch.MoE (same parameters), in plain PyTorch."""

    def __init__(self, layer):
        super().__init__()
        self.w_gate = torch.nn.Parameter(layer.w_gate.detach().clone())
        self.w1 = torch.nn.Parameter(layer.w1.detach().clone())
        self.w3 = torch.nn.Parameter(layer.w3.detach().clone())
        self.w2 = torch.nn.Parameter(layer.w2.detach().clone())
        self.model_dim = layer.model_dim
        self.kwargs = dict(top_k=layer.top_k, capacity_factor=layer.capacity_factor,
                           lbl_coef=layer.lbl_coef, z_coef=layer.z_coef,
                           top1_lbl_coef=layer.top1_lbl_coef, renormalize=layer.renormalize)
        self.aux_loss = None

    def forward(self, x):
        y, self.aux_loss, _ = moe(x.reshape(-1, self.model_dim), self.w_gate, self.w1, self.w3,
                                  self.w2, **self.kwargs)
        return y.reshape(x.shape)
