#!/usr/bin/env bash
# The default run: fetch SmolLM2-135M-Instruct (once, into the cache) and let edco answer a few
# questions greedily on the CPU, printing each answer with its mean per-token entropy (nats),
# the uncertainty signal EDCO's curriculum is built on.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh >&2
model="${EDCO_CACHE:-$HOME/.cache/edco}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cargo run --release --quiet -- generate --model "$model" --greedy --max-new-tokens 48 --jsonl \
  --prompt "What is the capital of France?" \
  --prompt "Which organ produces insulin?" \
  --prompt "In 3GPP, what does the acronym RAN stand for?" \
  --prompt "What is the standard of proof in a criminal trial?" \
  | python3 -c "$(cat <<'PY'
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("[mean entropy %.2f nats, %d tokens] %s" % (r["mean_entropy"], r["tokens"], r["completion"].strip()))
PY
)"
