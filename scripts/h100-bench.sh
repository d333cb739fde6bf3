#!/usr/bin/env bash
# Runs on the H100 host, in the folder scripts/h100-stage.sh packed (h100/
# next to libonnxruntime*.so*): raw model throughput (each model alone, the
# same chunks and batching) and end-to-end docs/s of the hybrid pipeline over
# the PubMed records with an abstract, for the fp32 models, fp32 with the
# chunk-pooled SPLADE, and the fp16 variants. JSON results go to $OUT (or
# ./out). DEVICE=cpu LIMIT=200 tries the script itself on any machine.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$PWD/out}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-4}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  NV=$(ls -d /opt/torch/.venv/lib/python3.12/site-packages/nvidia/*/lib 2>/dev/null | tr '\n' ':' || true)
  export LD_LIBRARY_PATH=$ROOT:/usr/local/cuda/lib64:$NV${LD_LIBRARY_PATH:-}
  export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ROOT/libonnxruntime.so.1.31.1}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
fi
SOURCE=$HERE/abstracts.jsonl
if [ -n "${LIMIT:-}" ]; then
  head -n "$LIMIT" "$SOURCE" > "$OUT/source.jsonl"
  SOURCE=$OUT/source.jsonl
fi
for variant in fp32 fp32-pooled fp16; do
  rm -rf "/tmp/medkg-h100-$variant"
  echo "== $variant ($DEVICE, -w $WORKERS)" >&2
  "$HERE/medkg" bench --json -w "$WORKERS" --device "$DEVICE" \
    --pipeline "$HERE/pipelines/$variant.yaml" --source "file:$SOURCE" \
    --models "$HERE/models" --data-dir "/tmp/medkg-h100-$variant" \
    | tee "$OUT/bench-$variant.json"
done
