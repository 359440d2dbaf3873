"""kale_fast's samplers: one named configuration per line of CONFIGS, each a sampler factory (a new sampler, or
a new option such as a mass matrix, is one more line), run as a warm-up run and then a sampling run continued
from its state, each timed alone."""
from typing import Callable, Dict, Tuple

import numpy as np
import torch

import kale_fast as kf
from benchmarks.peers.common import Outcome, Sizes, Stopwatch

N_LEAPFROG = 10  # the HMC configurations of every library take this many leapfrog steps per iteration

# Step sizes are only starting points: every configuration adapts its step during warm-up (dual averaging,
# shared across chains, kale_fast's default) and a diagonal metric (pooled over chains, the default); ChEES adapts
# its trajectory length too. "+per-chain" adapts each chain's step on its own, as the peers' runners do (they vmap
# one window adaptation per chain): the same setting on both sides, kale_fast's metric still pooled.
# "+compile" runs the gradient path through torch.compile (its compilation counts as warm-up).
CONFIGS: Dict[str, Callable[[], kf.samplers.base.Sampler]] = {
    "mala": lambda: kf.MALA(0.01),
    f"hmc-{N_LEAPFROG}": lambda: kf.HMC(0.05, N_LEAPFROG),
    f"hmc-{N_LEAPFROG}+per-chain": lambda: kf.HMC(0.05, N_LEAPFROG, per_chain_adaptation=True),
    "chees": lambda: kf.ChEES(0.05),
}
COMPILE_SUFFIX = "+compile"


def configs():
    """Every configuration, eager and compiled."""
    return list(CONFIGS) + sorted(name + COMPILE_SUFFIX for name in CONFIGS)


def parse(config: str) -> Tuple[str, bool]:
    """A configuration's (name in CONFIGS, compiled)."""
    compiled = config.endswith(COMPILE_SUFFIX)
    name = config[:-len(COMPILE_SUFFIX)] if compiled else config
    if name not in CONFIGS:
        raise ValueError(f"unknown kale_fast configuration {config!r}; expected one of {configs()}")
    return name, compiled


def run(config: str, target, z0: np.ndarray, sizes: Sizes, seed: int) -> Outcome:
    """z0 (B, L) initial positions."""
    name, compiled = parse(config)
    sampler = CONFIGS[name]()
    torch.manual_seed(seed)
    z0 = torch.as_tensor(z0, dtype=torch.float32)
    with Stopwatch() as warm:
        warmed = sampler.run(target.potential, z0, 0, warmup=sizes.warmup, compile=compiled)
        if compiled:  # the sampling run's own compilation (ChEES: its whole iterations) is warm-up too
            sampler.run(target.potential, None, min(sizes.draws, 20), state=warmed.state, compile=True)
    with Stopwatch() as sampling:
        result = sampler.run(target.potential, None, sizes.draws, thin=1, state=warmed.state, compile=compiled)
    trace = result.trace.double().numpy()  # (chain, draw, dim)
    if isinstance(sampler, kf.ChEES):  # ceil(u T / h) steps with u uniform on (0, 1): about T / (2h) + 1/2
        grads = result.trajectory_length / (2 * float(result.step_size.mean())) + 0.5
    else:
        grads = getattr(sampler, "n_leapfrog", 1)
    return Outcome(trace=trace, warmup_s=warm.wall, sample_s=sampling.wall, cpu_s=sampling.cpu,
                   grads_per_draw=float(grads), accept=float(result.accept_rate.mean()))
