#!/usr/bin/env bash
# The one command for a GPU machine: build, CUDA tests, the card's ceilings, the benchmarks,
# adapt_sim on the card's measured GEMM table, a bf16 training run of sigma-moe-tiny-4l, CPU-vs-GPU
# loss curves of the tiny preset and the Python tests on CUDA. Writes OUTDIR/summary.json and one
# log per stage (OUTDIR/<stage>.log).
#
#   scripts/gpu-check.sh OUTDIR
#
# Every stage has its own time budget (seconds, below); a stage that overruns is cut (SIGTERM,
# then SIGKILL) and reported as "timeout", never left hanging. The whole run is planned to take
# under 8 minutes on an H100 with 16 cores.
#
# On the GPU machine first `source .device/gpu-env.sh` (../shared/device/README.md: the carried
# Debian packages and cuDNN frontend headers); this script sources it itself when it exists.
# Without a GPU (or with MOE_GPU_CHECK_MODE=cpu) it runs every stage it can on the CPU, marks the
# others "skipped" with the reason, and reuses the normal build ($MOE_BUILD_DIR or build/); CI runs
# it in that mode (ctest: gpu_check_cpu_mode). Exit status: 0 when no stage failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if (($# != 1)) || [[ "$1" == -* ]]; then
  echo "usage: scripts/gpu-check.sh OUTDIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
: > "$out/stages.tsv"

mode=${MOE_GPU_CHECK_MODE:-auto}
if [[ "$mode" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    mode=gpu
  else
    mode=cpu
  fi
fi
jobs=${MOE_JOBS:-$(nproc)}

if [[ "$mode" == gpu ]]; then
  # shellcheck disable=SC1091
  [ -f .device/gpu-env.sh ] && source .device/gpu-env.sh
  build=${MOE_GPU_BUILD_DIR:-build-gpu}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/device.txt" 2>&1
else
  build=${MOE_BUILD_DIR:-build}
  echo "no GPU: CPU mode" > "$out/device.txt"
fi
echo "gpu-check: mode $mode, build dir $build, output $out"

# stage NAME BUDGET_SECONDS COMMAND...: runs COMMAND with its output in OUTDIR/NAME.log.
stage() {
  local name=$1 budget=$2
  shift 2
  local log="$out/$name.log" start end rc status
  echo "gpu-check: [$name] (budget ${budget}s) $*"
  start=$(date +%s.%N)
  if declare -F "$1" > /dev/null; then
    # A shell function (exported below) runs in a child bash, so that timeout can cut it.
    timeout --signal=TERM --kill-after=10 "$budget" bash -c '"$@"' _ "$@" > "$log" 2>&1
  else
    timeout --signal=TERM --kill-after=10 "$budget" "$@" > "$log" 2>&1
  fi
  rc=$?
  end=$(date +%s.%N)
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%.1f\t%s\n' "$name" "$status" "$rc" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$budget" \
    >> "$out/stages.tsv"
  echo "gpu-check: [$name] $status (rc $rc)"
  [[ $status == ok ]]
}

skip() {
  printf '%s\tskipped\t-\t0\t0\t%s\n' "$1" "$2" >> "$out/stages.tsv"
  echo "gpu-check: [$1] skipped: $2"
}

train=$build/runtime/cli/sigma-moe-train

build_gpu() {
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DMOE_BUILD_BENCH=ON ${MOE_GPU_CMAKE_ARGS:-} && cmake --build "$build" -j "$jobs"
}

# tiny_curve NAME DEVICE DTYPE STEPS: the tiny preset's loss per step into NAME/metrics.jsonl.
tiny_curve() {
  rm -rf "$out/$1"
  "$train" --preset=tiny --no_progress --set train.device="$2" --set train.dtype="$3" \
    --set train.steps="$4" --set train.eval_interval=0 --set checkpoint.interval=0 \
    --set checkpoint.dir="$out/$1"
}

export -f build_gpu tiny_curve
export out build train jobs

if [[ "$mode" == gpu ]]; then
  stage build 300 build_gpu || { echo "gpu-check: the build failed; see $out/build.log"; }
else
  stage build 1500 env MOE_BUILD_DIR="$build" scripts/build.sh
fi

if [[ -x "$train" ]]; then
  stage dry_run_4l 60 "$train" --preset=sigma-moe-tiny-4l --dry_run
  if [[ "$mode" == gpu ]]; then
    stage ctest_cuda 150 ctest --test-dir "$build" -L cuda --output-on-failure -j 4 --timeout 120
    stage ceilings 60 "$build/bench/ceilings_bench" --device=cuda
    stage gemm_bench 90 "$build/bench/gemm_bench" --benchmark_format=json \
      --benchmark_min_time=0.2
    # adapt_sim on the card's measured GEMM table (gemm_bench's grouped_rows runs).
    stage adapt_sim 60 bash -c 'table=$(python3 bench/gemm_table.py "$out/gemm_bench.log") &&
      echo "gemm table: $table" && "$build/bench/adapt_sim" --gemm_table="$table" --markdown'
    stage moe_layer_bench 90 "$build/bench/moe_layer_bench" --device=cuda
    stage attention_bench 90 "$build/bench/attention_bench" --device=cuda
    rm -rf "$out/train_4l"
    stage train_4l 150 "$train" --preset=sigma-moe-tiny-4l --no_progress \
      --set train.steps=30 --set train.eval_interval=0 --set train.log_interval=5 \
      --set checkpoint.interval=0 --set checkpoint.dir="$out/train_4l"
    stage curve_cpu 120 tiny_curve curve_cpu cpu f32 50
    stage curve_cuda_f32 60 tiny_curve curve_cuda_f32 cuda f32 50
    stage curve_cuda_bf16 60 tiny_curve curve_cuda_bf16 cuda bf16 50
    stage python_cuda 120 ctest --test-dir "$build" -L python --output-on-failure
  else
    skip ctest_cuda "no GPU (the cuda tests run, and skip, in the normal ctest run)"
    stage ceilings 60 "$build/bench/ceilings_bench" --device=cpu
    skip gemm_bench "no GPU"
    stage adapt_sim 60 "$build/bench/adapt_sim" --steps=100 --markdown
    skip moe_layer_bench "no GPU"
    skip attention_bench "no GPU"
    skip train_4l "no GPU (the dry run's plan is in dry_run_4l.log)"
    stage curve_cpu 300 tiny_curve curve_cpu cpu f32 ${MOE_GPU_CHECK_CPU_STEPS:-10}
    skip curve_cuda_f32 "no GPU"
    skip curve_cuda_bf16 "no GPU"
    skip python_cuda "no GPU (the python tests run on the CPU in the normal ctest run)"
  fi
else
  echo "gpu-check: no sigma-moe-train in $build: nothing else can run"
fi

python3 scripts/gpu_check_summary.py "$out" "$mode"
