// kale_fast._C: the one extension. Importing it runs the TORCH_LIBRARY registrations of its sources (the
// schemas of csrc/op_schemas.cpp, the CPU kernels of csrc/, and the CUDA kernels of kernels/ where torch
// has CUDA), which put the ops under torch.ops.kale_fast. Its one Python function, kale_loss_eager, is
// kale_loss's door for its common eager call (csrc/kale_autograd.cpp).
#include <Python.h>

namespace kale_fast {
PyObject* kale_loss_eager(PyObject* module, PyObject* const* args, Py_ssize_t nargs);
}

static PyMethodDef kale_fast_methods[] = {
    {"kale_loss_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&kale_fast::kale_loss_eager)),
     METH_FASTCALL, "kale_loss(e_data, e_gen) for non-empty 1-D contiguous CPU energies, else None"},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef kale_fast_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, kale_fast_methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kale_fast_module); }
