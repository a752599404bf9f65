#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ and the libFuzzer dictionaries of fuzz/dict/.

The seeds are small, valid or nearly valid inputs of each format, so that the fuzzer starts from
inputs that reach deep into the parsers. Run it again after changing a format; the files are
committed. Usage: fuzz/make_seeds.py
"""
import os
import re
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
DICT = os.path.join(ROOT, "fuzz", "dict")


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def write(target: str, name: str, data):
    if isinstance(data, str):
        data = data.encode()
    path = os.path.join(CORPUS, target, name)
    with open(path, "wb") as f:
        f.write(data)


def config_seeds():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        with open(os.path.join(ROOT, "configs", name), "rb") as f:
            text = f.read()
        write("config_text", "preset_" + name, text)
    write("config_text", "empty", "")
    write("config_text", "small",
          'model { num_layers: 2 moe { num_experts: 4 top_k: 2 dense_layers: [0] '
          'topk_schedule { first_layer: 0 last_layer: 1 k: 3 until_step: 10 } } }\n'
          'train { steps: 3 lr: 1e-3 min_lr: 0 nan_policy: ROLLBACK device: "cuda:0" }\n'
          'data { kind: TEXT path: "a\\"b.txt" }\ncheckpoint { dir: "/tmp/c" interval: 2 }\n'
          'parallel { mode: "r1.d2.flat" node_size: 2 }\n')
    write("config_text", "odd_values",
          'train { lr: inf eps: nan beta1: -0.0 seed: 18446744073709551615 steps: -1 }\n'
          'model { norm_eps: 1e-400 attention { n_q: 2147483647 n_k: -2147483648 } }\n'
          'data { kind: 7 synthetic_size: 0x7fffffffffffffff }\n')
    write("config_text", "syntax_error", "model { num_layers: 2 \n train { lr: }\n")
    write("config_text", "short_forms",
          "model: < vocab_size: 300 moe: < top_k: 1 > >\ntrain { dtype: 'bf16' device: 'cpu' }\n"
          "# comment\ncheckpoint { resume: true keep_last: 0 }\n")

    overrides = [
        (0, "train.lr=3e-4\nmoe.top_k=2\nattention.n_q=8"),
        (1, "data.kind=text\ndata.path=/tmp/x.txt\nmodel.vocab_size=256"),
        (2, "moe.dense_layers=[0,1]\nmoe.dense_ffn_dim=128"),
        (0, "moe.topk_schedule=[{first_layer:0 last_layer:1 k:4 until_step:100}]\n"
            "moe.topk_schedule[0].k=2\nmoe.topk_schedule[1].until_step=5"),
        (1, "train.nan_policy=rollback\ntrain.device=cuda:1\ntrain.dtype=\"f32\""),
        (2, "checkpoint.dir='ckpt'\ncheckpoint.interval=10\ncheckpoint.keep_last=2\n"
            "checkpoint.resume=false"),
        (0, "parallel.mode=r1.d2.flat\nparallel.node_size=2\nmoe.num_experts=8"),
        (1, "moe.nope=1\ntrain.lr=abc\nmoe.dense_layers[0]=1\n=3\ntrain..lr=1\nmodel=1"),
        (2, "moe.dense_layers=[]\nmoe.topk_schedule=[]\ntrain.steps=9223372036854775807"),
    ]
    for i, (preset, text) in enumerate(overrides):
        write("config_overrides", "seed_%02d" % i, bytes([preset]) + text.encode())


def manifest(tensors, step=1, blob_size=None, count=None, data_position=7, lr_scale=1.0,
             config_text="model { num_layers: 1 }\n"):
    lines = ["format_version: 1", "step: %d" % step, "data_position: %d" % data_position,
             "rng_seed: 1234", "skipped_steps: 0", "lr_scale: %r" % lr_scale,
             "config_text: %s" % ('"' + config_text.replace("\\", "\\\\").replace('"', '\\"')
                                  .replace("\n", "\\n") + '"'),
             'tensors_file: "tensors.bin"', "tensors_file_size: %d" % blob_size]
    for t in tensors:
        lines.append('tensors { name: "%s" dtype: "%s" %s offset: %d size: %d crc32c: %d }' % (
            t["name"], t["dtype"], " ".join("shape: %d" % s for s in t["shape"]), t["offset"],
            t["size"], t["crc"]))
    lines.append("tensor_count: %d" % (len(tensors) if count is None else count))
    return "\n".join(lines) + "\n"


def checkpoint(specs, flags=0, **kwargs):
    """specs: (name, dtype, shape, bytes). Returns the fuzz input."""
    blob = b""
    tensors = []
    for name, dtype, shape, data in specs:
        blob += b"\0" * ((64 - len(blob) % 64) % 64)
        tensors.append(dict(name=name, dtype=dtype, shape=shape, offset=len(blob),
                            size=len(data), crc=crc32c(data)))
        blob += data
    text = manifest(tensors, blob_size=len(blob), **kwargs)
    return bytes([flags]) + text.encode() + b"\0" + blob


def checkpoint_seeds():
    w = struct.pack("<6f", 1.0, -2.0, 0.5, 3.25, -0.0, 1e-3)
    b = struct.pack("<4H", 0x3F80, 0xC000, 0x3F00, 0x0000)
    i = struct.pack("<3i", 1, -1, 7)
    l = struct.pack("<2q", 1 << 40, -5)
    write("checkpoint_manifest", "valid_4_tensors",
          checkpoint([("w", "f32", [2, 3], w), ("b", "bf16", [4], b), ("i", "i32", [3], i),
                      ("l", "i64", [2], l)]))
    write("checkpoint_manifest", "valid_scalar_and_empty",
          checkpoint([("s", "f32", [], struct.pack("<f", 2.0)), ("e", "f32", [0, 5], b"")]))
    write("checkpoint_manifest", "fixups_all", checkpoint([("w", "f32", [2, 3], w)], flags=7))
    write("checkpoint_manifest", "no_step_dir", checkpoint([("w", "f32", [3, 2], w)], flags=8))
    write("checkpoint_manifest", "bad_crc",
          checkpoint([("w", "f32", [2, 3], w)])[:-1] + b"\x01")
    write("checkpoint_manifest", "truncated_count",
          checkpoint([("w", "f32", [2, 3], w)], count=2))
    write("checkpoint_manifest", "no_blob",
          bytes([0]) + manifest([], blob_size=0).encode())
    write("checkpoint_manifest", "empty_manifest", b"\0\0")
    write("checkpoint_manifest", "garbage_manifest", b"\x07tensors { name: \0\x01\x02")


def token_file(tokens, header_tokens=None, magic=20240520, version=1, extra=b""):
    header = struct.pack("<3i", magic, version,
                         len(tokens) if header_tokens is None else header_tokens)
    header += b"\0" * (1024 - len(header))
    return header + struct.pack("<%dH" % len(tokens), *tokens) + extra


def data_seeds():
    write("token_file", "valid_5", token_file([0, 1, 50256, 65535, 7]))
    write("token_file", "valid_64", token_file([(i * 37) % 300 for i in range(64)]))
    write("token_file", "one_token", token_file([42]))
    write("token_file", "truncated", token_file([1, 2, 3], header_tokens=4))
    write("token_file", "trailing", token_file([1, 2], extra=b"\x01"))
    write("token_file", "bad_magic", token_file([1], magic=20240519))
    write("token_file", "bad_version", token_file([1], version=2))
    write("token_file", "negative_count", token_file([], header_tokens=-1))
    write("token_file", "short_header", token_file([1])[:100])

    write("text_data", "hello", "hello, world\n")
    write("text_data", "one_byte", "x")
    write("text_data", "two_bytes", "xy")
    write("text_data", "binary", bytes(range(256)))
    write("text_data", "utf8", "Grüße, 世界 — ∑ tokens\n" * 4)


def dictionaries():
    """Field and enum names of config.proto and checkpoint.proto for libFuzzer's -dict."""
    os.makedirs(DICT, exist_ok=True)

    def words(proto):
        with open(os.path.join(ROOT, "runtime", "proto", proto)) as f:
            text = re.sub(r"//.*", "", f.read())
        names = re.findall(r"\b([a-z_0-9]+) = \d+;", text)
        enums = re.findall(r"\b([A-Z][A-Z_0-9]+) = \d+;", text)
        return sorted(set(names)), sorted(set(enums))

    names, enums = words("config.proto")
    with open(os.path.join(DICT, "config.dict"), "w") as f:
        f.write("# Generated by fuzz/make_seeds.py from runtime/proto/config.proto.\n")
        for n in names + enums + ["model", "moe", "attention", "train", "data", "checkpoint",
                                  "parallel", "true", "false", "nan", "inf", "{", "}", "[", "]",
                                  ":", "=", "\\x0A", "."]:
            f.write('"%s"\n' % n)
    names, _ = words("checkpoint.proto")
    with open(os.path.join(DICT, "checkpoint_manifest.dict"), "w") as f:
        f.write("# Generated by fuzz/make_seeds.py from runtime/proto/checkpoint.proto.\n")
        for n in names + ["tensors", "f32", "bf16", "i32", "i64", "tensors.bin", "{", "}", ":",
                          "\\x00"]:
            f.write('"%s"\n' % n)


def main():
    for target in ["config_text", "config_overrides", "checkpoint_manifest", "token_file",
                   "text_data"]:
        shutil.rmtree(os.path.join(CORPUS, target), ignore_errors=True)
        os.makedirs(os.path.join(CORPUS, target))
    config_seeds()
    checkpoint_seeds()
    data_seeds()
    dictionaries()


if __name__ == "__main__":
    main()
