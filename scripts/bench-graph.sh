#!/usr/bin/env bash
# The knowledge graph's cost, measured as benches/RESULTS.md reports it:
# lexical.yaml against kg-lexical.yaml over all 50,788 PubMed records at
# -w 2, interleaved (ROUNDS rounds), kg-lexical.yaml once more into
# Oxigraph's SPARQL server on loopback, then the graph's size. Release build.
# Use: scripts/bench-graph.sh [ROUNDS]   (MEDKG_SHARED, MEDKG_VOCAB as for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
SHARED=${MEDKG_SHARED:-$(cd .. && pwd)/shared}
SOURCE=file:$SHARED/data/pubmed_sample.jsonl.gz
export MEDKG_VOCAB=${MEDKG_VOCAB:-$(scripts/vocab.sh)}
cargo build --release --quiet --bin medkg
MEDKG=${CARGO_TARGET_DIR:-target}/release/medkg
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for round in $(seq "$ROUNDS"); do
  for pipeline in lexical kg-lexical; do
    rm -rf "$WORK/$pipeline"
    summary=$("$MEDKG" run --pipeline "config/pipelines/$pipeline.yaml" --source "$SOURCE" \
      --data-dir "$WORK/$pipeline" -w 2 --metrics-addr off 2>/dev/null | tail -1)
    echo "round $round $pipeline $summary"
  done
done
# The same graph written to Oxigraph's SPARQL server on loopback (--graph sparql:URL).
OXIGRAPH=${MEDKG_OXIGRAPH:-$(scripts/oxigraph-server.sh)}
"$OXIGRAPH" serve --location "$WORK/server" --bind 127.0.0.1:17878 >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 1
summary=$("$MEDKG" run --pipeline config/pipelines/kg-lexical.yaml --source "$SOURCE" \
  --data-dir "$WORK/remote" -w 2 --metrics-addr off --graph sparql:http://127.0.0.1:17878 2>/dev/null | tail -1)
echo "remote kg-lexical $summary"
echo "graph: $("$MEDKG" stats --json --data-dir "$WORK/kg-lexical")"
echo "on disk:"
du -sh "$WORK/kg-lexical"/*
