#!/usr/bin/env bash
# Oxigraph's SPARQL 1.1 server (the `oxigraph` CLI, MIT/Apache-2.0), from
# its pinned PyPI wheel (a static binary), checked by SHA-256 and cached
# under ~/.cache/medkg: the remote store of `medkg run --graph sparql:URL`
# in the tests. Prints the binary's path.
# Use: export MEDKG_OXIGRAPH=$(scripts/oxigraph-server.sh)
#      "$MEDKG_OXIGRAPH" serve --location DIR --bind 127.0.0.1:7878
set -euo pipefail
VERSION=0.5.13
WHEEL=oxigraph-$VERSION-py3-none-manylinux_2_28_x86_64.whl
SHA256=dbb295a905adda409f18ce154b1353d07d20954ca3ea65dc546fc153c95c2c05
CACHE=${MEDKG_CACHE:-$HOME/.cache/medkg}
OUT=$CACHE/oxigraph-$VERSION
if [ ! -x "$OUT/oxigraph" ]; then
  case "$(uname -m)" in
    x86_64) ;;
    *) echo "oxigraph-server.sh: the pinned wheel is for x86_64 Linux, not $(uname -m)" >&2; exit 1 ;;
  esac
  rm -rf "$OUT" && mkdir -p "$OUT/wheel"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --dest "$OUT/wheel" "oxigraph==$VERSION" >&2
  echo "$SHA256  $OUT/wheel/$WHEEL" | sha256sum --check --quiet >&2
  python3 - "$OUT/wheel/$WHEEL" "$OUT/oxigraph" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, open(out + ".part", "wb") as f:
    f.write(z.read(f"oxigraph-{os.path.basename(wheel).split('-')[1]}.data/scripts/oxigraph"))
os.chmod(out + ".part", 0o755)
os.rename(out + ".part", out)
PY
  rm -rf "$OUT/wheel"
fi
echo "$OUT/oxigraph"
