"""BlackJAX's samplers over B chains: kernels vmapped over chains, adaptation per chain (vmapped): Stan-style
window adaptation (step size and diagonal inverse mass matrix) for NUTS and HMC, dual averaging of the step
size towards acceptance 0.574 for MALA (BlackJAX's MALA has no mass matrix, so window adaptation does not
apply), and for ChEES BlackJAX's ChEES adaptation over the ensemble of chains (step size, trajectory length and a
diagonal metric, shared by the chains; its jittered dynamic HMC then samples). The sampling loop is a jitted
lax.scan compiled ahead of time, and that compilation is counted with the warm-up."""
import functools
from typing import Callable, Tuple

import numpy as np

from benchmarks.peers.common import Outcome, Sizes, Stopwatch
from benchmarks.peers.run_kale import N_LEAPFROG

MALA_TARGET_ACCEPT = 0.574


def _window_adapted(algorithm, log_density, sizes: Sizes, **extra) -> Callable:
    """(keys (B,), z0 (B, L)) -> (states, per-chain parameters), by BlackJAX's window adaptation per chain."""
    import blackjax
    import jax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    warmup = blackjax.window_adaptation(algorithm, log_density, adaptation_info_fn=get_filter_adapt_info_fn(),
                                        **extra)

    def one_chain(key, z0):
        (state, parameters), _ = warmup.run(key, z0, num_steps=sizes.warmup)
        return state, {k: v for k, v in parameters.items() if k in ("step_size", "inverse_mass_matrix")}
    return jax.jit(jax.vmap(one_chain))


def _mala_adapted(log_density, sizes: Sizes) -> Callable:
    """(keys (B,), z0 (B, L)) -> (states, per-chain {"step_size"}), by dual averaging per chain."""
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    da_init, da_update, da_final = dual_averaging_adaptation(MALA_TARGET_ACCEPT)
    kernel = blackjax.mala.build_kernel()

    def one_chain(key, z0):
        def step(carry, key):
            state, da = carry
            state, info = kernel(key, state, log_density, jnp.exp(da.log_step_size))
            return (state, da_update(da, info.acceptance_rate)), None

        carry = (blackjax.mala.init(z0, log_density), da_init(0.01))
        (state, da), _ = jax.lax.scan(step, carry, jax.random.split(key, sizes.warmup))
        return state, {"step_size": da_final(da)}
    return jax.jit(jax.vmap(one_chain))


# ChEES: the starting step (as kale_fast's configuration) and Adam's rate on log T (BlackJAX's documented example).
CHEES_INITIAL_STEP, CHEES_LEARNING_RATE = 0.05, 0.025


def _chees_adapted(log_density, sizes: Sizes, functions: dict) -> Callable:
    """(keys (B,), z0 (B, L)) -> (states, parameters broadcast to every chain), by BlackJAX's ChEES adaptation: one
    adaptation over the ensemble of chains, as ChEES is defined, with its diagonal metric estimated from the
    ensemble (kale_fast's ChEES adapts a diagonal metric too). The trajectory-jitter functions the adaptation
    builds (a Halton sequence sized by the warm-up) reach the sampling kernel through `functions`."""
    import blackjax
    import jax
    import jax.numpy as jnp
    import optax

    def adapt(keys, z0):
        n_chains, dim = z0.shape
        warmup = blackjax.chees_adaptation(log_density, n_chains, mass_matrix_estimation="diagonal")
        (states, parameters), _ = warmup.run(keys[0], z0, CHEES_INITIAL_STEP, optax.adam(CHEES_LEARNING_RATE),
                                             sizes.warmup, max_sampling_steps=sizes.draws)
        functions.update(next_random_arg_fn=parameters["next_random_arg_fn"],
                         integration_steps_fn=parameters["integration_steps_fn"])
        return states, {"step_size": jnp.broadcast_to(parameters["step_size"], (n_chains,)),
                        "inverse_mass_matrix": jnp.broadcast_to(parameters["inverse_mass_matrix"], (n_chains, dim)),
                        "integration_steps_params": tuple(jnp.broadcast_to(p, (n_chains,))
                                                          for p in parameters["integration_steps_params"])}
    return jax.jit(adapt)


def _adapt_and_kernel(config: str, log_density, sizes: Sizes) -> Tuple[Callable, Callable]:
    """(adapt: (keys, z0) -> (states, params), kernel: (key, state, params) -> (state, info)) of one config."""
    import blackjax

    def kernel(algorithm, **fixed):
        return lambda key, state, params: algorithm(log_density, **params, **fixed).step(key, state)

    if config == "mala":
        return _mala_adapted(log_density, sizes), kernel(blackjax.mala)
    if config == f"hmc-{N_LEAPFROG}":
        return (_window_adapted(blackjax.hmc, log_density, sizes, num_integration_steps=N_LEAPFROG),
                kernel(blackjax.hmc, num_integration_steps=N_LEAPFROG))
    if config == "nuts":
        return _window_adapted(blackjax.nuts, log_density, sizes), kernel(blackjax.nuts)
    if config == "chees":
        functions: dict = {}  # filled when the adaptation is traced, read when the sampling loop is
        return _chees_adapted(log_density, sizes, functions), lambda key, state, params: blackjax.dynamic_hmc(
            log_density, **params, **functions).step(key, state)
    raise ValueError(f"unknown BlackJAX configuration {config!r}; expected one of {CONFIGS}")


CONFIGS = ("mala", f"hmc-{N_LEAPFROG}", "nuts", "chees")


_EXECUTABLES: dict = {}  # the sampling loops compiled ahead of time, per _compiled's arguments


@functools.lru_cache(maxsize=None)
def _compiled(config: str, log_density: Callable, n_chains: int, sizes: Sizes) -> Tuple[Callable, Callable]:
    """(adapt, sample) jitted for one configuration, kept across repeats: only a configuration's first run
    pays JIT compilation (in its warm-up time). sample(key, states, params) -> (positions (draw, chain, L),
    acceptance (draw, chain), gradients per draw (draw, chain))."""
    import jax
    import jax.numpy as jnp

    adapt, kernel = _adapt_and_kernel(config, log_density, sizes)

    def sample(key, states, params):
        def one_step(states, key):
            states, info = jax.vmap(kernel)(jax.random.split(key, n_chains), states, params)
            grads = getattr(info, "num_integration_steps", jnp.ones(n_chains, dtype=jnp.int32))
            return states, (states.position, info.acceptance_rate, grads)
        return jax.lax.scan(one_step, states, jax.random.split(key, sizes.draws))[1]
    return adapt, jax.jit(sample)


def run(config: str, log_density: Callable, z0: np.ndarray, sizes: Sizes, seed: int) -> Outcome:
    """z0 (B, L) initial positions; log_density (L,) -> () in JAX (the same object across repeats, so that
    compiled functions are reused)."""
    import jax
    import jax.numpy as jnp

    key = (config, log_density, z0.shape[0], sizes)
    adapt, sample = _compiled(*key)
    warm_key, sample_key = jax.random.split(jax.random.key(seed))
    with Stopwatch() as warm:
        states, params = adapt(jax.random.split(warm_key, z0.shape[0]), jnp.asarray(z0, dtype=jnp.float32))
        if key not in _EXECUTABLES:
            _EXECUTABLES[key] = sample.lower(sample_key, states, params).compile()
        jax.block_until_ready(states)
    compiled = _EXECUTABLES[key]
    with Stopwatch() as sampling:
        positions, accept, grads = jax.block_until_ready(compiled(sample_key, states, params))
    return Outcome(trace=np.swapaxes(np.asarray(positions), 0, 1), warmup_s=warm.wall, sample_s=sampling.wall,
                   cpu_s=sampling.cpu, grads_per_draw=float(np.mean(grads)), accept=float(np.mean(accept)))
