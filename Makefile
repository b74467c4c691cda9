# The two commands a newcomer needs: `make run` and `make test`. Everything they
# depend on is installed by the targets below, so a fresh clone works with nothing
# done by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HITL_HOST ?= 127.0.0.1
HITL_PORT ?= 8000
HITL_API_KEYS_FILE ?= $(CURDIR)/.local/api-keys.json
export HITL_HOST HITL_PORT HITL_API_KEYS_FILE

.PHONY: run test bench bench-queue stack rules lint typecheck tools services lock clean screenshots

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## Serve on $(HITL_HOST):$(HITL_PORT) against the local PostgreSQL and Redis.
run: $(VENV)/.installed services
	$(PY) -m service createdb
	$(PY) -m service migrate
	@$(PY) -m service dev-key
	$(PY) -m service serve

## Install everything, make sure the backing servers answer, lint, type-check, and run
## the whole suite.
test: $(VENV)/.installed tools services
	$(VENV)/bin/ruff check service telemetry tests ops
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks of issue 10, never part of `make test` (~10 min): telemetry's cost on a
## no-I/O route against bare aiohttp and the stock OTel/aioprometheus/structlog peer,
## the real API open-loop, /metrics at scale, a soak. Rewrites the results block of
## docs/benchmarks.md and docs/images/benchmarks.png. BENCH_ARGS passes options
## (`$(PY) -m tests.benchmarks.run --help`); PROFILE=1 (sample100) or PROFILE=<config>
## profiles that configuration with py-spy instead.
BENCH_ARGS ?=
PROFILE ?=
bench: $(VENV)/.installed-bench services
	bash tests/benchmarks/install-tools.sh
	$(PY) -m tests.benchmarks.run $(BENCH_ARGS) \
	  $(if $(PROFILE),--profile $(if $(filter 1,$(PROFILE)),sample100,$(PROFILE))) \
	  '--invoked-as=make bench$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")$(if $(PROFILE), PROFILE=$(PROFILE))'

## Issue 14: list, get and stats latencies at 1,000 and 1,000,000 reviews, seeded in
## throwaway databases, Redis unreachable (~2-3 min; not part of `make test`). Prints a
## table for docs/benchmarks.md; QUEUE_ARGS passes options
## (`$(PY) -m tests.benchmarks.queue_scale --help`), e.g. QUEUE_ARGS=--shape=uniform.
QUEUE_ARGS ?=
bench-queue: $(VENV)/.installed services
	$(PY) -m tests.benchmarks.queue_scale --markdown $(QUEUE_ARGS)

# The bench extra on top of dev; rebuilt whenever the dev install is.
$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

## Issue 13: PNGs of the reviewer console for the README (docs/images/console-*.png):
## the service with sample APVs in a throwaway database, headless chromium at 1280x900.
screenshots: $(VENV)/.installed tools services
	$(PY) -m tests.console.screenshots

## Debian packages the tests drive (promtool, Alertmanager, exporters, docker-compose).
tools:
	bash ops/local/install-tools.sh

## Start the machine's PostgreSQL and Redis if they do not answer.
services:
	bash ops/local/ensure-services.sh

## Regenerate SLO recording rules and burn-rate alerts from ops/slo.yml, then the
## prometheus-operator PrometheusRule from every file of ops/prometheus/rules/.
rules: $(VENV)/.installed
	$(PY) ops/slo/generate.py
	$(PY) ops/kubernetes/generate_rules.py

## Prometheus, Alertmanager and exporters as plain processes on loopback (no Docker).
## REPLICAS=N (e.g. `make stack REPLICAS=3`) also runs N service replicas behind HAProxy
## on $(HITL_PORT), migrations applied once first; the default 1 runs no service.
REPLICAS ?= 1
stack: $(VENV)/.installed tools services
	REPLICAS=$(REPLICAS) bash ops/stack/run.sh

## Regenerate the runtime lock file (exact versions + hashes, from PyPI, for Python 3.11
## on Linux) that the Dockerfile installs. Pins already in the file are kept while
## setup.cfg allows them; `make lock LOCK_FLAGS=--upgrade` moves everything to the newest.
LOCK := ops/requirements/runtime.lock.txt
LOCK_TOOLS := .local/lock-tools
UV_VERSION := 0.13.8
LOCK_INDEX_URL ?= https://pypi.org/simple
LOCK_FLAGS ?=
lock:
	rm -rf $(LOCK_TOOLS)
	$(PYTHON) -m venv $(LOCK_TOOLS)
	PIP_CONFIG_FILE=/dev/null $(LOCK_TOOLS)/bin/pip install -q --index-url $(LOCK_INDEX_URL) uv==$(UV_VERSION)
	env -u UV_EXTRA_INDEX_URL -u UV_FIND_LINKS -u UV_INDEX -u UV_DEFAULT_INDEX \
	  $(LOCK_TOOLS)/bin/uv pip compile setup.cfg --quiet --no-config --generate-hashes \
	  --index-url $(LOCK_INDEX_URL) --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --custom-compile-command "make lock" $(LOCK_FLAGS) -o $(LOCK)
	rm -rf $(LOCK_TOOLS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check service telemetry tests ops

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .local .pytest_cache *.egg-info
