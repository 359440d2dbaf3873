"""Fused MCMC updates: the integrator steps of ULA, MALA, HMC and kinetic Langevin, each one kernel.

Shapes: states z, p, v, grad, noise (B, L), contiguous, fp32 or fp64; per-chain values (potentials, step sizes,
frictions, log-uniforms) (B,) in the state's dtype. The updates work in place on the arguments documented as
updated, and never build autograd graphs (samplers run them under torch.no_grad). Noise is drawn inside the
kernel (counter-based Philox keyed by a seed drawn from `generator`, or torch's default generator) unless an
explicit `noise` tensor is given, which the tests use to compare with kale_fast.reference.integrators.

Two ways in. The public functions below check every argument, resolve the backend (their `backend=` keyword,
else the one in force) and launch one kernel. A
sampler loop instead calls `kernels_for(z)` once per run (it checks z and resolves the backend) and then the
kernels it returns, with the kernel contract (seed tensors instead of generators, no checks): eagerly the
backend's own functions, under torch.compile ops of torch.ops.kale_fast with fake rules (mutating their state
arguments as their schemas say), which the compiler keeps opaque.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from kale_fast.ops import _checks
from kale_fast.ops._backend import resolve
from kale_fast.ops._kernels import kernel_op, kernels, traceable_kernels

_FAMILY = "integrators"


# --- the kernel contract (schemas: csrc/op_schemas.cpp; kernels: csrc/integrators.cpp, kernels/integrators.cu,
# triton_kernels/integrators.py, reference/kernels.py): each op's fake rule. On CUDA tensors, the CUDA C++
# kernels cover the two leapfrog updates; the others run as Triton kernels by design (triton_on_cuda). -----------

def _per_chain(z: Tensor):
    return z.new_empty(z.shape[:1])


def _metropolis_outputs(z: Tensor):
    """(accept_prob, accepted), both (B,)."""
    return _per_chain(z), z.new_empty(z.shape[:1], dtype=torch.bool)


@kernel_op(_FAMILY, "hmc_draw_momentum", triton_on_cuda=True)
def _(z, seed):
    return torch.empty_like(z), _per_chain(z)


@kernel_op(_FAMILY, "leapfrog_kick_drift")
def _(z, p, grad, step_size, kick_fraction):
    return None


@kernel_op(_FAMILY, "hmc_trajectory_end")
def _(z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform):
    return (*_metropolis_outputs(z), _per_chain(z))  # and the energy error


@kernel_op(_FAMILY, "mala_propose", triton_on_cuda=True)
def _(z, grad, step_size, seed, noise):
    return torch.empty_like(z)


@kernel_op(_FAMILY, "mala_accept", triton_on_cuda=True)
def _(z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform):
    return (*_metropolis_outputs(z), _per_chain(z))  # and the energy error


@kernel_op(_FAMILY, "ula_step", triton_on_cuda=True)
def _(z, grad, step_size, seed, noise):
    return None


@kernel_op(_FAMILY, "kinetic_langevin_baoa", triton_on_cuda=True)
def _(z, v, grad, step_size, friction, seed, noise):
    return None


def _check(z: Tensor, states: dict, per_chain: dict, updated: Tuple[str, ...] = ()) -> None:
    """States must match z ((B, L), fp32/fp64, contiguous, one device); per-chain values must be (B,) alike; the
    arguments named in `updated` (written in place) must not require grad nor share memory with another."""
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
    if updated:
        arguments = dict(z=z, **states, **per_chain)
        _checks.updatable_in_place({name: arguments[name] for name in updated},
                                   {name: t for name, t in arguments.items() if name not in updated})


def seed(z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """A fresh kernel seed (a one-element int64 tensor on z's device) from `generator` or torch's default one,
    without host synchronisation: the `seed` argument of the kernels that draw noise."""
    return torch.randint(0, 2**62, (1,), generator=generator, device=z.device)


def _kernels(z: Tensor, backend: Optional[str] = None):
    backend = resolve(z.device, backend)
    return traceable_kernels(backend, _FAMILY) if torch.compiler.is_compiling() else kernels(backend, _FAMILY)


def kernels_for(z: Tensor, backend: Optional[str] = None):
    """The integrator kernels of the backend that runs on z's device (`backend`, or the one in force), for a loop
    that checks its arguments once.

    Checks z (a contiguous (B, L) fp32/fp64 tensor) and resolves the backend now; the caller keeps every other
    state like z ((B, L), same dtype and device, contiguous) and per-chain values (B,) in z's dtype. Attributes,
    with in-place updates as documented by the public functions of this module:
    hmc_draw_momentum(z, seed) -> (p, kinetic); leapfrog_kick_drift(z, p, grad, step_size, kick_fraction);
    hmc_trajectory_end(z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform) ->
    (accept_prob, accepted, energy_error); mala_propose(z, grad, step_size, seed, noise) -> z_prop;
    mala_accept(z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform) ->
    (accept_prob, accepted, energy_error);
    ula_step(z, grad, step_size, seed, noise); kinetic_langevin_baoa(z, v, grad, step_size, friction, seed, noise).
    `seed` comes from `seed(z, generator)`; `noise` is None (drawn in the kernel) or a (B, L) tensor.
    """
    _check(z, {}, {})
    return _kernels(z, backend)


# --- leapfrog --------------------------------------------------------------------------------------------

def hmc_draw_momentum(z: Tensor, *, generator: Optional[torch.Generator] = None,
                      backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Fresh momenta p ~ N(0, I) like z and their kinetic energies 0.5 |p|^2 (B,), in one kernel."""
    _check(z, {}, {})
    return _kernels(z, backend).hmc_draw_momentum(z, seed(z, generator))


def leapfrog_kick_drift(z: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, kick_fraction: float = 1.0, *,
                        backend: Optional[str] = None) -> None:
    """In place: p <- p - kick_fraction * h * grad U(z), then z <- z + h * p (unit mass).

    kick_fraction is 0.5 for the first step of a trajectory (its opening half kick) and 1 after that.
    """
    _check(z, dict(p=p, grad=grad), dict(step_size=step_size), updated=("z", "p"))
    if isinstance(kick_fraction, bool) or not isinstance(kick_fraction, (int, float)):
        raise TypeError(f"kick_fraction must be a number (0.5 or 1.0), got {type(kick_fraction).__name__}")
    _kernels(z, backend).leapfrog_kick_drift(z, p, grad, step_size, float(kick_fraction))


def hmc_trajectory_end(z: Tensor, p: Tensor, grad: Tensor, potential: Tensor, z0: Tensor, potential0: Tensor,
                       grad0: Tensor, kinetic0: Tensor, step_size: Tensor, log_uniform: Tensor, *,
                       backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Close an HMC trajectory and run its Metropolis test, in one kernel.

    (z, p, grad, potential) is the trajectory's end before its closing half kick, (z0, potential0, grad0, kinetic0)
    its start. Applies the half kick to a copy of p, computes the kinetic energy and the Hamiltonian difference,
    accepts where log_uniform < H0 - H1 (never where H1 is NaN or infinite) and, in place, restores z, grad
    and potential of the rejected chains from the start. Returns (accept_prob, accepted, energy_error), all (B,):
    energy_error is H1 - H0, -log of the Metropolis ratio (what a divergence check compares with its threshold;
    NaN or infinite where the end's energy or gradient is).
    """
    _check(z, dict(p=p, grad=grad, z0=z0, grad0=grad0),
           dict(potential=potential, potential0=potential0, kinetic0=kinetic0, step_size=step_size,
                log_uniform=log_uniform), updated=("z", "grad", "potential"))
    return _kernels(z, backend).hmc_trajectory_end(z, p, grad, potential, z0, potential0, grad0, kinetic0,
                                                   step_size, log_uniform)


# --- Langevin moves --------------------------------------------------------------------------------------

def mala_propose(z: Tensor, grad: Tensor, step_size: Tensor, *, generator: Optional[torch.Generator] = None,
                 noise: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """The Langevin proposal z' = z - h grad U(z) + sqrt(2h) xi, as a new (B, L) tensor."""
    _check(z, dict(grad=grad, noise=noise), dict(step_size=step_size))
    return _kernels(z, backend).mala_propose(z, grad, step_size, seed(z, generator), noise)


def mala_accept(z: Tensor, potential: Tensor, grad: Tensor, z_prop: Tensor, potential_prop: Tensor,
                grad_prop: Tensor, step_size: Tensor, log_uniform: Tensor, *,
                backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Metropolis test of a MALA proposal, in one kernel: proposal densities, acceptance and select.

    In place, the proposal tensors (z_prop, potential_prop, grad_prop) become the new state: rejected chains get
    their current values back. Returns (accept_prob, accepted, energy_error), all (B,): energy_error is -log of
    the Metropolis ratio (what a divergence check compares with its threshold; NaN or infinite where the
    proposal's energy or gradient is).
    """
    _check(z, dict(grad=grad, z_prop=z_prop, grad_prop=grad_prop),
           dict(potential=potential, potential_prop=potential_prop, step_size=step_size, log_uniform=log_uniform),
           updated=("z_prop", "potential_prop", "grad_prop"))
    return _kernels(z, backend).mala_accept(z, potential, grad, z_prop, potential_prop, grad_prop, step_size,
                                            log_uniform)


def ula_step(z: Tensor, grad: Tensor, step_size: Tensor, *, generator: Optional[torch.Generator] = None,
             noise: Optional[Tensor] = None, backend: Optional[str] = None) -> None:
    """In place: z <- z - h grad U(z) + sqrt(2h) xi."""
    _check(z, dict(grad=grad, noise=noise), dict(step_size=step_size), updated=("z",))
    _kernels(z, backend).ula_step(z, grad, step_size, seed(z, generator), noise)


def kinetic_langevin_baoa(z: Tensor, v: Tensor, grad: Tensor, step_size: Tensor, friction: Tensor, *,
                          generator: Optional[torch.Generator] = None, noise: Optional[Tensor] = None,
                          backend: Optional[str] = None) -> None:
    """In place, the B-A-O-A part of a BAOAB step: v -= h/2 grad U(z); z += h/2 v;
    v <- exp(-gamma h) v + sqrt(1 - exp(-2 gamma h)) xi; z += h/2 v. The closing half kick needs grad U at the new
    z and is the sampler's (one gradient per step)."""
    _check(z, dict(v=v, grad=grad, noise=noise), dict(step_size=step_size, friction=friction), updated=("z", "v"))
    _kernels(z, backend).kinetic_langevin_baoa(z, v, grad, step_size, friction, seed(z, generator), noise)
