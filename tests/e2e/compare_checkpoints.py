#!/usr/bin/env python3
"""Compares two sigma-moe checkpoints (step_* directories) tensor by tensor.

usage: compare_checkpoints.py DIR_A DIR_B [RTOL]
Every tensor of A must exist in B with the same dtype and shape, and
max |a - b| <= RTOL * max(|a|) (per tensor; RTOL defaults to 1e-4). Exits 1 on a mismatch.
Reads manifest.textproto (the tensors' name, dtype, shape, offset) and tensors.bin.
"""
import re
import sys

import numpy as np

DTYPES = {"f32": np.float32, "bf16": np.uint16, "i32": np.int32, "i64": np.int64}


def load(path):
    with open(f"{path}/manifest.textproto") as f:
        text = f.read()
    blob = np.fromfile(f"{path}/tensors.bin", dtype=np.uint8)
    tensors = {}
    for block in re.findall(r"^tensors \{\n(.*?)^\}", text, re.S | re.M):
        name = re.search(r'name: "([^"]*)"', block).group(1)
        dtype = re.search(r'dtype: "([^"]*)"', block).group(1)
        shape = [int(v) for v in re.findall(r"^\s*shape: (\d+)", block, re.M)]
        offset = re.search(r"^\s*offset: (\d+)", block, re.M)
        offset = int(offset.group(1)) if offset else 0
        size = int(re.search(r"^\s*size: (\d+)", block, re.M).group(1))
        raw = blob[offset:offset + size].view(DTYPES[dtype])
        tensors[name] = (dtype, raw.reshape(shape))
    return tensors


def main():
    a_dir, b_dir = sys.argv[1], sys.argv[2]
    rtol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
    a, b = load(a_dir), load(b_dir)
    bad = 0
    for name, (dtype, x) in a.items():
        if name not in b:
            print(f"{name}: missing from {b_dir}")
            bad += 1
            continue
        dtype_b, y = b[name]
        if dtype != dtype_b or x.shape != y.shape:
            print(f"{name}: {dtype}{list(x.shape)} vs {dtype_b}{list(y.shape)}")
            bad += 1
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        scale = float(np.max(np.abs(x64))) if x64.size else 0.0
        diff = float(np.max(np.abs(x64 - y64))) if x64.size else 0.0
        if not diff <= rtol * scale:
            print(f"{name}: max |a - b| = {diff:.3g} > {rtol} x max |a| = {scale:.3g}")
            bad += 1
    print(f"{len(a)} tensors compared, {bad} mismatched ({a_dir} vs {b_dir})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
