#!/usr/bin/env bash
# Prints the models folder medkg's pipelines use, making it on first use:
# the shared models (linked) plus their variants, made by
# scripts/make_models.py in a Python venv of pinned PyPI packages (onnx,
# onnxconverter-common, onnxruntime, numpy, tokenizers), all cached under
# ~/.cache/medkg/models:
#   splade-tiny.pooled       the default SPLADE (exact; never holds [batch, seq, 30522] logits)
#   *.int8                   dynamic int8 for the CPU (config/pipelines/hybrid-int8.yaml)
#   *.fp16                   for CUDA (config/pipelines/hybrid-gpu.yaml)
# Each variant is checked against its original before it is written.
# medkg looks in ~/.cache/medkg/models by itself; MEDKG_MODELS overrides it.
# Use: export MEDKG_MODELS=$(scripts/models.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MEDKG_CACHE:-$HOME/.cache/medkg}
SOURCE=${MEDKG_SHARED_MODELS:-${MEDKG_SHARED:-$(cd .. && pwd)/shared}/models}
OUT=${MEDKG_MODELS_OUT:-$CACHE/models}
VENV=$CACHE/pyenv-models
STAMP="$(sha256sum scripts/make_models.py | cut -c1-16)"
if [ ! -f "$OUT/variants.json" ] || [ "$(cat "$OUT/.made-by" 2>/dev/null)" != "$STAMP" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    onnx==1.23.2 onnxconverter-common==1.16.0 onnxruntime==1.31.1 numpy==2.4.6 tokenizers==0.23.3 >&2
  rm -rf "$OUT"
  "$VENV/bin/python" -W ignore scripts/make_models.py --models "$SOURCE" --out "$OUT" >&2
  echo "$STAMP" > "$OUT/.made-by"
fi
echo "$OUT"
