"""Flows of the zuko library (pip install "kale-fast[flows]") as GEBM bases: masked autoregressive flows (MAF,
Papamakarios et al., 2017) and neural spline flows (NSF, Durkan et al., 2019).

A GEBM needs of its base a differentiable map from the latent space to the data (the MCMC chains run in the
latent space) and, for likelihoods, the exact log-density; zuko's flows give both: the transform maps data to
its standard-normal latent, its inverse is the map latent -> data, and `log_prob` is exact.
"""
import torch
from torch import Tensor, nn

ZUKO_FLOWS = ("maf", "nsf")


class ZukoFlow(nn.Module):
    """z (B, dim) -> x (B, dim) through a zuko MAF or NSF of `transforms` autoregressive transforms, each a MADE
    of two hidden layers of width `hidden` (NSF: monotonic rational-quadratic splines of `bins` bins), on a
    standard normal latent. Sampling inverts the autoregressive transforms (dim network passes each), scoring
    takes one pass: fit by maximum likelihood, they are fast where training needs them to be."""

    def __init__(self, kind: str, dim: int, transforms: int = 5, hidden: int = 100, bins: int = 8):
        super().__init__()
        if kind not in ZUKO_FLOWS:
            raise ValueError(f"zuko flow kind must be one of {ZUKO_FLOWS}, got {kind!r}")
        if dim < 2:
            raise ValueError(f"a zuko flow base needs dim >= 2, got {dim}")
        self.dim = dim
        if torch.get_default_device().type == "meta":
            # zuko's masks need torch.unique, which the meta device lacks: a stand-in of the MADEs' weight and bias
            # shapes, a lower bound of the flow's state size (models.build checks a file's config against its
            # weights on the meta device, before anything is allocated)
            outputs = 2 if kind == "maf" else 3 * bins - 1  # per feature: shift, log-scale / the spline's knots
            shapes = [(hidden, dim), (hidden,), (hidden, hidden), (hidden,), (dim * outputs, hidden), (dim * outputs,)]
            self.flow = nn.ParameterList(nn.Parameter(torch.empty(shape)) for _ in range(transforms) for shape in shapes)
            return
        try:
            import zuko
        except ImportError as error:
            raise ImportError(f"base 'zuko-{kind}' needs the zuko package: pip install 'kale-fast[flows]' (or "
                              f"pip install zuko)") from error
        options = dict(transforms=transforms, hidden_features=(hidden, hidden))
        self.flow = (zuko.flows.MAF(dim, **options) if kind == "maf"
                     else zuko.flows.NSF(dim, bins=bins, **options))

    def forward(self, z: Tensor) -> Tensor:
        return self.flow().transform.inv(z)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x), (B,): exact."""
        return self.flow().log_prob(x)
