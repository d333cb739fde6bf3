#!/usr/bin/env bash
# medkg serve under load, as benches/RESULTS.md reports it: wrk (Debian) with
# 8 and 32 connections for DURATION seconds per mode, over a 2,000-document
# hybrid index (hybrid.yaml, CPU models) and the 50,788-document lexical
# index; requests/s and p50/p95/p99 per mode (closed loop: each connection
# sends its next query when the last is answered). Then latency at a fixed
# rate with oha (crates.io, installed into ~/.cache/medkg/oha): hybrid at 50 and 100
# queries/s, bm25 at 1,000. Last, the same queries through `medkg search`,
# one process per query, for the ratio. Release build.
# Use: scripts/bench-serve.sh [DURATION]   (MEDKG_SHARED, MEDKG_MODELS as for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
SHARED=${MEDKG_SHARED:-$(cd .. && pwd)/shared}
scripts/setup-system.sh
command -v wrk >/dev/null
OHA=${MEDKG_CACHE:-$HOME/.cache/medkg}/oha/bin/oha
[ -x "$OHA" ] || cargo install oha --version 1.16.0 --locked --quiet --root "$(dirname "$(dirname "$OHA")")"
cargo build --release --quiet --bin medkg
MEDKG=${CARGO_TARGET_DIR:-target}/release/medkg
WORK=${BENCH_WORK:-$(mktemp -d)}
mkdir -p "$WORK"
[ -n "${BENCH_WORK:-}" ] || trap 'rm -rf "$WORK"' EXIT

# The two indexes (kept when BENCH_WORK names a directory that has them).
if [ ! -f "$WORK/hybrid/medkg-layout.json" ]; then
  { zcat "$SHARED/data/pubmed_sample.jsonl.gz" || true; } | head -2000 > "$WORK/first2000.jsonl"
  "$MEDKG" run --pipeline config/pipelines/hybrid.yaml --source "file:$WORK/first2000.jsonl" \
    --data-dir "$WORK/hybrid" -w 2 --metrics-addr off --no-ledger 2>/dev/null | tail -1
fi
if [ ! -f "$WORK/lexical/medkg-layout.json" ]; then
  "$MEDKG" run --pipeline config/pipelines/lexical.yaml --source "file:$SHARED/data/pubmed_sample.jsonl.gz" \
    --data-dir "$WORK/lexical" -w 2 --metrics-addr off --no-ledger 2>/dev/null | tail -1
fi

# Queries: the first five words of 50 titles the hybrid index does not hold.
{ zcat "$SHARED/data/pubmed_sample.jsonl.gz" || true; } | sed -n '3001,3050p' | python3 -c '
import json, re, sys
qs = []
for line in sys.stdin:
    words = re.findall(r"[A-Za-z0-9-]+", json.loads(line).get("title", ""))[:5]
    if words: qs.append(" ".join(words))
print("queries = {" + ",".join(json.dumps(q) for q in qs) + "}")' > "$WORK/queries.lua"
cat >> "$WORK/queries.lua" <<'LUA'
local mode = os.getenv("MODE") or "hybrid"
local i = 0
request = function()
  i = i + 1
  local body = string.format('{"query":"%s","mode":"%s","k":10}', queries[(i % #queries) + 1], mode)
  return wrk.format("POST", "/v1/search", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f requests=%d non2xx=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

serve_and_load() { # DATA_DIR MODES...
  local data=$1; shift
  "$MEDKG" serve --data-dir "$data" --addr 127.0.0.1:18080 2>/dev/null &
  local server=$!
  for _ in $(seq 100); do curl -sf localhost:18080/readyz >/dev/null && break; sleep 0.2; done
  for mode in "$@"; do
    for connections in 8 32; do
      result=$(MODE=$mode wrk -t2 -c"$connections" -d"${DURATION}s" --latency -s "$WORK/queries.lua" \
        http://127.0.0.1:18080 | grep RESULT)
      echo "$(basename "$data") $mode c=$connections $result"
    done
  done
  # Latency at a fixed rate (open loop), one five-word query.
  for mode_rate in $RATES; do
    mode=${mode_rate%:*}; rate=${mode_rate#*:}
    "$OHA" -z "${DURATION}s" -q "$rate" -c 16 --no-tui --output-format json -m POST \
      -H 'content-type: application/json' \
      -d "{\"query\":\"aspirin prevention of myocardial infarction\",\"mode\":\"$mode\",\"k\":10}" \
      http://127.0.0.1:18080/v1/search > "$WORK/oha.json"
    python3 - "$(basename "$data")" "$mode" "$rate" "$WORK/oha.json" <<'PY'
import json, sys
name, mode, rate, path = sys.argv[1:]
r = json.load(open(path))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print(f"{name} {mode} at {rate} q/s (oha): rps={r['summary']['requestsPerSec']:.1f} "
      f"p50_ms={p['p50'] * 1000:.2f} p95_ms={p['p95'] * 1000:.2f} p99_ms={p['p99'] * 1000:.2f} status={codes}")
PY
  done
  kill "$server"; wait "$server" 2>/dev/null || true
}
RATES="hybrid:50 hybrid:100 bm25:1000" serve_and_load "$WORK/hybrid" bm25 splade dense hybrid
RATES="bm25:1000" serve_and_load "$WORK/lexical" bm25

# The same queries one by one through `medkg search` (a process each: models loaded every time).
python3 - "$MEDKG" "$WORK" <<'PY'
import re, subprocess, sys, time
medkg, work = sys.argv[1], sys.argv[2]
queries = re.findall(r'"((?:[^"\\]|\\.)*)"', open(f"{work}/queries.lua").read().split("\n")[0])[:20]
for mode in ["bm25", "hybrid"]:
    began = time.perf_counter()
    for q in queries:
        subprocess.run([medkg, "search", "--data-dir", f"{work}/hybrid", "--mode", mode, "--json", q],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = (time.perf_counter() - began) / len(queries)
    print(f"medkg search hybrid-index {mode}: {took * 1000:.1f} ms per query ({len(queries)} queries, one process each)")
PY
