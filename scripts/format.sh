#!/usr/bin/env bash
# Formats the C++ and CUDA sources with the repository's .clang-format (Google style, 100 columns).
#   scripts/format.sh            rewrite every tracked *.h, *.cc, *.cu, *.cuh in place
#   scripts/format.sh --check    list the files that differ and exit 1 when any does
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || { echo "format.sh: clang-format is missing (apt-get install clang-format)" >&2; exit 2; }
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
if [[ "${1:-}" == --check ]]; then
  bad=0
  for f in "${files[@]}"; do
    if ! clang-format --style=file "$f" | cmp -s - "$f"; then
      echo "$f"
      bad=1
    fi
  done
  exit $bad
fi
clang-format --style=file -i "${files[@]}"
echo "format.sh: formatted ${#files[@]} files"
