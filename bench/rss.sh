#!/usr/bin/env bash
# KiB of broker RSS per idle connection, on a freshly started `tidemq serve` (and, for the
# same run, a fresh Mosquitto), measured by ../shared/bench/rss_conn.sh with mqload holding
# C connections (default 10,000). Prints one JSON line per broker.
#
# usage: bench/rss.sh [CONNECTIONS] [extra mqload args, e.g. --conn-sub]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${SHARED_BENCH:-$here/../../shared/bench}"
C="${1:-10000}"
shift || true
export MQB_DIR="${MQB_DIR:-/tmp/mqbench}"
export PYTHON="${PYTHON:-python3}"
ulimit -n "$(ulimit -Hn)"

spec="$("$here/restart.sh" tidemq | tail -n1)"          # tidemq=127.0.0.1:PORT@PID
pid="${spec##*@}"; port="${spec%@*}"; port="${port##*:}"
printf '{"broker":"tidemq",%s\n' "$("$shared/rss_conn.sh" "$pid" "$port" "$C" --cpu 1 "$@" | cut -c2-)"
"$here/restart.sh" stop-tidemq

spec="$("$shared/brokers.sh" restart mosquitto | tail -n1)"
pid="${spec##*@}"; port="${spec%@*}"; port="${port##*:}"
printf '{"broker":"mosquitto",%s\n' "$("$shared/rss_conn.sh" "$pid" "$port" "$C" --cpu 1 "$@" | cut -c2-)"
"$shared/brokers.sh" stop >/dev/null
