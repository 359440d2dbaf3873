"""A faithful reimplementation, for cost comparison, of the sampler loops in the GEBM authors' code
(MichaelArbel/GeneralizedEBM, samplers.py), written from its algorithm, not copied: gradients by `.backward()`
on the summed potential with the networks' parameters requiring grad (so parameter gradients are computed and
accumulated), potentials recomputed by extra forward passes in the Metropolis tests, boolean-mask selects. Each
function advances the state by one iteration, like one call of their loop, and takes their own step parameter.

Their parameters against kale_fast's step size h (the functions below convert; tests/samplers/test_authors_samplers.py
checks each step for step against kale_fast's sampler with the same noise):
- ULA (their LangevinSampler): z - gamma/2 grad U + sqrt(gamma) xi, so gamma = 2h (`ula_gamma`);
- MALA: z - gamma grad U + sqrt(2 gamma) xi, so gamma = h (`mala_gamma`); their Metropolis correction scales the
  reverse proposal's term by gamma/4 instead of 1/(4 gamma), so their acceptance is not exact (kept: only the cost
  matters here, and the test compares proposals);
- HMC (their HMCsampler) and kinetic Langevin (their LMCsampler): leapfrog step 2 sqrt(lambda), so
  lambda = (h/2)^2 (`leapfrog_lambda`); the kinetic sampler's friction kappa is kale_fast's friction. Their
  kinetic step is the A-B-O-B-A splitting (one gradient, at the half-drifted position), kale_fast's B-A-O-A-B: the
  same dynamics, not the same chain (the two agree step for step where the gradient vanishes).
"""
import math

import torch
import torch.nn.functional as F


def ula_gamma(step_size: float) -> float:
    """Their LangevinSampler's gamma for kale_fast's ULA step h."""
    return 2.0 * step_size


def mala_gamma(step_size: float) -> float:
    """Their MALA's gamma for kale_fast's MALA step h."""
    return step_size


def leapfrog_lambda(step_size: float) -> float:
    """Their HMC and kinetic Langevin (LMC) lambda for kale_fast's leapfrog step h (theirs is 2 sqrt(lambda))."""
    return (step_size / 2.0) ** 2


def _grad(potential, z):
    """Their Grad_potential: backward through everything, parameters included."""
    z = z.detach().requires_grad_()
    potential(z).sum().backward()
    return z.grad


def ula_step(potential, z, gamma):
    """Their LangevinSampler.euler: z - gamma/2 grad U + sqrt(gamma) xi."""
    return (z - gamma / 2 * _grad(potential, z) + math.sqrt(gamma) * torch.randn_like(z)).detach()


def kinetic_step(potential, z, v, lmbda, kappa):
    """Their LMCsampler.leapfrog with one step of 2 sqrt(lmbda): half drift, gradient, half kick, OU with friction
    kappa, half kick (the same gradient), half drift."""
    step = 2.0 * math.sqrt(lmbda)
    c, d = math.exp(-kappa * step), math.sqrt(1 - math.exp(-2 * kappa * step))
    z_half = z + step / 2 * v
    grad = _grad(potential, z_half)
    v = c * (v - step / 2 * grad) + d * torch.randn_like(v)
    v = v - step / 2 * grad
    return (z_half + step / 2 * v).detach(), v.detach()


def mala_step(potential, z, grad, gamma):
    """Their MALA: proposal, gradient at it, then two no-grad forwards for the Metropolis test (their
    correction term divides by the wrong power of the step; kept, since only the cost matters here)."""
    noise = torch.randn_like(z)
    z_new = (z - gamma * grad + math.sqrt(2 * gamma) * noise).detach()
    grad_new = _grad(potential, z_new)
    err = z - z_new + gamma * grad_new
    correction = 0.5 * (noise**2).sum(1) - 0.25 * gamma * (err**2).sum(1)
    with torch.no_grad():
        difference = -potential(z_new) + potential(z) + correction
    accepted = torch.rand_like(difference) < torch.exp(-F.relu(-difference))
    z_out, grad_out = 1.0 * z, 1.0 * grad
    z_out[accepted], grad_out[accepted] = z_new[accepted], grad_new[accepted]
    return z_out, grad_out


def hmc_step(potential, z, cached_grad, lmbda, n_leapfrog=2):
    """Their HMCsampler: fresh momentum, n_leapfrog steps of 2 sqrt(lmbda) reusing the last computed gradient
    (stale after a rejection), then potentials of start and end recomputed by two forward passes for the test."""
    v0 = torch.randn_like(z)
    step = 2.0 * math.sqrt(lmbda)
    x, v, grad = z.clone(), v0.clone(), cached_grad
    for _ in range(n_leapfrog):
        v_half = v - step / 2 * grad
        x = x + step * v_half
        grad = _grad(potential, x).clone()
        v = v_half - step / 2 * grad
    with torch.no_grad():
        difference = -(potential(x) + 0.5 * (v**2).sum(1)) + potential(z) + 0.5 * (v0**2).sum(1)
    accepted = torch.rand_like(difference) < torch.exp(-F.relu(-difference))
    z_out = 1.0 * z
    z_out[accepted] = x[accepted]
    return z_out.detach(), grad
