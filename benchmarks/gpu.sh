#!/usr/bin/env bash
# The GPU run, in two device-tool calls of under 600 s each (results land in $OUT, to be committed from the
# development machine):
#   bash benchmarks/gpu.sh build-test   # build kale_fast._C with its CUDA kernels, check the registrations,
#                                       # run the whole test suite (no -x) on the GPU
#   bash benchmarks/gpu.sh bench        # the benchmark suite at the recorded sizes; the integrator updates
#                                       # on the Triton and on the CUDA backend (the CUDA-vs-Triton decision)
# Every step runs under a time limit (its own, cut to what is left of GPU_SH_BUDGET_S, 570 s by default, so
# that the call returns its results inside the device tool's 600 s) and records its log and exit status in
# $OUT/status.txt; a failed step never stops the rest, and the script exits non-zero if any step failed.
# Run bench right after build-test, on the machine still warm, so that it need not build again.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
failed=0
budget=${GPU_SH_BUDGET_S:-570}

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, output to $OUT/NAME.log, status recorded.
step() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  (( limit > budget - SECONDS )) && limit=$((budget - SECONDS))
  if (( limit < 5 )); then
    echo "$name skipped: no time left" | tee -a "$OUT/status.txt"; failed=1; return 1
  fi
  timeout "$limit" bash -c '"$@"' step "$@" > "$OUT/$name.log" 2>&1  # bash -c: commands or exported functions
  rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/status.txt"
  if [[ $rc -ne 0 ]]; then failed=1; tail -15 "$OUT/$name.log"; fi
  return $rc
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
              "cuda", torch.version.cuda, "triton", triton.__version__)'
  nvcc --version | tail -2
  nproc; uptime
}

build() {
  CUDA_HOME=$(bash tools/cuda_home.sh) || return 1
  export CUDA_HOME
  echo "CUDA_HOME=$CUDA_HOME"
  python3 -m pip install --no-build-isolation --no-deps -e . || return 1
  python3 -c 'import kale_fast.ops._backend as b, sys; r = b._AVAILABILITY["cuda"]["cuda"]; print("cuda backend:", r or "available"); sys.exit(r is not None)'
}

# The extension is built by build-test; a bench call on a fresh machine builds it again first.
built() {
  python3 -c 'import kale_fast.ops._backend as b, sys; sys.exit(b._AVAILABILITY["cuda"]["cuda"] is not None)' 2>/dev/null
}

export -f environment build

case "$mode" in
  build-test)
    : > "$OUT/status.txt"
    step environment 30 environment
    step build 300 build
    step registrations 30 python3 tools/check_cuda_registrations.py
    step tests 570 python3 -m pytest -q -rfEs --junitxml="$OUT/tests.xml" tests
    ;;
  bench)
    touch "$OUT/status.txt"
    step environment 30 environment
    built || step build 300 build
    step bench_kale_loss_samplers 300 python3 -m benchmarks --ops kale_loss samplers
    for backend in triton cuda; do
      KALE_FAST_BACKEND=$backend step "bench_integrators_$backend" 45 python3 -m benchmarks --ops integrators \
        && cp benchmarks/results/integrators-cuda.json "$OUT/integrators-cuda-$backend.json"
    done
    step bench_train_step 570 python3 -m benchmarks --ops train_step
    cp benchmarks/results/*-cuda.json benchmarks/RESULTS.md "$OUT/" 2>/dev/null
    ;;
  *)
    echo "usage: OUT=dir bash benchmarks/gpu.sh build-test|bench" >&2
    exit 2
    ;;
esac
exit $failed
