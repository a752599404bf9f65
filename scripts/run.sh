#!/usr/bin/env bash
# The main job: install what is missing, build, then run sigma-moe-train (arguments pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec "${MOE_BUILD_DIR:-build}/runtime/cli/sigma-moe-train" "$@"
