#!/usr/bin/env bash
# edco against PyTorch/transformers on the same SmolLM2-135M-Instruct weights (GGUF dequantized to
# f32), same shapes, same thread count, one after the other on the same machine:
# full fine-tuning and LoRA steps (batch 4 x 256, AdamW), greedy generation (16 prompts x 64 new
# tokens) and the prefill of entropy scoring (16 prompts of 300..450 tokens, last-position logits).
# Needs a Python with torch, transformers, peft and gguf: PYTHON=path/to/venv/bin/python.
# Usage: scripts/bench_model.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
py="${PYTHON:-python3}"
gguf="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
scripts/fetch_assets.sh >&2
cargo bench --bench model --no-run --quiet 2>/dev/null || cargo bench --bench model --no-run
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for case in train train-lora generate prefill; do
  RAYON_NUM_THREADS=$threads cargo bench --quiet --bench model -- --gguf "$gguf" --case "$case" \
    --warmup 1 --steps 3 > "$out/edco_$case.json"
  "$py" scripts/bench_torch.py --gguf "$gguf" --threads "$threads" --case "$case" \
    --warmup 1 --steps 3 --iters 3 > "$out/torch_$case.json"
done
"$py" - "$out" "$threads" <<'PY'
import json, sys
out, threads = sys.argv[1], sys.argv[2]
rows = [("train", "tokens_per_s", "forward+backward+AdamW, 4 x 256, tokens/s"),
        ("train-lora", "tokens_per_s", "the same with LoRA r 16 on every projection, tokens/s"),
        ("generate", "new_tokens_per_s", "greedy generation, 16 prompts x 64 new, tokens/s"),
        ("prefill", "prompt_tokens_per_s", "prefill, 16 prompts of 300..450 tokens, tokens/s")]
print(f"| SmolLM2-135M, f32, CPU, {threads} threads | edco | PyTorch | edco / PyTorch |")
print("|---|---:|---:|---:|")
for case, key, label in rows:
    e = json.load(open(f"{out}/edco_{case}.json"))[key]
    t = json.load(open(f"{out}/torch_{case}.json"))[key]
    print(f"| {label} | {e:.1f} | {t:.1f} | {e / t:.2f} |")
PY
