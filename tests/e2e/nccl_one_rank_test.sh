#!/usr/bin/env bash
# One CUDA rank through a one-rank NCCL group (parallel.comm=nccl: the gradient all-reduce and the
# norm go through NCCL on the training stream) equals the plain single-rank CUDA run bit for bit:
# the same per-step losses in metrics.jsonl and the same final checkpoint tensors.
# Exits 0 with a message when no GPU is visible.
# usage: nccl_one_rank_test.sh path/to/sigma-moe-train
set -euo pipefail
if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "SKIPPED: no GPU visible (nvidia-smi missing or failing)"
  exit 0
fi
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--device=cuda --no_progress --set model.num_layers=2 --set model.model_dim=128
      --set attention.n_q=2 --set attention.n_k=1 --set attention.n_v=2 --set attention.head_dim=64
      --set attention.d_aug=64 --set moe.num_experts=8 --set moe.ffn_dim=64
      --set train.batch_size=4 --set train.seq_len=64 --set train.steps=6 --set train.eval_interval=0
      --set data.synthetic_size=100000 --set checkpoint.interval=6)
for comm in auto nccl; do
  "$bin" "${args[@]}" --set parallel.comm=$comm --set "checkpoint.dir=\"$work/$comm\"" \
    > "$work/$comm.log" 2>&1 || { cat "$work/$comm.log"; echo "FAILED: the $comm run"; exit 1; }
done
grep -q "device collectives: NCCL" "$work/nccl.log" || { cat "$work/nccl.log"; echo "FAILED: no NCCL"; exit 1; }
losses() { sed -E 's/.*"loss": ([^,]*),.*"grad_norm": ([^,]*),.*/\1 \2/' "$1/metrics.jsonl"; }
if ! diff <(losses "$work/auto") <(losses "$work/nccl"); then
  echo "FAILED: the NCCL run's losses differ from the single-rank run's"
  exit 1
fi
cmp "$work/auto/step_00000006/tensors.bin" "$work/nccl/step_00000006/tensors.bin" ||
  { echo "FAILED: the final checkpoints differ"; exit 1; }
echo "nccl_one_rank: $(wc -l < "$work/nccl/metrics.jsonl") steps, losses and checkpoint identical"
