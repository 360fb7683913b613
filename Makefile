# Ordinaut developer commands. The README's two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ordinaut
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test test-sqlite check lint format requirements bench bench-b3 reliability-r1 reliability-r2 reliability-r3 reliability-r4 clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Ordinaut needs Python 3.11 or newer; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.base: $(BIN)/python requirements/base.txt
	$(BIN)/python -m pip install --quiet -r requirements/base.txt
	@touch $@

$(VENV)/.dev: $(VENV)/.base requirements/dev.txt
	$(BIN)/python -m pip install --quiet -r requirements/base.txt -r requirements/dev.txt
	@touch $@

## run: set up and start web, worker, beat and Flower on SQLite (or $DATABASE_URL)
run: $(VENV)/.base
	$(BIN)/python -m ordinaut_site.quickstart

# The SQLite lane: the quick start's database runs the spine, engine, scheduler and sweeper tests
# too, so the ORM side of every PostgreSQL fast path (step claim, step success, step load) is tested.
SQLITE_LANE ?= tests/e2e/test_spine.py tests/tasks/test_scheduler.py tests/tasks/test_fire.py \
	tests/runs/test_engine.py tests/runs/test_step_records.py tests/runs/test_step_idempotency.py \
	tests/runs/test_sweeper.py tests/runs/test_foreach.py tests/pipelines/test_dry_run.py
SQLITE_LANE_DIR ?= var/test-sqlite

## test: set up and run the whole suite against PostgreSQL and Redis, then the SQLite lane
test: $(VENV)/.dev
	DATABASE_URL="$(TEST_DATABASE_URL)" REDIS_URL="$(TEST_REDIS_URL)" \
	SECRET_KEY="test-only-secret-key-not-for-production" \
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@if [ -z "$(PYTEST_ARGS)" ]; then $(MAKE) --no-print-directory test-sqlite; fi

## test-sqlite: the SQLite lane alone (a file database, so the real worker and beat share it)
test-sqlite: $(VENV)/.dev
	@echo "[test] SQLite lane: $(SQLITE_LANE)"
	rm -rf "$(SQLITE_LANE_DIR)" && mkdir -p "$(SQLITE_LANE_DIR)"
	DATABASE_URL="sqlite:///$(abspath $(SQLITE_LANE_DIR))/ordinaut.sqlite3" \
	TEST_DATABASE_NAME="$(abspath $(SQLITE_LANE_DIR))/test.sqlite3" REDIS_URL="$(TEST_REDIS_URL)" \
	SECRET_KEY="test-only-secret-key-not-for-production" \
	$(BIN)/python -m pytest -q $(SQLITE_LANE)

## check: lint and type-check
check: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	SECRET_KEY=type-check-only $(BIN)/mypy .

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## requirements: recompile the pinned requirements from requirements/*.in
requirements: $(VENV)/.dev
	$(BIN)/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links requirements/base.in -o requirements/base.txt
	$(BIN)/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links requirements/dev.in -o requirements/dev.txt

## bench: B1-B6 one after the other (QUICK=1: each one's quick variant), a table at the end and one
## report, perf-report.json, with py-spy profiles in var/bench-profiles/; needs wrk (apt-get install -y wrk).
## See docs/benchmarks.md
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || { echo "make bench: wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
	$(BIN)/python tests/perf/bench_all.py $(if $(QUICK),--quick,)

## bench-b3: B3 scheduler benchmark, 10,000 tasks (QUICK=1: 1,000, about a minute; LARGE=1: 100,000 tasks,
## stock django-celery-beat capped at 10 minutes, about 20 minutes); see docs/benchmarks.md
bench-b3: $(VENV)/.dev
	$(BIN)/python tests/perf/bench_scheduler.py $(if $(QUICK),--quick,) $(if $(LARGE),--large,)

## reliability-r1, reliability-r3: fault suites (docs/benchmarks.md): the long profile; QUICK=1 for the one-minute one that
## `make test` runs too. R1: kill -9 a worker every 30 s under load; R3: two beats over 1,000 schedules, the
## leader killed. Reports in var/reliability-rN.json. The long profiles run past the default run's 300 s
## per-test timeout: 2,400 s for them.
RELIABILITY_RUN = DATABASE_URL="$(TEST_DATABASE_URL)" REDIS_URL="$(TEST_REDIS_URL)" \
	SECRET_KEY="test-only-secret-key-not-for-production" RELIABILITY_PROFILE="$(if $(QUICK),quick,long)" \
	$(BIN)/python -m pytest -o addopts="-ra --strict-markers -p no:cacheprovider" -o timeout=$(if $(QUICK),300,2400) -s -q
reliability-r1: $(VENV)/.dev
	$(RELIABILITY_RUN) tests/reliability/test_r1_worker_kill.py
reliability-r3: $(VENV)/.dev
	$(RELIABILITY_RUN) tests/reliability/test_r3_beat_failover.py
## reliability-r2: R2, beat killed, then Redis and PostgreSQL restarted while 60 tasks fire every 5 s, three
## rounds (QUICK=1: 30 tasks, one round); private PostgreSQL and Redis on loopback. Report in var/reliability-r2.json
reliability-r2: $(VENV)/.dev
	$(RELIABILITY_RUN) tests/reliability/test_r2_restarts.py

## reliability-r4: R4 schemathesis long profile, >= 1,000 generated requests (EXAMPLES=N per operation and mode,
## default 50; QUICK=1 for 20; R4_SEED=N replays a run); report in var/reliability-r4.json. See docs/benchmarks.md
reliability-r4: $(VENV)/.dev
	DATABASE_URL="$(TEST_DATABASE_URL)" REDIS_URL="$(TEST_REDIS_URL)" \
	SECRET_KEY="test-only-secret-key-not-for-production" \
	R4_EXAMPLES="$(if $(QUICK),20,$(EXAMPLES))" R4_SEED="$(R4_SEED)" \
	$(BIN)/python -m pytest -o addopts="-ra --strict-markers -p no:cacheprovider" -s -q \
	tests/reliability/test_r4_schemathesis.py

## reliability-r7: R7, four hosts in network namespaces (data, control, two workers), one worker host cut
## off under load and brought back (R7_RUNS=N runs, default 40; needs root); see docs/benchmarks.md
reliability-r7: $(VENV)/.dev
	SECRET_KEY="test-only-secret-key-not-for-production" R7_RUNS="$(or $(R7_RUNS),$(if $(QUICK),40,300))" \
	$(BIN)/python -m pytest -o addopts="-ra --strict-markers -p no:cacheprovider" -s -q \
	tests/reliability/test_r7_multihost.py

clean:
	rm -rf $(VENV) var
