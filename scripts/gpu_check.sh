#!/usr/bin/env bash
# The GPU check, in a few minutes, on a machine with an NVIDIA GPU, a CUDA 13 driver and the
# CUDA 13 libraries (found through LD_LIBRARY_PATH, or from python3's `nvidia` wheels):
# (a) logits of a tiny Qwen3 and a tiny Llama model on the GPU against the CPU's, f32 to 1e-4 and
#     bf16 to 1e-2 of the largest logit (`edco check-device`); with a binary from
#     `scripts/cuda_build.sh --flash-attn`, also FlashAttention's causal attention at head sizes
#     64 and 128 against the composed attention on the CPU, and the models attending through it
#     over ragged left-padded prompts and decoding steps against the CPU's, to 1e-2;
# (b) entropy scoring, two SFT rounds and a short GRPO round, bf16, on SmolLM2-135M (the GGUF
#     from the cache when there, else a random model of its shape) and on a random model of
#     Qwen3-4B's shape; with FlashAttention, the scoring again through it;
# (c) the card's measured bf16 product rate, and forward and training tokens/s with model FLOPs
#     utilisation against it, on the Qwen3-4B shape (the forward also through FlashAttention).
# Usage: scripts/gpu_check.sh [EDCO]   EDCO: the binary from scripts/cuda_build.sh (default
#   target/cuda/release/edco), or a gzip of it.
# EDCO_DEVICE=cpu runs the same steps on the CPU at small shapes, to check the script itself.
# A failing check, scoring or training run is reported and the rest still run; the script then
# ends with the list of failures and exit status 1. A model it cannot write stops it at once.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/cuda/release/edco}"
device="${EDCO_DEVICE:-cuda}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ $bin == *.gz ]]; then
  gunzip -c "$bin" > "$work/edco"
  chmod +x "$work/edco"
  bin="$work/edco"
fi
if [ "$device" != cpu ] && python3 -c 'import nvidia' 2>/dev/null; then
  lib=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))')
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
step() { echo "== $* ($(date -u +%H:%M:%S))"; }
# A check that fails is reported and the script goes on, so that one run shows every result;
# it exits non-zero at the end.
failed=()
timed() {
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  echo "   ${*:1:2}: $((SECONDS - t0)) s" >&2
  if [ "$rc" != 0 ]; then
    echo "   FAILED (exit $rc): $*" >&2
    failed+=("$*")
  fi
}
if [ "$device" = cpu ]; then
  small=1
  # The CPU stands in for CUDA's stricter product layouts too.
  export EDCO_CUDA_LAYOUT_CHECK=1
  speed_args=(--speed f32 --speed-batch 2 --speed-seq-len 64 --matmul-size 512 --reps 2)
else
  small=0
  speed_args=(--speed bf16 --speed-batch 4 --speed-seq-len 1024 --matmul-size 8192 --reps 5)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
fi
edco() { "$bin" "$@"; }

step "(a) logits against the CPU"
# Head size 64 (256 / 4): one FlashAttention serves, in a build that has it.
flash=0
for arch in qwen3 llama; do
  edco init-model --arch "$arch" --out "$work/tiny-$arch" --hidden-size 256 --intermediate-size 256 \
    --layers 2 --heads 4 --kv-heads 2 --seed 1
  timed edco check-device --model "$work/tiny-$arch" --device "$device" --seq-len 64 \
    > "$work/check.jsonl"
  cat "$work/check.jsonl"
  if grep -q '"flash-attn-model"' "$work/check.jsonl"; then flash=1; fi
done

smol="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ "$small" = 1 ]; then
  edco init-model --arch llama --out "$work/smol" --hidden-size 64 --intermediate-size 128 \
    --layers 2 --heads 4 --kv-heads 2
  smol="$work/smol"
  edco init-model --arch qwen3 --out "$work/qwen3-4b" --hidden-size 128 --intermediate-size 256 \
    --layers 2 --heads 4 --kv-heads 2 --head-dim 64
elif [ ! -f "$smol" ]; then
  echo "no SmolLM2 GGUF at $smol: a random model of its shape instead"
  edco init-model --arch llama --out "$work/smol" --hidden-size 576 --intermediate-size 1536 \
    --layers 30 --heads 9 --kv-heads 3 --vocab-size 49152
  smol="$work/smol"
fi
if [ "$small" = 0 ]; then
  step "writing a random Qwen3-4B-shaped model"
  timed edco init-model --arch qwen3 --out "$work/qwen3-4b" --hidden-size 2560 \
    --intermediate-size 9728 --layers 36 --heads 32 --kv-heads 8 --head-dim 128 \
    --vocab-size 151936
fi

for name in smol qwen3-4b; do
  if [ "$name" = smol ]; then model="$smol"; else model="$work/qwen3-4b"; fi
  step "(b) $name: entropy scoring, bf16"
  timed edco estimate-entropy --model "$model" --device "$device" --dtype bf16 \
    --data data/medicine_train.jsonl --prefix-tokens 32 --out "$work/$name-scores.jsonl" \
    > /dev/null
  grep -o '"tokens_per_second": [0-9.]*' "$work/$name-scores.summary.json" || true
  if [ "$flash" = 1 ]; then
    step "(b) $name: entropy scoring, bf16, FlashAttention"
    timed edco estimate-entropy --model "$model" --device "$device" --dtype bf16 --attention flash \
      --data data/medicine_train.jsonl --prefix-tokens 32 --out "$work/$name-flash-scores.jsonl" \
      > /dev/null
    grep -o '"tokens_per_second": [0-9.]*' "$work/$name-flash-scores.summary.json" || true
  fi
  step "(b) $name: SFT, two rounds, LoRA, bf16"
  timed edco train --config configs/smoke.toml --set model.source="$model" \
    --set model.device="$device" --set model.dtype=bf16 --set run.output_dir="$work/$name-sft"
  step "(b) $name: GRPO, one round of 2 steps, LoRA, bf16"
  timed edco train --config configs/grpo_law.toml --set model.source="$model" \
    --set model.device="$device" --set curriculum.rounds=1 --set grpo.steps_per_round=2 \
    --set grpo.prompts_per_step=2 --set grpo.num_generations=4 \
    --set grpo.max_completion_length=32 --set grpo.micro_batch=8 --set entropy.batch_size=16 \
    --set entropy.prefix_tokens=16 --set eval.max_new_tokens=8 --set run.output_dir="$work/$name-grpo"
done

step "(c) speed on the Qwen3-4B shape"
timed edco check-device --model "$work/qwen3-4b" --device "$device" --seq-len 32 "${speed_args[@]}"
if [ "${#failed[@]}" != 0 ]; then
  step "done, ${#failed[@]} failed:"
  printf '   %s\n' "${failed[@]}"
  exit 1
fi
step "done"
