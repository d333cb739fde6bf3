#!/usr/bin/env bash
# rdflib (pure Python, BSD-3), pinned, installed under ~/.cache/medkg: the
# independent RDF client the graph tests read medkg's N-Quads export with.
# Prints the directory to put on PYTHONPATH.
# Use: export MEDKG_RDFLIB=$(scripts/rdflib.sh)
set -euo pipefail
CACHE=${MEDKG_CACHE:-$HOME/.cache/medkg}
OUT=$CACHE/rdflib-7.6.0
if [ ! -f "$OUT/.installed" ]; then
  rm -rf "$OUT"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$OUT" rdflib==7.6.0 pyparsing==3.2.5 >&2
  touch "$OUT/.installed"
fi
echo "$OUT"
