#!/usr/bin/env python3
"""Test of the load-balance study's scripts: the balance measures on hand-made counts, then a tiny
study end to end (sweep.py on both corpora, a killed run resumed, plot.py's PNGs).

Usage: study_test.py SIGMA_MOE_TRAIN WORK_DIR
"""

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import study_metrics  # noqa: E402

# A model small enough that a step takes milliseconds: 2 MoE layers of 8 experts.
TINY = ["model.num_layers=2", "model.model_dim=32", "attention.n_q=2", "attention.n_k=1",
        "attention.n_v=2", "attention.head_dim=16", "attention.d_aug=32", "moe.num_experts=8",
        "moe.ffn_dim=16", "train.batch_size=2", "train.seq_len=32", "train.warmup_steps=1",
        "train.eval_interval=3", "train.eval_batches=1", "checkpoint.interval=2",
        "checkpoint.keep_last=0", "data.synthetic_size=20000"]
STEPS = 6


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def test_measures(work):
    check(study_metrics.relative_deviation([3, 1, 0, 0]) == (2.0, -1.0), "deviation of 3,1,0,0")
    check(study_metrics.relative_deviation([0, 0]) == (0.0, 0.0), "deviation of no tokens")
    # Windows of 2 steps: [4,0]+[0,4] is uniform although each step alone is not.
    hi, lo = study_metrics.windowed_deviation([[4, 0], [0, 4], [0, 4]], 2)
    check(hi == [1.0, 0.0, 1.0] and lo == [-1.0, 0.0, -1.0], f"windowed {hi} {lo}")
    # LBL = E sum f P is 1 when P is uniform, whatever f; and > 1 when f and P agree.
    _, _, lbl = study_metrics.tail_f_and_p([[10, 0, 0, 0]], [[0.25] * 4], 1)
    check(abs(lbl - 1.0) < 1e-12, f"LBL with uniform P: {lbl}")
    f, p, lbl = study_metrics.tail_f_and_p([[3, 1], [1, 3], [4, 0]], [[.5, .5], [.6, .4], [.7, .3]],
                                           2)
    check(f == [5 / 8, 3 / 8] and abs(p[0] - 0.65) < 1e-12, f"tail f {f} P {p}")
    check(abs(lbl - 2 * (5 / 8 * 0.65 + 3 / 8 * 0.35)) < 1e-12, f"LBL {lbl}")
    # A resumed run rewrote steps 2-3: the last row of each step wins; a torn line is skipped.
    path = os.path.join(work, "rows.jsonl")
    with open(path, "w") as f:
        for step, loss in ((1, 5), (2, 4), (3, 3), (2, 40), (3, 30)):
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        f.write('{"step": 4, "lo')
    rows = study_metrics.read_rows(path)
    check([(r["step"], r["loss"]) for r in rows] == [(1, 5), (2, 40), (3, 30)], f"rows {rows}")


def sweep(binary, out, *extra):
    cmd = [sys.executable, os.path.join(HERE, "sweep.py"), "--binary", binary, "--out", out,
           "--steps", str(STEPS), "--window", "3", "--variants", "lbl,progressive,bias",
           "--second_seed", "lbl"] + list(extra)
    for s in TINY:
        cmd += ["--set", s]
    result = subprocess.run(cmd, capture_output=True, text=True)
    check(result.returncode == 0, f"sweep failed: {result.stderr[-3000:]}")
    return result


def test_study(binary, work):
    out = os.path.join(work, "study")
    shutil.rmtree(out, ignore_errors=True)
    first = sweep(binary, out)
    results = [json.loads(l) for l in first.stdout.splitlines() if l.startswith("{")]
    check(len(results) == 8, f"2 corpora x 4 runs, got {len(results)}")
    for corpus in ("synthetic", "text"):
        check(f"{corpus}, last 3 steps:" in first.stdout, f"no table for {corpus}")
    by_name = {(r["corpus"], r["run"]): r for r in results}
    # The text corpus trains on its own files, so its losses differ from the synthetic run's.
    check(by_name[("text", "lbl")]["eval_loss"] != by_name[("synthetic", "lbl")]["eval_loss"],
          "the text corpus was not used")
    check(os.path.isfile(os.path.join(out, "text_corpus", "heldout.txt")), "no held-out file")
    # The second seed is a different run; progressive drops layer 0 from top-8 to top-1 at 60%.
    check(by_name[("synthetic", "lbl@seed2")]["eval_loss"] != by_name[("synthetic", "lbl")]
          ["eval_loss"], "seed 2 trained the same run")
    rows = study_metrics.read_rows(os.path.join(out, "synthetic", "progressive", "metrics.jsonl"))
    ks = [r["moe"][0]["top_k"] for r in rows]
    check(ks == [8] * 4 + [1] * 2, f"progressive top-k per step {ks}")
    check(all(r["moe"][1]["top_k"] == 1 for r in rows), "layer 1 is not top-1")
    bias_rows = study_metrics.read_rows(os.path.join(out, "synthetic", "bias", "metrics.jsonl"))
    check(all(l["bias_max_abs"] > 0 for r in bias_rows for l in r["moe"]), "no bias logged")

    # Kill simulated: the lbl run lost its marker and its last checkpoint; the sweep resumes it
    # from step 4 and keeps the others, and the resumed steps repeat the first run's bit for bit.
    run_dir = os.path.join(out, "synthetic", "lbl")
    before = study_metrics.read_rows(os.path.join(run_dir, "metrics.jsonl"))
    os.remove(os.path.join(run_dir, "done.json"))
    shutil.rmtree(os.path.join(run_dir, "step_00000006"))
    second = sweep(binary, out)
    check(second.stderr.count("done earlier") == 7, f"runs kept: {second.stderr[-2000:]}")
    check("synthetic/lbl: resuming from step 4" in second.stderr, "the lbl run did not resume")
    after = study_metrics.read_rows(os.path.join(run_dir, "metrics.jsonl"))
    check([r["step"] for r in after] == list(range(1, STEPS + 1)), "steps after resume")
    check([r["loss"] for r in after] == [r["loss"] for r in before], "resume changed the losses")
    resumed = [json.loads(l) for l in second.stdout.splitlines() if l.startswith("{")][0]
    check(resumed["resumed_from"] == 4, f"resumed_from {resumed['resumed_from']}")

    # --fresh retrains the planned runs and deletes nothing else under --out.
    keep = os.path.join(out, "synthetic", "notes.txt")
    with open(keep, "w") as f:
        f.write("mine")
    fresh = sweep(binary, out, "--fresh", "--corpora", "synthetic", "--variants", "lbl",
                  "--second_seed=")
    check("done earlier" not in fresh.stderr and os.path.isfile(keep), "--fresh")
    check(os.path.isdir(os.path.join(out, "text", "bias")), "--fresh removed another run")
    again = study_metrics.read_rows(os.path.join(run_dir, "metrics.jsonl"))
    check([r["loss"] for r in again] == [r["loss"] for r in after], "the retrained run differs")

    figures = os.path.join(work, "figures")
    shutil.rmtree(figures, ignore_errors=True)
    plot = subprocess.run([sys.executable, os.path.join(HERE, "plot.py"), "--study", out,
                           "--figures", figures, "--smooth", "2", "--window", "3"],
                          capture_output=True, text=True)
    check(plot.returncode == 0, f"plot.py failed: {plot.stderr[-3000:]}")
    expected = {f"{kind}_{corpus}.png" for kind in ("deviation", "f_p", "bias", "heldout")
                for corpus in ("synthetic", "text")}
    tables = {f"summary_{corpus}.md" for corpus in ("synthetic", "text")}
    check(set(os.listdir(figures)) == expected | tables, f"figures {sorted(os.listdir(figures))}")
    for name in tables:
        with open(os.path.join(figures, name)) as f:
            text = f.read()
        check(all(f"| {run} |" in text for run in ("lbl", "lbl@seed2", "progressive", "bias")),
              f"{name} lacks a run's row:\n{text}")
    from PIL import Image  # matplotlib's own dependency
    for name in expected:
        path = os.path.join(figures, name)
        with open(path, "rb") as f:
            check(f.read(8) == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG")
        with Image.open(path) as image:
            colors = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
            # Drawn: axes, text and curves in many colours, not a blank page.
            check(image.width >= 300 and image.height >= 200 and len(colors) >= 16,
                  f"{name}: {image.width}x{image.height}, {len(colors)} colours")


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary, work = argv
    os.makedirs(work, exist_ok=True)
    test_measures(work)
    test_study(binary, work)
    print("study_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
