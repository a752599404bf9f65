#!/usr/bin/env bash
# Installs what sigma-moe needs to build and test, and does nothing when it is all there.
# Debian packages: compilers' libraries (abseil, protobuf, GoogleTest, Google Benchmark, OpenBLAS,
# OpenMPI, pybind11), CMake, Ninja, ccache, clang with its runtime libraries (libFuzzer and the
# sanitizers' runtimes, for scripts/fuzz.sh). PyPI: numpy, pytest, torch (large: installed once).
# The CUDA toolkit is not installed here: the build uses it when nvcc is on the PATH.
set -euo pipefail

debs=(cmake ninja-build ccache g++ pkg-config python3-dev python3-pip
      libabsl-dev libprotobuf-dev protobuf-compiler libgtest-dev libgmock-dev libbenchmark-dev
      libopenblas-dev libopenmpi-dev openmpi-bin pybind11-dev clang libclang-rt-dev)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
pymissing=()
for m in numpy pytest torch; do
  "$python" -c "import $m" 2>/dev/null || pymissing+=("$m")
done
if ((${#pymissing[@]})); then
  echo "install-deps: pip installing ${pymissing[*]} into $("$python" -c 'import sys; print(sys.executable)') (torch is large; this happens once)"
  # Debian's own interpreter refuses pip installs (PEP 668) unless told otherwise.
  "$python" -m pip install -q --disable-pip-version-check "${pymissing[@]}" 2>/dev/null ||
    "$python" -m pip install -q --disable-pip-version-check --break-system-packages "${pymissing[@]}"
fi
