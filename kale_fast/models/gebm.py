"""The Generalized Energy-Based Model Q(dx) = exp(-E(x) - A) G(dx), G = base # N(0, I_L)."""
import itertools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from kale_fast.ops import kale_loss, log_mean_exp
from kale_fast.samplers import LatentPotential, SampleResult, Sampler


class GEBM(nn.Module):
    """A base (generator, or flow) B: R^L -> X and an energy E: X -> R.

    Sampling runs MCMC on the latent posterior nu(z) ~ N(z; 0, I) exp(-E(B(z))) and maps x = B(z).
    """

    def __init__(self, base: nn.Module, energy: nn.Module, latent_dim: int):
        super().__init__()
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        self.base, self.energy, self.latent_dim = base, energy, latent_dim

    def _device(self) -> torch.device:
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")  # networks without parameters or buffers

    def latent(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n draws of the latent prior N(0, I_L), (n, L)."""
        return torch.randn(n, self.latent_dim, generator=generator, device=self._device())

    def energies(self, x: Tensor) -> Tensor:
        """E(x) as (B,)."""
        return self.energy(x).reshape(x.shape[0])

    @torch.no_grad()
    def base_sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n samples of the base G, (n, ...)."""
        return self.base(self.latent(n, generator))

    def sample(self, n: int, sampler: Sampler, n_steps: int, *, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None, **run_options) -> Tuple[Tensor, SampleResult]:
        """n GEBM samples: `sampler` runs n chains for n_steps on the latent posterior from prior draws,
        then x = B(z). Returns (x, the sampler's SampleResult); run_options go to sampler.run (warmup, ...)."""
        potential = LatentPotential(self.base, self.energy, temperature)
        result = sampler.run(potential, self.latent(n, generator), n_steps, generator=generator, **run_options)
        with torch.no_grad():
            return self.base(result.z), result

    @torch.no_grad()
    def log_partition(self, n_samples: int, chunk_size: int = 8192,
                      generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """Monte-Carlo estimate of A = log E_z exp(-E(B(z))) over n_samples base samples, streamed in chunks,
        and its standard error (delta method: sqrt((mean w^2 / mean(w)^2 - 1) / n) with w = exp(-E))."""
        if not isinstance(n_samples, int) or n_samples < 2:
            raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
        lse1, lse2 = [], []  # per chunk: log sum exp(-E) and log sum exp(-2E)
        for start in range(0, n_samples, chunk_size):
            count = min(chunk_size, n_samples - start)
            neg_energy = -self.energies(self.base(self.latent(count, generator))).double()
            lse1.append(log_mean_exp(neg_energy) + math.log(count))
            lse2.append(log_mean_exp(2 * neg_energy) + math.log(count))
        log_sum, log_sum_sq = torch.logsumexp(torch.stack(lse1), 0), torch.logsumexp(torch.stack(lse2), 0)
        estimate = log_sum - math.log(n_samples)
        relative_var = torch.clamp(n_samples * torch.exp(log_sum_sq - 2 * log_sum) - 1, min=0.0)
        return estimate.float(), torch.sqrt(relative_var / n_samples).float()

    @torch.no_grad()
    def kale(self, x: Tensor, n_base: int = 10000, generator: Optional[torch.Generator] = None) -> Tensor:
        """The KALE estimate between the data x and the base at the current energy (Donsker-Varadhan form):
        -mean E(x) - log mean exp(-E(B(z))) over n_base base samples."""
        return -kale_loss(self.energies(x), self.energies(self.base_sample(n_base, generator)))

    @torch.no_grad()
    def log_prob(self, x: Tensor, log_partition: Tensor) -> Tensor:
        """log q(x) = log p_G(x) - E(x) - A, for bases with an exact density (a `log_prob` method, e.g. a flow)."""
        if not hasattr(self.base, "log_prob"):
            raise TypeError(f"log_prob needs a base with an exact density (a log_prob method, such as a flow); "
                            f"{type(self.base).__name__} has none")
        return self.base.log_prob(x) - self.energies(x) - log_partition
