#!/usr/bin/env python3
"""Load-balance study: train the same model under several balancing strategies, on two corpora.

Every run is one `sigma-moe-train` of the `load-balance-study` preset (8 layers of 96 experts,
top-1) from the same seed and data, differing only in its balancing fields and top-k schedule:

  lbl           top-1 everywhere, Switch LBL (E sum_i f_i P_i, coefficient 0.01; the preset)
  l0_top8       lbl, and layer 0 routes to 8 experts throughout
  progressive   lbl, layer 0 at top-8 until --switch_at of the steps, then top-1
  bias          aux-loss-free expert bias (rate 1e-3 per step, sign updates), no bound
  bias_bounded  the same with |b| <= 0.1
  top1_lbl      Sigma-MoE-Tiny's Top-1 LBL (E sum_i fhat_i^2 / mean top-1 probability), 0.01
  none          no balancing at all

on each corpus: `synthetic` (the built-in corpus) and `text` (real bytes from this machine's
Python standard library and license texts, bench/load_balance/make_text_corpus.py, train and
held-out files). `--second_seed` variants run again with train.seed + 1, to show the noise.

Each run keeps its per-step, per-layer routing record in <out>/<corpus>/<run>/metrics.jsonl
(tokens per expert, mean router probability P, LBL values, max |bias|); bench/load_balance/plot.py
draws the figures from them. Output: one JSON line per run (stdout and <out>/summary.jsonl), then
the table per corpus (as plot.py's summary_<corpus>.md).

Killed, the sweep resumes where it stopped when run again with the same --out: finished runs are
kept (<run>/done.json), an unfinished one resumes from its last checkpoint.

Usage:
  bench/load_balance/sweep.py --out study            # the whole study: 18 runs, ~55 min on 2 cores
  bench/load_balance/sweep.py --corpora text --variants lbl,bias --second_seed= --steps 300
  bench/load_balance/plot.py --study study --figures figures
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_text_corpus  # noqa: E402
import study_metrics  # noqa: E402

OFF = {"moe.lbl_coef": 0, "moe.z_coef": 0, "moe.top1_lbl_coef": 0, "moe.bias_update_rate": 0}
LBL = {"moe.lbl_coef": 0.01}
UNBOUNDED = 1e9  # moe.bias_bound must be finite: a bound no bias reaches (rate x steps << 1e9)


def variant_overrides(name, steps, switch_at):
    """The balancing fields of variant `name` for a run of `steps` steps."""
    layer0 = "moe.topk_schedule=[{first_layer:0 last_layer:0 k:8 until_step:%d}]"
    table = {
        "lbl": (dict(OFF, **LBL), None),
        "l0_top8": (dict(OFF, **LBL), layer0 % (steps + 1)),
        "progressive": (dict(OFF, **LBL), layer0 % max(1, round(switch_at * steps))),
        "bias": (dict(OFF, **{"moe.bias_update_rate": 1e-3, "moe.bias_bound": UNBOUNDED}), None),
        "bias_bounded": (dict(OFF, **{"moe.bias_update_rate": 1e-3, "moe.bias_bound": 0.1}), None),
        "top1_lbl": (dict(OFF, **{"moe.top1_lbl_coef": 0.01}), None),
        "none": (dict(OFF), None),
    }
    fields, schedule = table[name]
    sets = [f"{path}={value}" for path, value in fields.items()]
    sets.append(schedule or "moe.topk_schedule=[]")
    return sets


VARIANTS = ["lbl", "l0_top8", "progressive", "bias", "bias_bounded", "top1_lbl", "none"]
CORPORA = ["synthetic", "text"]


def default_binary():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = os.environ.get("MOE_BUILD_DIR", os.path.join(root, "build"))
    return os.path.join(build, "runtime", "cli", "sigma-moe-train")


def csv(text):
    return [v for v in text.split(",") if v]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=default_binary(), help="sigma-moe-train to run")
    parser.add_argument("--preset", default="load-balance-study", help="base preset")
    parser.add_argument("--steps", type=int, default=0,
                        help="optimizer steps per run (default: the preset's train.steps)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--corpora", default=",".join(CORPORA),
                        help="comma-separated subset of: " + ", ".join(CORPORA))
    parser.add_argument("--second_seed", default="lbl,progressive",
                        help="variants that also run with seed + 1 (default lbl,progressive)")
    parser.add_argument("--switch_at", type=float, default=0.6,
                        help="progressive: fraction of the steps at top-8 in layer 0 (default 0.6)")
    parser.add_argument("--window", type=int, default=50,
                        help="steps whose expert counts are summed for the table (default 50)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="extra override for every run (repeatable)")
    parser.add_argument("--out", default="load_balance_study", help="directory for the runs")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the earlier runs of this plan under --out (only those run "
                             "directories) instead of resuming them")
    args = parser.parse_args(argv)
    args.variants, args.corpora, args.second_seed = (
        csv(args.variants), csv(args.corpora), csv(args.second_seed))
    for given, known, flag in ((args.variants, VARIANTS, "--variants"),
                               (args.second_seed, VARIANTS, "--second_seed"),
                               (args.corpora, CORPORA, "--corpora")):
        unknown = [v for v in given if v not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    if args.steps < 0:
        parser.error(f"--steps must be >= 1 (or 0 for the preset's), got {args.steps}")
    if not 0 < args.switch_at < 1:
        parser.error(f"--switch_at must be in (0, 1), got {args.switch_at}")
    if args.window < 1:
        parser.error(f"--window must be >= 1, got {args.window}")
    if not os.access(args.binary, os.X_OK):
        parser.error(f"{args.binary} is not an executable; build first (scripts/build.sh) "
                     "or pass --binary")
    return args


def preset_steps(args):
    """train.steps of the preset after --set (what a run with no --steps trains)."""
    cmd = [args.binary, f"--preset={args.preset}", "--print_config"]
    for extra in args.set:
        cmd += ["--set", extra]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    in_train = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("train {"):
            in_train = True
        elif in_train and stripped.startswith("steps:"):
            return int(stripped.split(":")[1])
    raise RuntimeError(f"no train.steps in `{' '.join(cmd)}`")


def plan_runs(args):
    """(corpus, run name, variant, seed offset) of every run, in the order they train."""
    runs = []
    for corpus in args.corpora:
        for variant in args.variants:
            runs.append((corpus, variant, variant, 0))
        for variant in args.second_seed:
            runs.append((corpus, f"{variant}@seed2", variant, 1))
    return runs


def corpus_overrides(args, corpus):
    if corpus == "synthetic":
        return ["data.kind=synthetic"]
    corpus_dir = os.path.abspath(os.path.join(args.out, "text_corpus"))
    if not os.path.isfile(os.path.join(corpus_dir, "heldout.txt")):
        info = make_text_corpus.build(corpus_dir, 10, 0, make_text_corpus.python_stdlib_dir(),
                                      "/usr/share/common-licenses")
        with open(os.path.join(corpus_dir, "info.json"), "w") as f:
            json.dump(info, f)
        print(f"text corpus: {info['train']['bytes']:,} training bytes, "
              f"{info['heldout']['bytes']:,} held-out (sha256 {info['train']['sha256'][:12]}...)",
              file=sys.stderr, flush=True)
    return ["data.kind=text", f"data.path=\"{os.path.join(corpus_dir, 'train.txt')}\"",
            f"data.heldout_path=\"{os.path.join(corpus_dir, 'heldout.txt')}\""]


def format_eta(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One status line: which run, its step, its ETA and the study's (from the pace so far)."""

    def __init__(self, total_steps):
        self.total_steps = total_steps
        self.done_steps = 0
        self.seconds = 0.0
        self.tty = sys.stderr.isatty()
        self.last_print = 0.0

    def show(self, label, step, steps, run_seconds, first_step=0, final=False):
        """`first_step`: where this run (re)started, so a resumed run's pace counts its own
        steps only."""
        now = time.monotonic()
        if not final and not self.tty and now - self.last_print < 30:
            return
        self.last_print = now
        trained = step - first_step
        pace = (self.seconds + run_seconds) / max(1, self.done_steps + trained)
        left_study = (self.total_steps - self.done_steps - step) * pace if trained > 0 else None
        left_run = (steps - step) * run_seconds / trained if trained > 0 else None
        text = (f"{label}: step {step}/{steps}  run ETA {format_eta(left_run)}  "
                f"study ETA {format_eta(left_study)}")
        if self.tty:
            sys.stderr.write("\r" + text + "\033[K" + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def finish_run(self, steps, seconds):
        self.done_steps += steps
        self.seconds += seconds


def last_step(metrics_path):
    """The step of the last complete line of metrics.jsonl (0 if none)."""
    try:
        with open(metrics_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().split(b"\n")
    except OSError:
        return 0
    for line in reversed(lines[:-1] if len(lines) > 1 else []):
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError):
            continue
    return 0


def newest_checkpoint_step(run_dir):
    """The step of the newest checkpoint the trainer will resume from (0 if none)."""
    steps = [int(name[5:]) for name in os.listdir(run_dir)
             if name.startswith("step_") and name[5:].isdigit()]
    return max(steps, default=0)


def train_run(args, run, steps, progress, index, count):
    corpus, name, variant, seed_offset = run
    run_dir = os.path.abspath(os.path.join(args.out, corpus, name))
    done_path = os.path.join(run_dir, "done.json")
    label = f"[{index}/{count}] {corpus}/{name}"
    if os.path.isfile(done_path):
        with open(done_path) as f:
            result = json.load(f)
        progress.total_steps -= steps
        print(f"{label}: done earlier ({result['seconds']} s), kept", file=sys.stderr, flush=True)
        return result
    os.makedirs(run_dir, exist_ok=True)
    resumed_from = newest_checkpoint_step(run_dir)
    sets = [f"checkpoint.dir=\"{run_dir}\"", "checkpoint.resume=true", f"train.steps={steps}"]
    sets += corpus_overrides(args, corpus) + variant_overrides(variant, steps, args.switch_at)
    cmd = [args.binary, f"--preset={args.preset}", "--no_progress"]
    for extra in sets + args.set:
        cmd += ["--set", extra]
    if seed_offset:
        seed = int(subprocess.run(cmd + ["--print_config"], check=True, capture_output=True,
                                  text=True).stdout.split("seed:")[1].split()[0])
        cmd += ["--set", f"train.seed={seed + seed_offset}"]
    with open(os.path.join(run_dir, "command.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    if resumed_from:
        print(f"{label}: resuming from step {resumed_from}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(2)
            progress.show(label, last_step(os.path.join(run_dir, "metrics.jsonl")), steps,
                          time.monotonic() - start, resumed_from)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{corpus}/{name}: sigma-moe-train exited with {proc.returncode}; "
                           f"see {os.path.join(run_dir, 'train.log')}")
    progress.show(label, steps, steps, seconds, resumed_from, final=True)
    progress.finish_run(steps - resumed_from, seconds)
    progress.total_steps -= resumed_from
    rows = study_metrics.read_rows(os.path.join(run_dir, "metrics.jsonl"))
    summary = study_metrics.run_summary(rows, args.window)
    result = {"corpus": corpus, "run": name, "variant": variant, "seed_offset": seed_offset,
              "steps": summary["steps"], "eval_loss": summary["eval_loss"],
              "window": args.window, "layers": summary["layers"],
              "seconds": round(seconds, 1), "resumed_from": resumed_from}
    with open(done_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(done_path + ".tmp", done_path)
    return result


def main(argv):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    steps = args.steps or preset_steps(args)
    runs = plan_runs(args)
    if args.fresh:  # the planned runs' own directories only: --out may hold anything else
        for corpus, name, _, _ in runs:
            shutil.rmtree(os.path.join(args.out, corpus, name), ignore_errors=True)
    print(f"study: {len(runs)} runs of {steps} steps under {args.out}", file=sys.stderr,
          flush=True)
    progress = Progress(total_steps=steps * len(runs))
    results = []
    for i, run in enumerate(runs):
        result = train_run(args, run, steps, progress, i + 1, len(runs))
        results.append(result)
        print(json.dumps(result), flush=True)
    with open(os.path.join(args.out, "summary.jsonl"), "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    for corpus in args.corpora:
        runs = {r["run"]: study_metrics.read_rows(os.path.join(args.out, corpus, r["run"],
                                                               "metrics.jsonl"))
                for r in results if r["corpus"] == corpus}
        print(study_metrics.summary_table(runs, args.window, corpus))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        print(f"sweep.py: {error}", file=sys.stderr)
        sys.exit(1)
