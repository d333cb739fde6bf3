#!/usr/bin/env bash
# Prints the path of the ONNX Runtime shared library medkg loads at run time
# (ort's `load-dynamic`), fetching it on first use from the `onnxruntime`
# PyPI wheel (the library is the same for every Python version) and caching
# it under ~/.cache/medkg. Use: export ORT_DYLIB_PATH=$(scripts/fetch-onnxruntime.sh)
set -euo pipefail
VERSION=${ORT_VERSION:-1.31.1}
CACHE=${MEDKG_CACHE:-$HOME/.cache/medkg}/onnxruntime-$VERSION
LIB=$CACHE/libonnxruntime.so.$VERSION
if [ ! -f "$LIB" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 "onnxruntime==$VERSION" -d "$tmp" >&2
  mkdir -p "$CACHE"
  python3 - "$tmp"/onnxruntime-*.whl "$CACHE" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime.so"):
            with open(f"{out}/{name.rsplit('/', 1)[1]}", "wb") as f:
                f.write(z.read(name))
PY
fi
[ -f "$LIB" ] || { echo "fetch-onnxruntime.sh: $LIB missing after extraction" >&2; exit 1; }
echo "$LIB"
