# `make demo` and `make test` set everything up on a fresh machine (a .venv with the pinned requirements and
# the C++ extension built in place), then run the default job or the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench

$(VENV)/.installed: requirements.txt pyproject.toml setup.py $(wildcard csrc/*) $(wildcard kernels/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m benchmarks --quick

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks
