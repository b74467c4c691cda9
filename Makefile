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

.PHONY: run test stack rules lint typecheck tools services clean

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

## Debian packages the tests drive (promtool, Alertmanager, exporters, docker-compose).
tools:
	bash ops/local/install-tools.sh

## Start the machine's PostgreSQL and Redis if they do not answer.
services:
	bash ops/local/ensure-services.sh

## Regenerate SLO recording rules and burn-rate alerts from ops/slo.yml.
rules: $(VENV)/.installed
	$(PY) ops/slo/generate.py

## Prometheus, Alertmanager and exporters as plain processes on loopback (no Docker).
stack: $(VENV)/.installed tools
	bash ops/stack/run.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check service telemetry tests ops

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .local .pytest_cache *.egg-info
