#!/usr/bin/env bash
# The main job on the embedded default: stream the bundled PubMed sample
# (../shared/data/pubmed_sample.jsonl.gz, 50,788 records) through
# config/pipelines/lexical.yaml on two workers into a local BM25 index, then
# show its counts and run a search.
#
#   MEDKG_SHARED  where shared/ is           (default: ../shared)
#   MEDKG_DATA    the data directory          (default: data/quickstart)
#   QUERY         what to search for          (default: aspirin platelet aggregation)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MEDKG_SHARED:-../shared}
DATA=${MEDKG_DATA:-data/quickstart}
QUERY=${QUERY:-aspirin platelet aggregation}
medkg() { cargo run --release --quiet --bin medkg -- "$@"; }

export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}
cargo build --release --quiet --bin medkg
medkg run --pipeline config/pipelines/lexical.yaml \
  --source "file:$SHARED/data/pubmed_sample.jsonl.gz" --data-dir "$DATA" -w 2 --from-start
medkg stats --data-dir "$DATA"
medkg search --data-dir "$DATA" -k 5 "$QUERY"
