#!/usr/bin/env bash
# Kills sigma-moe-train with SIGKILL at a random point, resumes it, and checks that the final
# parameters and optimizer state are bit-identical to an uninterrupted run of the same steps (CPU).
# usage: kill_resume_test.sh path/to/sigma-moe-train
set -euo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
steps=24
args=(--device=cpu --no_progress
      --set model.num_layers=2 --set model.model_dim=64 --set attention.n_q=2 --set attention.n_k=1
      --set attention.n_v=2 --set attention.head_dim=32 --set attention.d_aug=64
      --set moe.num_experts=8 --set moe.ffn_dim=32
      --set "moe.topk_schedule=[{first_layer:0 last_layer:0 k:2 until_step:10}]"
      --set train.batch_size=4 --set train.seq_len=64 --set train.steps=$steps
      --set train.warmup_steps=4 --set train.eval_interval=0 --set train.spike_threshold=0
      --set data.synthetic_size=200000 --set checkpoint.interval=3 --set checkpoint.keep_last=0)

start_ms=$(( $(date +%s%N) / 1000000 ))
"$bin" "${args[@]}" --set checkpoint.dir="\"$work/ref\"" > "$work/ref.log" 2>&1
elapsed_ms=$(( $(date +%s%N) / 1000000 - start_ms ))

# Kill somewhere between 20% and 80% of the uninterrupted run's time.
fraction=$(( (RANDOM % 61) + 20 ))
delay_ms=$(( elapsed_ms * fraction / 100 ))
delay=$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))
elapsed=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
"$bin" "${args[@]}" --set checkpoint.dir="\"$work/run\"" > "$work/run1.log" 2>&1 &
pid=$!
sleep "$delay"
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
saved=$(ls "$work/run" 2>/dev/null | grep -c '^step_' || true)
echo "killed after ${delay}s of ~${elapsed}s with $saved checkpoint(s) written"
"$bin" "${args[@]}" --set checkpoint.dir="\"$work/run\"" > "$work/run2.log" 2>&1
grep -q "resumed from" "$work/run2.log" && echo "resumed: $(grep -o 'resumed from .*' "$work/run2.log")"

final=$(printf 'step_%08d' $steps)
cmp "$work/ref/$final/tensors.bin" "$work/run/$final/tensors.bin"
echo "final parameters and optimizer state are bit-identical"
echo "1 passed, 0 failed"
