#!/usr/bin/env bash
# Configures and builds sigma-moe into build/ (or $MOE_BUILD_DIR). Extra arguments go to CMake.
# MOE_BUILD_TARGETS="t1 t2 ...": build only those targets (and what they need), not all.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MOE_BUILD_DIR:-build}
jobs=${MOE_JOBS:-$(nproc)}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
elif (($#)); then
  cmake "$build" "$@"
fi
targets=()
for t in ${MOE_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build" -j "$jobs" "${targets[@]}"
