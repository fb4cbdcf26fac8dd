#!/usr/bin/env bash
# Builds edco with `--features cuda` on a machine without a GPU or a CUDA install.
#
# The CUDA 13.0 compiler, headers and runtime come from NVIDIA's PyPI wheels (pinned, checksums
# verified) into a cache outside the repository (${EDCO_CACHE:-$HOME/.cache/edco}/cuda-13.0).
# The binary links only libcudart; the driver (libcuda.so.1), cuBLAS, cuRAND and NVRTC are loaded
# when a CUDA device is opened, so the build needs none of them.
#
# Target: compute capability ${CUDA_COMPUTE_CAP:-90} (Hopper). The kernels are compiled to PTX for
# that capability; set CUDA_COMPUTE_CAP=80 for a binary that also runs on Ampere (PTX is
# JIT-compiled forward to newer cards).
#
# Output: target/cuda/release/edco. To run it, the CUDA 13 runtime libraries must be on the
# loader's path, e.g. LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib on a machine with the
# `nvidia-*` CUDA 13 wheels, or /usr/local/cuda/lib64 with a CUDA 13 toolkit.
#
# With --flash-attn, the binary also carries FlashAttention-2's forward kernels (bf16, head sizes
# up to 128; `--features flash-attn`), compiled against CUTLASS 4.2's headers from NVIDIA's
# `nvidia-cutlass` wheel, as machine code for CUDA_COMPUTE_CAP only (no PTX): such a binary
# runs FlashAttention only on cards of that compute capability.
#
# Usage: scripts/cuda_build.sh [--flash-attn] [extra cargo build arguments]
#        scripts/cuda_build.sh --lib-dir   prints the folder of the fetched CUDA runtime library
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${EDCO_CACHE:-$HOME/.cache/edco}/cuda-13.0"
root="$cache/root/nvidia/cu13"
if [ "${1:-}" = --lib-dir ]; then
  echo "$root/lib"
  exit 0
fi
reqs="nvidia-cuda-nvcc==13.0.88 \
--hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 \
--hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 \
--hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 \
--hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 \
--hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cutlass==4.2.0.0 \
--hash=sha256:f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6"

# The toolchain is complete once the stamp holding the requirement list is there.
if ! cmp -s "$cache/installed" <(echo "$reqs"); then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "$reqs" > "$tmp/requirements.txt"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp/wheels"
  mkdir -p "$tmp/root"
  python3 - "$tmp/wheels" "$tmp/root" <<'PY'
import glob, sys, zipfile
for wheel in sorted(glob.glob(sys.argv[1] + "/*.whl")):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(sys.argv[2])
PY
  tk="$tmp/root/nvidia/cu13"
  chmod +x "$tk"/bin/* "$tk"/nvvm/bin/*
  # The wheels carry only the versioned runtime library; the linker looks for libcudart.so.
  ln -sf libcudart.so.13 "$tk/lib/libcudart.so"
  rm -rf "$cache/root"
  mkdir -p "$cache"
  mv "$tmp/root" "$cache/root"
  echo "$reqs" > "$cache/installed"
fi

export PATH="$root/bin:$PATH" CUDA_ROOT="$root" CUDA_PATH="$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUTLASS_INCLUDE_DIR="$cache/root/cutlass_library/source/include"
features=cuda
cargo_args=()
for arg in "$@"; do
  if [ "$arg" = --flash-attn ]; then
    features=flash-attn
  else
    cargo_args+=("$arg")
  fi
done
nvcc --version | tail -n 2
cargo build --release --features "$features" --target-dir target/cuda ${cargo_args[@]+"${cargo_args[@]}"}
echo "built target/cuda/release/edco (features: $features; compute capability $CUDA_COMPUTE_CAP)"
