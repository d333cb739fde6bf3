#!/usr/bin/env bash
# Prints the folder of the GPU model variants (fp16 MiniLM; SPLADE pooled in
# chunks, fp32 and fp16), making them on first use with
# scripts/make_gpu_models.py in a Python venv of pinned PyPI packages
# (onnx, onnxconverter-common, onnxruntime for the CPU checks, tokenizers),
# all cached under ~/.cache/medkg. The folder also links the originals, so
# `--models $(scripts/gpu-models.sh)` serves every model.
# Use: export MEDKG_GPU_MODELS=$(scripts/gpu-models.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MEDKG_CACHE:-$HOME/.cache/medkg}
MODELS=${MEDKG_MODELS:-$(cd .. && pwd)/shared/models}
OUT=${MEDKG_GPU_MODELS:-$CACHE/models-gpu}
VENV=$CACHE/pyenv-models
STAMP="$(sha256sum scripts/make_gpu_models.py | cut -c1-16)"
if [ ! -f "$OUT/variants.json" ] || [ "$(cat "$OUT/.made-by" 2>/dev/null)" != "$STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    onnx==1.23.2 onnxconverter-common==1.16.0 onnxruntime==1.31.1 numpy==2.4.6 tokenizers==0.23.3 >&2
  rm -rf "$OUT"
  "$VENV/bin/python" -W ignore scripts/make_gpu_models.py --models "$MODELS" --out "$OUT" >&2
  echo "$STAMP" > "$OUT/.made-by"
fi
echo "$OUT"
