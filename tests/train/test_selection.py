"""Choosing the sampler and its step count on validation data: the step grid, one chain read at the grid, the
tuned sampler frozen after warm-up, the choice rule and its mode guard."""
import math

import pytest
import torch

import kale_fast as kf
from kale_fast.models import GEBM, MLP
from kale_fast.samplers import LatentPotential
from kale_fast.train import TrainConfig
from kale_fast.train.config import SAMPLERS
from kale_fast.train.selection import chain_points, choose, step_grid, tuned_sampler


def _gebm(seed=0):
    torch.manual_seed(seed)
    return GEBM(MLP(2, 2, (16,)), MLP(2, 1, (16,)), 2).eval()


def test_step_grid():
    assert step_grid(100) == [0, 10, 25, 50, 100]
    assert step_grid(137) == [0, 10, 25, 50, 100, 137]
    assert step_grid(1) == [0, 1]
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        step_grid(0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_chain_points_are_one_chain_read_at_the_grid(name):
    """The states at 0, 3, 7 steps of the segmented chain are those of one uninterrupted run of 7 steps (and of 3),
    and 0 steps are the base samples of the starting points."""
    gebm = _gebm()
    config = TrainConfig(sampler_steps=8)
    sampler = tuned_sampler(gebm, config.sampling, name, torch.Generator().manual_seed(1), n_chains=40)
    z0 = gebm.latent(40, torch.Generator().manual_seed(2))
    points = list(chain_points(gebm, sampler, z0, [0, 3, 7], torch.Generator().manual_seed(3)))
    potential = LatentPotential(gebm.base, gebm.energy)
    for steps, point in zip([0, 3, 7], points):
        if steps == 0:
            expected = z0
        else:
            expected = sampler.run(potential, z0, steps, generator=torch.Generator().manual_seed(3)).z
        torch.testing.assert_close(point.samples, gebm.base(expected).detach(), rtol=1e-5, atol=1e-6)
        assert point.steps == steps
    assert math.isnan(points[0].accept_rate) and 0 < points[2].accept_rate <= 1
    with pytest.raises(ValueError, match="increasing"):
        next(chain_points(gebm, sampler, z0, [3, 0], torch.Generator()))


def test_tuned_sampler_is_frozen_at_its_warm_ups_adaptation():
    gebm = _gebm()
    config = TrainConfig(sampler_steps=40, step_size=0.01)
    tuned = tuned_sampler(gebm, config.sampling, "mala", torch.Generator().manual_seed(0), n_chains=64)
    _, pilot = gebm.sample(64, kf.MALA(0.01, adapt_step_size=True), 0, warmup=20,
                           generator=torch.Generator().manual_seed(0))
    assert not tuned.adapt_step_size and tuned.step_size == pytest.approx(pilot.step_size.mean().item())
    assert tuned.step_size > 0.05  # MALA adapts away from the too small 0.01 on this easy target
    assert torch.equal(tuned.metric.scale, pilot.metric.scale)
    # the unadjusted samplers: the `sample` verb's rule on the same MALA warm-up
    ula = tuned_sampler(gebm, config.sampling, "ula", torch.Generator().manual_seed(0), n_chains=64)
    kinetic = tuned_sampler(gebm, config.sampling, "kinetic_langevin", torch.Generator().manual_seed(0), n_chains=64)
    assert ula.step_size == pytest.approx(min(tuned.step_size, 0.2))
    assert kinetic.step_size == pytest.approx(math.sqrt(2 * min(tuned.step_size, 0.2)))
    assert torch.equal(ula.metric.scale, pilot.metric.scale) and torch.equal(kinetic.metric.scale, pilot.metric.scale)


def test_choose_takes_the_lowest_value_and_breaks_ties_towards_fewer_steps():
    steps = [0, 10, 25]
    assert choose({"a": [3.0, 2.0, 1.0], "b": [3.0, 0.5, 4.0]}, steps) == ("b", 10, 0.5)
    assert choose({"a": [1.0, 1.0, 2.0], "b": [1.0, 3.0, 3.0]}, steps)[:2] == ("a", 0)


def test_choose_and_the_mode_guard():
    from kale_fast.train.selection import choose, mode_guarded_quality

    grid = [0, 10, 25]
    assert choose({"a": [3.0, 1.0, 1.0], "b": [3.0, 2.0, 0.5]}, grid) == ("b", 25, 0.5)
    assert choose({"a": [3.0, 1.0, 1.0], "b": [3.0, 2.0, 1.0]}, grid) == ("a", 10, 1.0)  # ties: fewer steps
    assert choose({"a": [0.8, 0.9, 0.95], "b": [0.8, 0.97, 0.9]}, grid, higher_is_better=True) == ("b", 10, 0.97)
    curves = {"collapsing": dict(high_quality=[0.8, 0.99, 0.999], modes_covered=[8, 7, 2]),
              "honest": dict(high_quality=[0.8, 0.9, 0.95], modes_covered=[8, 8, 8])}
    guarded = mode_guarded_quality(curves)
    assert guarded["collapsing"][1:] == [-math.inf, -math.inf]
    assert choose(guarded, grid, higher_is_better=True) == ("honest", 25, 0.95)
