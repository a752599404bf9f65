#!/usr/bin/env python3
"""Tests of bench/cpu_step_peer.py (issue 14): python3 bench/cpu_step_peer_test.py

Runs the peer as the C++ benchmark does (a subprocess whose last stdout line is the JSON result)
on a small spec, and checks its MoE layer against a dense reference in-process. A few seconds.
"""
import json
import math
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "cpu_step_peer.py")
SMALL = {"num_layers": 2, "model_dim": 32, "num_experts": 8, "batch_size": 2, "seq_len": 16}


def run_peer(*args):
    return subprocess.run([sys.executable, PEER, *args], capture_output=True, text=True,
                          timeout=120)


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


class CpuStepPeerTest(unittest.TestCase):
    def test_json_line(self):
        proc = run_peer("--spec", json.dumps(SMALL), "--threads", "1", "--warmup", "1",
                        "--steps", "2")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = last_json(proc.stdout)
        self.assertEqual(out["bench"], "cpu_step")
        self.assertEqual(out["impl"], "pytorch_eager")
        self.assertIsInstance(out["torch"], str)
        self.assertEqual(out["threads"], 1)
        self.assertEqual(out["tokens_per_step"], 2 * 16)
        self.assertEqual(out["steps"], 2)
        for key in ("step_ms_median", "step_ms_min", "step_ms_max", "step_ms_p10",
                    "step_ms_p90", "tokens_per_s_median"):
            self.assertGreater(out[key], 0, key)
        self.assertLessEqual(out["step_ms_min"], out["step_ms_p10"])
        self.assertLessEqual(out["step_ms_p10"], out["step_ms_median"])
        self.assertLessEqual(out["step_ms_median"], out["step_ms_p90"])
        self.assertLessEqual(out["step_ms_p90"], out["step_ms_max"])
        self.assertAlmostEqual(out["tokens_per_s_median"], 32 / (out["step_ms_median"] / 1e3),
                               delta=1e-6 * out["tokens_per_s_median"])
        # sigma-moe-train --dry_run --set model.num_layers=2 --set model.model_dim=32
        # --set moe.num_experts=8 prints 277280 parameters.
        self.assertEqual(out["params"], 277280)
        for key in ("loss_first", "loss_last"):
            self.assertTrue(math.isfinite(out[key]), key)
        # Uniformly random bytes at init: about ln 256.
        self.assertAlmostEqual(out["loss_first"], math.log(256), delta=0.2)

    def test_loss_falls(self):
        spec = dict(SMALL, lr=0.02, warmup_steps=0, min_lr=0.02)
        proc = run_peer("--spec", json.dumps(spec), "--threads", "1", "--warmup", "0",
                        "--steps", "20", "--pool", "1")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        out = last_json(proc.stdout)
        self.assertTrue(math.isfinite(out["loss_last"]))
        self.assertLess(out["loss_last"], 0.7 * out["loss_first"])

    def test_bad_spec_exits_2_naming_the_key(self):
        for spec, key in (('{"num_expert": 8}', "num_expert"), ('{"n_k": 3}', "n_k"),
                          ('{"model_dim": 0}', "model_dim"), ('{"qk_norm": 1}', "qk_norm"),
                          ('{"layer_top_k": {"0": 200}}', "layer_top_k"),
                          ('{"dense_layers": [9]}', "dense_layers"), ("{", "--spec")):
            proc = run_peer("--spec", spec, "--dry_run")
            self.assertEqual(proc.returncode, 2, spec)
            lines = proc.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, proc.stderr)
            self.assertIn(key, lines[0])
            self.assertEqual(proc.stdout, "")


class InProcessTest(unittest.TestCase):
    def test_tiny_preset_parameter_count(self):
        sys.path.insert(0, HERE)
        import cpu_step_peer as peer

        # sigma-moe-train --device=cpu --dry_run (the tiny preset) prints 9995648 parameters.
        model = peer.build(peer.parse_spec(""))
        self.assertEqual(sum(p.numel() for p in model.parameters()), 9995648)

    def test_moe_matches_dense_reference(self):
        sys.path.insert(0, HERE)
        import cpu_step_peer as peer
        import torch
        import torch.nn.functional as F

        torch.manual_seed(0)
        spec = peer.parse_spec(json.dumps(dict(SMALL, layer_top_k={"0": 3}, renormalize=True)))
        model = peer.build(spec)
        moe = model.layers[0].moe
        x = torch.randn(20, 32)
        y, aux = moe(x)
        logits = x @ moe.w_gate.weight.t()
        probs = logits.softmax(-1)
        gates, idx = probs.topk(3, -1)
        gates = gates / gates.sum(-1, keepdim=True)
        everything = torch.stack([e(x) for e in moe.experts], 1)  # [T, E, M]
        expected = (everything.gather(1, idx[..., None].expand(-1, -1, 32)) *
                    gates[..., None]).sum(1)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
        f = F.one_hot(idx, 8).sum((0, 1)).float() / (20 * 3)
        lbl = 8 * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).square().mean()
        torch.testing.assert_close(aux, 0.1 * lbl + 0.001 * z)


if __name__ == "__main__":
    unittest.main()
