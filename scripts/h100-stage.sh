#!/usr/bin/env bash
# Packs what the H100 measurement of issue [6] needs into .gpu/part* (see
# ../shared/gpu/README.md): a release medkg, ONNX Runtime GPU, the models and
# their GPU variants, the 33,277 PubMed records that have an abstract, the
# two pipelines (fp32 and fp16 models, the same token budgets), and
# scripts/h100-bench.sh, the one script to run there.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/medkg-target}
SHARED=${MEDKG_SHARED:-$(cd .. && pwd)/shared}
cargo build --release --quiet
GPU_MODELS=$(MEDKG_MODELS=$SHARED/models scripts/gpu-models.sh)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/h100/pipelines"
cp "$CARGO_TARGET_DIR/release/medkg" scripts/h100-bench.sh "$STAGE/h100/"
cp -rL "$GPU_MODELS" "$STAGE/h100/models"
cp config/pipelines/hybrid-gpu.yaml "$STAGE/h100/pipelines/fp16.yaml"
sed -e 's/all-MiniLM-L6-v2.fp16/all-MiniLM-L6-v2/; s/splade-tiny.pooled.fp16/splade-tiny/' \
  config/pipelines/hybrid-gpu.yaml > "$STAGE/h100/pipelines/fp32.yaml"
sed -e 's/splade-tiny.pooled.fp16/splade-tiny.pooled/; s/all-MiniLM-L6-v2.fp16/all-MiniLM-L6-v2/' \
  config/pipelines/hybrid-gpu.yaml > "$STAGE/h100/pipelines/fp32-pooled.yaml"
cp -r config/resilience.yaml "$STAGE/h100/"
zcat "$SHARED/data/pubmed_sample.jsonl.gz" | python3 -c '
import sys, json
for line in sys.stdin:
    if (json.loads(line).get("abstract") or "").strip():
        sys.stdout.write(line)' > "$STAGE/h100/abstracts.jsonl"
echo "h100-stage.sh: $(wc -l < "$STAGE/h100/abstracts.jsonl") records with an abstract" >&2
"$SHARED/gpu/stage.sh" "$STAGE/h100"
