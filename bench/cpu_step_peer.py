#!/usr/bin/env python3
"""A plain PyTorch eager peer of sigma-moe-train's CPU training step (issue 14).

The model is sigma-moe-train's language model (docs/design.md sections 7-8,
runtime/train/model/model.h) written as a user would in PyTorch: nn.Linear (no bias),
nn.RMSNorm, F.scaled_dot_product_attention with the K/V heads repeated to the query heads, and
the MoE as a Python loop over the experts that received tokens. f32, on the CPU.

  embedding -> L x [RMSNorm, DiffQKV attention, residual, RMSNorm, MoE (or dense SwiGLU),
  residual] -> RMSNorm -> LM head (tied or not) -> cross-entropy + the layers' aux losses

DiffQKV: q = x W_q, q' = W_down(silu(q W_gate) * (q W_up)) when d_aug > 0, k = x W_k,
v = x W_v, per-head RMSNorm of q' and k (qk_norm), half-split RoPE, causal attention where query
head i reads key head i n_k / n_q and value head i n_v / n_q, then W_o.
MoE: router logits x W_g, softmax over all E, top-k (per layer), gates = the chosen
probabilities (renormalize: divided by their sum), experts SwiGLU (silu(x W1) * (x W3)) W2,
dropless; aux = lbl_coef * E sum_i f_i P_i + z_coef * mean_t logsumexp(logits_t)^2.
Step: zero_grad, forward, backward, clip_grad_norm_, AdamW (weight decay on matrices only) at the
trainer's learning rate (linear warm-up, then cosine to min_lr).

Output: progress on stderr; the last stdout line is one JSON object:
  {"bench": "cpu_step", "impl": "pytorch_eager", "torch": ..., "threads": N,
   "tokens_per_step": B*S, "steps": N, "step_ms_median": ..., "step_ms_min": ...,
   "step_ms_max": ..., "step_ms_p10": ..., "step_ms_p90": ..., "tokens_per_s_median": ...,
   "params": ..., "loss_first": ..., "loss_last": ...}
loss_first is the cross-entropy of the first step run (warm-up included), loss_last that of the
last timed step. A bad --spec (unknown key, bad value) exits 2 with one line naming the key.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

# The tiny preset (configs/tiny.textproto) as the trainer runs its first 200 steps, when layer 0
# routes top-4 (topk_schedule). The keys after the blank line are not in issue 14's list.
DEFAULT_SPEC = {
    "vocab_size": 256,
    "num_layers": 4,
    "model_dim": 128,
    "n_q": 4,
    "n_k": 1,
    "n_v": 2,
    "head_dim": 32,
    "d_aug": 192,
    "qk_norm": True,
    "rope_theta": 10000.0,
    "num_experts": 96,
    "ffn_dim": 64,
    "top_k": 1,
    "layer_top_k": {"0": 4},
    "lbl_coef": 0.1,
    "z_coef": 0.001,
    "batch_size": 16,
    "seq_len": 256,
    "lr": 5e-3,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "norm_eps": 1e-6,
    "tie_embeddings": True,
    "dense_layers": [],
    "dense_ffn_dim": 256,

    "renormalize": False,
    "init_std": 0.02,
    "beta1": 0.9,
    "beta2": 0.95,
    "eps": 1e-8,
    "warmup_steps": 20,
    "min_lr": 5e-4,
    "total_steps": 1000,
}

QK_NORM_EPS = 1e-6  # attention/qk_norm.h kQkNormEps


class SpecError(Exception):
    pass


def _int(spec, key, minimum):
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"spec key {key!r}: {value!r} is not an integer >= {minimum}")
    return value


def _float(spec, key, minimum=None, positive=False):
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"spec key {key!r}: {value!r} is not a finite number")
    if positive and not value > 0:
        raise SpecError(f"spec key {key!r}: {value!r} is not > 0")
    if minimum is not None and value < minimum:
        raise SpecError(f"spec key {key!r}: {value!r} is not >= {minimum}")
    return float(value)


def _bool(spec, key):
    value = spec[key]
    if not isinstance(value, bool):
        raise SpecError(f"spec key {key!r}: {value!r} is not true or false")
    return value


def parse_spec(text):
    """The effective spec: DEFAULT_SPEC updated by the JSON object `text`, validated."""
    try:
        given = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise SpecError(f"--spec: not JSON ({e})") from None
    if not isinstance(given, dict):
        raise SpecError("--spec: not a JSON object")
    for key in given:
        if key not in DEFAULT_SPEC:
            raise SpecError(f"spec key {key!r}: unknown (known: {', '.join(DEFAULT_SPEC)})")
    spec = dict(DEFAULT_SPEC)
    spec.update(given)
    for key in ("vocab_size", "num_layers", "model_dim", "n_q", "n_k", "n_v", "head_dim",
                "num_experts", "ffn_dim", "top_k", "batch_size", "seq_len", "dense_ffn_dim",
                "total_steps"):
        _int(spec, key, 1)
    for key in ("d_aug", "warmup_steps"):
        _int(spec, key, 0)
    for key in ("qk_norm", "tie_embeddings", "renormalize"):
        _bool(spec, key)
    for key in ("rope_theta", "init_std"):
        spec[key] = _float(spec, key, positive=True)
    for key in ("lbl_coef", "z_coef", "lr", "weight_decay", "grad_clip", "norm_eps", "eps",
                "min_lr"):
        spec[key] = _float(spec, key, minimum=0.0)
    for key in ("beta1", "beta2"):
        spec[key] = _float(spec, key, minimum=0.0)
        if spec[key] >= 1.0:
            raise SpecError(f"spec key {key!r}: {spec[key]!r} is not < 1")
    if spec["n_q"] % spec["n_k"]:
        raise SpecError(f"spec key 'n_k': {spec['n_k']} is not a divisor of n_q = {spec['n_q']}")
    if spec["n_q"] % spec["n_v"]:
        raise SpecError(f"spec key 'n_v': {spec['n_v']} is not a divisor of n_q = {spec['n_q']}")
    if spec["head_dim"] % 2:
        raise SpecError(f"spec key 'head_dim': {spec['head_dim']} is not even (RoPE pairs)")
    layers, experts = spec["num_layers"], spec["num_experts"]
    if spec["top_k"] > experts:
        raise SpecError(f"spec key 'top_k': {spec['top_k']} is not <= num_experts = {experts}")
    dense = spec["dense_layers"]
    if not isinstance(dense, list) or any(
            isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < layers for l in dense):
        raise SpecError(f"spec key 'dense_layers': {dense!r} is not a list of layer indices in "
                        f"[0, {layers})")
    per_layer = spec["layer_top_k"]
    if not isinstance(per_layer, dict):
        raise SpecError(f"spec key 'layer_top_k': {per_layer!r} is not an object "
                        '{"layer": k, ...}')
    top_k = [spec["top_k"]] * layers
    for name, k in per_layer.items():
        if not (isinstance(name, str) and name.isdigit() and int(name) < layers):
            raise SpecError(f"spec key 'layer_top_k': layer {name!r} is not in [0, {layers})")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= experts:
            raise SpecError(f"spec key 'layer_top_k': k = {k!r} for layer {name} is not in "
                            f"[1, num_experts = {experts}]")
        top_k[int(name)] = k
    spec["top_k_per_layer"] = top_k
    return spec


def learning_rate(spec, step):
    """The trainer's LearningRateAt (runtime/train/trainer/trainer.cc) at 0-based `step`."""
    lr, min_lr = spec["lr"], spec["min_lr"]
    warmup, total = spec["warmup_steps"], spec["total_steps"]
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def percentile(sorted_values, q):
    """Linear-interpolated q-quantile (0 <= q <= 1) of ascending values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def build(spec):
    """The model classes need torch, which is imported after the arguments are checked."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def rms_norm(dim, eps):
        return nn.RMSNorm(dim, eps=eps)

    def apply_rope(x, cos, sin):
        # x [B, H, S, D]; element j < D/2 pairs with j + D/2 (half-split, as attention/rope.h).
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class DiffQKVAttention(nn.Module):
        def __init__(self, s):
            super().__init__()
            m, d = s["model_dim"], s["head_dim"]
            self.n_q, self.n_k, self.n_v, self.head_dim = s["n_q"], s["n_k"], s["n_v"], d
            self.w_q = nn.Linear(m, self.n_q * d, bias=False)
            self.w_k = nn.Linear(m, self.n_k * d, bias=False)
            self.w_v = nn.Linear(m, self.n_v * d, bias=False)
            self.w_o = nn.Linear(self.n_q * d, m, bias=False)
            self.d_aug = s["d_aug"]
            if self.d_aug > 0:
                self.aug_gate = nn.Linear(self.n_q * d, self.d_aug, bias=False)
                self.aug_up = nn.Linear(self.n_q * d, self.d_aug, bias=False)
                self.aug_down = nn.Linear(self.d_aug, self.n_q * d, bias=False)
            self.qk_norm = s["qk_norm"]
            if self.qk_norm:
                self.q_norm = rms_norm(d, QK_NORM_EPS)
                self.k_norm = rms_norm(d, QK_NORM_EPS)

        def forward(self, x, cos, sin):
            b, s, _ = x.shape
            d = self.head_dim
            q = self.w_q(x)
            if self.d_aug > 0:
                q = self.aug_down(F.silu(self.aug_gate(q)) * self.aug_up(q))
            q = q.view(b, s, self.n_q, d)
            k = self.w_k(x).view(b, s, self.n_k, d)
            v = self.w_v(x).view(b, s, self.n_v, d)
            if self.qk_norm:
                q = self.q_norm(q)
                k = self.k_norm(k)
            q = apply_rope(q.transpose(1, 2), cos, sin)
            k = apply_rope(k.transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            # Query head i reads key head i n_k / n_q and value head i n_v / n_q.
            if self.n_k != self.n_q:
                k = k.repeat_interleave(self.n_q // self.n_k, dim=1)
            if self.n_v != self.n_q:
                v = v.repeat_interleave(self.n_q // self.n_v, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.w_o(o.transpose(1, 2).reshape(b, s, self.n_q * d))

    class SwiGLU(nn.Module):
        def __init__(self, m, h):
            super().__init__()
            self.w1 = nn.Linear(m, h, bias=False)
            self.w3 = nn.Linear(m, h, bias=False)
            self.w2 = nn.Linear(h, m, bias=False)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class MoE(nn.Module):
        def __init__(self, s, top_k):
            super().__init__()
            m, self.num_experts = s["model_dim"], s["num_experts"]
            self.top_k = top_k
            self.renormalize = s["renormalize"]
            self.lbl_coef, self.z_coef = s["lbl_coef"], s["z_coef"]
            self.w_gate = nn.Linear(m, self.num_experts, bias=False)
            self.experts = nn.ModuleList(SwiGLU(m, s["ffn_dim"]) for _ in range(self.num_experts))

        def forward(self, x):  # x [T, M] -> y [T, M], aux loss
            t, k, e = x.shape[0], self.top_k, self.num_experts
            logits = self.w_gate(x)
            probs = logits.softmax(dim=-1)
            gates, idx = probs.topk(k, dim=-1)
            if self.renormalize:
                gates = gates / gates.sum(dim=-1, keepdim=True)
            # Sort the (token, choice) pairs by expert, run each expert that got any on its rows,
            # scale by the gates and add back to the tokens.
            flat = idx.reshape(-1)
            order = flat.argsort(stable=True)
            counts = torch.bincount(flat, minlength=e)
            token = order // k
            rows = x.index_select(0, token)
            outs = [self.experts[i](chunk)
                    for i, chunk in enumerate(rows.split(counts.tolist())) if chunk.shape[0] > 0]
            ys = torch.cat(outs) * gates.reshape(-1)[order].unsqueeze(1)
            y = torch.zeros_like(x).index_add(0, token, ys)
            aux = x.new_zeros(())
            if self.lbl_coef > 0:
                f = counts.to(probs.dtype) / (t * k)  # no gradient through f
                aux = aux + self.lbl_coef * e * (f * probs.mean(dim=0)).sum()
            if self.z_coef > 0:
                aux = aux + self.z_coef * torch.logsumexp(logits, dim=-1).square().mean()
            return y, aux

    class Block(nn.Module):
        def __init__(self, s, layer):
            super().__init__()
            m = s["model_dim"]
            self.attn_norm = rms_norm(m, s["norm_eps"])
            self.attn = DiffQKVAttention(s)
            self.ffn_norm = rms_norm(m, s["norm_eps"])
            self.is_moe = layer not in s["dense_layers"]
            if self.is_moe:
                self.moe = MoE(s, s["top_k_per_layer"][layer])
            else:
                self.ffn = SwiGLU(m, s["dense_ffn_dim"])

        def forward(self, h, cos, sin):
            b, s, m = h.shape
            h = h + self.attn(self.attn_norm(h), cos, sin)
            n = self.ffn_norm(h).view(b * s, m)
            if self.is_moe:
                y, aux = self.moe(n)
            else:
                y, aux = self.ffn(n), h.new_zeros(())
            return h + y.view(b, s, m), aux

    class LanguageModel(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.spec = s
            self.embedding = nn.Embedding(s["vocab_size"], s["model_dim"])
            self.layers = nn.ModuleList(Block(s, l) for l in range(s["num_layers"]))
            self.final_norm = rms_norm(s["model_dim"], s["norm_eps"])
            self.lm_head = None
            if not s["tie_embeddings"]:
                self.lm_head = nn.Linear(s["model_dim"], s["vocab_size"], bias=False)
            self._rope = {}
            self.reset_parameters()

        def reset_parameters(self):
            # As Model::Init: N(0, init_std), output projections (w_o, w2) N(0, init_std /
            # sqrt(2 L)), gains 1.
            std = self.spec["init_std"]
            out_std = std / math.sqrt(2.0 * self.spec["num_layers"])
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if p.dim() == 1:
                        p.fill_(1.0)
                    elif name.endswith(("w_o.weight", "w2.weight")):
                        p.normal_(0.0, out_std)
                    else:
                        p.normal_(0.0, std)

        def rope(self, seq_len):
            if seq_len not in self._rope:
                d = self.spec["head_dim"]
                inv = self.spec["rope_theta"] ** (
                    -torch.arange(0, d, 2, dtype=torch.float64) / d)
                angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)
                angles = torch.cat((angles, angles), dim=-1)
                self._rope[seq_len] = (angles.cos().float(), angles.sin().float())
            return self._rope[seq_len]

        def forward(self, ids, targets):  # ids, targets [B, S] -> (cross-entropy, aux total)
            cos, sin = self.rope(ids.shape[1])
            h = self.embedding(ids)
            aux = h.new_zeros(())
            for layer in self.layers:
                h, layer_aux = layer(h, cos, sin)
                aux = aux + layer_aux
            h = self.final_norm(h)
            head = self.embedding.weight if self.lm_head is None else self.lm_head.weight
            logits = F.linear(h, head)
            ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
            return ce, aux

    return LanguageModel(spec)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Spec keys and defaults (the tiny preset): "
        + json.dumps(DEFAULT_SPEC) + ". layer_top_k overrides top_k per layer for the whole run "
        "(default: layer 0 routes top-4, as the tiny preset's first 200 steps). warmup_steps, "
        "min_lr and total_steps set the learning-rate schedule (the trainer's train.warmup_steps, "
        "train.min_lr and train.steps).")
    parser.add_argument("--spec", default="",
                        help="JSON object overriding the model and training shape, e.g. "
                        '\'{"num_layers": 2, "batch_size": 4}\'; every key is optional')
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (interop threads are set to 1); "
                        "default: every core this process may run on")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seeds the init and the data (default 1234)")
    parser.add_argument("--pool", type=int, default=4,
                        help="batches of random byte tokens generated up front and cycled "
                        "(default 4; 1 trains on one batch, whose loss must fall)")
    parser.add_argument("--dry_run", action="store_true",
                        help="build the model, print the JSON line with its parameter count and "
                        "no timings, and exit")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: {args.threads} is not >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup: {args.warmup} is not >= 0")
    if args.steps < 1:
        parser.error(f"--steps: {args.steps} is not >= 1")
    if args.pool < 1:
        parser.error(f"--pool: {args.pool} is not >= 1")
    try:
        spec = parse_spec(args.spec)
    except SpecError as e:
        print(f"cpu_step_peer: {e}", file=sys.stderr)
        return 2

    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_interop_threads(1)
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)

    model = build(spec)
    params = sum(p.numel() for p in model.parameters())
    batch, seq = spec["batch_size"], spec["seq_len"]
    result = {"bench": "cpu_step", "impl": "pytorch_eager", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "tokens_per_step": batch * seq}
    print(f"cpu_step_peer: {params} parameters, top-k per layer {spec['top_k_per_layer']}, "
          f"{batch} x {seq} tokens per step, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}", file=sys.stderr)
    if args.dry_run:
        result["params"] = params
        print(json.dumps(result))
        return 0

    # Weight decay on matrices only (ModelParam::decay): embedding, projections, router, experts.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec["weight_decay"]},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=spec["lr"], betas=(spec["beta1"], spec["beta2"]), eps=spec["eps"])

    generator = torch.Generator().manual_seed(args.seed)
    pool = [torch.randint(0, spec["vocab_size"], (batch, seq + 1), generator=generator)
            for _ in range(args.pool)]

    def step(i):
        tokens = pool[i % len(pool)]
        ids, targets = tokens[:, :-1], tokens[:, 1:]
        lr = learning_rate(spec, i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        ce, aux = model(ids, targets)
        (ce + aux).backward()
        if spec["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        optimizer.step()
        return ce.item(), aux.item()

    times_ms, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        ce, aux = step(i)
        ms = (time.perf_counter() - t0) * 1e3
        losses.append(ce)
        timed = i >= args.warmup
        if timed:
            times_ms.append(ms)
        print(f"{'step' if timed else 'warmup'} {i + 1}/{args.warmup + args.steps}  "
              f"{ms:.1f} ms  loss {ce:.4f}  aux {aux:.4f}", file=sys.stderr)

    ordered = sorted(times_ms)
    median = statistics.median(ordered)
    result.update({
        "steps": args.steps,
        "step_ms_median": median,
        "step_ms_min": ordered[0],
        "step_ms_max": ordered[-1],
        "step_ms_p10": percentile(ordered, 0.10),
        "step_ms_p90": percentile(ordered, 0.90),
        "tokens_per_s_median": batch * seq / (median / 1e3),
        "params": params,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
