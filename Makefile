# Stackport: `make run` serves the portal with its worker; `make test` runs the whole suite.
# Both set up everything they need on a fresh Debian 12 machine (as root) and are idempotent.

SHELL := /bin/bash
PYTHON ?= $(shell [ -x /usr/bin/python3.11 ] && echo /usr/bin/python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
MANAGE := $(PY) manage.py

# Names one `make test`: its pytest runs share the catalog they verified (tests/stacks/conftest.py).
TEST_RUN := $(shell date +%s%N)

# Test configuration: real PostgreSQL and Redis on loopback (started if down).
TEST_ENV := DJANGO_ENV=test \
	DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/stackport} \
	CACHE_URL=redis://127.0.0.1:6379/2 \
	CELERY_BROKER_URL=redis://127.0.0.1:6379/3 \
	CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/4 \
	STACKPORT_VAR_DIR=$(CURDIR)/var/test \
	STACKPORT_TEST_RUN=$(TEST_RUN)

.PHONY: run test setup system-deps system-deps-test services engine lint fmt clean lock

run: system-deps setup engine
	./scripts/run.sh

# Tests run in parallel (pytest-xdist): fast ones spread over the workers, slow ones grouped so
# those sharing an engine-wide resource never overlap (tests/conftest.py). PYTEST_ARGS="-n 0"
# runs them one after another. Tests marked `exclusive` run afterwards, alone (none at the
# moment: exit status 5, "no tests collected", is fine): they assert the
# engine's network isolation, whose iptables rules the engine does not change atomically while
# other networks are made and removed (moby/moby#25393).
PYTEST_ARGS ?= -n 3 --dist loadgroup

test: system-deps-test services setup engine lint
	redis-cli -h 127.0.0.1 -n 2 flushdb >/dev/null
	$(TEST_ENV) $(VENV)/bin/pytest $(PYTEST_ARGS) -m "not exclusive"
	$(TEST_ENV) $(VENV)/bin/pytest -m exclusive || [ $$? = 5 ]

setup: $(VENV)/.installed static/vendor/.installed

system-deps:
	./scripts/system-deps.sh run

system-deps-test:
	./scripts/system-deps.sh test

services:
	./scripts/services.sh

# A real Docker Engine, the local registry, the Debian base images (each cached) and the
# edge router (HAProxy; scripts/caddy.sh starts Caddy for STACKPORT_EDGE_ROUTER=...caddy).
engine:
	./scripts/docker-engine.sh
	./scripts/registry.sh
	./scripts/base-images.sh
	./scripts/haproxy.sh

# Python packages pinned by constraints.txt (regenerate with `make lock`).
$(VENV)/.installed: pyproject.toml constraints.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Front-end libraries from npm (package-lock.json), copied into static/vendor/.
static/vendor/.installed: package.json package-lock.json scripts/vendor-static.sh
	./scripts/vendor-static.sh
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy portal projects stacks billing

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lock: $(VENV)/.installed
	$(PY) -m pip freeze --exclude-editable | grep -v '^stackport' > constraints.txt

clean:
	rm -rf $(VENV) node_modules static/vendor var
