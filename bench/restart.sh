#!/usr/bin/env bash
# Restart one broker for a fresh conn-* run (used by compare.py --restart-cmd) and print
# its NAME=HOST:PORT@PID spec on the last line. tidemq is ours; the peers go to brokers.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${SHARED_BENCH:-$here/../../shared/bench}"
MQB_DIR=${MQB_DIR:-/tmp/mqbench}
TIDEMQ_PORT=${TIDEMQ_PORT:-18843}
BROKER_CPU=${BROKER_CPU:-0}
PYTHON=${PYTHON:-python3}

start_tidemq() {
  mkdir -p "$MQB_DIR"
  ( ulimit -n "$(ulimit -Hn)"; cd "$MQB_DIR" && exec taskset -c "$BROKER_CPU" "$PYTHON" -m tidemq serve \
      --listen "tcp://127.0.0.1:$TIDEMQ_PORT" --log.level warning --mqtt.sys-interval 0 \
      --data-dir "$MQB_DIR/tidemq-data" ) >"$MQB_DIR/tidemq.log" 2>&1 &
  echo $! > "$MQB_DIR/tidemq.pid"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$TIDEMQ_PORT") 2>/dev/null; then
      echo "tidemq=127.0.0.1:$TIDEMQ_PORT@$(cat "$MQB_DIR/tidemq.pid")"
      return 0
    fi
    sleep 0.1
  done
  echo "tidemq did not start; see $MQB_DIR/tidemq.log" >&2
  return 1
}

stop_tidemq() {
  if [ -f "$MQB_DIR/tidemq.pid" ] && kill -0 "$(cat "$MQB_DIR/tidemq.pid")" 2>/dev/null; then
    kill "$(cat "$MQB_DIR/tidemq.pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$MQB_DIR/tidemq.pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$MQB_DIR/tidemq.pid"
}

case "${1:?usage: restart.sh NAME|start-tidemq|stop-tidemq}" in
  tidemq) stop_tidemq; start_tidemq ;;
  start-tidemq) start_tidemq ;;
  stop-tidemq) stop_tidemq ;;
  *) "$shared/brokers.sh" restart "$1" ;;
esac
