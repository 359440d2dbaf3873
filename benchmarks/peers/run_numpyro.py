"""NumPyro's samplers over B chains: MCMC(chain_method="vectorized") with NumPyro's default warm-up (step size
by dual averaging and a diagonal mass matrix in Stan-style windows, per chain), timed by MCMC.warmup (which
includes its JIT compilation). Sampling then continues from post_warmup_state with the kernel's own vmapped
sample function in a jitted lax.scan compiled ahead of time (that compilation is counted with the warm-up):
MCMC.run would compile inside the timed sampling. NumPyro has no MALA; HMC with one leapfrog step is MALA
(step h = sqrt(2 x MALA's step)), so "mala" here is HMC(num_steps=1) with the same adaptation."""
import functools
from typing import Callable

import numpy as np

from benchmarks.peers.common import Outcome, Sizes, Stopwatch
from benchmarks.peers.run_kale import N_LEAPFROG

CONFIGS = ("mala", f"hmc-{N_LEAPFROG}", "nuts")


def _kernel(config: str, potential_fn: Callable):
    from numpyro.infer import HMC, NUTS

    if config == "mala":
        return HMC(potential_fn=potential_fn, num_steps=1, trajectory_length=None,
                   target_accept_prob=0.574)
    if config == f"hmc-{N_LEAPFROG}":
        return HMC(potential_fn=potential_fn, num_steps=N_LEAPFROG, trajectory_length=None)
    if config == "nuts":
        return NUTS(potential_fn=potential_fn)
    raise ValueError(f"unknown NumPyro configuration {config!r}; expected one of {CONFIGS}")


@functools.lru_cache(maxsize=None)
def _mcmc(config: str, log_density: Callable, n_chains: int, sizes: Sizes):
    """One MCMC object per configuration, kept across repeats so that its compiled functions are reused."""
    from numpyro.infer import MCMC

    potential_fn = lambda z: -log_density(z)  # noqa: E731
    return MCMC(_kernel(config, potential_fn), num_warmup=sizes.warmup, num_samples=sizes.draws,
                num_chains=n_chains, chain_method="vectorized", progress_bar=False)


_EXECUTABLES: dict = {}  # the sampling loops compiled ahead of time, per _mcmc's arguments


def _sampling_loop(mcmc, n_draws: int) -> Callable:
    """state -> (positions (draw, [chain,] L), acceptance, leapfrog steps): the kernel's sample function (vmapped
    over chains by MCMC.warmup when B > 1) scanned n_draws times."""
    import jax

    def loop(state):
        def one_step(state, _):
            state = mcmc.sampler.sample(state, (), {})
            return state, (state.z, state.mean_accept_prob, state.num_steps)
        return jax.lax.scan(one_step, state, None, length=n_draws)[1]
    return jax.jit(loop)


def run(config: str, log_density: Callable, z0: np.ndarray, sizes: Sizes, seed: int) -> Outcome:
    """z0 (B, L) initial positions; log_density (L,) -> () in JAX (the same object across repeats)."""
    import jax
    import jax.numpy as jnp

    key = (config, log_density, z0.shape[0], sizes)
    mcmc = _mcmc(*key)
    init = jnp.asarray(z0 if z0.shape[0] > 1 else z0[0], dtype=jnp.float32)  # one chain: no chain axis
    with Stopwatch() as warm:
        mcmc.warmup(jax.random.key(seed), init_params=init)
        state = jax.block_until_ready(mcmc.post_warmup_state)
        if key not in _EXECUTABLES:
            _EXECUTABLES[key] = _sampling_loop(mcmc, sizes.draws).lower(state).compile()
    with Stopwatch() as sampling:
        positions, accept, steps = jax.block_until_ready(_EXECUTABLES[key](state))
    positions = np.asarray(positions)
    trace = positions[None] if positions.ndim == 2 else np.swapaxes(positions, 0, 1)
    # mean_accept_prob is the running mean since warm-up ended: its last value is the mean over the draws.
    return Outcome(trace=trace, warmup_s=warm.wall, sample_s=sampling.wall, cpu_s=sampling.cpu,
                   grads_per_draw=float(np.mean(steps)), accept=float(np.mean(np.asarray(accept)[-1])))
