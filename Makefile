PYTHON ?= python3

.PHONY: serve test test-all lint install

serve:  ## install, then serve the embedded tiny model on http://127.0.0.1:8000
	./scripts/install.sh
	dserve

test:  ## install with test extras, lint and type-check, then run the default (fast) test suite
	./scripts/install.sh --test
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest -q

lint:  ## ruff (lint and format) and mypy, as configured in pyproject.toml
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

test-all:  ## also the slow tests (and lm-eval, which they use)
	./scripts/install.sh --test-all
	$(PYTHON) -m pytest -q -m "not gpu"
