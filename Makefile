# rtfeatures — two commands for a newcomer: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint unit bench clean
.DEFAULT_GOAL := help

help:
	@echo "make run    - the main job on this machine, then a table of features"
	@echo "make test   - install everything into .venv and run the whole suite"
	@echo "make lint | unit | bench | clean"

# Python deps into .venv; redis-server from Debian if missing. A second run is a no-op.
install: $(STAMP)
$(STAMP): setup.py
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt)"; \
	  (apt-get install -y -q redis-server || (apt-get update -q && apt-get install -y -q redis-server)) >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

run: install
	$(PY) -m runners.demo

lint: install
	$(VENV)/bin/ruff check .

unit: install
	$(PY) -m pytest -q tests/unit tests/streaming

test: install lint
	$(PY) -m doctest transforms/exact.py transforms/late.py transforms/merge.py
	$(PY) -m pytest -q tests

clean:
	rm -rf out .pytest_cache .hypothesis
