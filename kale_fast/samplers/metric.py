"""The samplers' metric (inverse mass matrix), shared by all chains, as a linear change of coordinates.

HMC, MALA and Langevin dynamics on z with inverse mass matrix C = S S^T are the same Markov chains as the
unit-mass samplers on y = S^-1 z, whose potential is U_y(y) = U(S y) with gradient S^T grad U(S y) (the Jacobian
of a linear map is constant, so Metropolis ratios are unchanged). The samplers and their fused kernels therefore
stay unit-mass, and the metric enters through the potential: positions and velocities map as z = S y, gradients
as grad_y = S^T grad_z. S is diag(scale) for a diagonal metric (scale = the target's standard deviations, when
adapted) or the lower Cholesky factor of C for a dense one (C = the target's covariance, when adapted).

Shapes: positions, velocities and gradients (B, L); scale (L,); cholesky (L, L); all in z's dtype and device.
"""
import functools
import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from kale_fast.samplers.potentials import Potential, value_and_grad

METRIC_KINDS = ("identity", "diag", "dense")


class Metric(NamedTuple):
    """The identity (both None), a diagonal metric (scale) or a dense one (cholesky)."""
    scale: Optional[Tensor] = None
    cholesky: Optional[Tensor] = None

    @property
    def kind(self) -> str:
        return "dense" if self.cholesky is not None else "diag" if self.scale is not None else "identity"


def position_to_unit(metric: Metric, z: Tensor) -> Tensor:
    """y = S^-1 z (also for velocities); a new tensor, never z itself."""
    if metric.cholesky is not None:
        return torch.linalg.solve_triangular(metric.cholesky, z.T, upper=False).T.contiguous()
    return z / metric.scale if metric.scale is not None else z.clone()


def position_from_unit(metric: Metric, y: Tensor) -> Tensor:
    """z = S y (also for velocities)."""
    if metric.cholesky is not None:
        # F.linear's y C^T, not y @ C.T: a view of C beside C lifted into a while_loop's body (ChEES's compiled
        # leapfrog) is input-to-input aliasing, which TorchDynamo refuses
        return torch.nn.functional.linear(y, metric.cholesky)
    return y * metric.scale if metric.scale is not None else y


def gradient_to_unit(metric: Metric, grad_z: Tensor) -> Tensor:
    """grad_y = S^T grad_z, row by row."""
    if metric.cholesky is not None:
        return grad_z @ metric.cholesky
    return grad_z * metric.scale if metric.scale is not None else grad_z.clone()


def gradient_from_unit(metric: Metric, grad_y: Tensor) -> Tensor:
    """grad_z = S^-T grad_y, row by row."""
    if metric.cholesky is not None:
        return torch.linalg.solve_triangular(metric.cholesky, grad_y, upper=False, left=False)
    return grad_y / metric.scale if metric.scale is not None else grad_y


def unit_value_and_grad(potential: Potential, y: Tensor, metric: Metric) -> Tuple[Tensor, Tensor]:
    """(U(S y), S^T grad U(S y)): the potential the unit-mass samplers see. Traceable by torch.compile."""
    if metric.scale is None and metric.cholesky is None:
        return value_and_grad(potential, y)
    value, grad = value_and_grad(potential, position_from_unit(metric, y))
    return value, gradient_to_unit(metric, grad)


class UnitPotential:
    """A potential in a metric's unit coordinates: calling it with y (B, L) gives unit_value_and_grad(potential, y,
    metric); `leapfrog` runs a whole leapfrog trajectory as one call where the potential can. Traceable by
    torch.compile (the body of compiled whole iterations)."""

    def __init__(self, potential: Potential, metric: Metric):
        self.potential, self.metric = potential, metric

    def __call__(self, y: Tensor) -> Tuple[Tensor, Tensor]:
        return unit_value_and_grad(self.potential, y, self.metric)

    def leapfrog(self, y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n) -> Optional[Tuple[Tensor, ...]]:
        """kale_fast.samplers.leapfrog's contract as one call: the potential's fused_leapfrog (LatentPotential's
        runs kale_fast.ops.mlp_potential.mlp_leapfrog) under the identity or a diagonal metric, else None."""
        fused = getattr(self.potential, "fused_leapfrog", None)
        if fused is None or self.metric.cholesky is not None:
            return None
        return fused(y, p, grad, step_size, n, self.metric.scale)


def unit_value_and_grad_function(potential: Potential, metric: Metric) -> Callable[[Tensor], Tuple[Tensor, Tensor]]:
    """y -> unit_value_and_grad(potential, y, metric), with the metric's case resolved once: the eager leapfrog
    calls it at every step, where the general function's lookups cost about 3 us against a potential of a few ops
    (B = 1)."""
    if metric.scale is None and metric.cholesky is None:
        return functools.partial(value_and_grad, potential)
    return lambda y: unit_value_and_grad(potential, y, metric)


def check_metric(metric: Metric, z: Tensor) -> Metric:
    """A user's or a saved metric, checked against the chains z (B, L) and cast to z's dtype and device."""
    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a kale_fast.samplers.Metric, got {type(metric).__name__}")
    if metric.scale is not None and metric.cholesky is not None:
        raise ValueError("a metric is either diagonal (scale) or dense (cholesky), not both")
    size = z.shape[1]
    if metric.scale is not None:
        scale = metric.scale
        if not isinstance(scale, Tensor) or scale.shape != (size,) or not scale.is_floating_point():
            raise ValueError(f"metric.scale must be a floating ({size},) tensor, got {_describe(scale)}")
        if not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
            raise ValueError("metric.scale must be finite and > 0")
        return Metric(scale=scale.to(z.device, z.dtype))
    if metric.cholesky is not None:
        chol = metric.cholesky
        if not isinstance(chol, Tensor) or chol.shape != (size, size) or not chol.is_floating_point():
            raise ValueError(f"metric.cholesky must be a floating ({size}, {size}) tensor, got {_describe(chol)}")
        diagonal = torch.diagonal(chol)
        if not (bool(torch.all(torch.isfinite(chol))) and bool(torch.all(diagonal > 0))
                and bool(torch.all(torch.triu(chol, 1) == 0))):
            raise ValueError("metric.cholesky must be a finite lower-triangular factor with a positive diagonal")
        return Metric(cholesky=chol.to(z.device, z.dtype))
    return Metric()


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}, dtype {value.dtype}"
    return type(value).__name__


class MetricEstimator:
    """Pools the chains' draws of one adaptation window into a metric: the diagonal of their covariance, or
    the whole of it, in float64, then regularised towards 1e-3 I as Stan does ((n / (n + 5)) C + 1e-3 (5 /
    (n + 5)) I, n the number of draws). All B chains contribute at every iteration, so a window of W
    iterations averages B W draws: many chains give far better estimates than one chain's window.

    split_halves also keeps the whole covariance of each of two halves of the draws, for longest_scale: O(B L^2)
    per update and 2 L^2 floats besides the metric's own sums (which alone set the metric, bit for bit the same)."""

    # longest_scale's halves: a draw's half is its chain's parity, flipped every HALF_BLOCK iterations, so that
    # one chain's halves are alternate blocks of iterations (nearly independent at an MCMC chain's usual
    # autocorrelation) and many chains' halves are different chains
    HALF_BLOCK = 16

    def __init__(self, kind: str, size: int, device: torch.device, split_halves: bool = False):
        self.kind, self.count, self.updates = kind, 0, 0
        self.shift = None  # the first batch's mean: sums of shifted draws do not cancel catastrophically
        self.total = torch.zeros(size, dtype=torch.float64, device=device)
        shape = (size, size) if kind == "dense" else (size,)
        self.total_sq = torch.zeros(shape, dtype=torch.float64, device=device)
        # per half: [count, sum, sum of outer products] of the shifted draws
        self.halves = None
        if split_halves:
            self.halves = [[0, torch.zeros(size, dtype=torch.float64, device=device),
                            torch.zeros(size, size, dtype=torch.float64, device=device)] for _ in range(2)]

    def update(self, z: Tensor) -> None:
        """Add one iteration's positions z (B, L); chains that are NaN or infinite (an unadjusted sampler's
        diverged chains) are left out, so that they cannot make the metric, and with it every chain, NaN."""
        z = z.double()
        finite = torch.isfinite(z).all(dim=1)
        chains = torch.arange(z.shape[0], device=z.device)[finite]
        z = z[finite]
        self.updates += 1
        if z.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = z.mean(0)
        centred = z - self.shift
        self.count += z.shape[0]
        self.total += centred.sum(0)
        self.total_sq += centred.T @ centred if self.kind == "dense" else (centred * centred).sum(0)
        if self.halves is not None:
            in_second = (chains + (self.updates - 1) // self.HALF_BLOCK) % 2 == 1
            for half, rows in zip(self.halves, (centred[~in_second], centred[in_second])):
                half[0] += rows.shape[0]
                half[1] += rows.sum(0)
                half[2] += rows.T @ rows

    @staticmethod
    def _covariance(count: int, total: Tensor, total_sq: Tensor) -> Tensor:
        """Covariance (unregularised) from count >= 1 draws' sums about a shift: total (L,) and total_sq, the
        sums of squares (L,) or of outer products (L, L)."""
        mean = total / count
        outer = count * torch.outer(mean, mean) if total_sq.dim() == 2 else count * mean * mean
        return (total_sq - outer) / max(count - 1, 1)

    def metric(self, dtype: torch.dtype) -> Optional[Metric]:
        """The estimated metric, or None if no finite draw was added."""
        n = self.count
        if n == 0:
            return None
        cov = self._covariance(n, self.total, self.total_sq)
        if self.kind == "dense":
            eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            cov = n / (n + 5.0) * cov + 1e-3 * 5.0 / (n + 5.0) * eye
            return Metric(cholesky=torch.linalg.cholesky(cov).to(dtype))
        var = n / (n + 5.0) * cov.clamp_min(0.0) + 1e-3 * 5.0 / (n + 5.0)
        return Metric(scale=torch.sqrt(var).to(dtype))

    def longest_scale(self, metric: Metric) -> Optional[float]:
        """The draws' largest standard deviation along any direction in the metric's unit coordinates (a host
        float): sqrt(lambda_max) of S^-1 C S^-T, C the draws' covariance (L, L), S the metric's scale (L,) or
        Cholesky factor (L, L) (for a diagonal metric estimated from the same draws, lambda_max of their
        correlation matrix). Estimated across the two halves, each's top eigenvector scored by the other's
        covariance and the two averaged: the top eigenvalue of one sample covariance is biased up by its noise,
        (1 + sqrt(L / n))^2 for an isotropic target of n independent draws, which a direction found in independent
        draws does not see. None while a half has fewer than 2 draws. Needs split_halves."""
        if self.halves is None:
            raise ValueError("longest_scale needs an estimator made with split_halves=True")
        if min(half[0] for half in self.halves) < 2:
            return None
        first, second = (_in_unit_coordinates(self._covariance(*half), metric) for half in self.halves)
        top_first, top_second = (torch.linalg.eigh(cov).eigenvectors[:, -1] for cov in (first, second))
        score = 0.5 * float(top_first @ second @ top_first + top_second @ first @ top_second)
        return math.sqrt(max(score, 0.0))


def _in_unit_coordinates(cov: Tensor, metric: Metric) -> Tensor:
    """S^-1 cov S^-T (L, L) in float64, S the metric's scale or Cholesky factor."""
    if metric.cholesky is not None:
        chol = metric.cholesky.double()
        half = torch.linalg.solve_triangular(chol, cov, upper=False)
        return torch.linalg.solve_triangular(chol, half.T, upper=False)
    if metric.scale is not None:
        inverse = 1.0 / metric.scale.double()
        return cov * inverse[:, None] * inverse[None, :]
    return cov
