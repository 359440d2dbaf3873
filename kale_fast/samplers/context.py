"""build_context: what a sampler's `step` needs, for the package's run loop and for a loop of one's own."""
from typing import Optional

import torch
from torch import Tensor

from kale_fast.ops import integrators
from kale_fast.samplers.compiled import compiled_paths
from kale_fast.samplers.core import StepContext
from kale_fast.samplers.leapfrog import CompiledLeapfrog, eager_leapfrog, fused_first
from kale_fast.samplers.metric import Metric, UnitPotential, unit_value_and_grad_function


def build_context(potential, z: Tensor, *, generator: Optional[torch.Generator] = None,
                  metric: Optional[Metric] = None, compile: bool = False) -> StepContext:
    """The StepContext of chains like z (B, L) on `potential` (z (B, L) -> (B,)) under `metric` (default the
    identity: unit coordinates are z's): the potential in unit coordinates, the fused integrator kernels of z's
    device, the leapfrog and the generator the steps draw from (default: a new one seeded from torch's global
    generator). compile=True compiles the potential's value and gradient and the leapfrog (kept per potential,
    across contexts).

        ctx = build_context(potential, z, generator=torch.Generator().manual_seed(0))
        sampler = kf.MALA(0.1)
        state = sampler.init(ctx, z)
        params = StepParams(torch.full((z.shape[0],), 0.1))
        for _ in range(100):
            state, transition = sampler.step(state, params, ctx)
    """
    metric = Metric() if metric is None else metric
    if generator is None:  # drawn from the global generator: torch.manual_seed repeats the run
        generator = torch.Generator(device=z.device).manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    kernels = integrators.kernels_for(z)
    if compile:
        paths = compiled_paths(potential, CompiledLeapfrog)
        value_and_grad = lambda y: paths.value_and_grad(y, metric)  # noqa: E731
        leapfrog = paths.leapfrog.bind(metric)
    else:
        value_and_grad = unit_value_and_grad_function(potential, metric)
        leapfrog = eager_leapfrog(kernels, value_and_grad)
    return StepContext(value_and_grad, kernels, fused_first(UnitPotential(potential, metric).leapfrog, leapfrog),
                       generator)
