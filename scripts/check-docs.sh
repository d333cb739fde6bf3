#!/usr/bin/env bash
# Checks the operations artefacts with their own tools:
#   - config/monitoring/alerts.yml and prometheus.yml with promtool (Debian package prometheus);
#   - docs/asyncapi.yaml with the @asyncapi/parser npm package;
#   - docs/openapi.yaml (medkg serve's API) with @apidevtools/swagger-parser.
# Installs what is missing (apt via setup-system.sh; the parser into
# ~/.cache/medkg/npm). Run by scripts/test.sh, so by CI too.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-system.sh   # promtool, node and npm
promtool check rules config/monitoring/alerts.yml
promtool check config config/monitoring/prometheus.yml

# Node trusts only its own CA list; where the registry is reached through a
# TLS-inspecting proxy whose CA is in the system's bundle, npm would retry
# for ever. Trust the system's bundle too.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
modules="${MEDKG_CACHE:-$HOME/.cache/medkg}/npm"
if [ ! -d "$modules/node_modules/@asyncapi/parser" ] || [ ! -d "$modules/node_modules/@apidevtools/swagger-parser" ]; then
  mkdir -p "$modules"
  npm install --prefix "$modules" --no-audit --no-fund --silent @asyncapi/parser@3 @apidevtools/swagger-parser@12 >/dev/null
fi
ASYNCAPI_MODULES="$modules/node_modules" node scripts/check-asyncapi.mjs docs/asyncapi.yaml
OPENAPI_MODULES="$modules/node_modules" node scripts/check-openapi.mjs docs/openapi.yaml
