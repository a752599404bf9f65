#!/usr/bin/env bash
# bench/adapt_sim end to end, small: the synthetic traces on W = 8 and 2048 print a JSON line per
# capacity bucket and a summary per W; sigma-moe-train's metrics.jsonl (3 steps of a 2-layer
# model) carries tokens_per_expert, and adapt_sim replays it as a trace.
# usage: adapt_sim_test.sh path/to/adapt_sim path/to/sigma-moe-train
set -euo pipefail
sim=$1
bin=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$sim" --trace=zipf,drift --worlds=8,2048 --steps=60 --layers=2 > "$work/synthetic.jsonl"
"$bin" --device=cpu --no_progress --set model.num_layers=2 --set train.steps=3 \
  --set train.batch_size=2 --set train.seq_len=64 --set train.eval_interval=0 \
  --set checkpoint.interval=0 --set checkpoint.dir="\"$work/run\"" > "$work/train.log" 2>&1
"$sim" --trace=metrics:"$work/run/metrics.jsonl" --worlds=8,64 --markdown > "$work/metrics.out"
python3 - "$work/synthetic.jsonl" "$work/metrics.out" "$work/run/metrics.jsonl" <<'PY'
import json, sys
synthetic = [json.loads(l) for l in open(sys.argv[1])]
replayed = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
metrics = [json.loads(l) for l in open(sys.argv[3])]
for layer in metrics[0]["moe"]:
    assert len(layer["tokens_per_expert"]) == 96, layer
    assert sum(layer["tokens_per_expert"]) == 2 * 64 * layer["top_k"], layer
for lines, trace, worlds in ((synthetic, "zipf", {8, 2048}), (synthetic, "drift", {8, 2048}),
                             (replayed, "metrics", {8, 64})):
    mine = [l for l in lines if l["trace"] == trace]
    summaries = {l["world"]: l for l in mine if l.get("summary")}
    buckets = [l for l in mine if not l.get("summary")]
    assert set(summaries) == worlds, (trace, summaries.keys())
    assert buckets, trace
    for b in buckets:
        assert b["explored"] <= b["candidates"] and b["regret_pct"] >= 0, b
    assert summaries.get(2048, {"candidates": 41})["candidates"] == 41
    for s in summaries.values():
        assert s["controller_ms"] > 0 and s["oracle_ms"] <= s["controller_ms"] + 1e-9, s
print(f"{len(synthetic)} synthetic and {len(replayed)} replayed lines check out")
PY
grep -q '^| metrics | 64 |' "$work/metrics.out"
