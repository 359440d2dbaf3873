// kale_loss_autograd: the KALE loss as one op with its autograd in C++, over the kernel ops kale_loss_forward and
// kale_loss_backward of whatever device the energies are on (csrc/kale.cpp, kernels/kale.cu). It is kale_loss's
// eager path on the C++ and CUDA backends (kale_fast/ops/kale.py): at training-batch sizes a Python
// autograd.Function's forward, setup_context and backward cost more than the kernels, and here the backward
// runs without entering Python. A backward with create_graph=True must itself be differentiable: it runs the
// reference's closed forms in torch ops (kale_fast::kale_loss_backward_differentiable, which kale_fast/ops/kale.py
// registers) instead of the kernel.
// On fp32/fp64 CPU energies that require grad, the forward keeps e_gen's exp terms (saved for the backward, so
// released with the graph's other saved tensors) and the backward scales them into the gradient (csrc/kale_cpu.h):
// M exps fewer. Both call the C++ functions directly; elsewhere the kernels are called below autograd
// (AutoDispatchBelowADInplaceOrView): no dispatcher trip through the autograd fallback, which boxes every argument.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <ATen/core/Tensor.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "kale_cpu.h"

#include <optional>
#include <tuple>

namespace kale_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSignature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                            const std::optional<at::Tensor>&);
using LossSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using BackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&);

std::tuple<at::Tensor, at::Tensor> forward_kernels(const at::Tensor& e_data, const at::Tensor& e_gen,
                                                   const std::optional<at::Tensor>& log_partition) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kale_fast::kale_loss_forward", "")
                             .typed<ForwardSignature>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(e_data, e_gen, log_partition);
}

class KaleLoss : public torch::autograd::Function<KaleLoss> {
 public:
  // e_data, e_gen 1-D contiguous, log_partition 0-dim in the accumulation dtype (the Python layer checks and
  // flattens); keep: keep e_gen's exp terms for the backward (keeps_exps(e_gen) and e_gen requires grad).
  // Returns the 0-dim loss in the accumulation dtype.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& e_data, const at::Tensor& e_gen,
                            const std::optional<at::Tensor>& log_partition, bool keep) {
    at::Tensor loss, state;
    KeptExps kept;  // undefined tensors unless kept
    if (keep) {
      RECORD_FUNCTION("kale_fast::kale_loss_forward", std::vector<c10::IValue>({e_data, e_gen}));
      std::tie(loss, state) = kale_loss_forward_keeping_exps(e_data, e_gen, log_partition, kept);
    } else {
      std::tie(loss, state) = forward_kernels(e_data, e_gen, log_partition);
    }
    ctx->save_for_backward({e_data, e_gen, log_partition.value_or(at::Tensor()), kept.terms, kept.block_ref});
    ctx->saved_data["state"] = state;  // the (reference, sum) of the log-sum-exp: an intermediate, never modified
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto kernel = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("kale_fast::kale_loss_backward", "")
                                   .typed<BackwardSignature>();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& a = saved[2];
    const std::optional<at::Tensor> log_partition = a.defined() ? std::optional<at::Tensor>(a) : std::nullopt;
    const at::Tensor state = ctx->saved_data["state"].toTensor();
    std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
    if (at::GradMode::is_enabled()) {  // create_graph=True: differentiable torch ops, registered from Python
      const auto differentiable = c10::Dispatcher::singleton()
                                      .findSchemaOrThrow("kale_fast::kale_loss_backward_differentiable", "")
                                      .typed<BackwardSignature>();
      grads = differentiable.call(grad_outputs[0], saved[0], saved[1], log_partition, state);
    } else if (saved[3].defined()) {
      RECORD_FUNCTION("kale_fast::kale_loss_backward", std::vector<c10::IValue>({saved[0], saved[1]}));
      grads = kale_loss_backward_from_kept_exps(grad_outputs[0], saved[0], saved[1], log_partition, state,
                                                KeptExps{saved[3], saved[4]});
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      grads = kernel.call(grad_outputs[0], saved[0], saved[1], log_partition, state);
    }
    return {std::get<0>(grads), std::get<1>(grads), a.defined() ? std::get<2>(grads) : at::Tensor(), at::Tensor()};
  }
};

// Whether t is a plain tensor: not a fake tensor or a Python subclass (their Python key must see every op).
bool plain(const at::Tensor& t) { return !t.key_set().has(c10::DispatchKey::Python); }

at::Tensor kale_loss_autograd(const at::Tensor& e_data, const at::Tensor& e_gen,
                              const std::optional<at::Tensor>& log_partition) {
  // The kept variant calls the CPU functions directly, past the dispatcher: only for plain tensors with no
  // dispatch mode active, so that FakeTensorMode, flop counters and subclasses still see kale_loss_forward.
  const bool keep = at::GradMode::is_enabled() && e_gen.requires_grad() && keeps_exps(e_gen) &&
                    !c10::impl::dispatch_mode_enabled() && plain(e_data) && plain(e_gen) &&
                    (!log_partition.has_value() || plain(*log_partition));
  return KaleLoss::apply(e_data, e_gen, log_partition, keep);
}

// Below autograd (no_grad, inference mode): the forward kernel alone.
at::Tensor kale_loss_value(const at::Tensor& e_data, const at::Tensor& e_gen,
                           const std::optional<at::Tensor>& log_partition) {
  return std::get<0>(forward_kernels(e_data, e_gen, log_partition));
}

}  // namespace

TORCH_LIBRARY_IMPL(kale_fast, Autograd, m) { m.impl("kale_loss_autograd", &kale_loss_autograd); }

// kale_fast._C.kale_loss_eager(e_data, e_gen): kale_loss's door for its most common eager call (the
// Donsker-Varadhan form, non-empty 1-D contiguous CPU energies of one floating dtype, plain tensors or Parameters),
// which kale_fast/ops/kale.py takes where the C++ backend runs the call, no torch.func transform or torch function
// mode is active and nothing is being compiled: kale_loss_autograd through the dispatcher (so autograd and
// dispatch modes see it as before), the loss cast to the energies' dtype. At N ~ 1e3 the Python checks, backend
// resolution and torch.ops call it replaces cost as much as the op itself. Returns None for any other call, for
// which the Python path checks the arguments in full and names what is wrong.
PyObject* kale_loss_eager(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2 || !THPVariable_CheckExact(args[0]) || !THPVariable_CheckExact(args[1])) Py_RETURN_NONE;
  const at::Tensor& e_data = THPVariable_Unpack(args[0]);
  const at::Tensor& e_gen = THPVariable_Unpack(args[1]);
  const bool common = e_data.dim() == 1 && e_gen.dim() == 1 && e_data.scalar_type() == e_gen.scalar_type() &&
                      at::isFloatingType(e_gen.scalar_type()) && e_data.is_cpu() && e_gen.is_cpu() &&
                      e_data.numel() > 0 && e_gen.numel() > 0 && e_data.is_contiguous() && e_gen.is_contiguous();
  if (!common) Py_RETURN_NONE;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kale_fast::kale_loss_autograd", "")
                             .typed<LossSignature>();
  at::Tensor loss;
  {
    pybind11::gil_scoped_release no_gil;
    loss = op.call(e_data, e_gen, std::nullopt);
    if (loss.scalar_type() != e_gen.scalar_type()) loss = loss.to(e_gen.scalar_type());
  }
  return THPVariable_Wrap(std::move(loss));
  END_HANDLE_TH_ERRORS
}

TORCH_LIBRARY_IMPL(kale_fast, CompositeExplicitAutograd, m) { m.impl("kale_loss_autograd", &kale_loss_value); }

}  // namespace kale_fast
