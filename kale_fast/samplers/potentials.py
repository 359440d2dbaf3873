"""Potentials U(z): any callable z (B, L) -> (B,); LatentPotential is the GEBM's latent posterior."""
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from kale_fast.ops import mlp_potential
from kale_fast.ops._backend import resolve

Potential = Callable[[Tensor], Tensor]


class LatentPotential:
    """U(z) = 0.5 |z|^2 + temperature * E(base(z)), one value per chain: the negative log density (up to a
    constant) of the GEBM's latent posterior nu(z) ~ N(z; 0, I) exp(-temperature * E(B(z))).

    temperature = 1 is the GEBM itself; the authors' code samples a sharpened posterior with 100.
    autocast (torch.bfloat16 or torch.float16) runs the two networks under torch.autocast; z, U, its
    gradient and hence the samplers' Metropolis tests stay in z's dtype.

    value_and_grad runs as one op (kale_fast.ops.mlp_potential, its C++ kernel) where it can: base and energy are
    Linear + activation stacks (nn.Sequential, kale_fast.models.MLP, nn.Linear and the activations SiLU, ReLU,
    LeakyReLU, Tanh; no hooks, no spectral norm) in z's dtype, z is an fp32/fp64 CPU tensor, autocast is None and
    the backend in force runs "cpp" on CPU. Otherwise, and for U alone, the networks run as torch modules.
    """

    def __init__(self, base: nn.Module, energy: nn.Module, temperature: float = 1.0,
                 autocast: Optional[torch.dtype] = None):
        if not callable(base) or not callable(energy):
            raise TypeError("base and energy must be callables (e.g. nn.Module) mapping batches to batches")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
        self.base, self.energy, self.temperature, self.autocast = base, energy, float(temperature), autocast
        self._kept_stack = None  # (StackWatch, LinearStack) of _linear_stack's last successful walk

    def __call__(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            energy = self.energy(self.base(z)).reshape(z.shape[0])
        return 0.5 * (z * z).sum(dim=1) + self.temperature * energy.to(z.dtype)

    def value_and_grad(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """(U(z), grad_z U(z)); the gradient is taken with respect to z only, so no parameter gradient is
        computed or accumulated."""
        stack = self._linear_stack(z)
        if stack is None:
            return value_and_grad(self.__call__, z)
        if not torch.is_grad_enabled():  # a sampler's loop: `with torch.no_grad()` would cost more than the op
            return stack.call_kernel(z, self.temperature, 1.0)
        with torch.no_grad():
            return stack.call_kernel(z, self.temperature, 1.0)

    def fused_leapfrog(self, y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: Union[int, Tensor],
                       scale: Optional[Tensor] = None) -> Optional[Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """n leapfrog steps on U(S y), S = diag(scale) (None: the identity), as one op
        (kale_fast.ops.mlp_potential.mlp_leapfrog; kale_fast/samplers/leapfrog.py's contract), where
        value_and_grad runs as one op and p, grad (B, L), step_size (B,) and scale (L,) are contiguous in y's
        dtype; else None (the caller runs the steps). n: an int or a 0-d int64 tensor, >= 1. It integrates the
        networks' stack itself: a subclass that overrides value_and_grad or __call__ should override this too."""
        stack = self._linear_stack(y)
        if (stack is None or not mlp_potential.HAS_LEAPFROG_KERNEL or p.shape != y.shape or grad.shape != y.shape
                or step_size.shape != y.shape[:1]
                or not all(t.dtype == y.dtype and t.is_contiguous() for t in (p, grad, step_size))
                or (scale is not None and (scale.shape != y.shape[1:] or scale.dtype != y.dtype
                                           or not scale.is_contiguous()))):
            return None
        count = n if isinstance(n, Tensor) else _count(n)
        if not torch.is_grad_enabled():
            return stack.leapfrog_kernel(y, p, grad, step_size, count, scale, self.temperature, 1.0)
        with torch.no_grad():
            return stack.leapfrog_kernel(y, p, grad, step_size, count, scale, self.temperature, 1.0)

    def _linear_stack(self, z: Tensor) -> Optional[mlp_potential.LinearStack]:
        """The networks as one checked mlp_potential stack where its C++ kernel runs z (class docstring), else None.
        The stack is kept while a StackWatch of the modules finds them unchanged and its first weight keeps its
        dtype and device (module.double() or .to() keep the Parameter objects): hooks, parametrizations, replaced
        parameters or submodules and dtype changes made later are seen at the next call (a few us instead of the
        walk's 20-40 us); in-place updates of the weights need no check (the op reads the parameters themselves)."""
        if (self.autocast is not None or not isinstance(z, Tensor) or not z.is_cpu
                or z.dtype not in mlp_potential.KERNEL_DTYPES or z.dim() != 2 or not z.is_contiguous()
                or resolve(_CPU) != "cpp"):
            return None
        if torch.compiler.is_compiling():  # traced once, guarded by the compiler: nothing to keep
            found = mlp_potential.linear_stack((self.base, self.energy), _containers())
            stack = None if found is None else mlp_potential.prepared_or_none(*found)
        else:
            kept = self._kept_stack
            if kept is None or not _still_valid(*kept):
                watched = mlp_potential.watched_linear_stack((self.base, self.energy), _containers())
                stack = None if watched is None else mlp_potential.prepared_or_none(*watched[0])
                kept = self._kept_stack = None if stack is None else (watched[1], stack)
            stack = None if kept is None else kept[1]
        if stack is None or stack.dtype != z.dtype or stack.device != _CPU or stack.in_features != z.shape[1]:
            return None
        return stack


_CPU = torch.device("cpu")
_COUNTS: Dict[int, Tensor] = {}


def _count(n: int) -> Tensor:
    """n as the 0-d int64 CPU tensor mlp_leapfrog takes: a constant when traced, else made once per count (a
    tensor's construction costs an eager trajectory about 2 us)."""
    if torch.compiler.is_compiling():
        return torch.tensor(n, dtype=torch.int64, device=_CPU)
    if n not in _COUNTS:
        _COUNTS[n] = torch.tensor(n, dtype=torch.int64, device=_CPU)
    return _COUNTS[n]


def _still_valid(watch: mlp_potential.StackWatch, stack: mlp_potential.LinearStack) -> bool:
    """Whether a kept stack still describes the modules it was read off (LatentPotential._linear_stack)."""
    first = stack.weights[0]
    return first.dtype is stack.dtype and first.is_cpu == (stack.device.type == "cpu") and watch.unchanged()


def _containers() -> dict:
    """The package's modules that only apply a Linear stack, for mlp_potential.linear_stack (imported here, not at
    the top: kale_fast.models imports this module)."""
    from kale_fast.models.mlp import MLP

    return {MLP: _mlp_net}


def _mlp_net(mlp: nn.Module) -> nn.Module:
    return mlp._modules["net"]


def value_and_grad(potential: Potential, z: Tensor) -> Tuple[Tensor, Tensor]:
    """(U(z), grad_z U(z)) of any potential, both detached, the gradient contiguous and never z itself (the
    fused updates read it as a dense (B, L) block and update gradients in place; autograd can return an expanded
    gradient, and a closed form of U = |z|^2 / 2 returns z); uses potential.value_and_grad when it has one.

    Under torch.compile the gradient is taken with torch.func (which the compiler traces) instead of
    torch.autograd.grad (which it does not), so a sampler's compiled path includes the potential's backward."""
    if hasattr(potential, "value_and_grad"):
        value, grad = potential.value_and_grad(z)
        # detached only where needed: the eager leapfrog calls this at every step, where a detach costs about 1 us
        if grad is z:
            grad = grad.detach().clone()
        elif grad.requires_grad or not grad.is_contiguous():
            grad = grad.detach().contiguous()
        return value.detach() if value.requires_grad else value, grad
    if torch.compiler.is_compiling():
        def total(z):
            value = potential(z)
            return value.sum(), value.detach()

        grad, (_, value) = torch.func.grad_and_value(total, has_aux=True)(z)
        return value, grad.detach().contiguous()
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = potential(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad.contiguous()
