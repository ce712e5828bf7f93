# lastmile — two commands do all set-up: `make demo` runs the main job, `make test` the tests.
# Both create .venv when missing and install the exact pins from requirements.lock.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed

export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast bench dbt-build lock clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) pip install --python $(PY) --compile-bytecode --quiet -r requirements.lock
	$(UV) pip install --python $(PY) --no-deps --quiet -e .
	$(PY) -m lastmile.dbt_chdb install
	@touch $(STAMP)

install: $(STAMP)

## The main job end to end on the embedded stack (chDB, DirectRunner). Idempotent.
demo: install
	$(VENV)/bin/lastmile run

## All tests, including the slow engine tests (JVM, broker, dbt), a test file per CPU at a time.
test: install
	$(PY) -m pytest -n auto --dist loadfile

## Only the fast tests: no engine start-up.
test-fast: install
	$(PY) -m pytest -n auto --dist loadfile -m "not slow"

## Benchmarks: each prints figures and ends with one JSON line.
bench: install
	$(PY) bench/ingest.py
	$(PY) bench/identity.py
	$(PY) bench/telemetry.py
	$(PY) bench/dbt_build.py
	$(PY) bench/serving.py
	$(PY) bench/stream.py
	$(PY) bench/board.py
	$(PY) bench/audiences.py
	$(PY) bench/journeys.py
	$(PY) bench/forecast.py --replay
	$(PY) bench/fuzz.py

## dbt from the command line, on the embedded warehouse (or LASTMILE_CLICKHOUSE_URL).
dbt-build: install
	DBT_PROFILES_DIR=dbt $(VENV)/bin/dbt build --project-dir dbt

## Re-resolve the pins after changing pyproject.toml.
lock: install
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf .lastmile .pytest_cache
