# ebmm: two commands on a fresh clone, `make run` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test test-data browser test-fast demo data bench bench-service report lint compose-config compose-smoke clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch that lies on this disk, before anything can ask for a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(VENV)/bin/ebmm serve --host $(HOST) --port $(PORT)

demo: install
	$(VENV)/bin/ebmm demo

# what the shipped-model tests need, fetched once into ~/.cache/ebmm/data (13 s; offline afterwards)
test-data: install
	$(VENV)/bin/ebmm data fetch characters

# Debian's chromium for the web-page tests (apt-get when missing)
browser:
	bash scripts/install_browser.sh

test: install test-data browser
	$(VENV)/bin/ruff check model service tests
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not integration"

data: install
	$(VENV)/bin/ebmm data fetch

bench: install
	$(VENV)/bin/ebmm bench --out results/bench.json

bench-service: install
	$(VENV)/bin/ebmm bench-service --url http://$(HOST):$(PORT)

report: install
	$(VENV)/bin/ebmm report

compose-config: install
	$(PY) -m pytest -q tests/deploy/test_static.py

compose-smoke: install
	PY=$(abspath $(PY)) bash scripts/compose_smoke.sh

lint: install
	$(VENV)/bin/ruff check model service tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
