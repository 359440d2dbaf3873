"""Potentials U(z): any callable z (B, L) -> (B,); LatentPotential is the GEBM's latent posterior."""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

Potential = Callable[[Tensor], Tensor]


class LatentPotential:
    """U(z) = 0.5 |z|^2 + temperature * E(base(z)), one value per chain: the negative log density (up to a
    constant) of the GEBM's latent posterior nu(z) ~ N(z; 0, I) exp(-temperature * E(B(z))).

    temperature = 1 is the GEBM itself; the authors' code samples a sharpened posterior with 100.
    autocast (torch.bfloat16 or torch.float16) runs the two networks under torch.autocast; z, U, its
    gradient and hence the samplers' Metropolis tests stay in z's dtype.
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

    def __call__(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            energy = self.energy(self.base(z)).reshape(z.shape[0])
        return 0.5 * (z * z).sum(dim=1) + self.temperature * energy.to(z.dtype)

    def value_and_grad(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        """(U(z), grad_z U(z)); the gradient is taken with respect to z only, so no parameter gradient is
        computed or accumulated."""
        return value_and_grad(self.__call__, z)


def value_and_grad(potential: Potential, z: Tensor) -> Tuple[Tensor, Tensor]:
    """(U(z), grad_z U(z)) of any potential, both detached, the gradient contiguous and never z itself (the
    fused updates read it as a dense (B, L) block and update gradients in place; autograd can return an expanded
    gradient, and a closed form of U = |z|^2 / 2 returns z); uses potential.value_and_grad when it has one.

    Under torch.compile the gradient is taken with torch.func (which the compiler traces) instead of
    torch.autograd.grad (which it does not), so a sampler's compiled path includes the potential's backward."""
    if hasattr(potential, "value_and_grad"):
        value, grad = potential.value_and_grad(z)
        grad = grad.detach()
        return value.detach(), grad.clone() if grad is z else grad.contiguous()
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
