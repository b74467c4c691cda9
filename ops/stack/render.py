#!/usr/bin/env python3
"""Rewrite the compose stack's Prometheus and Alertmanager configs for loopback processes.

`make stack` (ops/stack/run.sh) and the end-to-end test run the very files the compose
stack runs (ops/prometheus/prometheus.yml, its rules, ops/alertmanager/alertmanager.yml);
only what differs without Docker is rewritten here:

* scrape targets: compose DNS names become 127.0.0.1:<port>; jobs with nothing to
  scrape on this machine (node, cAdvisor, Grafana, Loki, Jaeger) are dropped rather
  than left permanently down;
* rule files and templates: absolute paths, since the rendered file lives elsewhere;
* secrets: /run/secrets/<name> (compose secrets) becomes <secrets_dir>/<name>;
* the HA pair (a second run with --ha, `make stack HA=1`): prometheus.yml becomes replica
  A and prometheus-b.yml is B: the single config with both Alertmanagers, both replicas'
  self-scrapes, VictoriaMetrics and the replica label A / B (compose expands it from the
  environment). A lone Prometheus is replica A and writes to no remote storage.

With replicas (`make stack REPLICAS=3`), also: the HAProxy config in front of them
(ops/haproxy/haproxy.cfg.template) and a file_sd target file from which Prometheus
discovers every replica (compose keeps its DNS discovery for `--scale hitl-api=N`).

Job names, labels, rule files, routes and inhibitions are untouched, so every alert
and recording rule behaves as in compose.
"""

from __future__ import annotations

import argparse
import copy
import json
import string
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "ops" / "alertmanager" / "alertmanager.yml"
COMPOSE_SECRETS = "/run/secrets/"
LOOPBACK = "127.0.0.1"
HAPROXY_TEMPLATE = ROOT / "ops" / "haproxy" / "haproxy.cfg.template"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def prometheus_config(
    targets: dict[str, list[str]],
    alertmanager: str,
    *,
    source: dict[str, Any] | None = None,
    rule_files: list[str] | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
) -> dict[str, Any]:
    """The compose Prometheus config, scraping ``targets`` (job -> host:port) only.

    ``scrape_interval`` / ``evaluation_interval`` override every job's and the global
    pace (the end-to-end test runs at 1 s); by default the compose values stay.
    """
    config = copy.deepcopy(source if source is not None else load(PROMETHEUS_YML))
    for job, addresses in targets.items():
        for address in addresses:
            if not address.startswith(f"{LOOPBACK}:"):
                raise ValueError(f"{job}: {address} is not a loopback address")
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            continue
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[name])}]
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
            job.pop("scrape_timeout", None)
        jobs.append(job)
    missing = set(targets) - {j["job_name"] for j in jobs}
    if missing:
        raise ValueError(f"no such job in prometheus.yml: {sorted(missing)}")
    config["scrape_configs"] = jobs
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["scrape_timeout"] = scrape_interval
    if evaluation_interval:
        config["global"]["evaluation_interval"] = evaluation_interval
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    base = PROMETHEUS_YML.parent
    config["rule_files"] = rule_files or [str(base / pattern) for pattern in config["rule_files"]]
    one_replica(config)
    return config


# ---------------------------------------------------------------- HA monitoring
# The Prometheus HA pair, the Alertmanager cluster and VictoriaMetrics (`make stack HA=1`,
# tests/ha/test_monitoring_ha.py). Kept apart from the single-process rendering above:
# the pair is derived from whatever that rendering produced, so both replicas scrape
# exactly what the single Prometheus scrapes.

REPLICAS = ("A", "B")


def one_replica(config: dict[str, Any]) -> None:
    """A lone Prometheus: replica A (compose expands the label from each container's
    environment; a loopback process has none) and no remote storage to write to."""
    config["global"].setdefault("external_labels", {})["replica"] = REPLICAS[0]
    config.pop("remote_write", None)


def ha_prometheus_configs(
    single: dict[str, Any],
    *,
    prometheus: list[str],
    alertmanagers: list[str],
    victoriametrics: str,
    source: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Replica -> config of the HA pair, from a single-process config (prometheus_config).

    Both replicas alert to every Alertmanager, scrape both Prometheus and every
    Alertmanager (the same targets, so their samples deduplicate), scrape and
    remote-write to VictoriaMetrics with the compose config's write_relabel_configs, and
    differ in nothing but ``external_labels.replica``.
    """
    original = source if source is not None else load(PROMETHEUS_YML)
    for address in [*prometheus, *alertmanagers, victoriametrics]:
        if not address.startswith(f"{LOOPBACK}:"):
            raise ValueError(f"{address} is not a loopback address")
    base = copy.deepcopy(single)
    base["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": list(alertmanagers)}]}]
    own = {
        "prometheus": prometheus,
        "alertmanager": alertmanagers,
        "victoriametrics": [victoriametrics],
    }
    jobs = {job["job_name"]: job for job in base["scrape_configs"]}
    for name, targets in own.items():
        if name not in jobs:
            # Not scraped by a lone Prometheus (VictoriaMetrics): the compose job, which
            # follows the global interval, overridden or not.
            (job,) = [copy.deepcopy(j) for j in original["scrape_configs"] if j["job_name"] == name]
            base["scrape_configs"].append(job)
            jobs[name] = job
        jobs[name]["static_configs"] = [{"targets": list(targets)}]
    writes = copy.deepcopy(original["remote_write"])
    for write in writes:
        write["url"] = f"http://{victoriametrics}/api/v1/write"
    base["remote_write"] = writes
    configs = {}
    for replica in REPLICAS:
        config = copy.deepcopy(base)
        config["global"]["external_labels"]["replica"] = replica
        configs[replica] = config
    return configs


def dump_ha(args: argparse.Namespace) -> None:
    """The single-process prometheus.yml becomes replica A; prometheus-b.yml is B."""
    single = load(args.out / "prometheus.yml")
    def loopback(*ports: int) -> list[str]:
        return [f"{LOOPBACK}:{port}" for port in ports]

    configs = ha_prometheus_configs(
        single,
        prometheus=loopback(args.prometheus_port, args.prometheus_b_port),
        alertmanagers=loopback(args.alertmanager_port, args.alertmanager_b_port),
        victoriametrics=loopback(args.victoriametrics_port)[0],
    )
    dump(configs["A"], args.out / "prometheus.yml")
    dump(configs["B"], args.out / "prometheus-b.yml")


def add_ha_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HA monitoring (make stack HA=1)")
    group.add_argument(
        "--ha", action="store_true",
        help="only turn the prometheus.yml in --out into replica A, and write prometheus-b.yml",
    )
    group.add_argument("--prometheus-b-port", type=int, default=9092)
    group.add_argument("--alertmanager-b-port", type=int, default=9095)
    group.add_argument("--victoriametrics-port", type=int, default=8428)


# ---------------------------------------------------------------- Alertmanager


def alertmanager_config(
    secrets_dir: Path, *, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The compose Alertmanager config with secrets and templates found on this machine."""
    config = copy.deepcopy(source if source is not None else load(ALERTMANAGER_YML))
    base = ALERTMANAGER_YML.parent
    config["templates"] = [str(base / pattern) for pattern in config.get("templates", [])]
    return _replace_secret_paths(config, str(secrets_dir).rstrip("/") + "/")


def _replace_secret_paths(node: Any, directory: str) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                value.replace(COMPOSE_SECRETS, directory)
                if key.endswith("_file") and isinstance(value, str)
                else _replace_secret_paths(value, directory)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_replace_secret_paths(item, directory) for item in node]
    return node


# -- replicas: HAProxy and file-based discovery (make stack REPLICAS=N) -----------------


def replica_targets(ports: list[int]) -> list[str]:
    """host:port of each replica; refused unless distinct, since one port per replica
    is what gives each its own `instance` label."""
    if len(set(ports)) != len(ports):
        raise ValueError(f"replica ports must be distinct: {ports}")
    return [f"{LOOPBACK}:{port}" for port in ports]


def file_sd_targets(ports: list[int]) -> list[dict[str, Any]]:
    """The file_sd document for the replicas: one target group, the `instance` label
    being each target's own address (127.0.0.1:<port>), so no two replicas share one."""
    return [{"targets": replica_targets(ports), "labels": {}}]


def use_file_sd(config: dict[str, Any], job_name: str, sd_file: Path) -> dict[str, Any]:
    """``config`` with ``job_name`` discovering its targets from ``sd_file``
    (re-read when it changes) instead of static targets."""
    config = copy.deepcopy(config)
    for job in config["scrape_configs"]:
        if job["job_name"] == job_name:
            for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
                del job[key]
            job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "5s"}]
            return config
    raise ValueError(f"no such job in the Prometheus config: {job_name}")


def add_haproxy_job(config: dict[str, Any], stats_port: int) -> dict[str, Any]:
    """``config`` also scraping HAProxy's own exporter (backend and server states,
    retries, redispatches), at the pace of the stack's other infrastructure jobs."""
    config = copy.deepcopy(config)
    config["scrape_configs"].append(
        {"job_name": "haproxy", "static_configs": [{"targets": [f"{LOOPBACK}:{stats_port}"]}]}
    )
    return config


def haproxy_config(
    listen_port: int, replica_ports: list[int], stats_port: int, stats_socket: Path
) -> str:
    """ops/haproxy/haproxy.cfg.template for these replicas, every address on loopback."""
    servers = "\n".join(
        f"    server api-{number} {target}"
        for number, target in enumerate(replica_targets(replica_ports), start=1)
    )
    return string.Template(HAPROXY_TEMPLATE.read_text()).substitute(
        listen=f"{LOOPBACK}:{listen_port}",
        stats_listen=f"{LOOPBACK}:{stats_port}",
        stats_socket=str(stats_socket),
        servers=servers,
    )


def write_replica_files(
    out: Path, listen_port: int, replica_ports: list[int], stats_port: int
) -> None:
    """haproxy.cfg and the file_sd target file hitl-api-targets.json into ``out``."""
    (out / "haproxy.cfg").write_text(
        haproxy_config(listen_port, replica_ports, stats_port, out.resolve() / "haproxy.sock")
    )
    # Written whole then renamed: Prometheus must never read a half-written file.
    partial = out / "hitl-api-targets.json.tmp"
    partial.write_text(json.dumps(file_sd_targets(replica_ports), indent=2) + "\n")
    partial.replace(out / "hitl-api-targets.json")


# -- end of replicas ------------------------------------------------------------------


def dump(config: dict[str, Any], path: Path) -> None:
    path.write_text(
        "# GENERATED by ops/stack/render.py for loopback processes; edit the compose configs.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ha_arguments(parser)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hitl-port", type=int, default=8000)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument("--postgres-exporter-port", type=int, default=9187)
    parser.add_argument("--redis-exporter-port", type=int, default=9121)
    parser.add_argument(
        "--secrets-dir", type=Path, default=ROOT / "ops" / "alertmanager" / "secrets"
    )
    parser.add_argument(
        "--scrape-interval", help="override every job's interval (default: the compose values)"
    )
    # Replicas: HAProxy listens on --hitl-port, the replicas on these ports.
    parser.add_argument(
        "--replica-ports", type=int, nargs="*", default=[],
        help="ports of the hitl-api replicas behind HAProxy (none: one service on --hitl-port)",
    )
    parser.add_argument("--haproxy-stats-port", type=int, default=8404)
    args = parser.parse_args()
    if args.ha:
        dump_ha(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    alertmanager = f"{LOOPBACK}:{args.alertmanager_port}"
    targets = {
        "hitl-api": [f"{LOOPBACK}:{args.hitl_port}"],
        "postgres": [f"{LOOPBACK}:{args.postgres_exporter_port}"],
        "redis": [f"{LOOPBACK}:{args.redis_exporter_port}"],
        "prometheus": [f"{LOOPBACK}:{args.prometheus_port}"],
        "alertmanager": [alertmanager],
    }
    prometheus = prometheus_config(targets, alertmanager, scrape_interval=args.scrape_interval)
    if args.replica_ports:
        write_replica_files(
            args.out, args.hitl_port, args.replica_ports, args.haproxy_stats_port
        )
        # Absolute: Prometheus resolves a relative file_sd path against its config's
        # directory, which is args.out itself.
        sd_file = args.out.resolve() / "hitl-api-targets.json"
        prometheus = use_file_sd(prometheus, "hitl-api", sd_file)
        prometheus = add_haproxy_job(prometheus, args.haproxy_stats_port)
    dump(prometheus, args.out / "prometheus.yml")
    dump(alertmanager_config(args.secrets_dir.resolve()), args.out / "alertmanager.yml")


if __name__ == "__main__":
    main()
