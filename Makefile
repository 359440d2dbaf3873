# `make demo` and `make test` set everything up on a fresh machine (a .venv with pinned requirements and the C++
# extension built in place), then run the default job or the tests (CPU only). `make demo` installs only what the
# demo needs (requirements-demo.txt); `make test` the whole pinned set (requirements.txt). `make gpu-check` proves
# GPU readiness without a GPU (tools/gpu_check.sh: a CUDA build in a cached venv of its own).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
BUILD_INPUTS := pyproject.toml setup.py $(wildcard csrc/*) $(wildcard kernels/*) $(wildcard include/kale_fast/*)

.PHONY: setup demo test bench gpu-check

$(VENV)/.demo-installed: requirements-demo.txt $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-demo.txt
	$(PIP) --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.installed: requirements.txt $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-build-isolation --no-deps -e .
	touch $@ $(VENV)/.demo-installed

setup: $(VENV)/.installed

# The default job (under 2 minutes on 2 quiet CPU cores, see docs/RESULTS.md): a GEBM on the 2-D 8-Gaussians toy.
# A base trained jointly with an energy for 1000 rounds (runs/toy-8gaussians, not evaluated), then the fine-tuning
# stage, a fresh energy on the frozen base (600 rounds at lr 3e-3, its best validation state kept), evaluated:
# runs/toy-8gaussians-tuned/{summary.json,samples.png,energy.png,metric-vs-steps.png,training.png}. The configs'
# own n_iter and lr_energy (2000 rounds each, lr 1e-3) are those of docs/RESULTS.md's runs, about twice as long.
# Fresh runs each time: the previous demo runs are removed. One thread: these MLPs are too small to share out
# (measured on a loaded 2-core machine: the joint stage took 461 CPU-s with torch's default threads, 60 with one).
demo: $(VENV)/.demo-installed
	rm -rf runs/toy-8gaussians runs/toy-8gaussians-tuned
	OMP_NUM_THREADS=1 $(VENV)/bin/kale-fast train --config toy_8gaussians --n-iter 1000 --no-eval
	OMP_NUM_THREADS=1 $(VENV)/bin/kale-fast train --config toy_8gaussians_tuned --n-iter 600 --lr-energy 3e-3 \
		--validate-every 50

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m benchmarks

gpu-check:
	bash tools/gpu_check.sh
