#!/usr/bin/env bash
# Every test: install what is missing, build, run CTest (all labels: unit, cuda, mpi, e2e, python).
# cuda tests skip themselves without a GPU. Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
ctest --test-dir "${MOE_BUILD_DIR:-build}" --output-on-failure -j "${MOE_JOBS:-$(nproc)}" "$@"
