#!/usr/bin/env bash
# Fault tests of sigma-moe-train's checkpoints and step handling (issue 15), one case per call,
# on a small CPU model (each case a few seconds):
#   crash_before_rename  SIGKILL after a checkpoint's files are written, before its rename
#                        (SMOE_TEST_CRASH_BEFORE_RENAME): the previous checkpoint stays valid and
#                        the next run resumes from it
#   disk_full            RLIMIT_FSIZE (ulimit -f) below the tensor blob's size: a clear error, no
#                        death by SIGXFSZ, the previous checkpoint byte-identical, resumable
#   nan_step             train.debug_nan_step under nan_policy SKIP_STEP and ROLLBACK: the step is
#                        skipped (or rolled back) and the run finishes
#   sigterm              SIGTERM mid-run: a checkpoint of the current step, and the next run
#                        resumes from exactly that step
#   all_invalid          issue 15's scenario: every checkpoint invalid -> the run refuses before
#                        step 1; resume=false (or moving them away) starts fresh and retention
#                        keeps the new valid checkpoints
# usage: checkpoint_fault_test.sh path/to/sigma-moe-train CASE
set -euo pipefail
bin=$1
case_name=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

args=(--device=cpu --no_progress
      --set model.num_layers=1 --set model.model_dim=32 --set attention.n_q=2 --set attention.n_k=1
      --set attention.n_v=2 --set attention.head_dim=16 --set attention.d_aug=32
      --set moe.num_experts=4 --set moe.ffn_dim=16 --set "moe.topk_schedule=[]"
      --set train.batch_size=2 --set train.seq_len=32 --set train.warmup_steps=2
      --set train.eval_interval=0 --set train.spike_threshold=0 --set data.synthetic_size=50000)

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
start_ms=$(now_ms)

check() {  # check DESCRIPTION COMMAND...: counts the command's success or failure
  local what=$1
  shift
  if "$@" > "$work/check.out" 2>&1; then
    echo "ok: $what"
    passed=$((passed + 1))
  else
    echo "FAILED: $what"; cat "$work/check.out"
    failed=$((failed + 1))
  fi
}

# train NAME DIR [args...]: runs into DIR, log in $work/NAME.log, exit status in $rc.
train() {
  local name=$1 dir=$2
  shift 2
  rc=0
  "$bin" "${args[@]}" --set checkpoint.dir="\"$dir\"" "$@" > "$work/$name.log" 2>&1 || rc=$?
  echo "  $name: exit $rc"
}

# The steps of a metrics.jsonl ("-": stdin), space-separated.
steps_in() { grep -o '^{"step": [0-9]*' "$1" | awk '{print $2}' | tr '\n' ' '; }
lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
has() { grep -qF -- "$2" "$1"; }  # has FILE TEXT
# The entries of a directory whose names match an extended regex, sorted, space-separated.
names() { ls "$1" | grep -E "$2" | sort | tr '\n' ' '; }

case "$case_name" in
crash_before_rename)
  ckpt="$work/ckpt"
  flags=(--set train.steps=6 --set checkpoint.interval=3 --set checkpoint.keep_last=2)
  SMOE_TEST_CRASH_BEFORE_RENAME=6 train crashed "$ckpt" "${flags[@]}"
  check "the hook killed the run with SIGKILL (exit 137)" test "$rc" -eq 137
  check "step 6 was written, not published: a tmp.step_00000006.*, no step_00000006" \
    test "$(names "$ckpt" '^(step_|tmp\.)' | sed -E 's/\.[0-9]+ / /g')" = \
    "step_00000003 tmp.step_00000006 "
  train resumed "$ckpt" "${flags[@]}"
  check "the next run exits 0" test "$rc" -eq 0
  check "it resumes from the previous checkpoint, step 3" \
    has "$work/resumed.log" "resumed from $ckpt/step_00000003 at step 3"
  check "it removes the unpublished temporary directory" \
    has "$work/resumed.log" "removing leftover temporary checkpoint $ckpt/tmp.step_00000006"
  check "it trains steps 4..6 again after the crashed run's 1..6 (metrics: 1 2 3 4 5 6 4 5 6)" \
    test "$(steps_in "$ckpt/metrics.jsonl")" = "1 2 3 4 5 6 4 5 6 "
  check "step 3 and step 6 are the checkpoints left" \
    test "$(names "$ckpt" '^(step_|tmp\.)')" = "step_00000003 step_00000006 "
  ;;

disk_full)
  ckpt="$work/ckpt"
  train first "$ckpt" --set train.steps=3 --set checkpoint.interval=3
  check "the first run writes step 3" test -d "$ckpt/step_00000003"
  (cd "$ckpt/step_00000003" && sha256sum manifest.textproto tensors.bin) > "$work/before.sha"
  blob_kb=$(( $(stat -c %s "$ckpt/step_00000003/tensors.bin") / 1024 ))
  limit_kb=$(( blob_kb / 2 ))  # far above the logs and metrics, half the tensor blob
  echo "  tensors.bin ${blob_kb} KiB, ulimit -f ${limit_kb} (KiB)"
  rc=0
  ( ulimit -f "$limit_kb"; exec "$bin" "${args[@]}" --set checkpoint.dir="\"$ckpt\"" \
      --set train.steps=6 --set checkpoint.interval=3 ) > "$work/full.log" 2>&1 || rc=$?
  echo "  full: exit $rc"
  check "the run fails with exit 1, not killed by SIGXFSZ (153)" test "$rc" -eq 1
  check "the error names the checkpoint, the file and the cause" \
    grep -E "^sigma-moe-train: checkpoint step_00000006 not written under $ckpt .*: \
cannot write $ckpt/tmp.step_00000006.[0-9]+/tensors.bin: File too large" "$work/full.log"
  check "the error says that the earlier checkpoints are untouched" \
    has "$work/full.log" "(the checkpoints already there are untouched)"
  check "step 3 is byte-identical" \
    bash -c "cd '$ckpt/step_00000003' && sha256sum -c --quiet '$work/before.sha'"
  check "no step_00000006 and no temporary directory is left" \
    test "$(names "$ckpt" '^(step_|tmp\.)')" = "step_00000003 "
  train after "$ckpt" --set train.steps=6 --set checkpoint.interval=3
  check "with the limit lifted the run resumes from step 3 and writes step 6" \
    test "$rc $(grep -c "resumed from $ckpt/step_00000003 at step 3" "$work/after.log") \
$(names "$ckpt" '^step_')" = "0 1 step_00000003 step_00000006 "
  ;;

nan_step)
  skip="$work/skip"
  train skip "$skip" --set train.steps=6 --set checkpoint.interval=0 \
    --set train.debug_nan_step=3 --set train.nan_policy=SKIP_STEP
  check "SKIP_STEP: the run finishes (exit 0, 1 skipped step, no rollback)" \
    test "$rc $(grep -c 'done at step 6: .* 1 skipped steps, 0 rollbacks' "$work/skip.log")" = "0 1"
  check "SKIP_STEP: step 3's gradients were poisoned" \
    has "$work/skip.log" "poisoning the gradients of step 3 with NaN"
  check "SKIP_STEP: step 3's update was skipped" \
    grep -E "step 3: non-finite loss .* or gradient norm \(-?nan\); update skipped \(1 so far\)" \
    "$work/skip.log"
  # "step:skipped_steps" of every metrics line.
  skipped_by_step=$(sed -E 's/^\{"step": ([0-9]+),.*"skipped_steps": ([0-9]+).*/\1:\2/' \
    "$skip/metrics.jsonl" | tr '\n' ' ')
  check "SKIP_STEP: metrics have every step but 3, counting it skipped from step 4 on" \
    test "$skipped_by_step" = "1:0 2:0 4:1 5:1 6:1 "
  check "SKIP_STEP: every logged loss and gradient norm is finite" \
    test "$(grep -Eic '"(loss|grad_norm)": -?(nan|inf)' "$skip/metrics.jsonl")" = 0
  back="$work/rollback"
  train rollback "$back" --set train.steps=6 --set checkpoint.interval=2 \
    --set train.debug_nan_step=3 --set train.nan_policy=ROLLBACK
  check "ROLLBACK: the run finishes (exit 0, 1 rollback)" \
    test "$rc $(grep -c 'done at step 6: .* 1 rollbacks' "$work/rollback.log")" = "0 1"
  check "ROLLBACK: step 3 went back to the checkpoint of step 2" \
    has "$work/rollback.log" "non-finite loss or gradient at step 3: rolled back to step 2"
  check "ROLLBACK: metrics 1 2 3 4 5 6 (step 3 trained again, on the next batch)" \
    test "$(steps_in "$back/metrics.jsonl")" = "1 2 3 4 5 6 "
  ;;

sigterm)
  ckpt="$work/ckpt"
  "$bin" "${args[@]}" --set checkpoint.dir="\"$ckpt\"" --set train.steps=100000 \
    --set checkpoint.interval=0 > "$work/first.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do  # up to 60 s for 3 steps
    if [ "$(lines "$ckpt/metrics.jsonl")" -ge 3 ]; then break; fi
    sleep 0.1
  done
  kill -TERM "$pid"
  rc=0
  wait "$pid" || rc=$?
  echo "  first: exit $rc"
  check "SIGTERM stops the run cleanly (exit 0)" test "$rc" -eq 0
  step=$(sed -n 's/.*stopped at step \([0-9]*\):.*/\1/p' "$work/first.log")
  echo "  stopped at step ${step:-?}"
  check "it reports the step it stopped at" test -n "$step"
  step=${step:-0}
  dir=$(printf 'step_%08d' "$step")
  check "a checkpoint of exactly that step was saved (the only one)" \
    test "$(names "$ckpt" '^step_')" = "$dir "
  check "the metrics end at that step" \
    test "$(steps_in "$ckpt/metrics.jsonl" | awk '{print $NF}')" = "$step"
  before=$(lines "$ckpt/metrics.jsonl")
  train second "$ckpt" --set train.steps=$((step + 2)) --set checkpoint.interval=0
  check "the next run resumes from exactly that step" \
    has "$work/second.log" "resumed from $ckpt/$dir at step $step"
  check "and trains steps $((step + 1)) and $((step + 2)) (its metrics)" \
    test "$(tail -n +$((before + 1)) "$ckpt/metrics.jsonl" | steps_in -)" = \
    "$((step + 1)) $((step + 2)) "
  ;;

all_invalid)
  ckpt="$work/ckpt"
  flags=(--set train.steps=12 --set checkpoint.interval=5 --set checkpoint.keep_last=2)
  train first "$ckpt" "${flags[@]}"
  check "12 steps, interval 5, keep_last 2: step 10 and 12 kept" \
    test "$(names "$ckpt" '^step_')" = "step_00000010 step_00000012 "
  : > "$ckpt/step_00000010/manifest.textproto"
  truncate -s 1000 "$ckpt/step_00000012/tensors.bin"
  cp -r "$ckpt" "$work/copy"
  before=$(lines "$ckpt/metrics.jsonl")
  train refused "$ckpt" "${flags[@]}"
  check "every checkpoint invalid: the run fails (exit 1)" test "$rc" -eq 1
  check "the error says none is valid" has "$work/refused.log" \
    "sigma-moe-train: checkpoint.dir $ckpt holds 2 checkpoint(s) and none is valid:"
  check "it names step 12 and what is wrong with it" has "$work/refused.log" \
    "  $ckpt/step_00000012: $ckpt/step_00000012/tensors.bin: 1000 bytes, manifest says"
  check "it names step 10 and what is wrong with it" has "$work/refused.log" \
    "  $ckpt/step_00000010: $ckpt/step_00000010/manifest.textproto: empty file"
  check "it says how to go on: move them away" has "$work/refused.log" "move them out of $ckpt"
  check "it says how to go on: resume=false" has "$work/refused.log" \
    "start from step 0 on purpose with --set checkpoint.resume=false"
  check "no step was trained (metrics unchanged)" test "$(lines "$ckpt/metrics.jsonl")" = "$before"
  check "nothing was moved" test "$(names "$ckpt" '^step_')" = "step_00000010 step_00000012 "

  train fresh "$ckpt" "${flags[@]}" --set checkpoint.resume=false
  check "resume=false: starts at step 1 and finishes" \
    test "$rc $(grep -c 'resumed from' "$work/fresh.log") \
$(tail -n +$((before + 1)) "$ckpt/metrics.jsonl" | steps_in -)" = "0 0 $(seq -s ' ' 12) "
  check "resume=false: step 12 moved aside, with a warning giving the reason" \
    grep -E "^W .*invalid checkpoint $ckpt/step_00000012 \(.*tensors.bin: 1000 bytes.*\) \
moved aside to $ckpt/step_00000012.invalid" "$work/fresh.log"
  check "resume=false: step 10 moved aside, with a warning giving the reason" \
    grep -E "^W .*invalid checkpoint $ckpt/step_00000010 \(.*manifest.textproto: empty file\) \
moved aside to $ckpt/step_00000010.invalid" "$work/fresh.log"
  check "resume=false: the moved checkpoint is unchanged" \
    cmp "$ckpt/step_00000012.invalid/tensors.bin" "$work/copy/step_00000012/tensors.bin"
  check "resume=false: retention keeps the new valid step 10 and 12 beside the invalid ones" \
    test "$(names "$ckpt" '^step_')" = \
    "step_00000010 step_00000010.invalid step_00000012 step_00000012.invalid "
  train again "$ckpt" "${flags[@]}"
  check "the next run resumes from the new step 12" \
    test "$rc $(grep -c "resumed from $ckpt/step_00000012 at step 12" "$work/again.log")" = "0 1"

  # The other way on: the invalid checkpoints moved out of checkpoint.dir by hand.
  mkdir "$work/moved"
  mv "$work/copy"/step_* "$work/moved/"
  train moved_away "$work/copy" "${flags[@]}"
  check "after moving them out: starts at step 1, keeps the new step 10 and 12" \
    test "$rc $(grep -c 'resumed from' "$work/moved_away.log") $(names "$work/copy" '^step_')" = \
    "0 0 step_00000010 step_00000012 "
  ;;

*)
  echo "unknown case $case_name"; exit 2
  ;;
esac

echo "$case_name: $passed passed, $failed failed in $(( $(now_ms) - start_ms )) ms"
[ "$failed" -eq 0 ]
