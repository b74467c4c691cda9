#!/usr/bin/env bash
# Instructions per request of one throughput configuration, counted by callgrind.
#
#   bash tests/benchmarks/instructions.sh CONFIG [REQUESTS]   # CONFIG: bare off sample10 sample100 stock
#   (to measure an older commit: check it out in a worktree, copy tests/benchmarks/
#   into it, and run the script there with PY=/path/to/this/checkout/.venv/bin/python)
#
# Throughput on this shared 2-core machine drifts by ±30 % between runs; an instruction
# count does not (the same total twice, whatever else runs). The server runs under
# valgrind with instrumentation off while it starts and warms up, on while `hey` sends
# REQUESTS requests (4 connections), then the count is dumped per thread: the event
# loop's instructions and the span exporter thread's, each divided by REQUESTS. The
# kernel's work (socket and log writes) is not counted: it is the same for every
# configuration. The OTLP sink runs outside valgrind.
set -euo pipefail
config=${1:?usage: instructions.sh CONFIG [REQUESTS]}
requests=${2:-2000}
here=$(cd "$(dirname "$0")/../.." && pwd)
py=${PY:-$here/.venv/bin/python}  # PY=...: another interpreter (e.g. the venv of another checkout)
for tool in valgrind callgrind_control hey curl; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install valgrind hey curl)" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
port=$(free_port)
(cd "$here" && exec "$py" -m tests.benchmarks.sink --port "$sink_port" >"$work/sink.log" 2>&1) &
pids+=($!)
(cd "$here" && exec valgrind --tool=callgrind --separate-threads=yes \
  --instr-atstart=no --callgrind-out-file="$work/cg.%p" \
  "$py" -m tests.benchmarks.apps "$config" --port "$port" --sink "http://127.0.0.1:$sink_port" \
  >"$work/server.log" 2>"$work/valgrind.log") &
server=$!
pids+=("$server")
up=""
for _ in $(seq 240); do
  if curl -fs -o /dev/null "http://127.0.0.1:$port/api/bench"; then up=1; break; fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.5
done
[ -n "$up" ] || { echo "instructions.sh: the $config server did not start:" >&2; tail -5 "$work/server.log" "$work/valgrind.log" >&2; exit 1; }
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$port/api/bench"; done
callgrind_control -i on "$server" >/dev/null 2>&1
hey -n "$requests" -c 4 "http://127.0.0.1:$port/api/bench" >"$work/hey.txt"
callgrind_control -i off "$server" >/dev/null 2>&1
callgrind_control -d "$server" >/dev/null 2>&1
sleep 1
ok=$(awk '/\[200\]/ {print $2}' "$work/hey.txt")
[ "${ok:-0}" = "$requests" ] || { echo "instructions.sh: only ${ok:-0} of $requests requests answered 200" >&2; exit 1; }
total=0
threads=""
for f in "$work"/cg.*.1-*; do
  n=$(awk '/^totals:/ {print $2}' "$f")
  [ "${n:-0}" -gt 0 ] || continue
  total=$((total + n))
  threads="$threads $((n / requests))"
done
echo "$config: $((total / requests)) instructions per request (per thread:$threads)"
