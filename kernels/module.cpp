// kale_fast._C_cuda: the CUDA kernels. Importing the module runs the TORCH_LIBRARY registrations of the
// .cu files beside it, which put the ops under torch.ops.kale_fast_cuda.
#include <Python.h>

static PyModuleDef kale_fast_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&kale_fast_cuda_module); }
