#!/usr/bin/env bash
# Installs what sigma-moe needs to build and test, and does nothing when it is all there.
# Debian packages: compilers' libraries (abseil, protobuf, GoogleTest, Google Benchmark, OpenBLAS,
# oneDNN (the CPU GEMMs), OpenMPI, pybind11), CMake, Ninja, ccache, clang with its runtime
# libraries (libFuzzer and the sanitizers' runtimes, for scripts/fuzz.sh). PyPI: numpy, pytest,
# torch (large: installed once), matplotlib (the load-balance study's figures), and with a CUDA
# toolkit the C++ headers of the cuDNN frontend (below).
# The CUDA toolkit is not installed here: the build uses it when nvcc is on the PATH.
set -euo pipefail

debs=(cmake ninja-build ccache g++ pkg-config python3-dev python3-pip
      libabsl-dev libprotobuf-dev protobuf-compiler libgtest-dev libgmock-dev libbenchmark-dev
      libopenblas-dev libdnnl-dev libopenmpi-dev openmpi-bin pybind11-dev clang libclang-rt-dev)
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
for m in numpy pytest torch matplotlib; do
  "$python" -c "import $m" 2>/dev/null || pymissing+=("$m")
done
if ((${#pymissing[@]})); then
  echo "install-deps: pip installing ${pymissing[*]} into $("$python" -c 'import sys; print(sys.executable)') (torch is large; this happens once)"
  # Debian's own interpreter refuses pip installs (PEP 668) unless told otherwise.
  "$python" -m pip install -q --disable-pip-version-check "${pymissing[@]}" 2>/dev/null ||
    "$python" -m pip install -q --disable-pip-version-check --break-system-packages "${pymissing[@]}"
fi

# The cuDNN frontend (header-only C++ graph API over the cuDNN of the CUDA toolkit) for the fused
# attention of attention/attention_core_cudnn.cc. PyPI's nvidia-cudnn-frontend wheel carries its
# headers: unpacked into .deps/cudnn-frontend/include (git-ignored), where CMake looks first after
# CUDNN_FRONTEND_INCLUDE_DIR. Only with nvcc around; a failed download leaves the build without the
# cuDNN path (MOE_WITH_CUDNN off), it does not fail the install.
frontend_version=${MOE_CUDNN_FRONTEND_VERSION:-1.32.0}
frontend_dir=$(cd "$(dirname "$0")/.." && pwd)/.deps/cudnn-frontend
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  if [ "$(cat "$frontend_dir/VERSION" 2>/dev/null)" != "$frontend_version" ]; then
    echo "install-deps: fetching the cuDNN frontend $frontend_version headers into $frontend_dir"
    tmp=$(mktemp -d)
    if "$python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" \
         "nvidia-cudnn-frontend==$frontend_version" >/dev/null 2>&1 &&
       "$python" - "$tmp" "$frontend_dir" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
dest = sys.argv[2]
shutil.rmtree(dest, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("include/") and not name.endswith("/"):
            z.extract(name, dest)
PY
    then
      echo "$frontend_version" > "$frontend_dir/VERSION"
    else
      echo "install-deps: could not fetch nvidia-cudnn-frontend $frontend_version; building without cuDNN attention" >&2
    fi
    rm -rf "$tmp"
  fi
fi
