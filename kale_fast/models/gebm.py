"""The Generalized Energy-Based Model Q(dx) = exp(-E(x) - A) G(dx), G = base # N(0, I_L)."""
import itertools
import json
import math
import zipfile
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from kale_fast._io import PathLike, atomic_torch_save, load_torch_file
from kale_fast.ops import kale_loss, log_mean_exp
from kale_fast.samplers import LatentPotential, SampleResult, Sampler


class GEBM(nn.Module):
    """A base (generator, or flow) B: R^L -> X and an energy E: X -> R.

    Sampling runs MCMC on the latent posterior nu(z) ~ N(z; 0, I) exp(-E(B(z))) and maps x = B(z).
    `spec` (JSON-able plain data, optional) says how to rebuild base and energy: `save` records it, so that
    `kf.load_gebm` can rebuild the networks without being given them (the training loop records its config).
    `known_log_partition` (a scalar tensor or None) is the log-partition A that `log_prob` uses when given none:
    `kf.load_gebm` sets it to the learned A of the file or run.
    """

    def __init__(self, base: nn.Module, energy: nn.Module, latent_dim: int, spec: Optional[Dict[str, Any]] = None):
        super().__init__()
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        self.base, self.energy, self.latent_dim, self.spec = base, energy, latent_dim, spec
        self.known_log_partition: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError("a GEBM has no single forward: gebm.energies(x) gives E(x) (B,), gebm.log_prob(x) the log "
                        "density (flow bases), gebm.sample(n, sampler, n_steps) samples, gebm.base(z) base samples")

    def save(self, path: PathLike, log_partition: Optional[Tensor] = None) -> None:
        """Write the GEBM to `path` (atomically) in kale_fast's safe format, read back by `kf.load_gebm`: the
        weights of base and energy (their state_dicts, on the CPU), latent_dim, the learned log-partition A
        (a scalar tensor, if given) and `self.spec` as a JSON string. The file holds tensors and plain data
        only, so loading it runs no code; the networks' classes are not in it (see kf.load_gebm)."""
        if log_partition is not None and (not isinstance(log_partition, Tensor) or log_partition.numel() != 1):
            raise TypeError(f"log_partition must be a one-element tensor (the learned A) or None, got "
                            f"{log_partition!r}")
        try:
            spec = json.dumps(self.spec)
        except (TypeError, ValueError) as error:
            raise TypeError(f"GEBM.spec must be JSON-able plain data (dicts, lists, strings, numbers): {error}") \
                from None
        atomic_torch_save({"format": GEBM_FILE_FORMAT, "latent_dim": self.latent_dim, "spec": spec,
                           "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                           "log_partition": None if log_partition is None else log_partition.detach().cpu()}, path)

    def _device(self) -> torch.device:
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")  # networks without parameters or buffers

    def _floating_dtype(self) -> torch.dtype:
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    def latent(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n draws of the latent prior N(0, I_L), (n, L), in the networks' dtype (fp64 networks get fp64 latents)."""
        return torch.randn(n, self.latent_dim, generator=generator, device=self._device(), dtype=self._floating_dtype())

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
    def log_prob(self, x: Tensor, log_partition: Optional[Tensor] = None) -> Tensor:
        """log q(x) = log p_G(x) - E(x) - A (nats, (B,)), for bases with an exact density (a `log_prob` method,
        e.g. a flow). A: `log_partition` if given, else `known_log_partition` (the learned A that kf.load_gebm
        attaches); gebm.log_partition(n) estimates it by Monte Carlo."""
        if not hasattr(self.base, "log_prob"):
            raise TypeError(f"log_prob needs a base with an exact density (a log_prob method, such as a flow); "
                            f"{type(self.base).__name__} has none")
        if log_partition is None:
            if self.known_log_partition is None:
                raise ValueError("log_prob needs the log-partition A: pass log_partition=, e.g. "
                                 "gebm.log_partition(20_000)[0] (Monte Carlo), or load the GEBM with kf.load_gebm, "
                                 "which attaches the learned A")
            log_partition = self.known_log_partition.to(x.device)
        return self.base.log_prob(x) - self.energies(x) - log_partition


GEBM_FILE_FORMAT = "kale_fast.gebm/1"  # the "format" entry of a file written by GEBM.save


class SavedGEBM(NamedTuple):
    """What `kf.load_gebm` returns."""
    gebm: GEBM                       # in eval mode, on the requested device
    log_partition: Optional[Tensor]  # the learned A (scalar), None if none was saved


def read_gebm_file(path: PathLike, device: str = "cpu") -> dict:
    """The contents of a GEBM.save file as tensors (on `device`) and plain data, checked; no code in the file
    runs. Keys: latent_dim (int), spec (dict or None), state (the GEBM's state_dict), log_partition."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a file of GEBM.save (those are torch zip archives; this one is "
                         f"{_what_file(path)}); a run folder of `kale-fast train` is loaded by passing the folder")
    saved = load_torch_file(path, map_location=device)
    if not isinstance(saved, dict) or saved.get("format") != GEBM_FILE_FORMAT:
        raise ValueError(f"{path} is not a file of GEBM.save (its 'format' is not {GEBM_FILE_FORMAT!r}); a run "
                         f"folder of `kale-fast train` is loaded by passing the folder itself")
    missing = [key for key in ("latent_dim", "spec", "state", "log_partition") if key not in saved]
    if missing:
        raise ValueError(f"{path} is not a whole GEBM.save file: it lacks {missing}")
    try:
        spec = json.loads(saved["spec"]) if saved["spec"] is not None else None
    except (TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: its 'spec' must be the JSON text GEBM.save writes, got {str(saved['spec'])[:60]!r} "
                         f"({type(error).__name__}: {error})") from None
    return {**saved, "spec": spec}


def _what_file(path: PathLike) -> str:
    """A few words on what a file that is not a zip archive holds: empty, text (with its first line), or bytes."""
    with open(path, "rb") as file:
        head = file.read(200)
    if not head:
        return "empty"
    try:
        first_line = head.decode("utf-8").splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        return "binary data of another format"
    return f"text, starting {first_line[:40]!r}"


def gebm_from_saved(saved: dict, base: nn.Module, energy: nn.Module, path: PathLike = "the file") -> GEBM:
    """A GEBM of the given networks holding the weights of `saved` (read_gebm_file's dict), in eval mode; networks
    whose parameters do not match the saved ones (names or shapes) get a ValueError."""
    if not isinstance(base, nn.Module) or not isinstance(energy, nn.Module):
        raise TypeError(f"base and energy must be torch.nn.Modules, got {type(base).__name__} and "
                        f"{type(energy).__name__}")
    state = saved["state"]
    gebm = GEBM(base, energy, saved["latent_dim"], saved["spec"]).to(next(iter(state.values())).device
                                                                    if state else "cpu")
    try:
        gebm.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the base and energy given do not match the weights in {path}: "
                         f"{' '.join(str(error).split())}") from None
    return gebm.eval()
