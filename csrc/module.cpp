// kale_fast._C: the one extension. Importing it runs the TORCH_LIBRARY registrations of its sources (the
// schemas of csrc/op_schemas.cpp, the CPU kernels of csrc/, and the CUDA kernels of kernels/ where torch
// has CUDA), which put the ops under torch.ops.kale_fast.
#include <Python.h>

static PyModuleDef kale_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kale_fast_module); }
