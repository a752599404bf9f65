#!/usr/bin/env bash
# scripts/gpu-check.sh in its no-GPU mode: it must run the stages it can, skip the GPU ones with a
# reason, and write a summary.json whose figures come from the runs (the 4l preset's memory plan
# under 70 GiB, a CPU loss curve, the CPU ceilings, adapt_sim on the assumed GEMM table).
# Usage: gpu_check_cpu_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$(dirname "$0")/../.."
MOE_GPU_CHECK_MODE=cpu MOE_BUILD_DIR="$build" MOE_GPU_CHECK_CPU_STEPS=5 scripts/gpu-check.sh "$out"
python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
status = {st["name"]: st["status"] for st in s["stages"]}
assert s["mode"] == "cpu" and s["ok"], s
for name in ("build", "dry_run_4l", "ceilings", "adapt_sim", "curve_cpu"):
    assert status[name] == "ok", (name, status)
for name in ("ctest_cuda", "train_4l", "curve_cuda_bf16", "python_cuda"):
    assert status[name] == "skipped", (name, status)
assert 0 < s["figures"]["plan_4l_gib"] < 70, s["figures"]["plan_4l_gib"]
assert s["figures"]["curves"]["cpu_steps"] == 5, s["figures"]["curves"]
assert {c["name"] for c in s["figures"]["ceilings"]} == {"gemm_ceiling", "copy_ceiling"}
worlds = {a["world"] for a in s["figures"]["adapt_sim"]}
assert worlds == {8, 64, 256, 2048}, s["figures"]["adapt_sim"]
print("gpu_check_cpu_test: summary.json holds the CPU-mode figures")
PY
