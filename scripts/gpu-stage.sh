#!/usr/bin/env bash
# Packs what a GPU measurement needs into .gpu/part* (see
# ../shared/gpu/README.md), whichever card is lent: a release medkg, ONNX
# Runtime GPU, the models and their GPU variants, the 33,277 PubMed records
# that have an abstract, the three pipelines (fp32, fp32 with the pooled
# SPLADE, fp16; the same token budgets), and scripts/gpu-bench.sh, the one
# script to run there (it records the card it finds).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/medkg-target}
SHARED=${MEDKG_SHARED:-$(cd .. && pwd)/shared}
cargo build --release --quiet
MODELS=$(MEDKG_SHARED=$SHARED scripts/models.sh)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/gpu/pipelines"
cp "$CARGO_TARGET_DIR/release/medkg" scripts/gpu-bench.sh "$STAGE/gpu/"
cp -rL "$MODELS" "$STAGE/gpu/models"
rm -f "$STAGE"/gpu/models/*.int8.*   # CPU variants
cp config/pipelines/hybrid-gpu.yaml "$STAGE/gpu/pipelines/fp16.yaml"
sed -e 's/precision: fp16/precision: fp32/; s/model: splade-tiny.pooled/model: splade-tiny/' \
  config/pipelines/hybrid-gpu.yaml > "$STAGE/gpu/pipelines/fp32.yaml"
sed -e 's/precision: fp16/precision: fp32/' config/pipelines/hybrid-gpu.yaml > "$STAGE/gpu/pipelines/fp32-pooled.yaml"
cp -r config/resilience.yaml "$STAGE/gpu/"
zcat "$SHARED/data/pubmed_sample.jsonl.gz" | python3 -c '
import sys, json
for line in sys.stdin:
    if (json.loads(line).get("abstract") or "").strip():
        sys.stdout.write(line)' > "$STAGE/gpu/abstracts.jsonl"
echo "gpu-stage.sh: $(wc -l < "$STAGE/gpu/abstracts.jsonl") records with an abstract" >&2
"$SHARED/gpu/stage.sh" "$STAGE/gpu"
