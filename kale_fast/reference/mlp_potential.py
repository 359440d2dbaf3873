"""Reference value and input-gradient of a Linear + activation stack's latent potential, and a leapfrog trajectory
on it: the oracles of kale_fast.ops.mlp_potential's two ops (and their path on devices without the C++ kernel).

U(z) = 0.5 * prior_precision * |z|^2 + temperature * f(z), f(x) = act_n(W_n ... act_1(W_1 x + b_1) ... + b_n) of
width 1. The gradient is written out layer by layer in torch ops (no autograd), so that it runs under
torch.no_grad and traces under torch.compile.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from kale_fast.reference.integrators import leapfrog_kick_drift

# Activation name -> (act(a), act'(a)) from a pre-activation a and the layer's parameter (LeakyReLU's slope).
ACTIVATIONS = {
    "identity": None,
    "silu": lambda a, _: (F.silu(a), torch.sigmoid(a) * (1 + a * (1 - torch.sigmoid(a)))),
    "relu": lambda a, _: (torch.relu(a), (a > 0).to(a.dtype)),
    "leaky_relu": lambda a, slope: (F.leaky_relu(a, slope), torch.where(a > 0, 1.0, torch.full_like(a, slope))),
    "tanh": lambda a, _: (torch.tanh(a), 1 - torch.tanh(a) ** 2),
}


def mlp_potential(z: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
                  activations: Sequence[str], activation_parameters: Sequence[float], temperature: float,
                  prior_precision: float) -> Tuple[Tensor, Tensor]:
    """(U (B,), dU/dz (B, L)) for z (B, L); weights[i] (out_i, in_i) as nn.Linear stores them, biases[i] (out_i,)
    or None, activations[i] a name of ACTIVATIONS applied after layer i, activation_parameters[i] its parameter."""
    x, derivatives = z, []
    for w, b, name, parameter in zip(weights, biases, activations, activation_parameters):
        a = F.linear(x, w, b)
        if ACTIVATIONS[name] is None:
            x, d = a, None
        else:
            x, d = ACTIVATIONS[name](a, parameter)
        derivatives.append(d)
    value = 0.5 * prior_precision * (z * z).sum(dim=1) + temperature * x[:, 0]
    g = torch.full_like(x, temperature)
    for w, d in zip(reversed(weights), reversed(derivatives)):
        g = (g if d is None else g * d) @ w
    return value, g + prior_precision * z


def mlp_leapfrog(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n_steps: Union[int, Tensor],
                 scale: Optional[Tensor], weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
                 activations: Sequence[str], activation_parameters: Sequence[float], temperature: float,
                 prior_precision: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """n_steps leapfrog steps of step_size h (B,) on U_y(y) = U(S y), S = diag(scale) (None: the identity), from
    (y, p) (B, L) with grad = grad U_y(y): (y, p, U_y(y) (B,), grad U_y(y)) at the end, before the closing half
    kick (kale_fast/samplers/leapfrog.py's contract: the first step opens with a half kick)."""
    value = None
    for step in range(int(n_steps)):
        y, p = leapfrog_kick_drift(y, p, grad, step_size, 0.5 if step == 0 else 1.0)
        value, grad = mlp_potential(y if scale is None else y * scale, weights, biases, activations,
                                    activation_parameters, temperature, prior_precision)
        grad = grad if scale is None else grad * scale
    return y, p, value, grad
