"""Multi-layer perceptrons: bases and energies for 2-D and tabular data, and cheap benchmark potentials."""
from typing import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """in_dim -> hidden... -> out_dim with `activation` between layers (none after the last)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (128, 128),
                 activation: type = nn.SiLU):
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
