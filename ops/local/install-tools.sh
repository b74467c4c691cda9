#!/usr/bin/env bash
# Install the Debian packages the test-suite drives: promtool/Prometheus,
# Alertmanager/amtool, the exporters, docker-compose (config validation only),
# python3-venv (the packaging test installs the wheel with the pip Debian's venv ships),
# HAProxy and VictoriaMetrics (replicas and long-term storage, issue 12), and Chromium
# with its WebDriver (the reviewer console's browser tests, issue 13).
# Idempotent and quick when everything is present. The packages' init scripts are
# kept from starting daemons: tests start their own processes on free loopback ports.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ -x /usr/bin/prometheus-postgres-exporter ] || need+=(prometheus-postgres-exporter)
[ -x /usr/bin/prometheus-redis-exporter ] || need+=(prometheus-redis-exporter)
[ -x /usr/bin/prometheus-node-exporter ] || need+=(prometheus-node-exporter)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/bin/victoria-metrics ] || need+=(victoria-metrics)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# python3-venv brings ensurepip's bundled pip (python3-pip-whl) for /usr/bin/python3.
dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'install ok installed' \
  || need+=(python3-venv)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}" >&2
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
