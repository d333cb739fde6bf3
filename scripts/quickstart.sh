#!/usr/bin/env bash
# The main job on the embedded default: the first $DOCS records of the
# bundled PubMed sample (../shared/data/pubmed_sample.jsonl.gz) streamed from
# a file through config/pipelines/hybrid.yaml on two workers (parse, chunk,
# all-MiniLM-L6-v2 and SPLADE on the CPU via ONNX Runtime, BM25 + SPLADE in
# tantivy, dense in FAISS), then the counts and a hybrid search.
#
#   DOCS          records to ingest                (default: 1000; about 2 minutes on 2 cores)
#   QUERY         what to search for               (default: aspirin platelet aggregation)
#   MEDKG_SHARED  where shared/ is                 (default: ../shared)
#   MEDKG_DATA    the data directory               (default: data/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MEDKG_SHARED:-../shared}
DATA=${MEDKG_DATA:-data/quickstart}
DOCS=${DOCS:-1000}
QUERY=${QUERY:-aspirin platelet aggregation}

scripts/setup-system.sh
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}
export MEDKG_MODELS=${MEDKG_MODELS:-$SHARED/models}
cargo build --release --quiet --bin medkg
medkg() { cargo run --release --quiet --bin medkg -- "$@"; }

mkdir -p "$DATA"
# (gzip is cut off by head on purpose: its SIGPIPE is not an error here.)
{ gzip -dc "$SHARED/data/pubmed_sample.jsonl.gz" || true; } | head -n "$DOCS" > "$DATA/input.jsonl"
medkg run --pipeline config/pipelines/hybrid.yaml --source "file:$DATA/input.jsonl" \
  --data-dir "$DATA/index" -w 2 --from-start
medkg stats --data-dir "$DATA/index"
medkg search --data-dir "$DATA/index" --mode hybrid -k 5 "$QUERY"
