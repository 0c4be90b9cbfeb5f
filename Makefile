# rtfeatures — two commands for a newcomer: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
RTF_PY := $(PY)
STAMP := $(VENV)/.installed

.PHONY: help install run test lint unit e2e clean
.DEFAULT_GOAL := help

help:
	@echo "make run    - the main job: Kafka -> Flink (RocksDB, checkpoints) -> Redis, then features"
	@echo "make test   - install everything (make install) and run the whole suite"
	@echo "make unit | lint | e2e | bench | bench-quick | services-up | services-down | clean"

# Python deps into .venv, redis-server from Debian if missing, and the JVM
# runtime (Kafka, Flink, Beam job server jars, the schema registry, via Maven) into
# ~/.cache/rtfeatures.
# A second run does nothing.
install: $(STAMP) install-runtime
	@$(PY) -m runners.versions
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

e2e: install
	$(PY) -m pytest -q -s tests/e2e

test: install lint
	$(PY) -m doctest transforms/avro.py transforms/exact.py transforms/late.py transforms/merge.py transforms/state_layout.py transforms/declarations.py transforms/aggregations.py pipelines/kafka_dialects.py pipelines/labels.py
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf out .pytest_cache .hypothesis

include runners/Makefile.inc
include benchmarks/Makefile.inc
-include tests/faults/Makefile.inc
