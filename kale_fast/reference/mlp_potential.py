"""Reference value and input-gradient of a Linear + activation stack's latent potential, the oracle of
kale_fast.ops.mlp_potential (and its path on devices without the C++ kernel).

U(z) = 0.5 * prior_precision * |z|^2 + temperature * f(z), f(x) = act_n(W_n ... act_1(W_1 x + b_1) ... + b_n) of
width 1. The gradient is written out layer by layer in torch ops (no autograd), so that it runs under
torch.no_grad and traces under torch.compile.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

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
