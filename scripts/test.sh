#!/usr/bin/env bash
# Every test: install what is missing, build, run CTest (all labels: unit, cuda, mpi, e2e, python).
# cuda tests skip themselves without a GPU. Extra arguments go to ctest (e.g. -L unit).
#
#   scripts/test.sh --sanitize [ctest args]
# The sanitizer build (issue 15): host code with ASan + UBSan (-fsanitize=address,undefined, -O1
# -g1: line tables only, enough for the reports' file:line; clang, which compiles it about twice
# as fast as g++ at -O1; no CUDA, no cuda tests, no Python extension, no benchmarks) into
# build-asan/ (or $MOE_ASAN_BUILD_DIR), then the unit, mpi and e2e tests under it
# (gpu_check_cpu_mode excepted: it tests the GPU-check script, which builds its own Release tree).
# Any ASan, UBSan or LeakSanitizer report fails the test.
# MOE_SANITIZE_TESTS=<regex> runs only the tests whose names match (ctest -R).
# MOE_SANITIZE_SUBSET=ci builds only the targets of the CI subset below and runs only its tests:
# .ci/run runs it after the normal build and tests. The subset is the code where memory and UB
# bugs would hide and where input from outside arrives: the config parser and --set overrides, the
# checkpoint reader/writer and the data readers (config_test, checkpoint_test, data_test,
# trainer_checkpoint_test, trainer_rollback_test, the fuzz_replay_* seeds and regressions), the
# routing and dispatch index arithmetic (moe_router_test, moe_dispatch_test, moe_all_to_all_test),
# the allocator and core types (runtime_core_test), and sigma-moe-train end to end (dry run,
# config errors, and the checkpoint fault tests: crash before rename, full disk, NaN step,
# SIGTERM, all invalid). Compiling is what costs, not running (its ~300 tests take 30 s):
# sigma-moe-train needs most of the library anyway, so the subset is 102 of the 136 compiles, about
# 7 minutes from a fresh clone on 2 cores. The whole sanitizer build adds the kernel, attention,
# model, layer and mpi test binaries (about 4 more minutes) and the mpi tests, which would leave
# CI (the normal tests take about 10) too close to its 30 minutes. README, "Reliability", has the
# measured times.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != --sanitize ]; then
  scripts/install-deps.sh
  scripts/build.sh
  exec ctest --test-dir "${MOE_BUILD_DIR:-build}" --output-on-failure -j "${MOE_JOBS:-$(nproc)}" "$@"
fi
shift
scripts/install-deps.sh
build=${MOE_ASAN_BUILD_DIR:-build-asan}
sanitize_ci_targets=(config_test checkpoint_test data_test trainer_checkpoint_test
  trainer_rollback_test moe_router_test moe_dispatch_test moe_all_to_all_test runtime_core_test
  sigma-moe-train config_text_replay config_overrides_replay checkpoint_manifest_replay
  token_file_replay text_data_replay)
sanitize_ci_tests='^(config_test|checkpoint_test|data_test|trainer_checkpoint_test'
sanitize_ci_tests+='|trainer_rollback_test|moe_router_test|moe_dispatch_test|moe_all_to_all_test'
sanitize_ci_tests+='|runtime_core_test)[.]|^fuzz_replay_'
sanitize_ci_tests+='|^sigma_moe_train_(dry_run|rejects_unknown_field|fault_(crash_before_rename'
sanitize_ci_tests+='|disk_full|nan_step|sigterm|all_invalid))$'
targets=
case ${MOE_SANITIZE_SUBSET:-} in
  "") ;;
  ci) targets="${sanitize_ci_targets[*]}" MOE_SANITIZE_TESTS=$sanitize_ci_tests ;;
  *) echo "test.sh: MOE_SANITIZE_SUBSET is ci or unset, not $MOE_SANITIZE_SUBSET" >&2; exit 2 ;;
esac
# clang unless CC/CXX say otherwise (a build dir keeps the compiler it was configured with).
CC=${CC:-clang} CXX=${CXX:-clang++} MOE_BUILD_TARGETS=$targets MOE_BUILD_DIR="$build" \
  scripts/build.sh -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 \
  -DMOE_SANITIZE=address,undefined -DMOE_WITH_CUDA=OFF -DMOE_BUILD_CUDA_TESTS=OFF \
  -DMOE_BUILD_PYTHON=OFF -DMOE_BUILD_BENCH=OFF

# Sanitizer settings, inherited by every test process (mpirun passes them on to its ranks):
#  - ASan: leaks are checked at exit (LeakSanitizer), and stack-use-after-return and init-order
#    bugs are looked for too.
#  - UBSan: a report prints its stack and ends the process with an error (the build also has
#    -fno-sanitize-recover=all).
#  - The mpi tests run with detect_leaks=0: OpenMPI keeps what MPI_Init allocates until the process
#    exits (tens of "leaks" per rank, all from MPI_Init/orte_init), and with the frame-pointer
#    unwinder the stacks end inside its dlopen'ed components, so no suppression file can name
#    them. Everything else of ASan and UBSan stays on for them, and the same code's leaks are
#    checked by the single-rank tests.
asan=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
asan+=:check_initialization_order=1:strict_init_order=1
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
select=()
[ -z "${MOE_SANITIZE_TESTS:-}" ] || select=(-R "$MOE_SANITIZE_TESTS")
run_ctest() {
  ctest --test-dir "$build" --output-on-failure -j "${MOE_JOBS:-$(nproc)}" \
    -E '^gpu_check_cpu_mode$' "${select[@]}" "$@"
}
status=0
ASAN_OPTIONS=${ASAN_OPTIONS:-$asan} run_ctest -L 'unit|e2e' -LE mpi "$@" || status=1
if [ "${MOE_SANITIZE_SUBSET:-}" != ci ]; then  # the CI subset has no mpi tests
  ASAN_OPTIONS=${ASAN_OPTIONS:-${asan/detect_leaks=1/detect_leaks=0}} run_ctest -L mpi "$@" ||
    status=1
fi
exit $status
