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
# HA=1 (`make stack HA=1`): the compose shape of the monitoring stack -- a Prometheus HA
# pair (replica A on STACK_PROMETHEUS_PORT, B on STACK_PROMETHEUS_B_PORT=9092), two
# Alertmanagers clustered over gossip on loopback (B's API on STACK_ALERTMANAGER_B_PORT=
# 9095; gossip on STACK_ALERTMANAGER_CLUSTER_PORT=9094 and STACK_ALERTMANAGER_B_CLUSTER_PORT=
# 9096) and VictoriaMetrics (STACK_VICTORIAMETRICS_PORT=8428) that both replicas
# remote-write to. Off by default: on one workstation a pair proves the configs, not
# survival of a machine, and a lone Prometheus on 9090 is what `make run` needs; the HA
# behaviour itself is tested on every `make test` (tests/ha/test_monitoring_ha.py).
#
# STACK_SCRAPE_INTERVAL (e.g. 5s) overrides every scrape interval; by default they are
# the compose ones (10 s for hitl-api, 30 s for the rest).
# State lives in STACK_DIR (default .local/stack): rendered configs, TSDB, logs.
#
# REPLICAS=N (N > 1; `make stack REPLICAS=3`) also runs the service itself: migrations
# once, then N `python -m service serve` on loopback (STACK_REPLICA_PORTS="8101 8102
# 8103", default: free ports) against the same PostgreSQL and Redis, HAProxy on
# HITL_PORT in front of them (ops/haproxy/, stats and /metrics on
# STACK_HAPROXY_STATS_PORT=8404), and Prometheus discovering each replica from
# $STACK_DIR/hitl-api-targets.json (file_sd). A replica that exits is restarted after
# 2 s, so `kill -9` one to watch HAProxy take it out and back. REPLICAS=1 (default)
# starts no service: run it with `make run`.
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

# -- replicas (REPLICAS=N): ports, HAProxy --------------------------------------------
REPLICAS=${REPLICAS:-1}
[[ "$REPLICAS" =~ ^[1-9][0-9]*$ ]] || { echo "make stack: REPLICAS=$REPLICAS: expected a whole number >= 1" >&2; exit 2; }
HAPROXY_STATS_PORT=${STACK_HAPROXY_STATS_PORT:-8404}
REPLICA_PORTS=()
RENDER_REPLICA_ARGS=()
if [ "$REPLICAS" -gt 1 ]; then
  HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
  [ -x "$HAPROXY" ] || { echo "make stack: haproxy is missing (run: make tools)" >&2; exit 1; }
  if [ -n "${STACK_REPLICA_PORTS:-}" ]; then
    read -ra REPLICA_PORTS <<<"${STACK_REPLICA_PORTS//,/ }"
  else
    # Free ports, all held at once while chosen so that no two are the same.
    mapfile -t REPLICA_PORTS < <("$PYTHON" - "$REPLICAS" <<'PY'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in held))
PY
)
  fi
  [ "${#REPLICA_PORTS[@]}" -eq "$REPLICAS" ] \
    || { echo "make stack: STACK_REPLICA_PORTS has ${#REPLICA_PORTS[@]} ports for REPLICAS=$REPLICAS" >&2; exit 2; }
  RENDER_REPLICA_ARGS=(--replica-ports "${REPLICA_PORTS[@]}" --haproxy-stats-port "$HAPROXY_STATS_PORT")
fi
# -- end of replicas --------------------------------------------------------------------

for tool in prometheus prometheus-alertmanager prometheus-postgres-exporter prometheus-redis-exporter; do
  command -v "$tool" >/dev/null || { echo "make stack: $tool is missing (run: make tools)" >&2; exit 1; }
done

# ---------------------------------------------------------------- HA monitoring (HA=1)
HA=${HA:-0}
PROM_B_PORT=${STACK_PROMETHEUS_B_PORT:-9092}
AM_B_PORT=${STACK_ALERTMANAGER_B_PORT:-9095}
AM_CLUSTER_PORT=${STACK_ALERTMANAGER_CLUSTER_PORT:-9094}
AM_B_CLUSTER_PORT=${STACK_ALERTMANAGER_B_CLUSTER_PORT:-9096}
VM_PORT=${STACK_VICTORIAMETRICS_PORT:-8428}
# VictoriaMetrics keeps one sample per this interval and series: the scrape interval of
# hitl-api (10 s), so the two replicas' samples of a series collapse into one.
VM_DEDUP=${STACK_SCRAPE_INTERVAL:-10s}
# Without HA, --cluster.listen-address= turns off gossip: it would otherwise bind
# 0.0.0.0:9094. With it, the two Alertmanagers gossip on loopback, each naming the other.
am_cluster=(--cluster.listen-address=)
ha_render=()  # render.py --ha: the pair, from the prometheus.yml rendered before
if [ "$HA" = 1 ]; then
  command -v victoria-metrics >/dev/null || [ -x /usr/bin/victoria-metrics ] \
    || { echo "make stack: victoria-metrics is missing (run: make tools)" >&2; exit 1; }
  am_cluster=(--cluster.listen-address="127.0.0.1:$AM_CLUSTER_PORT" --cluster.peer="127.0.0.1:$AM_B_CLUSTER_PORT")
  ha_render=(--ha --prometheus-port "$PROM_PORT" --prometheus-b-port "$PROM_B_PORT"
             --alertmanager-port "$AM_PORT" --alertmanager-b-port "$AM_B_PORT"
             --victoriametrics-port "$VM_PORT")
  mkdir -p "$STACK_DIR/prometheus-b-data" "$STACK_DIR/alertmanager-b-data" "$STACK_DIR/victoriametrics-data"
fi
# ----------------------------------------------------------------

mkdir -p "$STACK_DIR/prometheus-data" "$STACK_DIR/alertmanager-data"
"$PYTHON" ops/stack/render.py --out "$STACK_DIR" \
  --hitl-port "$HITL_PORT" --prometheus-port "$PROM_PORT" --alertmanager-port "$AM_PORT" \
  --postgres-exporter-port "$PG_EXPORTER_PORT" --redis-exporter-port "$REDIS_EXPORTER_PORT" \
  ${STACK_SCRAPE_INTERVAL:+--scrape-interval "$STACK_SCRAPE_INTERVAL"} \
  "${RENDER_REPLICA_ARGS[@]}"

# HA=1: the prometheus.yml just rendered becomes replica A, prometheus-b.yml is B.
if [ "$HA" = 1 ]; then
  "$PYTHON" ops/stack/render.py --out "$STACK_DIR" "${ha_render[@]}"
fi
pids=()
late_pids=()  # HA=1: stopped in a second round, see stop
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # HA=1: VictoriaMetrics and one Alertmanager once the rest is gone, so the Prometheus
  # pair flushes its remote-write queue into a running VictoriaMetrics and the other
  # Alertmanager leaves the cluster while its peer can acknowledge (both at once wait
  # 10 s for each other).
  if [ "${#late_pids[@]}" -gt 0 ]; then
    wait "${pids[@]}" 2>/dev/null || true
    for pid in "${late_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  fi
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

# -- replicas (REPLICAS=N): the service processes and HAProxy ---------------------------
# One replica, restarted 2 s after it exits (as an orchestrator would); SIGTERM passes
# to it, so its drain runs and nothing outlives the stack.
supervise_replica() {
  local port=$1 child= status
  trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
  while :; do
    HITL_HOST=127.0.0.1 HITL_PORT=$port "$PYTHON" -m service serve &
    child=$!
    status=0
    wait "$child" || status=$?  # set -e must not end the supervisor with its replica
    echo "make stack: replica on port $port exited ($status); restarting in 2 s" >&2
    child=
    sleep 2
  done
}

start_replicas() {
  # The schema once, before any replica starts: replicas never race on migrations.
  "$PYTHON" -m service createdb
  "$PYTHON" -m service migrate
  "$PYTHON" -m service dev-key
  local i
  for i in "${!REPLICA_PORTS[@]}"; do
    start "hitl-api-$((i + 1))" supervise_replica "${REPLICA_PORTS[$i]}"
  done
  start haproxy "$HAPROXY" -db -f "$STACK_DIR/haproxy.cfg"
}
[ "$REPLICAS" -gt 1 ] && start_replicas
# -- end of replicas --------------------------------------------------------------------

start prometheus prometheus \
  --config.file="$STACK_DIR/prometheus.yml" \
  --storage.tsdb.path="$STACK_DIR/prometheus-data" \
  --storage.tsdb.retention.time=30d --storage.tsdb.retention.size=10GB \
  --web.listen-address="127.0.0.1:$PROM_PORT" \
  --web.external-url="http://127.0.0.1:$PROM_PORT"
start alertmanager prometheus-alertmanager \
  --config.file="$STACK_DIR/alertmanager.yml" \
  --storage.path="$STACK_DIR/alertmanager-data" \
  --data.retention=120h \
  --web.listen-address="127.0.0.1:$AM_PORT" \
  --web.external-url="http://127.0.0.1:$AM_PORT" \
  "${am_cluster[@]}"
DATA_SOURCE_NAME="$PG_DSN" start postgres-exporter prometheus-postgres-exporter \
  --web.listen-address="127.0.0.1:$PG_EXPORTER_PORT"
start redis-exporter prometheus-redis-exporter \
  -redis.addr "$REDIS_ADDR" -web.listen-address "127.0.0.1:$REDIS_EXPORTER_PORT"

if [ "$REPLICAS" -gt 1 ]; then  # replicas: what the message below says about hitl-api
  HITL_SCRAPED="discovers $REPLICAS replicas from $STACK_DIR/hitl-api-targets.json"
  echo "hitl-api     http://127.0.0.1:$HITL_PORT   (HAProxy -> replicas on ports ${REPLICA_PORTS[*]}; stats http://127.0.0.1:$HAPROXY_STATS_PORT/stats)"
fi
cat <<MSG
monitoring stack running (logs in $STACK_DIR/*.log); Ctrl-C stops it
  Prometheus   http://127.0.0.1:$PROM_PORT   (${HITL_SCRAPED:-scrapes hitl-api on 127.0.0.1:$HITL_PORT: start it with make run})
  Alertmanager http://127.0.0.1:$AM_PORT
  exporters    postgres 127.0.0.1:$PG_EXPORTER_PORT, redis 127.0.0.1:$REDIS_EXPORTER_PORT
MSG

# ---------------------------------------------------------------- HA monitoring (HA=1)
# prometheus.yml (started above) is replica A; B, the second Alertmanager and
# VictoriaMetrics join it. Flags as in docker-compose.yml.
late() {  # the process started last stops in stop's second round
  late_pids+=("${pids[-1]}")
  unset 'pids[-1]'
}
if [ "$HA" = 1 ]; then
  start victoriametrics "$(command -v victoria-metrics || echo /usr/bin/victoria-metrics)" \
    -httpListenAddr="127.0.0.1:$VM_PORT" \
    -storageDataPath="$STACK_DIR/victoriametrics-data" \
    -retentionPeriod=1y \
    -dedup.minScrapeInterval="$VM_DEDUP"
  late
  start prometheus-b prometheus \
    --config.file="$STACK_DIR/prometheus-b.yml" \
    --storage.tsdb.path="$STACK_DIR/prometheus-b-data" \
    --storage.tsdb.retention.time=30d --storage.tsdb.retention.size=10GB \
    --web.listen-address="127.0.0.1:$PROM_B_PORT" \
    --web.external-url="http://127.0.0.1:$PROM_B_PORT"
  start alertmanager-b prometheus-alertmanager \
    --config.file="$STACK_DIR/alertmanager.yml" \
    --storage.path="$STACK_DIR/alertmanager-b-data" \
    --data.retention=120h \
    --web.listen-address="127.0.0.1:$AM_B_PORT" \
    --web.external-url="http://127.0.0.1:$AM_B_PORT" \
    --cluster.listen-address="127.0.0.1:$AM_B_CLUSTER_PORT" --cluster.peer="127.0.0.1:$AM_CLUSTER_PORT"
  late
  cat <<MSG
HA monitoring (HA=1):
  Prometheus B   http://127.0.0.1:$PROM_B_PORT   (replica B; http://127.0.0.1:$PROM_PORT is replica A)
  Alertmanager B http://127.0.0.1:$AM_B_PORT   (gossip 127.0.0.1:$AM_CLUSTER_PORT <-> 127.0.0.1:$AM_B_CLUSTER_PORT)
  VictoriaMetrics http://127.0.0.1:$VM_PORT   (both replicas remote-write; dedup $VM_DEDUP, 1 year)
MSG
fi
# ----------------------------------------------------------------

# If any process dies, say which and stop the rest: a half stack looks healthy but isn't.
set +e
wait -n
status=$?
echo "make stack: a process exited ($status); see $STACK_DIR/*.log" >&2
exit "$status"
