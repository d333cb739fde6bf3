#!/usr/bin/env bash
# Everything the tests need, then the tests: the README's test command and
# what CI (.ci/run) calls. Tests read real documents from ../shared/data
# (override with MEDKG_SHARED).
set -euo pipefail
cd "$(dirname "$0")/.."
export MEDKG_SHARED=${MEDKG_SHARED:-$(cd .. && pwd)/shared}
if [ ! -f "$MEDKG_SHARED/data/pubmed_sample.jsonl.gz" ]; then
  echo "test.sh: $MEDKG_SHARED/data/pubmed_sample.jsonl.gz not found (set MEDKG_SHARED)" >&2
  exit 1
fi
# cmake and OpenBLAS for FAISS; ONNX Runtime (the onnxruntime PyPI wheel's
# library), loaded at run time by ort; the models of ../shared/models.
scripts/setup-system.sh
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/fetch-onnxruntime.sh)}
# The shared models and their variants (the pooled SPLADE the pipelines use,
# int8, fp16), made once by scripts/models.sh and checked against the originals.
export MEDKG_MODELS=${MEDKG_MODELS:-$(scripts/models.sh)}
# The concept vocabulary of the extractor, made from pinned PyPI packages.
export MEDKG_VOCAB=${MEDKG_VOCAB:-$(scripts/vocab.sh)}
# rdflib, the independent client that reads the graph's N-Quads export.
export MEDKG_RDFLIB=${MEDKG_RDFLIB:-$(scripts/rdflib.sh)}
# Oxigraph's SPARQL server, the remote store the graph tests start on loopback.
export MEDKG_OXIGRAPH=${MEDKG_OXIGRAPH:-$(scripts/oxigraph-server.sh)}
# Alert rules (promtool) and docs/asyncapi.yaml (@asyncapi/parser).
scripts/check-docs.sh
# A real Kafka-protocol broker (tansu) on loopback for the Kafka tests,
# stopped when the tests end, unless MEDKG_KAFKA_BROKERS names one already.
if [ -z "${MEDKG_KAFKA_BROKERS:-}" ]; then
  export KAFKA_PORT=${KAFKA_PORT:-19092}
  MEDKG_KAFKA_BROKERS=$(PORT=$KAFKA_PORT scripts/kafka-broker.sh start)
  export MEDKG_KAFKA_BROKERS
  # The tests create their topics with the broker's own CLI.
  export MEDKG_TANSU=${TANSU_DIR:-${MEDKG_CACHE:-$HOME/.cache/medkg}/tansu}/bin/tansu
  trap 'PORT=$KAFKA_PORT scripts/kafka-broker.sh stop' EXIT
fi
cargo test --workspace --all-targets
cargo test --workspace --doc
# The examples are part of the contract (each fails when it finds nothing): run them.
for example in parse_and_chunk embed_engine hybrid_query; do
  echo "== example $example"
  cargo run --quiet --example "$example"
done
