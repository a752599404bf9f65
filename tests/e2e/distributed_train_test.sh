#!/usr/bin/env bash
# Multi-rank training equals single-rank training (CPU ranks under mpirun): the same per-step
# losses (relative 1e-4, metrics.jsonl) and final checkpoints whose tensors agree (relative 1e-4)
# for 1, 2 and 4 ranks, with the adaptive controller and with forced modes (r0.d1.flat,
# r1.d2.2dh over 2 nodes of 2); a 4-rank checkpoint resumes on 2 ranks to the same final state;
# gradient accumulation, the expert bias, an untied head and a dense layer also agree on 4 ranks,
# and greedy `sample` from the 4-rank checkpoint gives the 1-rank text. Fewer experts than ranks
# (2 experts on 4 ranks: each expert split along H over 2 ranks) equals its 1-rank run with the
# controller and forced r2.d1.flat and r0.d1.flat, and its checkpoint resumes on 2 ranks.
# usage: distributed_train_test.sh path/to/sigma-moe-train [mpiexec]
set -euo pipefail
bin=$1
mpiexec=${2:-mpirun}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
steps=6
args=(--device=cpu --no_progress
      --set model.num_layers=2 --set model.model_dim=32 --set attention.n_q=2 --set attention.n_k=1
      --set attention.n_v=2 --set attention.head_dim=16 --set attention.d_aug=32
      --set moe.num_experts=8 --set moe.ffn_dim=16 --set moe.top_k=2 --set "moe.topk_schedule=[]"
      --set moe.capacity_factor=0 --set moe.lbl_coef=0.01 --set moe.global_lbl=true
      --set moe.top1_lbl_coef=0 --set moe.z_coef=0.001
      --set train.batch_size=8 --set train.seq_len=32 --set train.steps=$steps
      --set train.warmup_steps=2 --set train.eval_interval=0 --set train.spike_threshold=0
      --set data.synthetic_size=100000 --set checkpoint.interval=3 --set checkpoint.keep_last=0
      --set parallel.trials=1 --set parallel.warmup=0)
mpi=("$mpiexec" --allow-run-as-root --oversubscribe -np)
final=$(printf 'step_%08d' $steps)
failed=0
passed=0
# shellcheck source=distributed_lib.sh
source "$here/distributed_lib.sh"

# Per-step losses and eval loss of two metrics files agree; the multi-rank file names each
# MoE layer's mode (and, when given, that mode).
compare_metrics() {  # reference candidate [forced mode]
  python3 - "$1" "$2" "${3:-}" <<'PY'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
forced = sys.argv[3]
by_step = {m["step"]: m for m in ref}
assert got, "no metrics"
for m in got:
    r = by_step[m["step"]]
    for key in ("loss", "aux_loss", "eval_loss"):
        if key in r or key in m:
            a, b = r[key], m[key]
            assert abs(a - b) <= 1e-4 * abs(a), f"step {m['step']} {key}: {a} vs {b}"
    for layer in m["moe"]:
        assert "mode" in layer, f"step {m['step']}: layer {layer['layer']} has no mode"
        assert not forced or layer["mode"] == forced, f"mode {layer['mode']} != {forced}"
print(f"{len(got)} steps agree")
PY
}

export -f compare_metrics

run w1 1
run w2 2
run w4_auto 4
run w4_r0 4 --set parallel.mode='"r0.d1.flat"'
run w4_2dh 4 --set parallel.mode='"r1.d2.2dh"' --set parallel.node_size=2

for name in w2 w4_auto w4_r0 w4_2dh; do
  forced=""
  [ "$name" = w4_r0 ] && forced=r0.d1.flat
  [ "$name" = w4_2dh ] && forced=r1.d2.2dh
  check "$name losses == w1" compare_metrics "$work/w1/metrics.jsonl" "$work/$name/metrics.jsonl" $forced
  check "$name final checkpoint == w1" python3 "$here/compare_checkpoints.py" \
    "$work/w1/$final" "$work/$name/$final"
done
check "the auto run saved its adapt table" grep -q "sigma-moe adapt table v1" "$work/w4_auto/adapt_table.txt"

# Gradient accumulation, aux-loss-free expert bias, untied LM head, a dense FFN layer.
more=(--set train.grad_accum=2 --set moe.bias_update_rate=0.01 --set moe.bias_bound=0.5
      --set model.tie_embeddings=false --set "moe.dense_layers=[1]" --set moe.dense_ffn_dim=24)
run v1 1 "${more[@]}"
run v4 4 "${more[@]}"
check "accum/bias/untied/dense: 4-rank losses == 1-rank" \
  compare_metrics "$work/v1/metrics.jsonl" "$work/v4/metrics.jsonl"
check "accum/bias/untied/dense: 4-rank checkpoint == 1-rank" \
  python3 "$here/compare_checkpoints.py" "$work/v1/$final" "$work/v4/$final"

sample() {  # checkpoint dir: greedy text from its newest checkpoint
  "$bin" sample "${args[@]}" "${more[@]}" --set checkpoint.dir="\"$1\"" --temperature=0 \
    --tokens=48 --prompt=abc
}
sample "$work/v1" > "$work/v1.sample"
sample "$work/v4" > "$work/v4.sample"
check "sample from the 4-rank checkpoint == from the 1-rank one" cmp "$work/v1.sample" "$work/v4.sample"

# Resume: the 4-rank checkpoint of step 3 continues on 2 ranks.
mkdir -p "$work/resume"
cp -r "$work/w4_auto/$(printf 'step_%08d' 3)" "$work/resume/"
run resume 2 --set checkpoint.resume=true
check "4-rank checkpoint resumed on 2 ranks" grep -q "resumed from .*step_00000003" "$work/resume.log"
check "resumed losses == w1" compare_metrics "$work/w1/metrics.jsonl" "$work/resume/metrics.jsonl"
check "resumed final checkpoint == w1" python3 "$here/compare_checkpoints.py" \
  "$work/w1/$final" "$work/resume/$final"

# Fewer experts than ranks: E = 2 on 4 ranks (s = 2 shards per expert).
sharded=(--set moe.num_experts=2)
run e2w1 1 "${sharded[@]}"
run e2w4_auto 4 "${sharded[@]}"
run e2w4_r2 4 "${sharded[@]}" --set parallel.mode='"r2.d1.flat"'
run e2w4_r0 4 "${sharded[@]}" --set parallel.mode='"r0.d1.flat"'
for name in e2w4_auto e2w4_r2 e2w4_r0; do
  forced=""
  [ "$name" = e2w4_r2 ] && forced=r2.d1.flat
  [ "$name" = e2w4_r0 ] && forced=r0.d1.flat
  check "2 experts: $name losses == 1-rank" \
    compare_metrics "$work/e2w1/metrics.jsonl" "$work/$name/metrics.jsonl" $forced
  check "2 experts: $name final checkpoint == 1-rank" python3 "$here/compare_checkpoints.py" \
    "$work/e2w1/$final" "$work/$name/$final"
done
check "2 experts on 4 ranks: the controller tried r2" grep -q "r2.d" "$work/e2w4_auto/metrics.jsonl"
mkdir -p "$work/e2resume"
cp -r "$work/e2w4_auto/$(printf 'step_%08d' 3)" "$work/e2resume/"
run e2resume 2 "${sharded[@]}" --set checkpoint.resume=true
check "2 experts: sharded checkpoint resumed on 2 ranks" \
  grep -q "resumed from .*step_00000003" "$work/e2resume.log"
check "2 experts: resumed losses == 1-rank" \
  compare_metrics "$work/e2w1/metrics.jsonl" "$work/e2resume/metrics.jsonl"
check "2 experts: resumed final checkpoint == 1-rank" python3 "$here/compare_checkpoints.py" \
  "$work/e2w1/$final" "$work/e2resume/$final"

# The comparisons can fail: different states and different runs are told apart.
check "comparison tells step 3 from step 6" \
  bash -c "! python3 '$here/compare_checkpoints.py' '$work/w1/step_00000003' '$work/w1/$final'"
check "comparison tells two configs' losses apart" \
  bash -c "! compare_metrics '$work/w1/metrics.jsonl' '$work/v1/metrics.jsonl'"

# Configuration errors name the field.
if "${mpi[@]}" 2 "$bin" "${args[@]}" --set train.batch_size=7 > "$work/bad.log" 2>&1; then
  echo "FAILED: batch_size 7 on 2 ranks was accepted"; failed=$((failed + 1))
else
  check "batch_size % W error names train.batch_size" grep -q "train.batch_size" "$work/bad.log"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
