# Shared by the multi-rank e2e scripts (sourced): `run` trains one configuration, `check` records
# one assertion. They read the caller's bin, mpi (the mpirun command up to -np), args (the common
# sigma-moe-train flags), work (a scratch directory) and update passed / failed.

run() {  # run NAME RANKS [extra sigma-moe-train args...]: checkpoints and metrics in $work/NAME
  local name=$1 np=$2
  shift 2
  local cmd=("$bin")
  if [ "$np" -gt 1 ]; then cmd=("${mpi[@]}" "$np" "$bin"); fi
  if ! "${cmd[@]}" "${args[@]}" --set checkpoint.dir="\"$work/$name\"" "$@" > "$work/$name.log" 2>&1; then
    echo "FAILED: $name did not run:"; tail -20 "$work/$name.log"; exit 1
  fi
}

check() {  # check DESCRIPTION COMMAND...: counts the command's success or failure
  local what=$1
  shift
  if "$@" > "$work/check.out" 2>&1; then
    echo "ok: $what ($(tail -1 "$work/check.out"))"
    passed=$((passed + 1))
  else
    echo "FAILED: $what"; cat "$work/check.out"
    failed=$((failed + 1))
  fi
}
