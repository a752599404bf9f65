#!/usr/bin/env bash
# Multi-rank training on CUDA ranks equals the 1-rank CUDA run: `mpirun -np 2` with
# --device=cuda (both ranks on one GPU when there is one: each uses cuda:(local rank % GPUs), the
# model's collectives staged through MPI on the host) and train.dtype f32 gives the 1-rank
# per-step losses (relative 1e-3) and final checkpoint (relative 1e-3), with the adaptive
# controller and forced r0.d1.flat; one expert sharded over the 2 ranks (E < W) too; and the
# 1-rank checkpoint of step 2 resumes on 2 CUDA ranks to the same losses.
# Exits 0 with a message when no GPU is visible (nvidia-smi missing or failing).
# usage: distributed_cuda_train_test.sh path/to/sigma-moe-train [mpiexec]
set -euo pipefail
if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "SKIPPED: no GPU visible (nvidia-smi missing or failing)"
  exit 0
fi
bin=$1
mpiexec=${2:-mpirun}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
steps=4
args=(--device=cuda --no_progress --set train.dtype=f32
      --set model.num_layers=2 --set model.model_dim=32 --set attention.n_q=2 --set attention.n_k=1
      --set attention.n_v=2 --set attention.head_dim=64 --set attention.d_aug=32
      --set moe.num_experts=4 --set moe.ffn_dim=16 --set moe.top_k=2 --set "moe.topk_schedule=[]"
      --set moe.capacity_factor=0 --set moe.lbl_coef=0.01 --set moe.global_lbl=true
      --set moe.top1_lbl_coef=0 --set moe.z_coef=0.001
      --set train.batch_size=4 --set train.seq_len=32 --set train.steps=$steps
      --set train.warmup_steps=1 --set train.eval_interval=0 --set train.spike_threshold=0
      --set data.synthetic_size=100000 --set checkpoint.interval=2 --set checkpoint.keep_last=0
      --set parallel.trials=1 --set parallel.warmup=0)
mpi=("$mpiexec" --allow-run-as-root --oversubscribe -np)
final=$(printf 'step_%08d' $steps)
failed=0
passed=0
# shellcheck source=distributed_lib.sh
source "$here/distributed_lib.sh"

# Per-step losses of two metrics files agree (relative 1e-3: GPU reductions differ in order).
compare_metrics() {  # reference candidate
  python3 - "$1" "$2" <<'PY'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
by_step = {m["step"]: m for m in ref}
assert got, "no metrics"
for m in got:
    r = by_step[m["step"]]
    for key in ("loss", "aux_loss"):
        a, b = r[key], m[key]
        assert abs(a - b) <= 1e-3 * abs(a), f"step {m['step']} {key}: {a} vs {b}"
print(f"{len(got)} steps agree")
PY
}

export -f compare_metrics

run w1 1
run w2 2
run w2_r0 2 --set parallel.mode='"r0.d1.flat"'
check "the 2-rank run used CUDA" grep -q "device cuda:" "$work/w2.log"
for name in w2 w2_r0; do
  check "$name losses == w1" compare_metrics "$work/w1/metrics.jsonl" "$work/$name/metrics.jsonl"
  check "$name final checkpoint == w1" python3 "$here/compare_checkpoints.py" \
    "$work/w1/$final" "$work/$name/$final" 1e-3
done

# One expert sharded along H over the 2 ranks.
run e1w1 1 --set moe.num_experts=1 --set moe.top_k=1
run e1w2 2 --set moe.num_experts=1 --set moe.top_k=1
check "1 expert on 2 ranks: losses == 1-rank" \
  compare_metrics "$work/e1w1/metrics.jsonl" "$work/e1w2/metrics.jsonl"
check "1 expert on 2 ranks: final checkpoint == 1-rank" python3 "$here/compare_checkpoints.py" \
  "$work/e1w1/$final" "$work/e1w2/$final" 1e-3

# The 1-rank checkpoint of step 2 continues on 2 CUDA ranks (each takes its experts' slice).
mkdir -p "$work/resume"
cp -r "$work/w1/$(printf 'step_%08d' 2)" "$work/resume/"
run resume 2 --set checkpoint.resume=true
check "1-rank checkpoint resumed on 2 CUDA ranks" \
  grep -q "resumed from .*step_00000002" "$work/resume.log"
check "resumed losses == w1" compare_metrics "$work/w1/metrics.jsonl" "$work/resume/metrics.jsonl"

# The comparison can fail: different configs' losses are told apart.
check "comparison tells two configs' losses apart" \
  bash -c "! compare_metrics '$work/w1/metrics.jsonl' '$work/e1w1/metrics.jsonl'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
