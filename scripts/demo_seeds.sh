#!/usr/bin/env bash
# The demo (configs/demo.toml) over several seeds, to show whether its accuracy gain holds:
# one run per seed under target/demo/seeds/, then a Markdown table of eval accuracy before and
# after training per seed, with the mean and standard deviation of the gains. The seed changes
# the LoRA initialisation, the sampled entropy scores, the selection's ties and the shuffling.
# Uses the same weights as scripts/demo.sh (EDCO_DEMO_WEIGHTS=hub|wheel works here too).
# Arguments after `--` go to every run, e.g. the random curriculum at the same budget:
#   scripts/demo_seeds.sh 1 2 3 -- --set curriculum.strategy=random
# Usage: scripts/demo_seeds.sh [SEED ...] [-- EDCO TRAIN ARGS]   (default seeds: 1 2 3 4 5)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3 4 5)
tag=$(printf '%s' "$*" | tr -c 'A-Za-z0-9=.\n' '_')
out="target/demo/seeds${tag:+/$tag}"
mkdir -p "$out"
for s in "${seeds[@]}"; do
  rm -rf "$out/seed$s"
  echo "== seed $s $*" >&2
  scripts/demo.sh --set run.seed="$s" --set run.output_dir="$out/seed$s" "$@" >&2
done
echo "runs in $out" >&2
python3 - "$out" "${seeds[@]}" <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for s in seeds:
    lines = [json.loads(l) for l in open(f"{out}/seed{s}/metrics.jsonl")]
    before = next(l for l in lines if l["kind"] == "eval")["eval"]
    rounds = [l for l in lines if l["kind"] == "round"]
    after = rounds[-1]["eval"]
    rows.append((s, before, [r["eval"] for r in rounds], after))
pct = lambda x: f"{100 * x:.1f}"
print("| seed | greedy accuracy, before -> each round | option likelihood, before -> after |")
print("|---|---|---|")
for s, b, per_round, a in rows:
    greedy = " -> ".join(pct(x) for x in [b["accuracy"]] + [r["accuracy"] for r in per_round])
    print(f"| {s} | {greedy} | {pct(b['option_accuracy'])} -> {pct(a['option_accuracy'])} |")
for key, name in (("accuracy", "greedy"), ("option_accuracy", "option likelihood")):
    gains = [100 * (a[key] - b[key]) for _, b, _, a in rows]
    sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"\n{name}: gain {statistics.mean(gains):+.1f} points on average (sd {sd:.1f}; "
          f"min {min(gains):+.1f}, max {max(gains):+.1f}) over {len(gains)} seeds")
PY
