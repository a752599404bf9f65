"""Reading a run's metrics.jsonl and the balance measures the study reports (sweep.py, plot.py).

Letters as in moe/router/aux_loss.h: E experts, c_i the (token, choice) pairs routed to expert i,
f_i = c_i / sum_j c_j, P_i the mean router probability of expert i.

One step of the study's preset routes 2,048 tokens, about 21 per expert at top-1: with that few,
sampling noise alone puts the busiest expert some +50% above the mean of a perfectly uniform
router. The window measures therefore sum the counts of several consecutive steps first (the
report's figures are over far larger batches); the per-step ("raw") measures are kept beside them.
"""

import json
import math


def read_rows(path):
    """metrics.jsonl rows, one per step, in step order. A resumed run rewrites the steps after its
    checkpoint: the last row written for a step wins."""
    by_step = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed run
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def relative_deviation(counts):
    """(max_i, min_i) of (c_i - mean) / mean: 0 is uniform, -1 an expert with no token."""
    total = sum(counts)
    if total == 0:
        return 0.0, 0.0
    mean = total / len(counts)
    return (max(counts) - mean) / mean, (min(counts) - mean) / mean


def layer_series(rows, layer_index):
    """Per step of MoE layer number `layer_index` (0 = lowest): steps, counts, p_mean, records."""
    steps, counts, probs, records = [], [], [], []
    for row in rows:
        layers = row.get("moe", [])
        if layer_index >= len(layers):
            continue
        rec = layers[layer_index]
        steps.append(row["step"])
        counts.append(rec["tokens_per_expert"])
        probs.append(rec.get("p_mean", []))
        records.append(rec)
    return steps, counts, probs, records


def windowed_deviation(counts, window):
    """Relative deviations of the counts summed over the `window` steps ending at each step (fewer
    at the start). Returns (max list, min list), one entry per step."""
    out_max, out_min = [], []
    sums = None
    for i, c in enumerate(counts):
        sums = list(c) if sums is None else [a + b for a, b in zip(sums, c)]
        if i >= window:
            sums = [a - b for a, b in zip(sums, counts[i - window])]
        hi, lo = relative_deviation(sums)
        out_max.append(hi)
        out_min.append(lo)
    return out_max, out_min


def tail_f_and_p(counts, probs, window):
    """f and P of the last `window` steps (counts summed, P averaged) and the LBL they give,
    E * sum_i f_i P_i (1 when either f or P is uniform)."""
    tail_counts = counts[-window:]
    tail_probs = [p for p in probs[-window:] if p]
    e = len(tail_counts[-1])
    sums = [sum(c[i] for c in tail_counts) for i in range(e)]
    total = sum(sums) or 1
    f = [s / total for s in sums]
    p = ([sum(row[i] for row in tail_probs) / len(tail_probs) for i in range(e)]
         if tail_probs else [1.0 / e] * e)
    return f, p, e * sum(fi * pi for fi, pi in zip(f, p))


def coefficient_of_variation(values):
    """std / mean of the values (0 when they are all equal): how far from uniform f or P is."""
    n = len(values)
    mean = sum(values) / n
    if mean == 0:
        return 0.0
    return math.sqrt(sum((v - mean) ** 2 for v in values) / n) / mean


def run_summary(rows, window):
    """The study's table row of one run: final held-out loss and, per MoE layer, the balance of its
    last `window` steps (counts summed), the mean per-step LBL values there, and the final bias."""
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    num_layers = len(rows[-1].get("moe", [])) if rows else 0
    layers = []
    for l in range(num_layers):
        steps, counts, probs, records = layer_series(rows, l)
        hi, lo = windowed_deviation(counts[-window:], window)
        tail = records[-window:]
        f, p, lbl_fp = tail_f_and_p(counts, probs, window)
        layers.append({
            "layer": records[-1]["layer"], "top_k": records[-1]["top_k"],
            "max_rel_dev": hi[-1], "min_rel_dev": lo[-1],
            "dead_experts": sum(1 for x in f if x == 0),
            "lbl": sum(r["lbl"] for r in tail) / len(tail),
            "top1_lbl": sum(r["top1_lbl"] for r in tail) / len(tail),
            "lbl_of_tail_f_p": lbl_fp,
            "cv_f": coefficient_of_variation(f), "cv_p": coefficient_of_variation(p),
            "bias_max_abs": records[-1].get("bias_max_abs"),
        })
    return {"steps": rows[-1]["step"] if rows else 0,
            "eval_loss": evals[-1][1] if evals else float("nan"),
            "eval_curve": evals, "layers": layers}


def summary_table(runs, window, corpus):
    """Markdown: per run, held-out loss and the balance of the lowest and the highest layer over
    the last `window` steps (counts summed): max / min relative deviation, the LBL E sum f P, and
    the coefficients of variation of f and of P (which of the two is flat); then the worst layer
    and layer 0's max |bias|."""
    head = ["run", "held-out loss", "L0 max / min dev.", "L0 LBL", "L0 CV f / CV P",
            "top max / min dev.", "top LBL", "top CV f / CV P", "worst layer (max dev.)",
            "L0 max abs bias"]
    lines = [f"{corpus}, last {window} steps:", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name, rows in runs.items():
        s = run_summary(rows, window)
        low, top = s["layers"][0], s["layers"][-1]
        worst = max(s["layers"], key=lambda l: l["max_rel_dev"])
        bias = low["bias_max_abs"]
        lines.append("| " + " | ".join([
            name, f"{s['eval_loss']:.3f}",
            f"{low['max_rel_dev']:+.0%} / {low['min_rel_dev']:+.0%}",
            f"{low['lbl_of_tail_f_p']:.3f}", f"{low['cv_f']:.2f} / {low['cv_p']:.2f}",
            f"{top['max_rel_dev']:+.0%} / {top['min_rel_dev']:+.0%}",
            f"{top['lbl_of_tail_f_p']:.3f}", f"{top['cv_f']:.2f} / {top['cv_p']:.2f}",
            f"L{worst['layer']} {worst['max_rel_dev']:+.0%}",
            "-" if bias is None else f"{bias:.3g}"]) + " |")
    return "\n".join(lines) + "\n"
