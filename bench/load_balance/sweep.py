#!/usr/bin/env python3
"""Load-balance study: train the same model under several balancing strategies and compare.

Each variant is one `sigma-moe-train` run from the same initialization and data, differing only in
its `model.moe` balancing fields (Switch/GShard LBL, z-loss, Sigma-MoE-Tiny's Top-1 LBL, the
aux-loss-free expert bias, or none). From each run's metrics.jsonl the study reports, averaged over
the MoE layers and over the last `--tail` fraction of the steps:

  max_rel_dev   max_i (c_i - mean) / mean   (0 = perfectly balanced; E - 1 = one expert takes all)
  min_rel_dev   min_i (c_i - mean) / mean   (-1 = some expert gets nothing)
  dead_experts  experts that received no token in a step
  entropy       entropy of the mean router probability (ln E = uniform)
and the final held-out loss, so balance can be weighed against quality. Output: one JSON line per
variant on stdout (and in <out>/summary.jsonl), then a Markdown table.

Usage:
  bench/load_balance/sweep.py                         # every variant, tiny preset, 100 steps
  bench/load_balance/sweep.py --steps 300 --variants lbl_0.01,lbl_0.1,bias
  bench/load_balance/sweep.py --set moe.num_experts=32 --set train.batch_size=8
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

# Balancing fields of each variant (everything else comes from the preset and --set).
OFF = {"moe.lbl_coef": 0, "moe.z_coef": 0, "moe.top1_lbl_coef": 0, "moe.bias_update_rate": 0}
VARIANTS = {
    "none": dict(OFF),
    "lbl_0.01": dict(OFF, **{"moe.lbl_coef": 0.01}),
    "lbl_0.1": dict(OFF, **{"moe.lbl_coef": 0.1}),
    "lbl_0.1+z": dict(OFF, **{"moe.lbl_coef": 0.1, "moe.z_coef": 1e-3}),
    "top1_lbl": dict(OFF, **{"moe.top1_lbl_coef": 0.01}),
    "bias": dict(OFF, **{"moe.bias_update_rate": 1e-3, "moe.bias_bound": 1.0}),
}
COLUMNS = ["variant", "eval_loss", "max_rel_dev", "min_rel_dev", "dead_experts", "entropy",
           "lbl", "seconds"]


def default_binary():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = os.environ.get("MOE_BUILD_DIR", os.path.join(root, "build"))
    return os.path.join(build, "runtime", "cli", "sigma-moe-train")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants: " + ", ".join(VARIANTS))
    parser.add_argument("--binary", default=default_binary(), help="sigma-moe-train to run")
    parser.add_argument("--preset", default="tiny", help="base preset (default tiny)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per variant")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of the variants (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="extra override for every run (repeatable)")
    parser.add_argument("--tail", type=float, default=0.2,
                        help="fraction of the last steps the balance metrics average over")
    parser.add_argument("--out", default="load_balance_out", help="directory for the runs")
    parser.add_argument("--device", default="cpu", help="train.device for every run")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.tail <= 1:
        parser.error(f"--tail must be in (0, 1], got {args.tail}")
    if not os.access(args.binary, os.X_OK):
        parser.error(f"{args.binary} is not an executable; build first (scripts/build.sh) "
                     "or pass --binary")
    return args


def run_variant(args, name):
    run_dir = os.path.abspath(os.path.join(args.out, name))
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    overrides = {"checkpoint.dir": json.dumps(run_dir), "checkpoint.resume": "false",
                 "checkpoint.interval": 0}
    overrides.update(VARIANTS[name])
    cmd = [args.binary, f"--preset={args.preset}", f"--steps={args.steps}",
           f"--device={args.device}", "--no_progress"]
    for path, value in overrides.items():
        cmd += ["--set", f"{path}={value}"]
    for extra in args.set:
        cmd += ["--set", extra]
    start = time.monotonic()
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if code != 0:
        raise RuntimeError(f"variant {name}: sigma-moe-train exited with {code}; "
                           f"see {os.path.join(run_dir, 'train.log')}")
    return summarize(name, os.path.join(run_dir, "metrics.jsonl"), args.tail, seconds)


def summarize(name, metrics_path, tail, seconds):
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise RuntimeError(f"variant {name}: {metrics_path} is empty")
    last = rows[max(0, len(rows) - max(1, math.ceil(tail * len(rows)))):]

    def mean(key):
        values = [layer[key] for row in last for layer in row.get("moe", [])]
        return sum(values) / len(values) if values else float("nan")

    evals = [row["eval_loss"] for row in rows if "eval_loss" in row]
    return {"variant": name, "steps": rows[-1]["step"],
            "eval_loss": evals[-1] if evals else float("nan"),
            "max_rel_dev": mean("max_rel_dev"), "min_rel_dev": mean("min_rel_dev"),
            "dead_experts": mean("dead_experts"), "entropy": mean("entropy_mean_p"),
            "lbl": mean("lbl"), "seconds": round(seconds, 1)}


def markdown(results):
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in results]
    return "\n".join(lines)


def main(argv):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for i, name in enumerate(args.variants):
        print(f"[{i + 1}/{len(args.variants)}] {name}: {args.steps} steps ...", file=sys.stderr,
              flush=True)
        result = run_variant(args, name)
        results.append(result)
        print(json.dumps(result), flush=True)
    with open(os.path.join(args.out, "summary.jsonl"), "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (RuntimeError, OSError) as error:
        print(f"sweep.py: {error}", file=sys.stderr)
        sys.exit(1)
