#!/usr/bin/env bash
# `make gpu-check`: proves on a machine without a GPU that the package is ready for one. In a pinned CUDA
# venv (requirements-cuda.txt, created once per machine under $XDG_CACHE_HOME/kale_fast, keyed by the
# requirements' hash; .venv is never touched) it builds kale_fast._C with its CUDA kernels for sm_90 from a
# fresh copy of the working tree (the in-place CPU build stays as it is), fails on any compiler warning in
# csrc/ or kernels/, checks that every kernel op the Python side calls on CUDA is registered for the CUDA key
# (tools/check_cuda_registrations.py) and compiles every Triton kernel for sm_90 (tools/check_triton_sm90.py).
# Environment: KALE_FAST_CUDA_VENV overrides the venv path, MAX_JOBS (default 2) the build's parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

cache=${XDG_CACHE_HOME:-$HOME/.cache}/kale_fast
venv=${KALE_FAST_CUDA_VENV:-$cache/venv-cuda-$(sha256sum requirements-cuda.txt | cut -c1-12)}
if [[ ! -f "$venv/.installed" ]]; then
  echo "gpu-check: creating $venv (requirements-cuda.txt, about 5.5 GB)"
  mkdir -p "$(dirname "$venv")"
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial"
  "$venv.partial/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-cuda.txt
  touch "$venv.partial/.installed"
  rm -rf "$venv" && mv "$venv.partial" "$venv"
fi
python="$venv/bin/python"
echo "gpu-check: $("$python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')" \
     "venv ready after $((SECONDS - start)) s"

CUDA_HOME=$(bash tools/cuda_home.sh)
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2}
src=$(mktemp -d "${TMPDIR:-/tmp}/kale_fast-gpu-check.XXXXXX")
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$src"
echo "gpu-check: building kale_fast._C (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST) with $CUDA_HOME/bin/nvcc ($MAX_JOBS jobs)"
if ! (cd "$src" && nice -n 10 "$python" setup.py build_ext --inplace > build.log 2>&1); then
  tail -40 "$src/build.log"; echo "gpu-check: FAILED: the CUDA build" >&2; exit 1
fi
if grep -E '(csrc|kernels)/[A-Za-z0-9_./-]+[:(][0-9]+.*warning' "$src/build.log"; then
  echo "gpu-check: FAILED: compiler warnings in the package's sources (above)" >&2; exit 1
fi
grep -q 'kernels/kale.cu' "$src/build.log" || { echo "gpu-check: FAILED: the CUDA sources were not compiled" >&2; exit 1; }
echo "gpu-check: built in $((SECONDS - start)) s"

# tools/ first on sys.path, then the fresh copy: the checks import the package just built, not the in-place one.
PYTHONPATH="$src" "$python" "$src/tools/check_cuda_registrations.py"
PYTHONPATH="$src" "$python" "$src/tools/check_triton_sm90.py"
echo "gpu-check: passed in $((SECONDS - start)) s"
