"""Triton kernels, one module per op family, each exposing the same functions as the C++ kernels.

Imported lazily by kale_fast.ops (at the first launch), never at package import. On CPU they run through
Triton's interpreter: set TRITON_INTERPRET=1 before anything imports triton.
"""
