# `make demo` and `make test` set everything up on a fresh machine (a .venv with the pinned requirements and
# the C++ extension built in place), then run the default job or the tests (CPU only). `make gpu-check`
# proves GPU readiness without a GPU (tools/gpu_check.sh: a CUDA build in a cached venv of its own).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench gpu-check

$(VENV)/.installed: requirements.txt pyproject.toml setup.py $(wildcard csrc/*) $(wildcard kernels/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# The default job: train a GEBM on a 2-D toy (a fresh run each time: the previous demo run is removed) and
# write runs/toy-8gaussians/{summary.json,samples.png,energy.png,metric-vs-steps.png,training.png,metrics.jsonl}.
demo: setup
	rm -rf runs/toy-8gaussians
	$(VENV)/bin/kale-fast train --config configs/toy_8gaussians.yaml

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks

gpu-check:
	bash tools/gpu_check.sh
