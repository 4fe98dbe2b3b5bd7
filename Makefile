PYTHON ?= python3

.PHONY: serve test test-all install

serve:  ## install, then serve the embedded tiny model on http://127.0.0.1:8000
	./scripts/install.sh
	dserve

test:  ## install with test extras, then run the default (fast) test suite
	./scripts/install.sh --test
	$(PYTHON) -m pytest -q

test-all:  ## also the slow tests
	./scripts/install.sh --test
	$(PYTHON) -m pytest -q -m "not gpu"
