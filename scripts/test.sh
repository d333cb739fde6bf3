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
export MEDKG_MODELS=${MEDKG_MODELS:-$MEDKG_SHARED/models}
cargo test --workspace --all-targets
cargo test --workspace --doc
