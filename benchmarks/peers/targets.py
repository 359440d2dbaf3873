"""The three targets, defined once as numpy arrays, with a torch potential U(z) (B, L) -> (B,) for kale_fast
and a JAX log density -U(z) (L,) -> () for BlackJAX and NumPyro, both built from the same arrays.

gaussian: 100-D, zero mean, independent, standard deviations log-spaced in [0.1, 1]; moments known.
logistic: Bayesian logistic regression on scikit-learn's breast_cancer (569 rows), standardised features plus
    an intercept (31-D), prior N(0, 1) on every weight; moments from a long-run reference.
gebm: a small GEBM latent posterior U(z) = 0.5 |z|^2 + E(B(z)), base MLP 16 -> 64 -> 64, energy MLP
    64 -> 64 -> 1, SiLU between layers (kale_fast.models.MLP's convention), fixed weights drawn by numpy;
    moments from a long-run reference.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

GEBM_LATENT, GEBM_HIDDEN = 16, 64
# The weights are Uniform(+-scale / sqrt(fan_in)) (torch's nn.Linear init times GEBM_WEIGHT_SCALE): at 3 the
# energy varies by several units over the prior, which tilts and skews the posterior clearly away from
# N(0, I) (see the reference's skewness in benchmarks/results/reference/peers.json) while one NUTS chain still
# mixes.
GEBM_WEIGHT_SCALE = 3.0


@dataclass
class Target:
    """name; dim L; the torch potential (with value_and_grad); the numpy arrays the JAX side is built from;
    known moments (mean, var) of shape (L,) where they are known in closed form, else None."""
    name: str
    dim: int
    potential: object
    arrays: Dict[str, np.ndarray]
    moments: Optional[Tuple[np.ndarray, np.ndarray]]


class GaussianPotential:
    """U(z) = 0.5 sum (z / sd)^2, closed-form gradient."""

    def __init__(self, sd: np.ndarray):
        self.precision = torch.as_tensor(1.0 / sd**2, dtype=torch.float32)

    def __call__(self, z: Tensor) -> Tensor:
        return self.value_and_grad(z)[0]

    def value_and_grad(self, z: Tensor) -> Tuple[Tensor, Tensor]:
        precision = self.precision.to(z.dtype)
        grad = z * precision
        return 0.5 * (z * grad).sum(1), grad


class LogisticPotential:
    """U(w) = 0.5 |w|^2 - sum_n [y_n x_n.w - softplus(x_n.w)], closed-form gradient w - X^T (y - sigmoid(Xw))."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.float32)

    def __call__(self, w: Tensor) -> Tensor:
        return self.value_and_grad(w)[0]

    def value_and_grad(self, w: Tensor) -> Tuple[Tensor, Tensor]:
        x, y = self.x.to(w.dtype), self.y.to(w.dtype)
        logits = w @ x.T  # (B, N)
        nll = (torch.nn.functional.softplus(logits) - y * logits).sum(1)
        grad = w + (torch.sigmoid(logits) - y) @ x
        return 0.5 * (w * w).sum(1) + nll, grad


def gaussian() -> Target:
    sd = np.logspace(-1, 0, 100)
    return Target("gaussian", 100, GaussianPotential(sd), {"sd": sd}, (np.zeros(100), sd**2))


def logistic() -> Target:
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    x = np.concatenate([np.ones((len(features), 1)), features], axis=1)
    y = labels.astype(np.float64)
    return Target("logistic", x.shape[1], LogisticPotential(x, y), {"x": x, "y": y}, None)


def gebm_weights(seed: int = 0) -> List[Tuple[np.ndarray, np.ndarray]]:
    """[(W (out, in), b (out,))] of base layer 1, base layer 2, energy layer 1, energy layer 2."""
    rng = np.random.default_rng(seed)
    widths = [(GEBM_LATENT, GEBM_HIDDEN), (GEBM_HIDDEN, GEBM_HIDDEN), (GEBM_HIDDEN, GEBM_HIDDEN), (GEBM_HIDDEN, 1)]
    layers = []
    for fan_in, fan_out in widths:
        bound = GEBM_WEIGHT_SCALE / np.sqrt(fan_in)
        layers.append((rng.uniform(-bound, bound, (fan_out, fan_in)), rng.uniform(-bound, bound, fan_out)))
    return layers


def gebm() -> Target:
    from kale_fast.models import MLP
    from kale_fast.samplers import LatentPotential

    layers = gebm_weights()
    base = MLP(GEBM_LATENT, GEBM_HIDDEN, (GEBM_HIDDEN,))
    energy = MLP(GEBM_HIDDEN, 1, (GEBM_HIDDEN,))
    linears = [m for net in (base, energy) for m in net.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for linear, (w, b) in zip(linears, layers):
            linear.weight.copy_(torch.as_tensor(w))
            linear.bias.copy_(torch.as_tensor(b))
    arrays = {f"{kind}{i}": layer[j] for i, layer in enumerate(layers) for j, kind in enumerate("wb")}
    return Target("gebm", GEBM_LATENT, LatentPotential(base.eval().requires_grad_(False),
                                                        energy.eval().requires_grad_(False)), arrays, None)


TARGETS: Dict[str, Callable[[], Target]] = {"gaussian": gaussian, "logistic": logistic, "gebm": gebm}


def jax_log_density(target: Target) -> Callable:
    """-U(z) for one position z (L,), in JAX, from target.arrays (float32 like the torch side)."""
    import jax
    import jax.numpy as jnp

    a = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in target.arrays.items()}
    if target.name == "gaussian":
        return lambda z: -0.5 * jnp.sum((z / a["sd"]) ** 2)
    if target.name == "logistic":
        def logistic_log_density(w):
            logits = a["x"] @ w
            return -0.5 * jnp.sum(w * w) - jnp.sum(jax.nn.softplus(logits) - a["y"] * logits)
        return logistic_log_density
    if target.name == "gebm":
        def gebm_log_density(z):
            h = jax.nn.silu(a["w0"] @ z + a["b0"])
            x = a["w1"] @ h + a["b1"]
            h = jax.nn.silu(a["w2"] @ x + a["b2"])
            return -0.5 * jnp.sum(z * z) - (a["w3"] @ h + a["b3"])[0]
        return gebm_log_density
    raise ValueError(f"no JAX log density for target {target.name!r}")
