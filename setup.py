"""Builds kale_fast._C (C++ CPU kernels, always) and kale_fast._C_cuda (CUDA kernels, only where torch has CUDA).

Install with `pip install --no-build-isolation -e .`: torch must already be installed (it is deliberately
not a build requirement, so that no build environment ever pulls a CUDA torch of its own).
"""
import glob
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def host_simd_flags():
    """AVX2/FMA when the building machine has them: the extension is built where it runs."""
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        return []
    flags = set(open("/proc/cpuinfo").read().split())
    return ["-mavx2", "-mfma", "-mf16c"] if {"avx2", "fma", "f16c"} <= flags else []


# -fno-trapping-math lets GCC if-convert the selects of csrc/vec_math.h and so vectorise the loops, and
# -fno-math-errno lets sqrt be one instruction; unlike -ffast-math they keep inf and NaN semantics.
cxx_flags = ["-O3", "-g0", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-Wno-psabi", *host_simd_flags()]
extensions = [
    CppExtension(
        "kale_fast._C",
        sorted(glob.glob("csrc/*.cpp")),
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
]

if torch.version.cuda is not None and CUDA_HOME is not None:
    extensions.append(
        CUDAExtension(
            "kale_fast._C_cuda",
            sorted(glob.glob("kernels/*.cu") + glob.glob("kernels/*.cpp")),
            extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3", "-lineinfo"]},
        )
    )
else:
    print("kale_fast: torch has no CUDA here; building the CPU extension only")

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExtension})
