# Nudge: `make run` for a first run on SQLite, `make test` for the whole suite on PostgreSQL.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

.env:
	$(BIN)/python scripts/make_env.py > .env

run: install .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py nudge_demo
	PATH="$(CURDIR)/$(BIN):$$PATH" exec honcho start --procfile Procfile --port $(PORT)

test: install
	scripts/services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .mypy_cache .ruff_cache
