"""The value and input-gradient of a GEBM latent potential whose networks are a Linear + activation stack, one op;
and a whole leapfrog trajectory on it, one op.

U(z) = 0.5 * prior_precision * |z|^2 + temperature * f(z), f(x) = act_n(W_n ... act_1(W_1 x + b_1) ... + b_n), the
last layer of width 1: with f = E(G(.)) (the layers of the base, then those of the energy; identity between two
consecutive Linears) and prior_precision 1, this is kale_fast.samplers.LatentPotential.

Shapes: z (B, L); weights[i] (out_i, in_i) as nn.Linear stores them, in_0 = L, in_i = out_{i-1}, out_n = 1;
biases[i] (out_i,) or None. Returns (U (B,), dU/dz (B, L)), both new tensors in z's dtype. Activations, one per
layer, applied after it: "identity", "silu", "relu", "tanh", or ("leaky_relu", negative_slope).

Devices and dtypes: on CPU in fp32/fp64 with the "cpp" backend (the default there) one C++ kernel,
kale_fast::mlp_potential (csrc/mlp_potential.cpp), which torch.compile keeps as one opaque node; everywhere else
(CUDA tensors, the "reference" backend, no extension) the reference in torch ops (kale_fast/reference/
mlp_potential.py): no CUDA kernel exists yet. fp16/bf16 are refused (a LatentPotential with autocast keeps its own
path). No autograd: the op returns a gradient, it has no derivative of its own, and sampling needs no parameter
gradients; a call where an input requires grad while grad mode is on is a ValueError (run it under torch.no_grad).

`mlp_leapfrog` runs n leapfrog steps on that potential in the unit coordinates of a diagonal metric (HMC's
trajectory, kale_fast/samplers/leapfrog.py's contract) as one call, kale_fast::mlp_leapfrog on CPU (fp32/fp64,
the "cpp" backend): inside a sampler at one chain a call per step cost about three times the step's arithmetic.

`prepare` checks the network once and returns a callable that checks only z per call (what LatentPotential
uses); `mlp_potential` does both; `linear_stack` reads the arguments off nn modules.
"""
import itertools
import operator
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from kale_fast.ops import _checks
from kale_fast.ops._backend import resolve
from kale_fast.ops._kernels import cpu_only_op
from kale_fast.reference import mlp_potential as reference

Activation = Union[str, Tuple[str, float]]

# The codes of the schema's `activations` (csrc/mlp_potential.cpp's enum Activation).
ACTIVATION_CODES = {"identity": 0, "silu": 1, "relu": 2, "leaky_relu": 3, "tanh": 4}
KERNEL_DTYPES = (torch.float32, torch.float64)  # what the C++ kernel takes


def _fake(z, weights, biases, activations, activation_parameters, temperature, prior_precision):
    return z.new_empty(z.shape[:1]), torch.empty_like(z)


_KERNEL = cpu_only_op("mlp_potential", _fake)


def _fake_leapfrog(y, p, grad, step_size, n_steps, scale, weights, biases, activations, activation_parameters,
                   temperature, prior_precision):
    return torch.empty_like(y), torch.empty_like(y), y.new_empty(y.shape[:1]), torch.empty_like(y)


_LEAPFROG_KERNEL = cpu_only_op("mlp_leapfrog", _fake_leapfrog)
HAS_LEAPFROG_KERNEL = _LEAPFROG_KERNEL is not None  # False with an extension built before the op existed


def _activation(i: int, activation: object) -> Tuple[str, float]:
    """(name, parameter) of activations[i]."""
    if isinstance(activation, tuple) and len(activation) == 2 and activation[0] == "leaky_relu":
        slope = activation[1]
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise TypeError(f"activations[{i}]: the negative slope of leaky_relu must be a number, got "
                            f"{type(slope).__name__}")
        return "leaky_relu", float(slope)
    if not isinstance(activation, str):
        raise TypeError(f"activations[{i}] must be a str or ('leaky_relu', negative_slope), got {activation!r}")
    if activation not in ACTIVATION_CODES or activation == "leaky_relu":
        raise ValueError(f"activations[{i}] must be one of {sorted(set(ACTIVATION_CODES) - {'leaky_relu'})} or "
                         f"('leaky_relu', negative_slope), got {activation!r}")
    return activation, 0.0


def _number(name: str, value: object, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > minimum if strict else value >= minimum) or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


class LinearStack:
    """A checked network: weights, biases and activations as `mlp_potential` takes them. Calling it with
    (z, temperature, prior_precision) checks z against the network and returns (U, dU/dz)."""

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
                 activations: Sequence[Activation]):
        for name, seq in (("weights", weights), ("biases", biases), ("activations", activations)):
            if not isinstance(seq, (list, tuple)):
                raise TypeError(f"{name} must be a list or tuple, one entry per layer, got {type(seq).__name__}")
        if not weights:
            raise ValueError("weights must hold at least one layer")
        if len(biases) != len(weights) or len(activations) != len(weights):
            raise ValueError(f"weights, biases and activations must have one entry per layer: got {len(weights)}, "
                             f"{len(biases)} and {len(activations)}")
        first = _checks.floating_tensor("weights[0]", weights[0])
        for i, (w, b) in enumerate(zip(weights, biases)):
            _checks.floating_tensor(f"weights[{i}]", w)
            if w.dim() != 2 or not w.is_contiguous():
                raise ValueError(f"weights[{i}] must be a contiguous (out, in) matrix, got {_checks.describe(w)}")
            _checks.same_dtype(f"weights[{i}]", w, "weights[0]", first)
            _checks.same_device(f"weights[{i}]", w, "weights[0]", first)
            if i > 0 and w.shape[1] != weights[i - 1].shape[0]:
                raise ValueError(f"weights[{i}] takes {w.shape[1]} inputs but weights[{i - 1}] gives "
                                 f"{weights[i - 1].shape[0]} outputs")
            if b is not None:
                _checks.floating_tensor(f"biases[{i}]", b)
                if b.shape != w.shape[:1] or not b.is_contiguous():
                    raise ValueError(f"biases[{i}] must be None or a contiguous ({w.shape[0]},) tensor like "
                                     f"weights[{i}]'s outputs, got {_checks.describe(b)}")
                _checks.same_dtype(f"biases[{i}]", b, "weights[0]", first)
                _checks.same_device(f"biases[{i}]", b, "weights[0]", first)
        if weights[-1].shape[0] != 1:
            raise ValueError(f"the last layer must have width 1 (an energy per sample): weights[{len(weights) - 1}] "
                             f"has {weights[-1].shape[0]} outputs")
        named = [_activation(i, a) for i, a in enumerate(activations)]
        self.weights, self.biases = list(weights), list(biases)
        self.names = [name for name, _ in named]
        self.codes = [ACTIVATION_CODES[name] for name in self.names]
        self.parameters = [parameter for _, parameter in named]
        self.in_features, self.dtype, self.device = weights[0].shape[1], first.dtype, first.device

    def __call__(self, z: Tensor, temperature: float = 1.0, prior_precision: float = 1.0,
                 backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        self.check_rows("z", z)
        temperature = _number("temperature", temperature, 0.0, strict=True)
        prior_precision = _number("prior_precision", prior_precision, 0.0, strict=False)
        self.refuse_grad("mlp_potential", z=z)
        return self.call_unchecked(z, temperature, prior_precision, backend)

    def check_rows(self, name: str, t: Tensor) -> None:
        """TypeError/ValueError naming `name` unless t is a contiguous (B, in_features) tensor of the weights'
        dtype and device (the first layer's inputs, one row per chain)."""
        _checks.floating_tensor(name, t)
        if t.dim() != 2 or t.shape[1] != self.in_features or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous (B, {self.in_features}) tensor (the first layer's inputs), "
                             f"got {_checks.describe(t)}")
        if t.dtype != self.dtype:
            raise TypeError(f"{name} and weights must have one dtype: {name} has {_checks.describe(t)}, the weights "
                            f"{self.dtype}")
        if t.device != self.device:
            raise ValueError(f"{name} and weights must be on one device: {name} has {_checks.describe(t)}, the "
                             f"weights {self.device}")

    def refuse_grad(self, op: str, **inputs: Optional[Tensor]) -> None:
        """ValueError where grad mode is on and an input or a parameter requires grad: `op` has no autograd."""
        if torch.is_grad_enabled():
            for name, t in (*inputs.items(), *((f"weights[{i}]", w) for i, w in enumerate(self.weights)),
                            *((f"biases[{i}]", b) for i, b in enumerate(self.biases))):
                if t is not None and t.requires_grad:
                    raise ValueError(f"{name} requires grad, but {op} has no autograd (it returns the "
                                     f"input-gradient itself): call it under torch.no_grad()")

    def call_unchecked(self, z: Tensor, temperature: float, prior_precision: float,
                       backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """__call__ for a caller that has checked z (its width, dtype, device, contiguity) and runs under
        torch.no_grad or with no input requiring grad."""
        if _KERNEL is not None and z.dtype in KERNEL_DTYPES and resolve(z.device, backend) == "cpp":
            return self.call_kernel(z, temperature, prior_precision)
        return reference.mlp_potential(z, self.weights, self.biases, self.names, self.parameters, temperature,
                                       prior_precision)

    def call_kernel(self, z: Tensor, temperature: float, prior_precision: float) -> Tuple[Tensor, Tensor]:
        """call_unchecked for a caller that has also found that the C++ kernel runs z (an fp32/fp64 CPU tensor, the
        "cpp" backend in force): the op itself, nothing else in Python."""
        return _KERNEL(z, self.weights, self.biases, self.codes, self.parameters, temperature, prior_precision)

    def leapfrog(self, y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n_steps: Tensor,
                 scale: Optional[Tensor], temperature: float, prior_precision: float,
                 backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """mlp_leapfrog for a caller that has checked its arguments (mlp_leapfrog's checks) and runs under
        torch.no_grad or with no input requiring grad; n_steps a 0-d int64 tensor on y's device."""
        if _LEAPFROG_KERNEL is not None and y.dtype in KERNEL_DTYPES and resolve(y.device, backend) == "cpp":
            return self.leapfrog_kernel(y, p, grad, step_size, n_steps, scale, temperature, prior_precision)
        return reference.mlp_leapfrog(y, p, grad, step_size, n_steps, scale, self.weights, self.biases, self.names,
                                      self.parameters, temperature, prior_precision)

    def leapfrog_kernel(self, y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n_steps: Tensor,
                        scale: Optional[Tensor], temperature: float, prior_precision: float
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """leapfrog for a caller that has also found that the C++ kernel runs y (as call_kernel)."""
        return _LEAPFROG_KERNEL(y, p, grad, step_size, n_steps, scale, self.weights, self.biases, self.codes,
                                self.parameters, temperature, prior_precision)


def prepare(weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
            activations: Sequence[Activation]) -> LinearStack:
    """The network checked once (module docstring for the arguments): a callable (z, temperature=1,
    prior_precision=1, backend=None) -> (U, dU/dz)."""
    return LinearStack(weights, biases, activations)


def mlp_potential(z: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
                  activations: Sequence[Activation], *, temperature: float = 1.0, prior_precision: float = 1.0,
                  backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """(U(z) (B,), dU/dz (B, L)) of U(z) = 0.5 * prior_precision * |z|^2 + temperature * f(z), f the Linear +
    activation stack (module docstring). `backend` as for every op ("cpp" runs the C++ kernel on CPU)."""
    return prepare(weights, biases, activations)(z, temperature, prior_precision, backend)


def mlp_leapfrog(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n_steps: Union[int, Tensor],
                 weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]], activations: Sequence[Activation], *,
                 scale: Optional[Tensor] = None, temperature: float = 1.0, prior_precision: float = 1.0,
                 backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """n_steps >= 1 leapfrog steps of step size h on U_y(y) = U(S y) (U as mlp_potential's, S = diag(scale), the
    identity where scale is None): from positions y (B, L), momenta p (B, L) and grad = grad U_y(y) (B, L), each
    step p <- p - k h grad (k = 1/2 on the first step, else 1), y <- y + h p, then U_y and its gradient at y.
    step_size (B,), one per chain; scale (L,); n_steps an int or a 0-d int64 tensor. Returns (y, p, U_y(y) (B,),
    grad U_y(y)) at the trajectory's end, before the closing half kick; new tensors (the inputs are not changed).
    No autograd, as mlp_potential."""
    stack = prepare(weights, biases, activations)
    for name, t in (("y", y), ("p", p), ("grad", grad)):
        stack.check_rows(name, t)
        if t.shape != y.shape:
            raise ValueError(f"{name} must have y's shape {tuple(y.shape)}, got {_checks.describe(t)}")
    for name, t, shape in (("step_size", step_size, y.shape[:1]), ("scale", scale, y.shape[1:])):
        if t is None and name == "scale":
            continue
        _checks.floating_tensor(name, t)
        if t.shape != shape or t.dtype != y.dtype or t.device != y.device or not t.is_contiguous():
            raise ValueError(f"{name} must be {'None or ' if name == 'scale' else ''}a contiguous ({shape[0]},) "
                             f"tensor in y's dtype and device, got {_checks.describe(t)}")
    if isinstance(n_steps, Tensor):
        if n_steps.dim() != 0 or n_steps.dtype != torch.int64:
            raise TypeError(f"n_steps must be an int or a 0-d int64 tensor, got {_checks.describe(n_steps)}")
        count = int(n_steps)
    elif isinstance(n_steps, int) and not isinstance(n_steps, bool):
        count = n_steps
    else:
        raise TypeError(f"n_steps must be an int or a 0-d int64 tensor, got {type(n_steps).__name__}")
    if count < 1:
        raise ValueError(f"n_steps must be >= 1, got {count}")
    temperature = _number("temperature", temperature, 0.0, strict=True)
    prior_precision = _number("prior_precision", prior_precision, 0.0, strict=False)
    stack.refuse_grad("mlp_leapfrog", y=y, p=p, grad=grad, step_size=step_size, scale=scale)
    return stack.leapfrog(y, p, grad, step_size, torch.tensor(count, device=y.device), scale, temperature,
                          prior_precision, backend)


# nn modules the stack reads, and how (nn.Identity and nn.Dropout in eval mode would be cheap to add; not needed).
_MODULE_ACTIVATIONS: dict = {nn.SiLU: lambda m: "silu", nn.ReLU: lambda m: "relu", nn.Tanh: lambda m: "tanh",
                             nn.LeakyReLU: lambda m: ("leaky_relu", float(m.negative_slope))}


def plain_module(module: nn.Module) -> bool:
    """Whether calling `module` runs its class's forward alone: no hooks of its own, no parametrization (spectral
    norm), no forward replaced on the instance. (Global module hooks are checked once by linear_stack.)"""
    return not (module._forward_hooks or module._forward_pre_hooks or "parametrizations" in module._modules
                or "forward" in module.__dict__)


def linear_stack(modules: Sequence[nn.Module], containers: Optional[Dict[type, Callable[[nn.Module], nn.Module]]] = None
                 ) -> Optional[Tuple[List[Tensor], List[Optional[Tensor]], List[Activation]]]:
    """(weights, biases, activations) of the network that applies `modules` in order, each an nn.Linear, an
    activation module (SiLU, ReLU, LeakyReLU, Tanh; at most one after each Linear), an nn.Sequential of these, or a
    module of a class in `containers` (class -> the module its forward applies, e.g. {MLP: lambda m: m.net});
    None for anything else (another module, a hook, a parametrization such as spectral norm, an activation before
    the first Linear): the caller then keeps its own path. The tensors are the modules' own parameters."""
    found = watched_linear_stack(modules, containers)
    return None if found is None else found[0]


def watched_linear_stack(modules: Sequence[nn.Module],
                         containers: Optional[Dict[type, Callable[[nn.Module], nn.Module]]] = None
                         ) -> Optional[Tuple[Tuple[List[Tensor], List[Optional[Tensor]], List[Activation]],
                                             "StackWatch"]]:
    """linear_stack's (weights, biases, activations) with a StackWatch of the modules it read, or None."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None
    found, visited = ([], [], []), []
    if not _collect(modules, containers or {}, *found, visited) or not found[0]:
        return None
    return found, StackWatch(visited)


class StackWatch:
    """What linear_stack read off its modules, to tell at a few us whether a new walk would read the same network:
    every module it visited still has its class, no forward hook or pre-hook, no forward of its own, the same
    submodules and parameters (by identity) and LeakyReLU slope, and no global module hook exists. In-place updates
    of the parameters (an optimizer's step) need no check: the op reads the parameters themselves at each call; a
    dtype change (module.double() keeps the Parameter objects) is for the caller to compare."""

    def __init__(self, modules: Sequence[nn.Module]):
        self._modules = tuple(modules)
        self._types = tuple(map(type, self._modules))
        self._hooks = tuple(h for m in self._modules for h in (m._forward_hooks, m._forward_pre_hooks))
        self._attributes = tuple(m.__dict__ for m in self._modules)
        # The parameters of Linears, the submodules of containers (a parametrization also changes its module's class;
        # an activation computes the same with any submodule).
        self._contents = tuple(m._parameters if type(m) is nn.Linear else m._modules for m in self._modules
                               if type(m) not in _MODULE_ACTIVATIONS)
        self._ids = self._content_ids()
        self._slopes = [(m.__dict__, m.negative_slope) for m in self._modules if type(m) is nn.LeakyReLU]

    def _content_ids(self) -> List[int]:
        return list(map(id, itertools.chain.from_iterable(map(dict.values, self._contents))))

    def unchanged(self) -> bool:
        """Whether linear_stack would now read the same network off the same modules. (Iterators of builtins
        throughout: a Python loop over the ten modules of the GEBM's two MLPs cost 20 us.)"""
        return not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                    or any(self._hooks) or any(map(operator.contains, self._attributes, itertools.repeat("forward")))
                    or tuple(map(type, self._modules)) != self._types or self._content_ids() != self._ids
                    or any(a["negative_slope"] != slope for a, slope in self._slopes))


def _collect(modules, containers: dict, weights: list, biases: list, activations: list, visited: list) -> bool:
    """linear_stack's walk, appending to its lists and to `visited` every module it reads; False at the first module
    it cannot read. (Parameters and submodules are read from their dicts: nn.Module's __getattr__ costs a few us a
    call.)"""
    for module in modules:
        if not plain_module(module):
            return False
        visited.append(module)
        kind = type(module)
        if kind is nn.Linear:
            weights.append(module._parameters["weight"])
            biases.append(module._parameters["bias"])
            activations.append("identity")
        elif kind is nn.Sequential:
            if not _collect(module._modules.values(), containers, weights, biases, activations, visited):
                return False
        elif kind in containers:
            if not _collect((containers[kind](module),), containers, weights, biases, activations, visited):
                return False
        elif kind in _MODULE_ACTIVATIONS and activations and activations[-1] == "identity":
            activations[-1] = _MODULE_ACTIVATIONS[kind](module)
        else:
            return False
    return True


def prepared_or_none(weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
                     activations: Sequence[Activation]) -> Optional[LinearStack]:
    """prepare(weights, biases, activations), or None where they fail its checks (a last width other than 1, mixed
    dtypes or devices): for a caller that then keeps its own path."""
    try:
        return prepare(weights, biases, activations)
    except (TypeError, ValueError):
        return None
