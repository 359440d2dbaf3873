"""The config's sampler (make_sampler), GEBM samples of a trained run with the warm-up spelled out, one rule for
the step size of the unadjusted samplers, and the `sample` verb (sample_run): the samples saved as tensors, a
figure and, for vectors, a CSV table and a per-column summary.

ULA and kinetic Langevin have no acceptance rate to adapt a step size to. Unless a step size is given, their
warm-up is MALA's (its step size and diagonal metric adapted by dual averaging towards acceptance 0.574), and
they go on from MALA's chains with its metric and a step derived from MALA's step h:
- kinetic Langevin: min(sqrt(2h), sqrt(2 ULA_MAX_STEP)): sqrt(2h) is the leapfrog step of MALA's proposal (MALA
  is one leapfrog step of size sqrt(2h) from a fresh velocity), so BAOAB moves at the scale MALA found stable;
  BAOAB samples the positions of a Gaussian exactly at any stable step (measured: variance 1.006 on a unit
  Gaussian, L = 2, h = 1.30). The cap (0.63, the leapfrog step of a MALA step of ULA_MAX_STEP) is for sharp
  energies: MALA's test rejects the steps that overshoot a narrow mode, BAOAB has none, and at sqrt(2h) = 1.4 its
  chains left the modes of a sharp 8-Gaussians GEBM (0.15% of samples within 3 sd of a mode after 100 steps);
- ULA: min(h, ULA_MAX_STEP). ULA is MALA's update without the test, but its stationary variance on a unit
  Gaussian is 1 / (1 - h/2): at MALA's step it is far off (measured 2.81 at h = 1.30, L = 2; 1.41 at h = 0.58,
  L = 16), so its step is capped where that bias is 11% in variance (5% in sd). In the metric's unit coordinates
  the warm-up has scaled the target to about unit variance, which is what makes one cap fit every run.
"""
import dataclasses
import math
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import kale_fast as kf
from kale_fast._io import atomic_torch_save, atomic_write
from kale_fast.data import load_data
from kale_fast.models import GEBM
from kale_fast.samplers import LatentPotential, SampleResult
from kale_fast.train.checkpoints import load_run
from kale_fast.train.config import SamplingConfig
from kale_fast.train.plots import image_panels, scatter_samples

UNADJUSTED = ("ula", "kinetic_langevin")
ULA_MAX_STEP = 0.2  # 1 / (1 - 0.2/2) = 1.11: ULA's variance bias on a unit Gaussian at this step


def make_sampler(sampling: SamplingConfig, tuned: Optional[SampleResult] = None) -> kf.samplers.Sampler:
    """The sampling section's sampler, adapting during a warm-up when the run has one (MALA, HMC, ChEES: step size;
    ChEES: trajectory length; all: the diagonal metric); with `tuned`, the result of a warm-up run of the same sampler,
    it is frozen at what that warm-up adapted (the step size shared by its chains, its metric and trajectory
    length)."""
    if tuned is None:  # adapt_step_size None: adapt wherever a warm-up is given, keep the step without one
        step, adapt, metric, length = sampling.step_size, None, "diag", 1.0
    else:
        step, adapt, metric, length = float(tuned.step_size.mean()), False, tuned.metric, tuned.trajectory_length
    return {"ula": lambda: kf.ULA(step, metric=metric),
            "mala": lambda: kf.MALA(step, metric=metric, adapt_step_size=adapt),
            "hmc": lambda: kf.HMC(step, 5, metric=metric, adapt_step_size=adapt),
            "kinetic_langevin": lambda: kf.KineticLangevin(step, 1.0, metric=metric),
            "chees": lambda: kf.ChEES(step, trajectory_length=length, metric=metric, adapt_step_size=adapt),
            }[sampling.sampler]()


class GEBMSamples(NamedTuple):
    x: Tensor              # GEBM samples B(z), (n, ...)
    result: SampleResult   # of the kept iterations
    warmup: int            # warm-up iterations (discarded)
    kept: int              # sampling iterations; x is the chains' state after the last one
    step_size: float       # the step size of the kept iterations (the sampler's own units)
    step_size_from: str    # where it came from, in words

    def describe(self, sampler: str) -> str:
        """One line: iterations, step size and its origin, acceptance (or 'unadjusted')."""
        accept = ("unadjusted (no Metropolis test)" if sampler in UNADJUSTED else
                  f"acceptance {self.result.accept_rate.mean().item():.3f}")
        return (f"{sampler}: {self.warmup + self.kept} iterations: {self.warmup} warm-up + {self.kept} kept; "
                f"step size {self.step_size:.4g} ({self.step_size_from}); {accept}")


def unadjusted_sampler(name: str, mala_warmup: SampleResult) -> Tuple[kf.samplers.Sampler, str]:
    """ULA or kinetic Langevin (`name`) with the metric and the step derived from a MALA warm-up's result by the
    rule of the module docstring, and where the step comes from, in words."""
    mala_step = mala_warmup.step_size.mean().item()
    if name == "ula":
        return (kf.ULA(min(mala_step, ULA_MAX_STEP), metric=mala_warmup.metric),
                f"min(MALA's step h = {mala_step:.4g}, adapted during warm-up, and {ULA_MAX_STEP}: ULA's bias cap)")
    if name == "kinetic_langevin":
        return (kf.KineticLangevin(math.sqrt(2 * min(mala_step, ULA_MAX_STEP)), 1.0, metric=mala_warmup.metric),
                f"sqrt(2 min(h, {ULA_MAX_STEP})) of MALA's step h = {mala_step:.4g}, adapted during warm-up")
    raise ValueError(f"name must be one of the unadjusted samplers {UNADJUSTED}, got {name!r}")


def draw_gebm_samples(gebm: GEBM, sampling: SamplingConfig, n: int, warmup: int, generator: torch.Generator,
                      step_size: Optional[float] = None, progress: bool = False) -> GEBMSamples:
    """n GEBM samples by sampling.sampler: `warmup` iterations, then sampling.sampler_steps kept ones. step_size:
    the initial step of MALA and HMC (they adapt it during warm-up) or the fixed step of ULA and kinetic Langevin;
    None: sampling.step_size for MALA and HMC, MALA's warm-up rule (module docstring) for the unadjusted
    samplers."""
    kept = sampling.sampler_steps
    initial = sampling.step_size if step_size is None else step_size
    if sampling.sampler not in UNADJUSTED or step_size is not None or warmup == 0:
        sampler = make_sampler(dataclasses.replace(sampling, step_size=initial))
        x, result = gebm.sample(n, sampler, kept, warmup=warmup, generator=generator, progress=progress)
        origin = ("adapted during warm-up" if sampling.sampler not in UNADJUSTED and warmup else
                  "given" if step_size is not None else "the run's step_size")
        return GEBMSamples(x, result, warmup, kept, result.step_size.mean().item(), origin)
    _, warm = gebm.sample(n, kf.MALA(initial, adapt_step_size=True), 0, warmup=warmup, generator=generator,
                          progress=progress)
    sampler, origin = unadjusted_sampler(sampling.sampler, warm)
    result = sampler.run(LatentPotential(gebm.base, gebm.energy), warm.z, kept, generator=generator,
                         progress=progress)
    with torch.no_grad():
        x = gebm.base(result.z)
    return GEBMSamples(x, result, warmup, kept, result.step_size.mean().item(), origin)


def sample_run(run_dir: Path, sampler: Optional[str], n: int, steps: Optional[int], warmup: Optional[int],
               step_size: Optional[float], seed: int, device: Optional[str]) -> List[Path]:
    """`kale-fast sample`: n GEBM samples of the run folder's GEBM (draw_gebm_samples; sampler, steps and device
    None: the run's; warmup None: steps // 2), with held-out data and base samples beside them, written to
    samples-<sampler>.pt (tensors only), samples-<sampler>.png (image panels or a scatter) and, for vector data,
    samples-<sampler>.csv, a per-column summary printed; returns the files written."""
    config, gebm = load_run(run_dir, device)[:2]
    sampling = dataclasses.replace(config.sampling, **{k: v for k, v in dict(sampler=sampler, sampler_steps=steps)
                                                       .items() if v is not None})
    warmup = sampling.sampler_steps // 2 if warmup is None else warmup
    generator = torch.Generator(device=config.run.device).manual_seed(seed)
    drawn = draw_gebm_samples(gebm, sampling, n, warmup, generator, step_size=step_size, progress=True)
    with torch.no_grad():
        panels = {"held-out data": load_data(config.data, config.run.seed).test[:n],
                  "base": gebm.base_sample(n, generator).cpu(), f"GEBM ({sampling.sampler})": drawn.x.cpu()}
    out = Path(run_dir) / f"samples-{sampling.sampler}"
    atomic_torch_save(dict(samples=drawn.x.cpu(), z=drawn.result.z.cpu(), base_samples=panels["base"],
                           accept_rate=drawn.result.accept_rate.cpu(), step_size=drawn.result.step_size.cpu()),
                      out.with_suffix(".pt"))
    written = [out.with_suffix(".pt"), out.with_suffix(".png")]
    if drawn.x.dim() == 4:
        image_panels(panels, written[1])
    else:
        scatter_samples(panels, written[1])
        write_csv(drawn.x, written[1].with_suffix(".csv"))
        written.append(written[1].with_suffix(".csv"))
        print(column_summary(panels))
    print(drawn.describe(sampling.sampler))
    print(f"{n} samples written to {', '.join(map(str, written))}")
    return written


def write_csv(samples: Tensor, path: Path) -> None:
    """Vector samples (n, D) as a CSV table with a header x1 ... xD (the model's coordinates: tabular data are
    the preprocessed, whitened columns)."""
    header = ",".join(f"x{j + 1}" for j in range(samples.shape[1]))
    values = samples.detach().cpu().double().numpy()
    atomic_write(path, lambda tmp: np.savetxt(tmp, values, delimiter=",", header=header, comments="", fmt="%.6g"))


def column_summary(sets: Dict[str, Tensor]) -> str:
    """A printable table of each column's mean and standard deviation in each named set of vectors (n, D)."""
    names = list(sets)
    width = max(16, *(len(name) + 2 for name in names))
    lines = ["column " + "".join(f"{name:>{width}}" for name in names)]
    stats = {name: (x.double().mean(0), x.double().std(0)) for name, x in sets.items()}
    for j in range(next(iter(sets.values())).shape[1]):
        cells = (f"{stats[name][0][j]:+.3f} ({stats[name][1][j]:.3f})" for name in names)
        lines.append(f"x{j + 1:<5} " + "".join(f"{cell:>{width}}" for cell in cells))
    return "mean (sd) per column\n" + "\n".join(lines)
