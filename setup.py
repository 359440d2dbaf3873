"""Builds the one extension kale_fast._C: the op schemas and the C++ CPU kernels of csrc/ always, the CUDA
kernels of kernels/ too where torch has CUDA (and a CUDA toolkit is found: CUDA_HOME or nvcc on PATH). The
headers both share (argument checks, the log-sum-exp state) live in include/kale_fast/, on the include path.

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
sources = sorted(glob.glob("csrc/*.cpp"))
include_dirs = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")]
if torch.version.cuda is not None and CUDA_HOME is not None:
    extension = CUDAExtension(
        "kale_fast._C",
        sources + sorted(glob.glob("kernels/*.cu")),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )
else:
    print("kale_fast: torch has no CUDA here (or no CUDA toolkit was found); building the CPU kernels only")
    extension = CppExtension("kale_fast._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=["-fopenmp"])

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
