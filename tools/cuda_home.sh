#!/usr/bin/env bash
# Prints the root of the CUDA toolkit (the CUDA_HOME that torch.utils.cpp_extension needs): $CUDA_HOME when
# set, else the directory above the bin/ of the real nvcc, found from `nvcc` on PATH through symlinks and
# through a shell wrapper that execs it (e.g. /usr/local/bin/nvcc: `exec /usr/local/cuda-13.0/bin/nvcc "$@"`).
# Exits 1, saying why, when there is none.
set -euo pipefail
if [[ -n "${CUDA_HOME:-}" ]]; then echo "$CUDA_HOME"; exit 0; fi
nvcc=$(command -v nvcc || true)
[[ -n "$nvcc" ]] || { echo "cuda_home.sh: no nvcc on PATH and CUDA_HOME unset" >&2; exit 1; }
for _ in 1 2 3 4; do  # a wrapper may exec another wrapper; a few levels suffice
  nvcc=$(readlink -f "$nvcc")
  if head -c 4 "$nvcc" | grep -q $'^\x7fELF'; then break; fi
  target=$(grep -oE '(^|[[:space:]])exec[[:space:]]+[^[:space:]]*nvcc' "$nvcc" | head -1 | awk '{print $NF}' || true)
  [[ -n "$target" && -x "$target" ]] || break
  nvcc=$target
done
root=$(dirname "$(dirname "$nvcc")")
[[ -f "$root/include/cuda_runtime.h" ]] || { echo "cuda_home.sh: $nvcc is not inside a CUDA toolkit" >&2; exit 1; }
echo "$root"
