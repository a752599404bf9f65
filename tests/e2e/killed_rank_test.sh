#!/usr/bin/env bash
# A rank of a 4-rank `mpirun sigma-moe-train` run dies (SIGKILL) in the middle of training: every
# rank must exit, non-zero, within 60 s of the kill, and so must mpirun. Prints the measured times.
# Mode `stall` (third argument): the rank is stopped (SIGSTOP) instead, so mpirun sees nothing
# wrong; with parallel.collective_timeout_s=3 the others must exit within the timeout (plus 20 s
# of slack for a loaded machine) with an error that names the collective they waited in, and then
# the whole job ends (mpirun ends the stopped rank).
# How a rank's exit is seen: a wrapper records each rank's pid and execs sigma-moe-train, and the
# script polls the pids. Rank 1 is the one killed. A rank's exit status goes to mpirun, its parent;
# to see it here each rank is traced with `strace -q -e trace=none` (signals and the exit only),
# which prints "+++ exited with N +++" or "+++ killed by SIG... +++". Without strace (or when it
# cannot attach) the survivors count as non-zero when mpirun exits non-zero and rank 0 never printed the
# summary line with which a run that succeeds ends ("sigma-moe-train: done|stopped at step").
# usage: killed_rank_test.sh path/to/sigma-moe-train path/to/mpirun [kill|stall]
set -euo pipefail
bin=$1
mpirun=$2
mode=${3:-kill}
case "$mode" in
  kill) signal=KILL; timeout_args=() ;;
  stall) signal=STOP; timeout_args=(--set parallel.collective_timeout_s=3) ;;
  *) echo "unknown mode $mode (kill or stall)"; exit 2 ;;
esac
work=$(mktemp -d)
mpirun_pid=
cleanup() {
  # Never leave a rank behind, even when a check failed.
  for f in "$work"/rank*.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  [ -n "$mpirun_pid" ] && kill -9 "$mpirun_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
limit_s=60
ranks=4
passed=0
failed=0
check() {  # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then
    echo "ok: $what"
    passed=$((passed + 1))
  else
    echo "FAILED: $what"
    failed=$((failed + 1))
  fi
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
alive() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" | cut -c1)" != Z ]; }

cat > "$work/rank.sh" <<EOF
#!/bin/sh
echo \$\$ > "$work/rank\${OMPI_COMM_WORLD_RANK:-x}.pid"
exec "\$@"
EOF
chmod +x "$work/rank.sh"

"$mpirun" --allow-run-as-root --oversubscribe -np "$ranks" "$work/rank.sh" "$bin" --device=cpu \
  --no_progress --set model.num_layers=1 --set model.model_dim=32 --set attention.n_q=2 \
  --set attention.n_k=1 --set attention.n_v=2 --set attention.head_dim=16 \
  --set attention.d_aug=32 --set moe.num_experts=4 --set moe.ffn_dim=16 \
  --set "moe.topk_schedule=[]" --set train.batch_size=4 --set train.seq_len=32 \
  --set train.steps=100000 --set train.eval_interval=0 --set data.synthetic_size=50000 \
  --set checkpoint.interval=0 --set checkpoint.dir="\"$work/ckpt\"" "${timeout_args[@]}" \
  > "$work/mpirun.log" 2>&1 &
mpirun_pid=$!

# Wait (up to 60 s) until all ranks train: 3 steps in rank 0's metrics.
for _ in $(seq 600); do
  if [ -f "$work/ckpt/metrics.jsonl" ] && [ "$(wc -l < "$work/ckpt/metrics.jsonl")" -ge 3 ]; then
    break
  fi
  sleep 0.1
done
pids=()
for r in $(seq 0 $((ranks - 1))); do
  [ -f "$work/rank$r.pid" ] && pids[r]=$(cat "$work/rank$r.pid")
done
if [ "${#pids[@]}" -ne "$ranks" ] || ! [ -f "$work/ckpt/metrics.jsonl" ]; then
  echo "FAILED: the $ranks-rank run did not start training"; cat "$work/mpirun.log"; exit 1
fi
traced=0
if command -v strace > /dev/null; then
  traced=1
  for r in $(seq 0 $((ranks - 1))); do
    strace -q -e trace=none -o "$work/rank$r.strace" -p "${pids[r]}" 2> "$work/strace$r.err" &
  done
  sleep 1  # let the tracers attach
  for r in $(seq 0 $((ranks - 1))); do
    if [ -s "$work/strace$r.err" ]; then
      echo "strace could not attach to rank $r: $(head -1 "$work/strace$r.err"); not tracing"
      traced=0
    fi
  done
fi
echo "training on $ranks ranks (pids ${pids[*]}) at step $(wc -l < "$work/ckpt/metrics.jsonl");" \
  "SIG$signal to rank 1"

t0=$(now_ms)
kill -"$signal" "${pids[1]}"
gone_ms=()  # per rank: ms from the kill until its process was gone
mpirun_ms=
while :; do
  t=$(( $(now_ms) - t0 ))
  all=1
  for r in $(seq 0 $((ranks - 1))); do
    if [ -z "${gone_ms[r]:-}" ]; then
      if alive "${pids[r]}"; then all=0; else gone_ms[r]=$t; fi
    fi
  done
  if [ -z "$mpirun_ms" ]; then
    if alive "$mpirun_pid"; then all=0; else mpirun_ms=$t; fi
  fi
  [ "$all" -eq 1 ] && break
  if [ "$t" -gt $(( (limit_s + 30) * 1000 )) ]; then break; fi
  sleep 0.05
done
mpirun_rc=0
wait "$mpirun_pid" || mpirun_rc=$?
mpirun_pid=

fmt() { if [ -n "$1" ]; then printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000)); else echo "still running"; fi; }
within() { [ -n "$1" ] && [ "$1" -le $((limit_s * 1000)) ]; }
echo "after SIG$signal to rank 1:"
last_ms=0
for r in $(seq 0 $((ranks - 1))); do
  echo "  rank $r gone in $(fmt "${gone_ms[r]:-}")"
  [ -n "${gone_ms[r]:-}" ] && [ "${gone_ms[r]}" -gt "$last_ms" ] && last_ms=${gone_ms[r]}
done
echo "  mpirun exited (status $mpirun_rc) in $(fmt "$mpirun_ms")"
echo "every rank gone in $(fmt "$last_ms") after the kill"
for r in $(seq 0 $((ranks - 1))); do
  check "rank $r exits within ${limit_s} s" within "${gone_ms[r]:-}"
done
check "mpirun exits within ${limit_s} s" within "$mpirun_ms"
if [ "$mode" = stall ]; then
  # The survivors, not mpirun, end a stall: within the 3 s timeout, with slack for a loaded machine.
  for r in 0 2 3; do
    check "rank $r exits within the collective timeout + 20 s" \
      bash -c "[ -n '${gone_ms[r]:-}' ] && [ '${gone_ms[r]:-0}' -le 23000 ]"
  done
  check "a rank's error names the collective it waited in" \
    grep -Eq 'rank [0-9] of 4: [A-Za-z]+ \(MPI_[A-Za-z_]+\) on a group of [0-9]+ ranks .*within 3 s' \
    "$work/mpirun.log"
  grep -E 'did not complete within' "$work/mpirun.log" | head -3 || true
fi
check "mpirun exits non-zero" test "$mpirun_rc" -ne 0
check "rank 0 did not end as a successful run" \
  bash -c "! grep -Eq 'sigma-moe-train: (done|stopped) at step' '$work/mpirun.log'"
if [ "$traced" -eq 1 ]; then
  wait  # the tracers end with their rank
  for r in $(seq 0 $((ranks - 1))); do
    ending=$(grep -E '^\+\+\+ (exited with|killed by)' "$work/rank$r.strace" | tail -1 || true)
    # The signals that reached it (mpirun sends SIGCONT, SIGTERM, then SIGKILL to the survivors).
    signals=$(grep -oE '^--- SIG[A-Z0-9]+' "$work/rank$r.strace" | cut -c5- | paste -sd ' ' \
      || true)
    echo "  rank $r: ${ending:-no exit seen} (signals received: ${signals:-none})"
    check "rank $r ends non-zero" \
      bash -c "grep -Eq '^\+\+\+ (exited with [1-9][0-9]*|killed by SIG)' '$work/rank$r.strace'"
  done
else
  echo "  (no strace: the surviving ranks' own exit statuses are not seen here)"
fi
echo "--- mpirun output (last lines)"
tail -15 "$work/mpirun.log"
echo "killed_rank: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
