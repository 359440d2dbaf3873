#!/usr/bin/env bash
# One device-tool call on the GPU machine: build (CUDA module included), run the tests (the CUDA and Triton
# backends run there on CUDA tensors), then the full benchmark. Results land in benchmarks/results/ and are
# copied to $OUT, to be committed from the development machine.
#   device run: bash benchmarks/gpu.sh
set -euo pipefail
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
python -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -x tests 2>&1 | tee "$OUT/tests.log" | tail -5
python -m benchmarks 2>&1 | tee "$OUT/bench.log" | tail -30
cp benchmarks/results/*-cuda.json benchmarks/RESULTS.md "$OUT/"
