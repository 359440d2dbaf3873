"""compile=True runs split anywhere and resumed from their state repeat the unbroken run bit for bit
(kale_fast.samplers.compiled: uniforms drawn one row per iteration; on the CPU every iteration runs the same
while_loop body whatever the count per call, except ChEES's sampling past B x L = 64, whose unrolled 8-iteration
calls start at multiples of 8 of the absolute iteration, with single iterations before the first: a split inside
a chunk compares single iterations with the chunk's)."""
import pytest
import torch

import kale_fast as kf

MEAN = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
SD = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)


def scaled_gaussian(z):
    """A 4-D Gaussian of scales 0.5 to 2 (the adapted diagonal metric differs from the identity)."""
    return 0.5 * (((z - MEAN.to(z.dtype)) / SD.to(z.dtype)) ** 2).sum(1)


# Cold compiles take a minute or more per sampler and dtype (2 graphs: the while_loop with and without warm-up
# adaptation): MALA in fp64 in the default suite, the rest slow.
# (sampler, chains): ChEES at 6 x 4 runs the iterations' while_loop, at 32 x 4 unrolled chunks of 8.
SAMPLERS = [pytest.param(lambda: kf.MALA(0.3), 6, id="mala"),
            pytest.param(lambda: kf.ULA(0.1), 6, id="ula", marks=pytest.mark.slow),
            pytest.param(lambda: kf.KineticLangevin(0.2), 6, id="kinetic", marks=pytest.mark.slow),
            pytest.param(lambda: kf.HMC(0.3, 3), 6, id="hmc", marks=pytest.mark.slow),
            pytest.param(lambda: kf.ChEES(0.3), 6, id="chees", marks=pytest.mark.slow),
            pytest.param(lambda: kf.ChEES(0.3), 32, id="chees-unrolled", marks=pytest.mark.slow)]


@pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")
@pytest.mark.parametrize("make_sampler, n_chains", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)],
                         ids=["fp64", "fp32"])
def test_compiled_runs_resume_bit_for_bit_at_any_split(make_sampler, n_chains, dtype):
    """Warm-up of 30 (metric windows and step-size adaptation), then 13 sampling iterations, split after 1, 4,
    8 and 11 of them, twice over (resumed states are resumed again)."""
    z0 = torch.randn(n_chains, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    seed = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    full = make_sampler().run(scaled_gaussian, z0, 13, warmup=30, generator=seed(), compile=True, thin=1)
    for split in (1, 4, 8, 11):
        first = make_sampler().run(scaled_gaussian, z0, split, warmup=30, generator=seed(), compile=True, thin=1)
        rest = 13 - split
        middle = make_sampler().run(scaled_gaussian, None, rest // 2, state=first.state, compile=True, thin=1)
        last = make_sampler().run(scaled_gaussian, None, rest - rest // 2, state=middle.state, compile=True,
                                  thin=1)
        for name in ("z", "potential", "step_size"):
            assert torch.equal(getattr(last, name), getattr(full, name)), (split, name)
        trace = torch.cat([r.trace for r in (first, middle, last) if r.trace is not None], dim=1)
        assert torch.equal(trace, full.trace), split
        assert torch.equal(last.state.generator_state, full.state.generator_state)
        assert last.state.iteration == full.state.iteration


@pytest.mark.slow  # two cold compiles of network graphs: 19 s, the default suite's longest test
@pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")
def test_one_chain_of_a_network_potential_runs_decomposed_products_and_resumes_bit_for_bit():
    """At B = 1 the compiled graphs turn the networks' matrix-vector products into inductor's own fused loops
    (kale_fast.samplers.compiled.INDUCTOR_OPTIONS): they are used, the chain's potentials agree with the eager
    potential to fp32 rounding, and a run split anywhere repeats the unbroken run bit for bit. Inductor's caches
    are off, so that the products are decomposed in this process (a cached graph skips the pass). The energy ends in
    an nn.Identity, which keeps LatentPotential on its module path (MLP stacks alone run as one mlp_potential op,
    whose products are its kernel's, tests/ops/test_mlp_potential.py)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    energy = torch.nn.Sequential(kf.models.MLP(4, 1, (24,)), torch.nn.Identity())
    potential = kf.samplers.LatentPotential(kf.models.MLP(3, 4, (24,)), energy)
    assert potential._linear_stack(torch.zeros(1, 3)) is None
    z0 = torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    seed = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    make = lambda: kf.MALA(0.2, metric="identity")  # noqa: E731
    before = counters["inductor"]["decompose_mm"] + counters["inductor"]["decompose_addmm"]
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        full = make().run(potential, z0, 13, generator=seed(), compile=True, thin=1)
        for split in (1, 4, 8, 11):
            first = make().run(potential, z0, split, generator=seed(), compile=True, thin=1)
            last = make().run(potential, None, 13 - split, state=first.state, compile=True, thin=1)
            assert torch.equal(last.z, full.z) and torch.equal(last.potential, full.potential), split
            assert torch.equal(torch.cat([first.trace, last.trace], dim=1), full.trace), split
    # One graph, the while_loop, whose body is one iteration of one gradient: 8 products (4 forward, 4
    # input-gradient); without the pass inductor decomposes only the energy head's forward product (a dot product).
    assert counters["inductor"]["decompose_mm"] + counters["inductor"]["decompose_addmm"] - before == 8
    with torch.no_grad():
        torch.testing.assert_close(full.potential, potential(full.z), rtol=1e-5, atol=1e-5)
