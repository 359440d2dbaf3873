"""The "reference" backend: the kernel contract of kale_fast.ops (the functions of csrc/kale.cpp and
csrc/integrators.cpp, same arguments, outputs and in-place updates) over the plain-PyTorch twins of
kale_fast.reference. Slow by design: it is the oracle run through the same wrappers as the fused kernels.

In-kernel noise: the fused kernels draw Philox numbers keyed by a seed tensor; here the seed seeds a
torch.Generator (one host synchronisation per draw), so a seed gives the same noise every time on a device.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from kale_fast.reference import integrators
from kale_fast.reference.kale import accumulation_dtype, kale_loss, log_mean_exp, mean_without_overflow, shift_of

# --- KALE objective and log-mean-exp ---------------------------------------------------------------------


def kale_loss_forward(e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(loss, state), both in the accumulation dtype; e_data, e_gen 1-D. state: (2,) (max, sum) of the log-sum-exp
    of -e_gen - A (A absent: -e_gen), here (log-sum-exp, 1): the same value, for the contract (the backward below
    recomputes from the inputs)."""
    acc = accumulation_dtype(e_gen.dtype)
    t = -e_gen.to(acc) if log_partition is None else -e_gen.to(acc) - log_partition.to(acc)
    return kale_loss(e_data.to(acc), e_gen.to(acc), log_partition), torch.stack([torch.logsumexp(t, 0), t.new_ones(())])


def kale_loss_backward(grad: Tensor, e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor], state: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    """(d e_data, d e_gen, d log_partition); the last is zero without A.

    Closed forms in differentiable torch ops, recomputed from the inputs (state is not used), so that the result
    is differentiable in grad, e_data, e_gen and A: kale_fast.ops runs this for create_graph=True backwards.
    """
    acc = accumulation_dtype(e_gen.dtype)
    g = grad.to(acc)
    if log_partition is None:
        neg = -e_gen.to(acc)
        exps = torch.exp(neg - shift_of(neg))
        weights = exps / exps.sum()  # d lse / d(-e_gen), with the inf rules of the forward (not softmax's)
        grad_a = torch.zeros((), dtype=acc, device=e_gen.device)
    else:
        exps = torch.exp(-(e_gen.to(acc) + log_partition.to(acc)))
        weights = exps / e_gen.numel()
        grad_a = g * (1 - mean_without_overflow(exps))
    grad_data = (g / e_data.numel()).to(e_data.dtype).expand(e_data.shape)  # a constant, as the fused kernels return it
    return grad_data, (-g * weights).to(e_gen.dtype), grad_a


def log_mean_exp_forward(x: Tensor) -> Tensor:
    """Row-wise log(mean(exp(x))) of (R, K) rows, (R,) in the accumulation dtype."""
    return log_mean_exp(x.to(accumulation_dtype(x.dtype)), dim=1)


def log_mean_exp_backward(grad: Tensor, x: Tensor, out: Tensor) -> Tensor:
    """grad_x[r, k] = grad[r] * exp(x[r, k] - out[r]) / K, in x's dtype; grad and out (R,) accumulation dtype.
    Differentiable in grad, x and out (out: the forward's output, whose own graph carries d out / d x)."""
    acc = accumulation_dtype(x.dtype)
    return (grad[:, None] * torch.exp(x.to(acc) - out[:, None]) / x.shape[1]).to(x.dtype)


# --- MCMC updates ----------------------------------------------------------------------------------------


def _noise(z: Tensor, seed: Tensor, noise: Optional[Tensor]) -> Tensor:
    if noise is not None:
        return noise
    generator = torch.Generator(device=z.device).manual_seed(int(seed.item()))
    return torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)


def hmc_draw_momentum(z: Tensor, seed: Tensor) -> Tuple[Tensor, Tensor]:
    momentum = _noise(z, seed, None)
    return momentum, 0.5 * (momentum * momentum).sum(dim=1)


def leapfrog_kick_drift(z: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, kick_fraction: float) -> None:
    z_new, p_new = integrators.leapfrog_kick_drift(z, p, grad, step_size, kick_fraction)
    z.copy_(z_new), p.copy_(p_new)


def hmc_trajectory_end(z: Tensor, p: Tensor, grad: Tensor, potential: Tensor, z0: Tensor, potential0: Tensor,
                       grad0: Tensor, kinetic0: Tensor, step_size: Tensor, log_uniform: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    *selected, accept_prob, accepted, energy_error = integrators.hmc_trajectory_end(
        z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform)
    for target, value in zip((z, potential, grad), selected):
        target.copy_(value)
    return accept_prob, accepted, energy_error


def mala_propose(z: Tensor, grad: Tensor, step_size: Tensor, seed: Tensor, noise: Optional[Tensor]) -> Tensor:
    return integrators.mala_propose(z, grad, step_size, _noise(z, seed, noise))


def mala_accept(z: Tensor, potential: Tensor, grad: Tensor, z_prop: Tensor, potential_prop: Tensor,
                grad_prop: Tensor, step_size: Tensor, log_uniform: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    *selected, accept_prob, accepted, energy_error = integrators.mala_accept(
        z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform)
    for target, value in zip((z_prop, potential_prop, grad_prop), selected):
        target.copy_(value)
    return accept_prob, accepted, energy_error


def ula_step(z: Tensor, grad: Tensor, step_size: Tensor, seed: Tensor, noise: Optional[Tensor]) -> None:
    z.copy_(integrators.ula_step(z, grad, step_size, _noise(z, seed, noise)))


def kinetic_langevin_baoa(z: Tensor, v: Tensor, grad: Tensor, step_size: Tensor, friction: Tensor, seed: Tensor,
                          noise: Optional[Tensor]) -> None:
    z_new, v_new = integrators.kinetic_langevin_baoa(z, v, grad, step_size, friction, _noise(z, seed, noise))
    z.copy_(z_new), v.copy_(v_new)
