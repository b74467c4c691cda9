#!/usr/bin/env bash
# `make stack`: the monitoring stack without Docker. Prometheus, Alertmanager and the
# PostgreSQL/Redis exporters from Debian's packages run as plain processes bound to
# 127.0.0.1, on the same rules, routes and templates as docker-compose.yml (configs
# rewritten for loopback by ops/stack/render.py). Run it beside `make run`; Ctrl-C stops
# everything it started.
#
# Ports (override through the environment):
#   HITL_PORT=8000  STACK_PROMETHEUS_PORT=9090  STACK_ALERTMANAGER_PORT=9093
#   STACK_POSTGRES_EXPORTER_PORT=9187  STACK_REDIS_EXPORTER_PORT=9121
# STACK_SCRAPE_INTERVAL (e.g. 5s) overrides every scrape interval; by default they are
# the compose ones (10 s for hitl-api, 30 s for the rest).
# State lives in STACK_DIR (default .local/stack): rendered configs, TSDB, logs.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
STACK_DIR=${STACK_DIR:-.local/stack}
HITL_PORT=${HITL_PORT:-8000}
PROM_PORT=${STACK_PROMETHEUS_PORT:-9090}
AM_PORT=${STACK_ALERTMANAGER_PORT:-9093}
PG_EXPORTER_PORT=${STACK_POSTGRES_EXPORTER_PORT:-9187}
REDIS_EXPORTER_PORT=${STACK_REDIS_EXPORTER_PORT:-9121}
# The machine's shared stores (ops/local/ensure-services.sh), read-only for the exporters.
PG_DSN=${STACK_POSTGRES_DSN:-postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable}
REDIS_ADDR=${STACK_REDIS_ADDR:-redis://127.0.0.1:6379}

for tool in prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-redis-exporter; do
  command -v "$tool" >/dev/null || { echo "make stack: $tool is missing (run: make tools)" >&2; exit 1; }
done

mkdir -p "$STACK_DIR/prometheus-data" "$STACK_DIR/alertmanager-data"
"$PYTHON" ops/stack/render.py --out "$STACK_DIR" \
  --hitl-port "$HITL_PORT" --prometheus-port "$PROM_PORT" --alertmanager-port "$AM_PORT" \
  --postgres-exporter-port "$PG_EXPORTER_PORT" --redis-exporter-port "$REDIS_EXPORTER_PORT" \
  ${STACK_SCRAPE_INTERVAL:+--scrape-interval "$STACK_SCRAPE_INTERVAL"}

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start NAME CMD...: run in the background, log to $STACK_DIR/NAME.log
  local name=$1; shift
  "$@" >"$STACK_DIR/$name.log" 2>&1 &
  pids+=("$!")
}

start prometheus prometheus \
  --config.file="$STACK_DIR/prometheus.yml" \
  --storage.tsdb.path="$STACK_DIR/prometheus-data" \
  --storage.tsdb.retention.time=30d --storage.tsdb.retention.size=10GB \
  --web.listen-address="127.0.0.1:$PROM_PORT" \
  --web.external-url="http://127.0.0.1:$PROM_PORT"
# --cluster.listen-address= turns off gossip: it would otherwise bind 0.0.0.0:9094.
start alertmanager prometheus-alertmanager \
  --config.file="$STACK_DIR/alertmanager.yml" \
  --storage.path="$STACK_DIR/alertmanager-data" \
  --data.retention=120h \
  --web.listen-address="127.0.0.1:$AM_PORT" \
  --web.external-url="http://127.0.0.1:$AM_PORT" \
  --cluster.listen-address=
DATA_SOURCE_NAME="$PG_DSN" start postgres-exporter prometheus-postgres-exporter \
  --web.listen-address="127.0.0.1:$PG_EXPORTER_PORT"
start redis-exporter prometheus-redis-exporter \
  -redis.addr "$REDIS_ADDR" -web.listen-address "127.0.0.1:$REDIS_EXPORTER_PORT"

cat <<MSG
monitoring stack running (logs in $STACK_DIR/*.log); Ctrl-C stops it
  Prometheus   http://127.0.0.1:$PROM_PORT   (scrapes hitl-api on 127.0.0.1:$HITL_PORT: start it with make run)
  Alertmanager http://127.0.0.1:$AM_PORT
  exporters    postgres 127.0.0.1:$PG_EXPORTER_PORT, redis 127.0.0.1:$REDIS_EXPORTER_PORT
MSG

# If any process dies, say which and stop the rest: a half stack looks healthy but isn't.
set +e
wait -n
status=$?
echo "make stack: a process exited ($status); see $STACK_DIR/*.log" >&2
exit "$status"
