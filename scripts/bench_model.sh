#!/usr/bin/env bash
# edco against PyTorch/transformers on the same weights, same shapes, same thread count, one after
# the other on the same machine, for two models:
# - SmolLM2-135M-Instruct (the GGUF dequantized to f32);
# - a randomly initialised 20M-parameter Qwen3 shape (hidden 512, 6 layers, 8 heads / 4 KV heads,
#   intermediate 1280, vocabulary 8192) that `edco init-model` writes and both sides load.
# Cases: full fine-tuning and LoRA steps (batch 4 x 256, AdamW), greedy generation with entropy
# (16 prompts x 128 new tokens) and the prefill of entropy scoring (16 prompts of 300..450 tokens,
# last-position logits). Each side reports its process's peak resident memory. First, what bounds
# those loops on this CPU (edco's `--case machine`, PyTorch's `--case matmul`): the rate of fused
# multiply-adds, of reading memory, of both sides' matmul on SmolLM2's layer shapes and of edco's
# packed decoding product.
# Needs a Python with torch, transformers, peft and gguf: PYTHON=path/to/venv/bin/python.
# Usage: scripts/bench_model.sh [THREADS]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
py="${PYTHON:-python3}"
gguf="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
scripts/fetch_assets.sh >&2
cargo build --release --quiet
cargo bench --bench model --no-run --quiet 2>/dev/null || cargo bench --bench model --no-run
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
target/release/edco init-model --arch qwen3 --out "$out/qwen3-20m" --hidden-size 512 \
  --intermediate-size 1280 --layers 6 --heads 8 --kv-heads 4 --vocab-size 8192 >&2
RAYON_NUM_THREADS=$threads cargo bench --quiet --bench model -- --model "$gguf" --case machine \
  > "$out/edco_machine.json"
"$py" scripts/bench_torch.py --model "$gguf" --threads "$threads" --case matmul \
  > "$out/torch_machine.json"
for model in smollm2 qwen3-20m; do
  case $model in
    smollm2) path=$gguf ;;
    *) path=$out/$model ;;
  esac
  for case in train train-lora generate prefill; do
    RAYON_NUM_THREADS=$threads cargo bench --quiet --bench model -- --model "$path" \
      --case "$case" --warmup 1 --steps 3 > "$out/edco_${model}_$case.json"
    "$py" scripts/bench_torch.py --model "$path" --threads "$threads" --case "$case" \
      --warmup 1 --steps 3 --iters 3 > "$out/torch_${model}_$case.json"
  done
done
"$py" - "$out" "$threads" <<'PY'
import json, sys
out, threads = sys.argv[1], sys.argv[2]
cpu = "unknown CPU"
try:
    info = dict(l.split(":", 1) for l in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines() if ":" in l)
    info = {k.strip(): v.strip() for k, v in info.items()}
    cpu = f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
except OSError:
    pass
e = json.load(open(f"{out}/edco_machine.json"))
t = json.load(open(f"{out}/torch_machine.json"))
print(f"| {cpu}, {threads} threads | edco | PyTorch |")
print("|---|---:|---:|")
fma = e["fma_gflops"]
print(f"| fused multiply-adds from registers, GFLOP/s | {fma:.0f} | |" if fma else "| fused multiply-adds | not measured | |")
print(f"| reading memory (a sum over 512 MiB), GB/s | {e['read_gb_s']:.1f} | |")
for shape, rate in t["matmul_gflops"].items():
    print(f"| matmul {shape.replace('x', ' x ')}, GFLOP/s | {e['matmul_gflops'][shape]:.0f} | {rate:.0f} |")
d = e["decode_product"]
if d:
    print(f"| packed decoding product {d['shape'].replace('x', ' x ')}, weight GB/s | {d['weight_gb_s']:.1f} | |")
print()
rows = [("train", "tokens_per_s", "full fine-tuning step, 4 x 256, tokens/s"),
        ("train-lora", "tokens_per_s", "LoRA r 16 on every projection, 4 x 256, tokens/s"),
        ("generate", "new_tokens_per_s", "greedy generation with entropy, 16 x 128 new, tokens/s"),
        ("prefill", "prompt_tokens_per_s", "prefill, 16 prompts of 300..450 tokens, tokens/s")]
for model, name in [("smollm2", "SmolLM2-135M"), ("qwen3-20m", "Qwen3-shaped 20M")]:
    print(f"| {name}, f32, CPU, {threads} threads | edco | PyTorch | edco / PyTorch "
          "| peak MiB, edco | peak MiB, PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, key, label in rows:
        e = json.load(open(f"{out}/edco_{model}_{case}.json"))
        t = json.load(open(f"{out}/torch_{model}_{case}.json"))
        print(f"| {label} | {e[key]:.1f} | {t[key]:.1f} | {e[key] / t[key]:.2f} "
              f"| {e['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |")
    print()
PY
