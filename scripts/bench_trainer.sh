#!/usr/bin/env bash
# `edco train` against a plain PyTorch loop and TRL's SFTTrainer / GRPOTrainer on the same CPU,
# SmolLM2-135M-Instruct weights, multiple-choice items, batch, group size and lengths (see
# scripts/bench_trainer.py for the cases). Needs a Python with torch, transformers, peft, trl and
# gguf: PYTHON=path/to/venv/bin/python.
# Usage: scripts/bench_trainer.sh DATA.jsonl [THREADS] [more bench_trainer.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: scripts/bench_trainer.sh DATA.jsonl [THREADS]}"
threads="${2:-2}"
shift $(( $# < 2 ? $# : 2 ))
py="${PYTHON:-python3}"
scripts/fetch_assets.sh >&2
cargo build --release --quiet
"$py" scripts/bench_trainer.py --edco target/release/edco --data "$data" --threads "$threads" "$@"
