"""Fused MCMC updates: the integrator steps of ULA, MALA, HMC and kinetic Langevin, each one kernel.

Shapes: states z, p, v, grad, noise (B, L), contiguous, fp32 or fp64; per-chain values (potentials, step sizes,
frictions, log-uniforms) (B,) in the state's dtype. The updates work in place on the arguments documented as
updated, and never build autograd graphs (samplers run them under torch.no_grad). Noise is drawn inside the
kernel (counter-based Philox keyed by a seed drawn from `generator`, or torch's default generator) unless an
explicit `noise` tensor is given, which the tests use to compare with kale_fast.reference.integrators.

As in kale_fast.ops.kale, eager calls go straight to the backend's kernels, and under torch.compile each update
is a torch.library custom op (mutating its state arguments) that the compiler keeps opaque.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from kale_fast.ops import _checks
from kale_fast.ops._backend import kernels, resolve
from kale_fast.reference import integrators as reference

_FAMILY = "integrators"


def _check(z: Tensor, states: dict, per_chain: dict) -> None:
    """States must match z ((B, L), fp32/fp64, contiguous, one device); per-chain values must be (B,) alike."""
    _checks.floating_tensor("z", z)
    if z.dim() != 2 or z.dtype not in (torch.float32, torch.float64) or not z.is_contiguous():
        raise ValueError(f"z must be a contiguous (B, L) fp32 or fp64 tensor, got {_checks.describe(z)}")
    for name, t in states.items():
        if t is not None and (not isinstance(t, Tensor) or t.shape != z.shape or t.dtype != z.dtype
                              or t.device != z.device or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous tensor like z ({_checks.describe(z)}), got "
                             f"{_checks.describe(t) if isinstance(t, Tensor) else type(t).__name__}")
    for name, t in per_chain.items():
        if not isinstance(t, Tensor) or t.shape != z.shape[:1] or t.dtype != z.dtype or t.device != z.device:
            raise ValueError(f"{name} must be a ({z.shape[0]},) tensor of z's dtype and device, got "
                             f"{_checks.describe(t) if isinstance(t, Tensor) else type(t).__name__}")


def _seed(z: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """A fresh kernel seed from torch's generator, kept on z's device (no host synchronisation)."""
    return torch.randint(0, 2**62, (1,), generator=generator, device=z.device)


def _reference_noise(z: Tensor, noise: Optional[Tensor], generator: Optional[torch.Generator]) -> Tensor:
    return noise if noise is not None else torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)


def _call(name: str, backend: str, *args):
    if torch.compiler.is_compiling():
        return getattr(torch.ops.kale_fast, name)(*args)
    return getattr(kernels(backend, _FAMILY), name)(*args)


# --- leapfrog --------------------------------------------------------------------------------------------

def hmc_draw_momentum(z: Tensor, *, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Fresh momenta p ~ N(0, I) like z and their kinetic energies 0.5 |p|^2 (B,), in one kernel."""
    _check(z, {}, {})
    backend = resolve(z.device)
    if backend == "reference":
        momentum = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return momentum, 0.5 * (momentum * momentum).sum(dim=1)
    return _call("hmc_draw_momentum", backend, z, _seed(z, generator))


def leapfrog_kick_drift(z: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, kick_fraction: float = 1.0) -> None:
    """In place: p <- p - kick_fraction * h * grad U(z), then z <- z + h * p (unit mass).

    kick_fraction is 0.5 for the first step of a trajectory (its opening half kick) and 1 after that.
    """
    _check(z, dict(p=p, grad=grad), dict(step_size=step_size))
    backend = resolve(z.device)
    if backend == "reference":
        z_new, p_new = reference.leapfrog_kick_drift(z, p, grad, step_size, kick_fraction)
        z.copy_(z_new), p.copy_(p_new)
        return
    _call("leapfrog_kick_drift", backend, z, p, grad, step_size, float(kick_fraction))


def hmc_trajectory_end(z: Tensor, p: Tensor, grad: Tensor, potential: Tensor, z0: Tensor, potential0: Tensor,
                       grad0: Tensor, kinetic0: Tensor, step_size: Tensor, log_uniform: Tensor) -> Tuple[Tensor, Tensor]:
    """Close an HMC trajectory and run its Metropolis test, in one kernel.

    (z, p, grad, potential) is the trajectory's end before its closing half kick, (z0, potential0, grad0, kinetic0)
    its start. Applies the half kick to a copy of p, computes the kinetic energy and the Hamiltonian difference,
    accepts where log_uniform < H0 - H1 (never where H1 is NaN or infinite) and, in place, restores z, grad
    and potential of the rejected chains from the start. Returns (accept_prob, accepted), both (B,).
    """
    _check(z, dict(p=p, grad=grad, z0=z0, grad0=grad0),
           dict(potential=potential, potential0=potential0, kinetic0=kinetic0, step_size=step_size,
                log_uniform=log_uniform))
    backend = resolve(z.device)
    if backend == "reference":
        *selected, accept_prob, accepted = reference.hmc_trajectory_end(
            z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform)
        for target, value in zip((z, potential, grad), selected):
            target.copy_(value)
        return accept_prob, accepted
    return _call("hmc_trajectory_end", backend, z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size,
                 log_uniform)


# --- Langevin moves --------------------------------------------------------------------------------------

def mala_propose(z: Tensor, grad: Tensor, step_size: Tensor, *, generator: Optional[torch.Generator] = None,
                 noise: Optional[Tensor] = None) -> Tensor:
    """The Langevin proposal z' = z - h grad U(z) + sqrt(2h) xi, as a new (B, L) tensor."""
    _check(z, dict(grad=grad, noise=noise), dict(step_size=step_size))
    backend = resolve(z.device)
    if backend == "reference":
        return reference.mala_propose(z, grad, step_size, _reference_noise(z, noise, generator))
    return _call("mala_propose", backend, z, grad, step_size, _seed(z, generator), noise)


def mala_accept(z: Tensor, potential: Tensor, grad: Tensor, z_prop: Tensor, potential_prop: Tensor,
                grad_prop: Tensor, step_size: Tensor, log_uniform: Tensor) -> Tuple[Tensor, Tensor]:
    """Metropolis test of a MALA proposal, in one kernel: proposal densities, acceptance and select.

    In place, the proposal tensors (z_prop, potential_prop, grad_prop) become the new state: rejected chains get
    their current values back. Returns (accept_prob, accepted), both (B,).
    """
    _check(z, dict(grad=grad, z_prop=z_prop, grad_prop=grad_prop),
           dict(potential=potential, potential_prop=potential_prop, step_size=step_size, log_uniform=log_uniform))
    backend = resolve(z.device)
    if backend == "reference":
        *selected, accept_prob, accepted = reference.mala_accept(
            z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform)
        for target, value in zip((z_prop, potential_prop, grad_prop), selected):
            target.copy_(value)
        return accept_prob, accepted
    return _call("mala_accept", backend, z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform)


def ula_step(z: Tensor, grad: Tensor, step_size: Tensor, *, generator: Optional[torch.Generator] = None,
             noise: Optional[Tensor] = None) -> None:
    """In place: z <- z - h grad U(z) + sqrt(2h) xi."""
    _check(z, dict(grad=grad, noise=noise), dict(step_size=step_size))
    backend = resolve(z.device)
    if backend == "reference":
        z.copy_(reference.ula_step(z, grad, step_size, _reference_noise(z, noise, generator)))
        return
    _call("ula_step", backend, z, grad, step_size, _seed(z, generator), noise)


def kinetic_langevin_baoa(z: Tensor, v: Tensor, grad: Tensor, step_size: Tensor, friction: Tensor, *,
                          generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None) -> None:
    """In place, the B-A-O-A part of a BAOAB step: v -= h/2 grad U(z); z += h/2 v;
    v <- exp(-gamma h) v + sqrt(1 - exp(-2 gamma h)) xi; z += h/2 v. The closing half kick needs grad U at the new
    z and is the sampler's (one gradient per step)."""
    _check(z, dict(v=v, grad=grad, noise=noise), dict(step_size=step_size, friction=friction))
    backend = resolve(z.device)
    if backend == "reference":
        z_new, v_new = reference.kinetic_langevin_baoa(z, v, grad, step_size, friction,
                                                       _reference_noise(z, noise, generator))
        z.copy_(z_new), v.copy_(v_new)
        return
    _call("kinetic_langevin_baoa", backend, z, v, grad, step_size, friction, _seed(z, generator), noise)


# --- torch.compile front door: custom ops over the same kernels -------------------------------------------

@torch.library.custom_op("kale_fast::hmc_draw_momentum", mutates_args=())
def _hmc_draw_momentum_op(z: Tensor, seed: Tensor) -> Tuple[Tensor, Tensor]:
    return kernels(resolve(z.device), _FAMILY).hmc_draw_momentum(z, seed)


@torch.library.custom_op("kale_fast::leapfrog_kick_drift", mutates_args=("z", "p"))
def _leapfrog_kick_drift_op(z: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, kick_fraction: float) -> None:
    kernels(resolve(z.device), _FAMILY).leapfrog_kick_drift(z, p, grad, step_size, kick_fraction)


@torch.library.custom_op("kale_fast::hmc_trajectory_end", mutates_args=("z", "grad", "potential"))
def _hmc_trajectory_end_op(z: Tensor, p: Tensor, grad: Tensor, potential: Tensor, z0: Tensor, potential0: Tensor,
                           grad0: Tensor, kinetic0: Tensor, step_size: Tensor, log_uniform: Tensor
                           ) -> Tuple[Tensor, Tensor]:
    return kernels(resolve(z.device), _FAMILY).hmc_trajectory_end(
        z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform)


@torch.library.custom_op("kale_fast::mala_propose", mutates_args=())
def _mala_propose_op(z: Tensor, grad: Tensor, step_size: Tensor, seed: Tensor, noise: Optional[Tensor]) -> Tensor:
    return kernels(resolve(z.device), _FAMILY).mala_propose(z, grad, step_size, seed, noise)


@torch.library.custom_op("kale_fast::mala_accept", mutates_args=("z_prop", "potential_prop", "grad_prop"))
def _mala_accept_op(z: Tensor, potential: Tensor, grad: Tensor, z_prop: Tensor, potential_prop: Tensor,
                    grad_prop: Tensor, step_size: Tensor, log_uniform: Tensor) -> Tuple[Tensor, Tensor]:
    return kernels(resolve(z.device), _FAMILY).mala_accept(
        z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform)


@torch.library.custom_op("kale_fast::ula_step", mutates_args=("z",))
def _ula_step_op(z: Tensor, grad: Tensor, step_size: Tensor, seed: Tensor, noise: Optional[Tensor]) -> None:
    kernels(resolve(z.device), _FAMILY).ula_step(z, grad, step_size, seed, noise)


@torch.library.custom_op("kale_fast::kinetic_langevin_baoa", mutates_args=("z", "v"))
def _kinetic_langevin_baoa_op(z: Tensor, v: Tensor, grad: Tensor, step_size: Tensor, friction: Tensor, seed: Tensor,
                              noise: Optional[Tensor]) -> None:
    kernels(resolve(z.device), _FAMILY).kinetic_langevin_baoa(z, v, grad, step_size, friction, seed, noise)


def _metropolis_outputs_fake(z, *args):
    return z.new_empty(z.shape[:1]), z.new_empty(z.shape[:1], dtype=torch.bool)


_hmc_trajectory_end_op.register_fake(_metropolis_outputs_fake)
_mala_accept_op.register_fake(_metropolis_outputs_fake)
_mala_propose_op.register_fake(lambda z, grad, step_size, seed, noise: torch.empty_like(z))
_hmc_draw_momentum_op.register_fake(lambda z, seed: (torch.empty_like(z), z.new_empty(z.shape[:1])))


def kernels_for(z: Tensor):
    """The integrator kernels of the backend that runs on z's device, checked and resolved once (the samplers
    call this once per run, then the kernels with no per-call checks)."""
    _check(z, {}, {})
    backend = resolve(z.device)
    if backend == "reference":
        return _CheckedKernels
    return kernels(backend, _FAMILY)


class _CheckedKernels:
    """The reference backend under the kernel contract (seeded noise drawn by torch)."""

    @staticmethod
    def hmc_draw_momentum(z, seed):
        return hmc_draw_momentum(z, generator=_generator(z, seed))

    leapfrog_kick_drift = staticmethod(leapfrog_kick_drift)
    hmc_trajectory_end = staticmethod(hmc_trajectory_end)
    mala_accept = staticmethod(mala_accept)

    @staticmethod
    def mala_propose(z, grad, step_size, seed, noise):
        return mala_propose(z, grad, step_size, generator=_generator(z, seed), noise=noise)

    @staticmethod
    def ula_step(z, grad, step_size, seed, noise):
        ula_step(z, grad, step_size, generator=_generator(z, seed), noise=noise)

    @staticmethod
    def kinetic_langevin_baoa(z, v, grad, step_size, friction, seed, noise):
        kinetic_langevin_baoa(z, v, grad, step_size, friction, generator=_generator(z, seed), noise=noise)


def _generator(z, seed):
    return torch.Generator(device=z.device).manual_seed(int(seed.item()))
