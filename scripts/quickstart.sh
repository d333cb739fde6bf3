#!/usr/bin/env bash
# The main job on the embedded default: the first $DOCS records of the
# bundled PubMed sample (../shared/data/pubmed_sample.jsonl.gz) streamed from
# a file through config/pipelines/auto.yaml on two workers (parse, chunk,
# all-MiniLM-L6-v2 and SPLADE on the CPU via ONNX Runtime, BM25 + SPLADE in
# tantivy, dense in FAISS, then entities, claims and the knowledge graph in
# Oxigraph), then the counts, a hybrid search, a concept's neighbours and a
# SPARQL query.
#
#   DOCS          records to ingest                (default: 1000; about 2 minutes on 2 cores)
#   QUERY         what to search for               (default: aspirin platelet aggregation)
#   CONCEPT       what to look up in the graph     (default: aspirin)
#   MEDKG_SHARED  where shared/ is                 (default: ../shared)
#   MEDKG_DATA    the data directory               (default: data/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${MEDKG_SHARED:-../shared}
DATA=${MEDKG_DATA:-data/quickstart}
DOCS=${DOCS:-1000}
QUERY=${QUERY:-aspirin platelet aggregation}
CONCEPT=${CONCEPT:-aspirin}

scripts/setup-system.sh
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}
# The shared models and their variants (auto.yaml's SPLADE is the pooled one).
export MEDKG_MODELS=${MEDKG_MODELS:-$(MEDKG_SHARED=$SHARED scripts/models.sh)}
export MEDKG_VOCAB=${MEDKG_VOCAB:-$(scripts/vocab.sh)}
cargo build --release --quiet --bin medkg
medkg() { cargo run --release --quiet --bin medkg -- "$@"; }

mkdir -p "$DATA"
# (gzip is cut off by head on purpose: its SIGPIPE is not an error here.)
{ gzip -dc "$SHARED/data/pubmed_sample.jsonl.gz" || true; } | head -n "$DOCS" > "$DATA/input.jsonl"
medkg run --pipeline config/pipelines/auto.yaml --source "file:$DATA/input.jsonl" \
  --data-dir "$DATA/index" -w 2 --from-start
medkg stats --data-dir "$DATA/index"
medkg search --data-dir "$DATA/index" --mode hybrid -k 5 "$QUERY"
medkg graph --data-dir "$DATA/index" -k 5 "$CONCEPT"
medkg sparql --data-dir "$DATA/index" \
  'SELECT ?subject ?predicate ?object ?support WHERE {
     ?e biolink:subject ?s ; biolink:predicate ?predicate ; biolink:object ?o ; medkg:support ?support .
     ?s rdfs:label ?subject . ?o rdfs:label ?object
     FILTER(?predicate != biolink:related_to) } ORDER BY DESC(?support) LIMIT 10'
echo
echo "To browse it (operator UI and API at http://127.0.0.1:8080/):"
echo "  cargo run --release --bin medkg -- serve --data-dir $DATA/index"
