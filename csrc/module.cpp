// kale_fast._C: the CPU kernels. Importing the module runs the TORCH_LIBRARY_FRAGMENT registrations
// of the other files in csrc/, which put the ops under torch.ops.kale_fast_cpp.
#include <Python.h>

static PyModuleDef kale_fast_cpp_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kale_fast_cpp_module); }
