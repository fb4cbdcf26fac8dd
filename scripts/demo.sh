#!/usr/bin/env bash
# The default run: fetch SmolLM2-135M-Instruct (once, into the cache), then fine-tune it with LoRA
# on the CPU over the shipped demo data with the edco curriculum (configs/demo.toml): three rounds
# of scoring the pool by entropy, keeping the most uncertain items and training on them. It ends
# with eval accuracy before and after, time spent scoring and training, the run directory and
# the pictures to open. Each run gets its own directory under target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh >&2
model="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo build --release --quiet
target/release/edco train --config configs/demo.toml --set "model.source=$model" \
  --set "run.output_dir=target/demo/run-$(date +%Y%m%d-%H%M%S)" "$@"
