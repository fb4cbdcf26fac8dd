#!/usr/bin/env bash
# Where can SmolLM2-135M-Instruct learn at all? For each candidate task of the public QA sets,
# its held-out accuracy before training and after each of four rounds of LoRA SFT, each round
# on 400 items drawn at random from its pool (200 optimizer steps of 8 items in all), so that
# the curriculum study runs on tasks where training moves the model. Each task is an
# `edco compare` study of one arm (random) and one seed under OUT/TASK: run the script again
# after a stop and it goes on where it stopped. Ends with OUT/learnability.md and .json.
#
# DATA is the folder of the normalised QA sets (telecom/, medicine/, law/); the pools and
# held-out sets are cut from it into OUT/data by scripts/study_split.py (never into the
# repository).
# Usage: scripts/study_learnability.sh DATA [OUT] [TASK ...]
#   (default OUT: target/study/learnability; tasks: oran_easy teleqna legalbench pubmedqa, the
#   quickest first: PubMedQA's abstracts make its prompts four times as long)
set -euo pipefail
usage="usage: scripts/study_learnability.sh DATA [OUT] [TASK ...]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
# Paths taken from where the script is run; OUT inside the repository (the default) is kept
# relative to it, and the model is linked into OUT, so that the configs name no machine path.
data=$(cd -- "$1" && pwd)
out=${2:+$(realpath -m -- "$2")}
cd "$(dirname "$0")/.."
out=$(realpath -m --relative-base=. -- "${out:-target/study/learnability}")
shift $(($# < 2 ? $# : 2))
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(oran_easy teleqna legalbench pubmedqa)
for t in "${tasks[@]}"; do
  case "$t" in
    oran_easy|teleqna|legalbench|pubmedqa) ;;
    *) echo "unknown task $t; $usage" >&2; exit 2 ;;
  esac
done

scripts/fetch_assets.sh smollm2 >&2
cached="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model="$out/model/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release --quiet
mkdir -p "$out/data" "$out/model"
if ! cmp -s "$cached" "$model"; then
  ln -f "$cached" "$model" 2>/dev/null || cp "$cached" "$model"
fi

# The pools and held-out sets (written once; a second run checks they are the same bytes).
python3 scripts/study_split.py "$data" "$out/data" "${tasks[@]}"

for t in "${tasks[@]}"; do
  cfg="$out/$t.toml"
  cat > "$cfg.tmp" <<EOF
# Learnability scan of $t (scripts/study_learnability.sh).
method = "sft"
[model]
source = "$model"
finetune = "lora"
lora = { r = 16, alpha = 32.0, dropout = 0.0 }
[data]
train = "$out/data/${t}_pool.jsonl"
eval = "$out/data/${t}_eval.jsonl"
max_length = 1024
[curriculum]
strategy = "random"
rounds = 4
select_n = 400
[sft]
learning_rate = 1e-4
min_learning_rate = 1e-5
warmup_steps = 4
batch_size = 8
[eval]
max_new_tokens = 16
loss = false
[run]
keep_last = 1
EOF
  if [ -f "$cfg" ] && ! cmp -s "$cfg" "$cfg.tmp"; then
    echo "$cfg: differs from the scan's config; use another OUT, or move $cfg and $out/$t away" >&2
    rm -f "$cfg.tmp"
    exit 1
  fi
  mv "$cfg.tmp" "$cfg"
  echo "== $t" >&2
  target/release/edco compare --config "$cfg" --arm random --seeds 1 --out "$out/$t" >&2
done

# The table of every task scanned into OUT so far.
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for t in ["oran_easy", "teleqna", "legalbench", "pubmedqa"]:
    if not os.path.exists(f"{out}/{t}/report.json"):
        continue
    arm = json.load(open(f"{out}/{t}/report.json"))["arms"][0]
    run = arm["runs"][0]
    pool = sum(1 for _ in open(f"{out}/data/{t}_pool.jsonl"))
    held = sum(1 for _ in open(f"{out}/data/{t}_eval.jsonl"))
    rows.append({"task": t, "pool": pool, "eval": held, "steps": run["steps"],
                 "tokens": run["tokens"], "accuracy": run["accuracy"],
                 "option_accuracy": run["option_accuracy"],
                 "train_seconds": sum(run["train_seconds"])})
def write(path, text):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
write(f"{out}/learnability.json", json.dumps(rows, indent=1) + "\n")
pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
lines = ["| task | pool | held out | greedy accuracy, before -> after each round (%) "
         "| option likelihood, before -> after (%) | steps | training s |",
         "|---|---:|---:|---|---|---:|---:|"]
for r in rows:
    greedy = " -> ".join(pct(v) for v in r["accuracy"])
    option = f'{pct(r["option_accuracy"][0])} -> {pct(r["option_accuracy"][-1])}'
    lines.append(f'| {r["task"]} | {r["pool"]} | {r["eval"]} | {greedy} | {option} '
                 f'| {r["steps"]} | {r["train_seconds"]:.0f} |')
write(f"{out}/learnability.md", "\n".join(lines) + "\n")
print("\n".join(lines))
PY
