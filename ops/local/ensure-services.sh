#!/usr/bin/env bash
# Make sure the machine's shared PostgreSQL and Redis answer; start them with the
# machine's own commands when they do not. Never stops either of them.
set -euo pipefail

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if ! pg_ready; then
  echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! redis_ready; then
  echo "Redis is not answering on 127.0.0.1:6379; starting it" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
  if pg_ready && redis_ready; then exit 0; fi
  sleep 1
done
pg_ready || { echo "PostgreSQL still not answering on 127.0.0.1:5432" >&2; exit 1; }
redis_ready || { echo "Redis still not answering on 127.0.0.1:6379" >&2; exit 1; }
