#!/usr/bin/env python3
"""Assembles a real byte-level text corpus from files every Debian machine has, for the study.

Sources, in sorted path order: the top-level modules of the system Python's standard library
(/usr/lib/python3.N/*.py: English docstrings and comments around code) and the license texts in
/usr/share/common-licenses (English prose). Each file is one document; every `--heldout_every`-th
document (in that order) goes to the held-out file, the rest to the training file, so held-out text
is never seen in training. Documents are separated by a blank line. The corpus is built at run time
and kept out of git; its size and SHA-256 are printed, so a reader can tell whether two machines
trained on the same bytes (a different Python version gives a different corpus).

Usage:
  bench/load_balance/make_text_corpus.py --out DIR      # writes DIR/train.txt and DIR/heldout.txt
"""

import argparse
import glob
import hashlib
import json
import os
import re
import sys


def python_stdlib_dir():
    """The newest /usr/lib/python3.N holding the standard library (Debian's system Python)."""
    candidates = [d for d in glob.glob("/usr/lib/python3.*") if re.fullmatch(r".*/python3\.\d+", d)
                  and os.path.isfile(os.path.join(d, "os.py"))]
    candidates.sort(key=lambda d: int(d.rsplit(".", 1)[1]))
    return candidates[-1] if candidates else None


def source_files(stdlib, licenses):
    files = []
    if stdlib:
        files += sorted(glob.glob(os.path.join(stdlib, "*.py")))
    if licenses and os.path.isdir(licenses):
        files += sorted(p for p in glob.glob(os.path.join(licenses, "*"))
                        if os.path.isfile(p) and not os.path.islink(p))
    return files


def build(out_dir, heldout_every, max_bytes, stdlib, licenses):
    files = source_files(stdlib, licenses)
    if len(files) < 2 * heldout_every:
        raise RuntimeError(f"found only {len(files)} source files (Python standard library: "
                           f"{stdlib or 'none'}, licenses: {licenses}); need at least "
                           f"{2 * heldout_every}")
    os.makedirs(out_dir, exist_ok=True)
    parts = {"train": [], "heldout": []}
    sizes = {"train": 0, "heldout": 0}
    for i, path in enumerate(files):
        split = "heldout" if i % heldout_every == heldout_every - 1 else "train"
        with open(path, "rb") as f:
            data = f.read().strip() + b"\n\n"
        if max_bytes and sizes[split] + len(data) > max_bytes * (0.1 if split == "heldout" else 1):
            continue
        parts[split].append(data)
        sizes[split] += len(data)
    info = {"sources": len(files), "stdlib": stdlib, "licenses": licenses}
    for split, chunks in parts.items():
        data = b"".join(chunks)
        path = os.path.join(out_dir, f"{split}.txt")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a killed build never leaves a half-written corpus behind
        info[split] = {"path": path, "documents": len(chunks), "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}
    return info


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for train.txt and heldout.txt")
    parser.add_argument("--heldout_every", type=int, default=10,
                        help="every N-th document goes to the held-out split (default 10)")
    parser.add_argument("--max_bytes", type=int, default=0,
                        help="cap on the training split (held-out: a tenth of it); 0 = no cap")
    parser.add_argument("--stdlib", default=python_stdlib_dir(),
                        help="Python standard library directory (default: newest /usr/lib/python3.N)")
    parser.add_argument("--licenses", default="/usr/share/common-licenses")
    args = parser.parse_args(argv)
    if args.heldout_every < 2:
        parser.error(f"--heldout_every must be >= 2, got {args.heldout_every}")
    info = build(args.out, args.heldout_every, args.max_bytes, args.stdlib, args.licenses)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (RuntimeError, OSError) as error:
        print(f"make_text_corpus.py: {error}", file=sys.stderr)
        sys.exit(1)
