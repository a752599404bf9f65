#!/usr/bin/env python3
"""Turns gemm_bench's grouped_rows runs into the cost model's GEMM table.

Usage: gemm_table.py GEMM_BENCH_JSON [--device cuda|cpu]
Reads gemm_bench's --benchmark_format=json output (anything before the first "{" is skipped, so a
log with a header line works) and prints "rows:tflops,rows:tflops,..." (ascending rows) from the
grouped_rows/<device>/... benchmarks, for `adapt_sim --gemm_table=...`. Exits 1 when there is none.
"""
import argparse
import json
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    text = open(args.path).read()
    doc = json.loads(text[text.index("{"):])
    points = {}
    prefix = f"grouped_rows/{args.device}/"
    for b in doc.get("benchmarks", []):
        name = b.get("name", "")
        if not name.startswith(prefix) or "TFLOP/s" not in b:
            continue
        # grouped_rows/<device>/<dtype>/fwd/<groups>/<rows>/<m>/<h>/manual_time
        rows = int(name[len(prefix):].split("/")[3])
        points[rows] = b["TFLOP/s"]
    if not points:
        sys.exit(f"gemm_table.py: no {prefix} benchmarks in {args.path}")
    print(",".join(f"{rows}:{points[rows]:.4g}" for rows in sorted(points)))


if __name__ == "__main__":
    main()
