#!/usr/bin/env bash
# Does the curriculum help on real data? One `edco compare` study per task and method: every
# curriculum strategy (edco, random, perplexity, length, entropy; ARMS overrides) with five
# seeds (SEEDS overrides), SmolLM2-135M-Instruct with LoRA on the CPU, at one budget: 4 rounds,
# each of 256 samples in 32 SFT steps of 8, or of 32 prompts in 8 GRPO steps of 4 prompts x 8
# completions, selected from a pool of 800 (PubMedQA: 500, ORAN-Bench easy: 789); held-out
# accuracy on 300 items before and after every round (answers of up to 16 tokens, as long as
# GRPO's completions). edco re-scores the whole pool every round, the method as EDCO states it.
# The arms match in rounds, samples and steps, not in tokens (`length` trains on the shortest);
# the report gives the tokens. The study goes under OUT/TASK-METHOD; run the same command again
# after a stop and it finishes what is missing. The pools and held-out sets are
# scripts/study_split.py's. With OUT inside the repository (the default), every path the study
# records is relative to it and the model is linked into OUT: the study's folder, its
# checkpoints removed, can be kept and finished on another machine.
#
# Usage: scripts/study_curriculum.sh DATA TASK sft|grpo [OUT]
#   (TASK: oran_easy, teleqna, legalbench or pubmedqa; default OUT: target/study)
#   ARMS=edco,random SEEDS=3 scripts/study_curriculum.sh ...   (fewer arms or seeds)
#   REPORT_ONLY=1 scripts/study_curriculum.sh ...   (run nothing: the report of the runs so far)
set -euo pipefail
usage="usage: scripts/study_curriculum.sh DATA TASK sft|grpo [OUT]"
[ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
# Absolute paths, taken from where the script is run, so that a rerun writes the same config.
data=$(cd -- "$1" && pwd)
task=$2
method=$3
out=${4:+$(realpath -m -- "$4")}
cd "$(dirname "$0")/.."
out=$(realpath -m --relative-base=. -- "${out:-target/study}")
case "$task" in
  oran_easy|teleqna|legalbench|pubmedqa) ;;
  *) echo "unknown task $task; $usage" >&2; exit 2 ;;
esac
case "$method" in sft|grpo) ;; *) echo "$usage" >&2; exit 2 ;; esac
arms=${ARMS:-edco,random,perplexity,length,entropy}
seeds=${SEEDS:-5}

scripts/fetch_assets.sh smollm2 >&2
cached="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model="$out/model/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release --quiet
mkdir -p "$out/data" "$out/model"
if ! cmp -s "$cached" "$model"; then
  ln -f "$cached" "$model" 2>/dev/null || cp "$cached" "$model"
fi
python3 scripts/study_split.py "$data" "$out/data" "$task"

case "$method" in
  sft) select=256 train='[sft]
learning_rate = 1e-4
min_learning_rate = 1e-5
warmup_steps = 4
batch_size = 8' ;;
  grpo) select=32 train='[grpo]
num_generations = 8
prompts_per_step = 4
steps_per_round = 8
max_completion_length = 16
temperature = 1.0
learning_rate = 1e-5
min_learning_rate = 1e-5
schedule = "constant"
beta = 0.0' ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

# Other arms or seeds are another study, in another folder.
name="$task-$method${ARMS:+-${arms//[,:=]/_}}${SEEDS:+-seeds${seeds//,/_}}"
cfg="$out/$name.toml"
cat > "$cfg.tmp" <<EOF
# Curriculum study of $task with $method (scripts/study_curriculum.sh).
method = "$method"
[model]
source = "$model"
finetune = "lora"
lora = { r = 16, alpha = 32.0, dropout = 0.0 }
[data]
train = "$out/data/${task}_pool.jsonl"
eval = "$out/data/${task}_eval.jsonl"
max_length = 1024
[entropy]
prefix_tokens = 16
batch_size = 32
[curriculum]
strategy = "edco"
rounds = 4
select_n = $select
rescore_fraction = 1.0
$train
[eval]
max_new_tokens = 16
loss = false
[run]
keep_last = 1
EOF
if [ -f "$cfg" ] && ! cmp -s "$cfg" "$cfg.tmp"; then
  echo "$cfg: differs from this study's config; use another OUT, or move $cfg and $out/$name away" >&2
  rm -f "$cfg.tmp"
  exit 1
fi
mv "$cfg.tmp" "$cfg"
target/release/edco compare --config "$cfg" --arm "$arms" --seeds "$seeds" --out "$out/$name" \
  ${REPORT_ONLY:+--report-only}
