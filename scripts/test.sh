#!/usr/bin/env bash
# The test command: fetch the small real assets the tests use (SmolLM2 GGUF, Qwen3 tokenizer)
# into the cache if missing, then run every test with the release profile that benches share.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh
# Every matrix product the model makes is held to the layouts CUDA's product accepts.
export EDCO_CUDA_LAYOUT_CHECK=1
cargo test --release "$@"
