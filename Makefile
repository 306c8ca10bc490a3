# Nudge: `make run` for a first run on SQLite, `make test` for the whole suite on PostgreSQL.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000

.PHONY: install run test lint bench profile chaos clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[site,dev]'
	@touch $(STAMP)

install: $(STAMP)

.env:
	$(BIN)/python scripts/make_env.py > .env

run: install .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py nudge_demo
	PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/python scripts/start.py --procfile Procfile --port $(PORT)

# pytest-xdist workers: most tests wait on PostgreSQL, servers or subprocesses, so one more
# worker than cores pays off; 4 was slower on 2 cores (tests/conftest.py: what each has).
# Serially: make test PYTEST_ARGS="-n 0"; one file: make test PYTEST_ARGS="-n 0 tests/x.py".
PYTEST_WORKERS ?= 3

test: install
	scripts/services.sh $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# The benchmark's PostgreSQL is durable like a production one (fsync and synchronous commit
# on, unlike the test suite's) and tuned as one would tune a dedicated server: see the README,
# "Performance and tuning". Scale and other flags: make bench ARGS="--pending 1000000".
BENCH_PG_OPTIONS ?= -c fsync=on -c synchronous_commit=on -c full_page_writes=on \
  -c shared_buffers=2GB -c effective_cache_size=8GB -c work_mem=16MB \
  -c maintenance_work_mem=1GB -c max_wal_size=8GB -c checkpoint_timeout=15min \
  -c wal_compression=on -c random_page_cost=1.1 -c autovacuum_naptime=10s \
  -c autovacuum_vacuum_scale_factor=0.02 -c autovacuum_analyze_scale_factor=0.02

bench: install
	NUDGE_PG_OPTIONS="$(BENCH_PG_OPTIONS)" scripts/services.sh $(BIN)/python -m bench $(ARGS)

profile: install
	NUDGE_PG_OPTIONS="$(BENCH_PG_OPTIONS)" scripts/services.sh $(BIN)/python -m bench.profile $(ARGS)

# The fault-injection run (issue 14): real processes, faults, and a checker; exits 1 on any
# violation. Scale and other flags: make chaos ARGS="--events 3000 --window 60".
chaos: install
	@command -v faketime >/dev/null || { echo "chaos: installing Debian's faketime"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime >/dev/null \
	  || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime >/dev/null; }; }
	NUDGE_PG_OPTIONS="$(BENCH_PG_OPTIONS)" scripts/services.sh $(BIN)/python -m chaos $(ARGS)

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .mypy_cache .ruff_cache
