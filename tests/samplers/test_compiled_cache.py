"""The compiled paths of a potential (kale_fast.samplers.compiled) are cached across runs, and freed with it."""
import gc
import weakref

import pytest
import torch
from torch import nn

import kale_fast as kf
from kale_fast.samplers import compiled

pytestmark = pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")  # 3 unadapted steps


def test_a_dropped_potential_frees_its_compiled_functions_and_networks():
    """A compiled run caches the potential's compiled value-and-gradient, leapfrog and whole iterations; once the
    user drops the potential, garbage collection frees them, the potential and its networks (the cache is keyed
    weakly and its compiled functions reach the potential only through a weak reference)."""
    torch.manual_seed(0)
    # nn.Identity keeps LatentPotential on its module path: no fused trajectory, so ChEES's warm-up compiles chunks
    base, energy = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Identity()).double(), nn.Linear(8, 1).double()
    potential = kf.samplers.LatentPotential(base, energy)
    z0 = torch.randn(4, 3, dtype=torch.float64)
    # whole iterations; leapfrog chunks (ChEES's warm-up, whose trajectory-length adaptation runs on the host)
    for sampler, warmup in ((kf.MALA(0.1), 0), (kf.ChEES(0.1, trajectory_length=0.3), 2)):
        sampler.run(potential, z0, 3, warmup=warmup, compile=True, generator=torch.Generator().manual_seed(1))
    paths = compiled._CACHE[potential]
    assert paths.iterations and paths.leapfrog.chunks  # both kinds were compiled and cached
    functions = [weakref.ref(f) for f in paths.leapfrog.chunks.values()]
    functions += [weakref.ref(f) for it in paths.iterations.values() for f in it.functions.values()]
    dropped = [weakref.ref(potential), weakref.ref(energy), weakref.ref(base)]
    gc.collect()  # earlier tests' dropped potentials still in cycles would otherwise leave the cache here too
    cache_size = len(compiled._CACHE)
    del paths, potential, base, energy
    gc.collect()
    assert all(ref() is None for ref in dropped + functions)
    assert len(compiled._CACHE) == cache_size - 1


def test_a_dropped_potential_of_the_fused_ops_frees_them_too():
    """The same for a potential of plain Linear stacks, whose compiled iterations call kale_fast::mlp_potential and
    kale_fast::mlp_leapfrog (HMC's trajectories)."""
    torch.manual_seed(0)
    base, energy = nn.Sequential(nn.Linear(3, 8), nn.SiLU()).double(), nn.Linear(8, 1).double()
    potential = kf.samplers.LatentPotential(base, energy)
    z0 = torch.randn(4, 3, dtype=torch.float64)
    for sampler in (kf.MALA(0.1), kf.HMC(0.1, 3)):
        sampler.run(potential, z0, 3, compile=True, generator=torch.Generator().manual_seed(1))
    paths = compiled._CACHE[potential]
    functions = [weakref.ref(f) for it in paths.iterations.values() for f in it.functions.values()]
    assert len(functions) == 2
    dropped = [weakref.ref(potential), weakref.ref(energy), weakref.ref(base)]
    gc.collect()
    cache_size = len(compiled._CACHE)
    del paths, potential, base, energy
    gc.collect()
    assert all(ref() is None for ref in dropped + functions)
    assert len(compiled._CACHE) == cache_size - 1


def test_compiled_paths_are_reused_across_runs_of_one_potential():
    potential = lambda z: 0.5 * (z * z).sum(1)  # noqa: E731
    z0 = torch.randn(4, 2, dtype=torch.float64)
    kf.ULA(0.1).run(potential, z0, 2, compile=True)
    paths = compiled._CACHE[potential]
    kf.ULA(0.1).run(potential, z0, 2, compile=True)
    assert compiled._CACHE[potential] is paths
