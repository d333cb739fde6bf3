#!/usr/bin/env bash
# The parser fuzz campaign: the structure-aware harness of
# operators/tests/fuzz.rs, CASES cases per parser (default 20000; CI runs
# 300; PDFs get half), in the test profile (dependencies at opt-level 2),
# under a 2 GiB address-space limit (ulimit -v), each case of the text
# parsers on a 1 MiB stack. A crash (stack overflow, failed allocation,
# panic) fails the run; the counts per parser are printed at the end.
#
#   scripts/fuzz.sh                 # 20,000 cases per parser
#   CASES=200000 scripts/fuzz.sh    # a longer campaign
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-20000}
export MEDKG_SHARED=${MEDKG_SHARED:-$(cd .. && pwd)/shared}
# Build first (the compiler needs more than the limit), then run limited.
cargo test -p medkg-operators --test fuzz --no-run
began=$(date +%s)
(
  ulimit -v $((2 * 1024 * 1024))
  MEDKG_FUZZ_CASES=$CASES cargo test -q -p medkg-operators --test fuzz -- --nocapture --test-threads 2 2>&1
) | tee /tmp/medkg-fuzz.log | grep -oE "fuzz [a-z-]+: [0-9]+ cases, no failure|test result.*|panicked.*|.*overflow.*|memory allocation.*"
echo "fuzz.sh: $CASES cases per parser in $(( $(date +%s) - began )) s"
