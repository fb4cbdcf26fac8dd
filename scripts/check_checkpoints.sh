#!/usr/bin/env bash
# Proves that transformers and peft load what edco saves and compute the same logits (1e-4):
# a fully fine-tuned HF directory, a PEFT LoRA adapter over its base, the merged model, and the
# last checkpoints of two short `edco train` runs (full fine-tuning and LoRA) as the trainer
# wrote them.
# Needs a Python with torch, transformers and peft: PYTHON=path/to/venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cargo run --release --quiet --example export_checkpoints -- "$out"
for case in full lora merged trained-full trained-lora; do
  echo "== $case"
  "$py" scripts/parity.py check-checkpoint --dir "$out/$case"
done
