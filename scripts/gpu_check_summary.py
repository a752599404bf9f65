#!/usr/bin/env python3
"""Gathers a gpu-check run's stage logs into OUTDIR/summary.json and prints the figures.

Usage: gpu_check_summary.py OUTDIR MODE. Reads OUTDIR/stages.tsv (one line per stage: name,
status, rc, seconds, budget or skip reason) and the stages' logs and metrics. Exits 1 when a stage
failed or timed out or a GPU loss curve is more than 2% away from the CPU's.
"""
import json
import os
import re
import statistics
import subprocess
import sys

CURVE_TOLERANCE = 0.02  # max relative difference of per-step losses, GPU vs CPU


def json_lines(path):
    """The JSON objects of a log's lines that parse as JSON objects."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def stages(out):
    rows = []
    with open(os.path.join(out, "stages.tsv")) as f:
        for line in f:
            name, status, rc, seconds, extra = line.rstrip("\n").split("\t", 4)
            row = {"name": name, "status": status, "seconds": float(seconds)}
            if status == "skipped":
                row["reason"] = extra
            else:
                row["rc"] = int(rc)
                row["budget_s"] = int(extra)
                row["log"] = name + ".log"
            rows.append(row)
    return rows


def losses(out, name):
    return {r["step"]: r["loss"] for r in json_lines(os.path.join(out, name, "metrics.jsonl"))}


def train_figures(out, ceiling_tflops, expected_syncs):
    rows = json_lines(os.path.join(out, "train_4l", "metrics.jsonl"))
    if not rows:
        return None
    steady = [r for r in rows if r["step"] > 5] or rows  # past warm-up (allocations, cuBLAS)
    tflops = statistics.median(r.get("tflops", 0.0) for r in steady)
    return {
        "steps": len(rows),
        "final_loss": rows[-1]["loss"],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "model_tflops": tflops,
        "mfu": tflops / ceiling_tflops if ceiling_tflops else None,
        "peak_mem_gib": max(r.get("peak_mem_mib", 0.0) for r in rows) / 1024.0,
        "host_syncs_per_step": statistics.median(r.get("host_syncs", 0) for r in steady),
        "host_syncs_expected": expected_syncs,
    }


def main():
    out, mode = sys.argv[1], sys.argv[2]
    summary = {"mode": mode, "stages": stages(out), "figures": {}, "checks": {}}
    try:
        summary["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                           text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        summary["commit"] = None
    with open(os.path.join(out, "device.txt")) as f:
        summary["device"] = f.read().strip()
    figures = summary["figures"]

    ceilings = {r["name"]: r for r in json_lines(os.path.join(out, "ceilings.log"))}
    figures["ceilings"] = list(ceilings.values())
    ceiling_tflops = ceilings.get("gemm_ceiling", {}).get("tflops")

    dry = open(os.path.join(out, "dry_run_4l.log")).read() if os.path.exists(
        os.path.join(out, "dry_run_4l.log")) else ""
    plan = re.search(r"memory plan\s+([\d.]+) GiB", dry)
    syncs = re.search(r"host syncs\s+(\d+) per step", dry)
    figures["plan_4l_gib"] = float(plan.group(1)) if plan else None
    expected_syncs = int(syncs.group(1)) if syncs else None

    for name in ("moe_layer_bench", "attention_bench"):
        figures[name] = json_lines(os.path.join(out, name + ".log"))
    figures["adapt_sim"] = [line for line in json_lines(os.path.join(out, "adapt_sim.log"))
                            if line.get("summary")]
    gemm_path = os.path.join(out, "gemm_bench.log")
    if os.path.exists(gemm_path):
        try:
            text = open(gemm_path).read()
            doc = json.loads(text[text.index("{"):])
            figures["gemm_bench"] = [
                {"name": b["name"], "real_time": b.get("real_time"),
                 "time_unit": b.get("time_unit"), "tflops": b.get("TFLOP/s", b.get("tflops"))}
                for b in doc.get("benchmarks", [])]
        except (ValueError, KeyError):
            figures["gemm_bench"] = "unparsable; see gemm_bench.log"
    figures["train_4l"] = train_figures(out, ceiling_tflops, expected_syncs)

    cpu = losses(out, "curve_cpu")
    curves = {}
    for name in ("curve_cuda_f32", "curve_cuda_bf16"):
        gpu = losses(out, name)
        common = sorted(set(cpu) & set(gpu))
        if not common:
            continue
        diff = max(abs(gpu[s] - cpu[s]) / abs(cpu[s]) for s in common)
        curves[name] = {"steps": len(common), "max_rel_diff": diff,
                        "cpu_final": cpu[common[-1]], "gpu_final": gpu[common[-1]]}
        summary["checks"][name + "_within_2pct"] = diff <= CURVE_TOLERANCE
    if cpu:
        curves["cpu_steps"] = len(cpu)
    figures["curves"] = curves

    bad = [s["name"] for s in summary["stages"] if s["status"] in ("failed", "timeout")]
    bad += [name for name, ok in summary["checks"].items() if not ok]
    summary["ok"] = not bad
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print(f"gpu-check summary ({mode}, {summary['device']}):")
    for s in summary["stages"]:
        detail = s.get("reason") or f"{s['seconds']:.1f}s of {s['budget_s']}s"
        print(f"  {s['name']:<18} {s['status']:<8} {detail}")
    for key in ("ceilings", "moe_layer_bench", "attention_bench"):
        for row in figures.get(key) or []:
            print("  " + json.dumps(row))
    if figures["train_4l"]:
        print("  train_4l " + json.dumps(figures["train_4l"]))
    if figures["plan_4l_gib"] is not None:
        print(f"  sigma-moe-tiny-4l memory plan: {figures['plan_4l_gib']:.2f} GiB")
    for name, row in curves.items():
        print(f"  {name}: {json.dumps(row)}")
    print(f"  summary: {os.path.join(out, 'summary.json')}: " +
          ("ok" if summary["ok"] else "FAILED: " + ", ".join(bad)))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
