#!/usr/bin/env bash
# Fuzzing with libFuzzer (issue 15): builds the targets of fuzz/ with clang, ASan and UBSan into
# build-fuzz/ (or $MOE_FUZZ_BUILD_DIR) and runs each for SECONDS_PER_TARGET (default 60), one at a
# time, starting from the seed corpus fuzz/corpus/<target>/.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (targets: all by default)
# Targets: config_text config_overrides checkpoint_manifest token_file text_data (fuzz/README.md).
# New inputs that add coverage go to build-fuzz/corpus/<target>/ (kept between runs, not
# committed); a crash, hang (-timeout, 10 s) or out-of-memory (2 GiB) input goes to
# build-fuzz/artifacts/<target>/. Prints per target the executions run and the failing inputs
# found, and exits non-zero if any target found one. Each failing input belongs, once fixed, in
# fuzz/regressions/<target>/, which the normal build's CTest fuzz_replay_<target> replays.
# MOE_FUZZ_ARGS: extra libFuzzer flags (e.g. "-jobs=2 -workers=2").
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
all=(config_text config_overrides checkpoint_manifest token_file text_data)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

scripts/install-deps.sh
build=${MOE_FUZZ_BUILD_DIR:-build-fuzz}
if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 \
    -DMOE_BUILD_FUZZ=ON -DMOE_SANITIZE=address,undefined -DMOE_WITH_CUDA=OFF -DMOE_WITH_MPI=OFF \
    -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF -DMOE_BUILD_PYTHON=OFF
fi
cmake --build "$build" -j "${MOE_JOBS:-$(nproc)}" --target fuzz

# libFuzzer also checks each input for leaks (LeakSanitizer): a leak is a failing input too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary=()
failed=0
for target in "${targets[@]}"; do
  case $target in
    config_text|config_overrides) dict=fuzz/dict/config.dict ;;
    checkpoint_manifest) dict=fuzz/dict/checkpoint_manifest.dict ;;
    *) dict= ;;
  esac
  corpus="$build/corpus/$target"
  artifacts="$build/artifacts/$target"
  log="$build/logs/$target.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  echo "fuzz: $target for ${seconds}s (log $log)"
  set +e
  # shellcheck disable=SC2086  # MOE_FUZZ_ARGS is a list of flags
  "$build/fuzz/${target}_fuzzer" "$corpus" "fuzz/corpus/$target" \
    ${dict:+-dict=$dict} -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=8192 -print_final_stats=1 -artifact_prefix="$artifacts/" ${MOE_FUZZ_ARGS:-} \
    >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  found=$(find "$artifacts" -type f | wc -l)
  tail -3 "$log"
  summary+=("$(printf '%-20s %12s executions  %3d failing inputs  exit %d' "$target" \
                "${execs:-?}" "$found" "$rc")")
  if ((rc != 0 || found > 0)); then failed=1; fi
done
echo "fuzz summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
exit $failed
