"""A Triton kernel that writes the integrators' in-kernel normals at given element offsets (imported only where
Triton runs: it needs triton at import)."""
import triton
import triton.language as tl

from kale_fast.triton_kernels import integrators


@triton.jit
def randn_kernel(seed_ptr, out_ptr, base, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    lanes = tl.arange(0, BLOCK)
    tl.store(out_ptr + lanes, integrators._randn(seed_ptr, base + lanes.to(tl.int64), DTYPE))
