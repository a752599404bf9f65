#!/usr/bin/env python3
"""Figures of a load-balance study (bench/load_balance/sweep.py's --out), as PNGs, per corpus:

  deviation_<corpus>.png  per-layer max and min relative deviation of expert loads from uniform
                          over the steps, one panel per run (faint: each step's counts; bold: the
                          counts summed over --smooth steps), as the Sigma-MoE-Tiny report's Fig. 2a
  f_p_<corpus>.png        f_i (share of tokens) and P_i (mean router probability) per expert in the
                          lowest and the highest layer over the last --window steps, one row per
                          run, the LBL value E sum_i f_i P_i in each title, as its Fig. 2b/c
  bias_<corpus>.png       max_i |b_i| per layer over the steps, for the runs with an expert bias
  heldout_<corpus>.png    held-out loss over the steps, every run on one plot
  summary_<corpus>.md     the table: held-out loss and the lowest and highest layers' balance

Usage:
  bench/load_balance/plot.py --study load_balance_study --figures figures
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_metrics  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["lbl", "l0_top8", "progressive", "bias", "bias_bounded", "top1_lbl", "none"]


def run_order(name):
    base, _, seed = name.partition("@")
    return (ORDER.index(base) if base in ORDER else len(ORDER), seed, name)


def load_study(study_dir):
    """{corpus: {run: rows}} for every run directory with a metrics.jsonl."""
    study = {}
    for corpus in sorted(os.listdir(study_dir)):
        corpus_dir = os.path.join(study_dir, corpus)
        if not os.path.isdir(corpus_dir):
            continue
        runs = {}
        for run in sorted(os.listdir(corpus_dir), key=run_order):
            path = os.path.join(corpus_dir, run, "metrics.jsonl")
            if os.path.isfile(path):
                rows = study_metrics.read_rows(path)
                if rows and rows[0].get("moe"):
                    runs[run] = rows
        if runs:
            study[corpus] = runs
    return study


def save(fig, path):
    """Writes the figure as a 256-colour PNG (a third of the size; the figures go into git)."""
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    fig.savefig(path, dpi=72)
    plt.close(fig)
    from PIL import Image  # matplotlib's own dependency
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


def layer_colors(n):
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def plot_deviation(runs, smooth, path, corpus):
    """Per run two stacked panels: the max deviation (log scale: it spans +10% to +9500%) over
    the min deviation (linear, -100% = an expert with no token)."""
    names = list(runs)
    cols = min(3, len(names))
    grid_rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(2 * grid_rows, cols, figsize=(5.2 * cols, 4.4 * grid_rows),
                             squeeze=False, gridspec_kw={"height_ratios": [1.6, 1] * grid_rows})
    for i, name in enumerate(names):
        top, bottom = axes[2 * (i // cols)][i % cols], axes[2 * (i // cols) + 1][i % cols]
        rows = runs[name]
        num_layers = len(rows[-1]["moe"])
        colors = layer_colors(num_layers)
        for l in range(num_layers):
            steps, counts, _, _ = study_metrics.layer_series(rows, l)
            raw = [study_metrics.relative_deviation(c) for c in counts]
            hi, lo = study_metrics.windowed_deviation(counts, smooth)
            top.plot(steps, [100 * r[0] for r in raw], color=colors[l], alpha=0.12, lw=0.5)
            bottom.plot(steps, [100 * r[1] for r in raw], color=colors[l], alpha=0.12, lw=0.5)
            top.plot(steps, [100 * v for v in hi], color=colors[l], lw=1.3, label=f"layer {l}")
            bottom.plot(steps, [100 * v for v in lo], color=colors[l], lw=1.3)
        top.set_yscale("log")
        top.set_title(name, fontsize=10)
        top.set_ylabel("max dev. (%)", fontsize=8)
        bottom.set_ylim(-102, 2)
        bottom.set_ylabel("min dev. (%)", fontsize=8)
        bottom.set_xlabel("step", fontsize=8)
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.tick_params(labelsize=7)
    for i in range(len(names), grid_rows * cols):
        axes[2 * (i // cols)][i % cols].axis("off")
        axes[2 * (i // cols) + 1][i % cols].axis("off")
    axes[0][0].legend(fontsize=6, ncol=2, loc="upper right")
    fig.suptitle(f"{corpus}: relative expert load per layer, max (upper) and min (lower); "
                 f"faint: each step's counts, bold: counts of {smooth} steps", fontsize=10)
    save(fig, path)


def plot_f_p(runs, window, path, corpus):
    names = list(runs)
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 2.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        rows = runs[name]
        num_layers = len(rows[-1]["moe"])
        for c, l in enumerate((0, num_layers - 1)):
            steps, counts, probs, records = study_metrics.layer_series(rows, l)
            f, p, lbl = study_metrics.tail_f_and_p(counts, probs, window)
            e = len(f)
            ax = axes[r][c]
            ax.bar(range(e), f, width=1.0, color="tab:blue", alpha=0.6, label="f (tokens)")
            ax.plot(range(e), p, color="tab:red", lw=1.0, label="P (mean prob.)")
            ax.axhline(1.0 / e, color="k", lw=0.6, ls=":")
            ax.set_title(f"{name}, layer {l} (top-{records[-1]['top_k']}): "
                         f"LBL = E sum f P = {lbl:.3f}", fontsize=9)
            ax.set_xlim(-0.5, e - 0.5)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    axes[-1][0].set_xlabel("expert")
    axes[-1][1].set_xlabel("expert")
    fig.suptitle(f"{corpus}: f and P per expert, lowest and highest layer, last {window} steps "
                 "(dotted: uniform 1/E)", fontsize=10)
    save(fig, path)


def plot_bias(runs, path, corpus):
    names = [n for n, rows in runs.items() if "bias_max_abs" in rows[-1]["moe"][0]]
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = runs[name]
        num_layers = len(rows[-1]["moe"])
        colors = layer_colors(num_layers)
        for l in range(num_layers):
            steps, _, _, records = study_metrics.layer_series(rows, l)
            ax.plot(steps, [rec.get("bias_max_abs", 0.0) for rec in records], color=colors[l],
                    label=f"layer {l}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("max |bias|")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{corpus}: expert-bias magnitude per layer", fontsize=10)
    save(fig, path)
    return True


def plot_heldout(runs, path, corpus):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rows in runs.items():
        evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
        if evals:
            ax.plot(*zip(*evals), marker=".", lw=1.2, ls="--" if "@" in name else "-",
                    label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats/byte)")
    ax.set_title(f"{corpus}: held-out loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="the sweep's --out directory")
    parser.add_argument("--figures", required=True, help="directory for the PNGs")
    parser.add_argument("--smooth", type=int, default=20,
                        help="steps whose counts the bold deviation curves sum (default 20)")
    parser.add_argument("--window", type=int, default=50,
                        help="last steps the f and P figure sums over (default 50)")
    args = parser.parse_args(argv)
    if args.smooth < 1 or args.window < 1:
        parser.error("--smooth and --window must be >= 1")
    if not os.path.isdir(args.study):
        parser.error(f"--study {args.study} is not a directory")
    study = load_study(args.study)
    if not study:
        parser.error(f"no runs with metrics.jsonl under {args.study}/<corpus>/<run>/")
    os.makedirs(args.figures, exist_ok=True)
    written = []
    for corpus, runs in study.items():
        out = lambda kind: os.path.join(args.figures, f"{kind}_{corpus}.png")  # noqa: E731
        plot_deviation(runs, args.smooth, out("deviation"), corpus)
        plot_f_p(runs, args.window, out("f_p"), corpus)
        written += [out("deviation"), out("f_p")]
        if plot_bias(runs, out("bias"), corpus):
            written.append(out("bias"))
        plot_heldout(runs, out("heldout"), corpus)
        written.append(out("heldout"))
        table = os.path.join(args.figures, f"summary_{corpus}.md")
        with open(table, "w") as f:
            f.write(study_metrics.summary_table(runs, args.window, corpus))
        written.append(table)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
