"""A faithful reimplementation, for cost comparison only, of the sampler loops in the GEBM authors' code
(MichaelArbel/GeneralizedEBM, samplers.py), written from its algorithm, not copied: gradients by
`.backward()` on the summed potential with the networks' parameters requiring grad (so parameter gradients
are computed and accumulated), potentials recomputed by extra forward passes in the Metropolis tests,
boolean-mask selects, and the paper code's step conventions (its lambda = our h, with the same math as
kale_fast where they agree). Each function advances the state by one iteration, like one call of their loop.
"""
import math

import torch
import torch.nn.functional as F


def _grad(potential, z):
    """Their Grad_potential: backward through everything, parameters included."""
    z = z.detach().requires_grad_()
    potential(z).sum().backward()
    return z.grad


def ula_step(potential, z, gamma):
    """Their LangevinSampler.euler: z - gamma/2 grad U + sqrt(gamma) xi."""
    return (z - gamma / 2 * _grad(potential, z) + math.sqrt(gamma) * torch.randn_like(z)).detach()


def kinetic_step(potential, z, v, gamma, kappa):
    """Their LMCsampler.leapfrog with one step: half drift, gradient, half kick, OU, half kick, half drift."""
    step = 2.0 * math.sqrt(gamma)
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


def hmc_step(potential, z, cached_grad, gamma, n_leapfrog=2):
    """Their HMCsampler: fresh momentum, n_leapfrog steps reusing the last computed gradient (stale after a
    rejection), then potentials of start and end recomputed by two forward passes for the test."""
    v0 = torch.randn_like(z)
    step = 2.0 * math.sqrt(gamma)
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
