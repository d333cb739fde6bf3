#!/usr/bin/env bash
# Runs on the lent GPU host (any card: H100, H200, ...), in the folder
# scripts/gpu-stage.sh packed (gpu/ next to libonnxruntime*.so*). It records
# the card (nvidia-smi), then for the fp32 models, fp32 with the
# chunk-pooled SPLADE, and the fp16 variants, at each of $WORKERS (default
# "4 8"): `medkg bench`, which times each model alone in the same process
# over the same chunks and batches (the ceiling), then the hybrid pipeline
# end to end over the PubMed records with an abstract. JSON results go to
# $OUT (or ./out). DEVICE=cpu LIMIT=200 WORKERS=2 tries the script itself
# on any machine.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$PWD/out}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-4 8}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  NV=$(ls -d /opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib 2>/dev/null | tr '\n' ':' || true)
  export LD_LIBRARY_PATH=$ROOT:/usr/local/cuda/lib64:$NV${LD_LIBRARY_PATH:-}
  export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/libonnxruntime.so.1.31.1}
  # The card, whichever was lent: every figure is recorded beside it.
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$OUT/card.txt"
else
  echo "cpu: $(nproc) cores ($(uname -m))" | tee "$OUT/card.txt"
fi
SOURCE=$HERE/abstracts.jsonl
if [ -n "${LIMIT:-}" ]; then
  head -n "$LIMIT" "$SOURCE" > "$OUT/source.jsonl"
  SOURCE=$OUT/source.jsonl
fi
for variant in fp32 fp32-pooled fp16; do
  for workers in $WORKERS; do
    rm -rf "/tmp/medkg-gpu-$variant-w$workers"
    echo "== $variant ($DEVICE, -w $workers)" >&2
    "$HERE/medkg" bench --json -w "$workers" --device "$DEVICE" \
      --pipeline "$HERE/pipelines/$variant.yaml" --source "file:$SOURCE" \
      --models "$HERE/models" --data-dir "/tmp/medkg-gpu-$variant-w$workers" \
      | tee "$OUT/bench-$variant-w$workers.json"
    rm -rf "/tmp/medkg-gpu-$variant-w$workers"
  done
done
