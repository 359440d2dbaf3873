"""What a sampler run checks about itself: which steps diverged, whether the step size is adapted, and at the
end of a run, warnings (SamplerWarning) where the result should not be trusted as it is.

A step diverges where its proposal's energy or gradient is NaN or infinite, or, for MALA and the HMC family,
where the energy error of the move exceeds DIVERGENCE_THRESHOLD: H' - H for an HMC trajectory (potential plus
kinetic energy, after the closing half kick) and -log of the Metropolis ratio for MALA (the same quantity for
MALA seen as one leapfrog step). The fused Metropolis tests (hmc_trajectory_end, mala_accept) return it beside
their decisions. The threshold is Stan's and BlackJAX's (1000); as there, only an increase counts: a large
decrease is accepted with probability 1 and is what a chain far out in the tails does on its way in. ULA and
kinetic Langevin have no Metropolis test: they diverge only where the energy or gradient is not finite. Shapes:
B chains of L coordinates; energies (B,), positions and gradients (B, L).
"""
import math
import os
import sys
import warnings

import torch
from torch import Tensor

DIVERGENCE_THRESHOLD = 1000.0
# End-of-run acceptance outside [LOW_ACCEPTANCE, HIGH_ACCEPTANCE] is worth a word: near 0 the chains hardly
# move (the step is too large for the target); near 1 they move by tiny steps (the step is far too small).
LOW_ACCEPTANCE, HIGH_ACCEPTANCE = 0.1, 0.99
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class SamplerWarning(UserWarning):
    """A sampler run finished, but its result is suspect: divergences, chains that ended NaN or ran away,
    acceptance near 0 or 1, or a step-size setting that has no effect. Filter it with
    warnings.filterwarnings("ignore", category=kale_fast.samplers.SamplerWarning)."""


def warn(message: str) -> None:
    """warnings.warn at the first caller outside kale_fast.samplers (the user's `run` call)."""
    frame, level = sys._getframe(1), 2  # level 2: warn's caller
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, SamplerWarning, stacklevel=level)


# --- divergences, per step -----------------------------------------------------------------------------------

def nonfinite(potential: Tensor, grad: Tensor) -> Tensor:
    """(B,) True where the potential (B,) or any coordinate of its gradient (B, L) is NaN or infinite."""
    return ~torch.isfinite(potential) | ~torch.isfinite(grad).all(dim=1)


def divergent(energy_error: Tensor) -> Tensor:
    """(B,) True where an energy error (B,) is NaN, infinite, or above DIVERGENCE_THRESHOLD. In two ops (NaN and
    -inf mapped to +inf), not four: eager iterations (ChEES) call it once per iteration."""
    return torch.nan_to_num(energy_error, nan=math.inf, neginf=math.inf) > DIVERGENCE_THRESHOLD


# --- step-size adaptation ----------------------------------------------------------------------------------

def adapts_step_size(sampler, warmup: int) -> bool:
    """Whether this run adapts the step size: adapt_step_size=None (the default) adapts wherever there is a
    warm-up and a Metropolis test; True without a warm-up cannot, and says so."""
    if sampler.default_target_accept is None or sampler.adapt_step_size is False:
        return False
    if warmup == 0:
        if sampler.adapt_step_size is True:
            warn(f"{type(sampler).__name__}(adapt_step_size=True) adapts the step size during warm-up, and this "
                 f"run has warmup=0: the step size stays as given. Pass warmup=N (e.g. N = 100) to adapt it, or "
                 f"adapt_step_size=False for a fixed step")
        return False
    return True


# --- the end of a run ----------------------------------------------------------------------------------------

def warn_about_run(sampler, potential, result, warmup: int, n_steps: int, start_z: Tensor,
                   start_potential: Tensor) -> None:
    """Warnings about a finished run's `result` (a SampleResult) of `potential` that started from start_z
    (B, L) with potential start_potential (B,): chains that ended NaN or infinite, divergences while sampling,
    acceptance near 0 or 1, chains that ran away (a log-density passed where the potential belongs)."""
    name = type(sampler).__name__
    n_chains = result.z.shape[0]
    finite = torch.isfinite(result.z).all(dim=1) & torch.isfinite(result.potential)
    # both counts read at once (each read of a result is an eager op or two of a run's fixed cost)
    n_bad, n_divergent = torch.stack([(~finite).sum(), result.n_divergent.sum()]).tolist()
    if n_bad:
        warn(f"{name}: {n_bad} of {n_chains} chains ended NaN or infinite ({_divergence_counts(result, warmup)}). "
             + ("ULA and kinetic Langevin have no Metropolis test to reject a step that overflows: the step size "
                "is too large for this target, or the potential or its gradient is NaN or infinite somewhere. "
                if sampler.default_target_accept is None else "")
             + "If `potential` is a log-density, pass its negative: samplers take U(z) = -log p(z)")
    if n_divergent and not n_bad:
        chains = int((result.n_divergent > 0).sum())
        warn(f"{name}: {n_divergent} of {n_steps * n_chains} sampling transitions diverged, in {chains} of "
             f"{n_chains} chains ({_divergence_counts(result, warmup)}): an energy error above "
             f"{DIVERGENCE_THRESHOLD:g} or a NaN or infinite energy or gradient. The sample may be biased where "
             f"the integrator fails: a smaller step (a higher target_accept) or a better-conditioned potential "
             f"helps; a potential that is infinite on purpose (a hard constraint) diverges at its wall by design. "
             f"result.n_divergent counts them per chain")
    # the finite chains' rows, indexed once and only where some chains are not finite (an eager op per tensor)
    z0, u0, z1, u1, grad1, accept_rate = (t if n_bad == 0 else t[finite] for t in (
        start_z, start_potential, result.z, result.potential, result.state.chains.grad, result.accept_rate))
    if sampler.default_target_accept is not None and n_steps and n_bad < n_chains:
        accept = float(accept_rate.mean())
        if accept < LOW_ACCEPTANCE:
            warn(f"{name}: mean acceptance {accept:.3f} while sampling: the chains hardly move. The step size "
                 f"({float(result.step_size.mean()):.3g}) is too large for this target"
                 + ("" if sampler.adapt_step_size is not False and warmup else
                    ": adapt it with a warm-up (warmup=N, adapt_step_size left at its default)"))
        elif accept > HIGH_ACCEPTANCE:
            warn(f"{name}: mean acceptance {accept:.3f} while sampling: the step size "
                 f"({float(result.step_size.mean()):.3g}) is probably far too small, and the chains move slowly "
                 f"(the target acceptance is {sampler.target_accept})"
                 + ("" if sampler.adapt_step_size is not False and warmup else
                    ": adapt it with a warm-up (warmup=N, adapt_step_size left at its default)"))
    if n_bad < n_chains and ran_away(potential, z0, u0, z1, u1, grad1):
        warn(f"{name}: the chains ran away: their potential fell from {float(u0.mean()):.4g} to "
             f"{float(u1.mean()):.4g} (mean over chains) as they moved outwards, mean |z| "
             f"{float(z0.norm(dim=1).mean()):.3g} -> {float(z1.norm(dim=1).mean()):.3g}"
             f". The potential is probably a log-density: samplers take U(z) = -log p(z), so pass its negative "
             f"(BlackJAX's and NumPyro's logdensity_fn is -U)")


def ran_away(potential, start_z: Tensor, start_potential: Tensor, z: Tensor, end_potential: Tensor,
             grad: Tensor) -> bool:
    """Whether chains moved from start_z (B, L) to z (B, L) down a potential that keeps falling faster the
    further they go, as a log-density passed for U does (it is concave: -log p of a Gaussian is -|z|^2/2).

    Three signs, all needed: the mean potential fell; the chains moved along grad U's descent beyond noise,
    mean (z - start_z) . grad U(z) < -(L + 5 sqrt(3 L / B)) (at equilibrium its mean is +L for any normalisable
    target, by integration by parts, with variance 3L per chain for a unit Gaussian); and the potential is
    concave along the way, U(z + d) - 2 U(z) + U(start_z) < 0 in the mean over chains, d = z - start_z (one
    more evaluation of the potential, made only when the first two hold). Chains still descending into a
    basin far from where they started meet the first two, never the third (a basin is convex)."""
    if z.shape[0] == 0:
        return False
    size, n_chains = z.shape[1], z.shape[0]
    moved = z - start_z
    # the three means read at once
    end_mean, start_mean, virial = torch.stack([end_potential.double().mean(), start_potential.double().mean(),
                                                (moved * grad).sum(dim=1).double().mean()]).tolist()
    if not end_mean < start_mean or virial >= -(size + 5 * math.sqrt(3 * size / n_chains)):
        return False
    with torch.no_grad():
        further = potential(z + moved)
    curvature = (further.double() - 2 * end_potential.double() + start_potential.double()).mean()
    return bool(curvature < 0)


def _divergence_counts(result, warmup: int) -> str:
    counts = f"{int(result.n_divergent.sum())} divergent sampling transitions"
    if warmup:
        counts += f", {int(result.n_divergent_warmup.sum())} in warm-up"
    return counts
