"""ChEES's trajectory-length adaptation (kale_fast.samplers.adaptation): divergent transitions left out, T's bounds,
the warning below CHEES_MIN_CHAINS chains, the length floor and the metric windows' longest scale it reads."""
import math
import warnings

import pytest
import torch

import kale_fast as kf
from kale_fast.samplers import adaptation
from kale_fast.samplers.diagnostics import ess_mean
from kale_fast.samplers.core import StepParams, Tuning
from kale_fast.samplers.hmc import ChEESTransition
from kale_fast.samplers.metric import Metric, MetricEstimator


def _transition(start, proposal, momentum, accept_prob, divergent):
    return ChEESTransition(accept_prob, torch.ones_like(divergent), divergent, proposal, momentum, start)


def test_chees_gradient_ignores_what_divergent_chains_report():
    """Divergent chains' proposals and momenta (here NaN, +-inf, huge) and acceptance change nothing: the
    gradient equals the one over the non-divergent chains alone (their starts' mean is over all chains, as the
    starts are the chains' states either way), and stays finite; all chains divergent gives 0, no update."""
    g = torch.Generator().manual_seed(0)
    start, proposal, momentum = (torch.randn(12, 3, generator=g, dtype=torch.float64) for _ in range(3))
    accept_prob = torch.rand(12, generator=g, dtype=torch.float64)
    divergent = torch.zeros(12, dtype=torch.bool)
    divergent[[1, 4, 7]] = True
    bad_proposal, bad_momentum = proposal.clone(), momentum.clone()
    bad_proposal[1], bad_proposal[4], bad_proposal[7] = math.nan, math.inf, 1e300
    bad_momentum[1], bad_momentum[4], bad_momentum[7] = -math.inf, math.nan, 1e300
    bad_accept = accept_prob.clone()
    bad_accept[[1, 4, 7]] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    gradient = adaptation.chees_gradient(_transition(start, bad_proposal, bad_momentum, bad_accept, divergent), 0.7)
    clean = _transition(start, proposal, momentum, torch.where(divergent, 0.0, accept_prob), divergent)
    assert math.isfinite(float(gradient))
    torch.testing.assert_close(gradient, adaptation.chees_gradient(clean, 0.7))
    everything = torch.ones(12, dtype=torch.bool)
    assert float(adaptation.chees_gradient(_transition(start, bad_proposal, bad_momentum, bad_accept, everything),
                                           0.7)) == 0.0
    state = adaptation.chees_init(1.0)
    assert adaptation.chees_update(state, 0.0, 0.1, 1000).log_length == state.log_length


def test_chees_update_caps_the_trajectory_length_at_max_leapfrog_steps_only():
    """T may fall below the step size (an iteration still runs one leapfrog step), never above max_leapfrog h."""
    state = adaptation.chees_init(1.0)
    assert 1.0 < math.exp(adaptation.chees_update(state, 1.0, 5.0, 1000).log_length) < 1.1  # not raised to h = 5
    assert math.exp(adaptation.chees_update(state, -1.0, 5.0, 1000).log_length) < 1.0
    assert math.isclose(math.exp(adaptation.chees_update(state, 1.0, 0.1, 5).log_length), 0.5)


@pytest.mark.parametrize("n_chains, warmup, floor, says", [
    (1, 25, True, "no window had the draws it needs"), (1, 25, False, "with one chain the criterion is zero"),
    (1, 300, False, "with one chain the criterion is zero"), (1, 300, True, None),
    (4, 25, True, "with 4 chains its estimate is noisy"), (16, 25, True, None)])
def test_chees_warns_naming_the_number_of_chains_below_its_minimum(n_chains, warmup, floor, says):
    """A warm-up of ChEES with fewer than CHEES_MIN_CHAINS chains warns once, naming B, unless one chain's T is set
    by the length floor (then only a warm-up too short for the floor warns); with enough chains, or without a
    warm-up (nothing adapts T), it does not."""
    def potential(z):
        return 0.5 * (z * z).sum(1)

    z0 = torch.randn(n_chains, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = kf.ChEES(0.3, length_floor=floor).run(potential, z0, 2, warmup=warmup)
        kf.ChEES(0.3, length_floor=floor).run(potential, None, 2, state=result.state)
    about_t = [w for w in caught if "trajectory length T" in str(w.message)]
    if says is None:
        assert about_t == []
    else:
        message = str(about_t[0].message)
        assert len(about_t) == 1 and f"B = {n_chains} chain" in message and says in message and "B >= 16" in message
        assert about_t[0].filename == __file__  # at the user's call


def test_length_floor_option_is_checked():
    with pytest.raises(TypeError, match="length_floor must be a bool"):
        kf.ChEES(0.1, length_floor=1)
    assert not kf.ChEES(0.1, metric="identity").needs_longest_scale  # no metric windows: nothing to measure
    assert kf.ChEES(0.1).needs_longest_scale and not kf.ChEES(0.1, length_floor=False).needs_longest_scale


def _estimator(draws, chains, kind="diag"):
    """A split-halves MetricEstimator fed `draws` (n, L) as iterations of `chains` chains."""
    estimator = MetricEstimator(kind, draws.shape[1], draws.device, split_halves=True)
    for rows in torch.split(draws, chains):
        estimator.update(rows)
    return estimator


def test_longest_scale_is_the_top_eigenvalue_in_the_metrics_units_without_the_noise_bias():
    """An isotropic 32-D Gaussian, one chain's 200 draws: the sample correlation matrix's own top eigenvalue is
    1.74-1.92 (the noise edge, (1 + sqrt(32 / 200))^2 = 1.96), the split-halves estimate 0.86-1.12 over 10 seeds
    (truth 1); a spiked one (8-D, scales 1-8, correlation 0.8 within 4 coordinates: top eigenvalue of the
    correlation matrix 3.4), 8 chains' 2000 draws: 3.38-3.44."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        isotropic = _estimator(torch.randn(200, 32, generator=g, dtype=torch.float64), 1)
        assert 0.75 < isotropic.longest_scale(isotropic.metric(torch.float64)) ** 2 < 1.25
        block = torch.full((4, 4), 0.8, dtype=torch.float64).fill_diagonal_(1.0)
        mixing = torch.block_diag(torch.linalg.cholesky(block), torch.eye(4, dtype=torch.float64))
        draws = torch.randn(2000, 8, generator=g, dtype=torch.float64) @ mixing.T * torch.arange(1.0, 9.0)
        spiked = _estimator(draws, 8)
        assert 3.2 < spiked.longest_scale(spiked.metric(torch.float64)) ** 2 < 3.6
        # in the units of a given metric, and of none: the scales multiply in
        given = torch.arange(1.0, 9.0, dtype=torch.float64)
        assert 3.2 < spiked.longest_scale(Metric(scale=given)) ** 2 < 3.6
        assert 64 * 0.9 < spiked.longest_scale(Metric()) ** 2 < 64 * 1.1  # the 8th coordinate's variance


def test_longest_scale_estimator_keeps_the_metric_and_needs_two_halves():
    """With split halves kept, the diagonal and dense metrics are bit for bit those without; longest_scale is None
    until each half has 2 draws (one chain: its first 16 iterations all go to one half) and refused without
    split halves."""
    draws = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1
    for kind in ("diag", "dense"):
        plain = MetricEstimator(kind, 3, draws.device)
        for rows in torch.split(draws, [1, 7, 32]):
            plain.update(rows)
        split = _estimator(draws, [1, 7, 32], kind)
        assert all(a is None and b is None or torch.equal(a, b)
                   for a, b in zip(plain.metric(torch.float32), split.metric(torch.float32)))
    with pytest.raises(ValueError, match="split_halves"):
        plain.longest_scale(Metric())
    one_chain = _estimator(draws[:17], 1)
    assert one_chain.longest_scale(Metric()) is None
    one_chain.update(draws[17:18])
    assert one_chain.longest_scale(Metric()) > 0


def test_trajectory_length_rule_floors_and_caps_the_length_used_not_adams_state():
    """T used = min(max(exp(log T), pi/2 longest_scale), max_leapfrog h) in update, restart and final; Adam's
    log T is the criterion's alone; no floor without a longest scale or with length_floor=False; one chain
    takes no Adam step."""
    rule = adaptation.TrajectoryLengthAdaptation(max_leapfrog=10, length_floor=True)
    tune = Tuning(torch.full((16,), 0.5), 1.0, 0.5, longest_scale=2.0)
    state = rule.init(tune)
    g = torch.Generator().manual_seed(0)
    start, proposal, momentum = (torch.randn(16, 3, generator=g) for _ in range(3))
    transition = _transition(start, proposal, momentum, torch.full((16,), 0.9), torch.zeros(16, dtype=torch.bool))
    new_state, used = rule.update(state, transition, StepParams(tune.step_size, 2, 0.7, True), tune)
    assert new_state.log_length != state.log_length and math.exp(new_state.log_length) < 1.1  # Adam's, unfloored
    assert used.trajectory_length == math.pi  # the floor, pi/2 * 2
    assert rule.restart(new_state, tune)[1].trajectory_length == math.pi
    assert rule.final(new_state, tune).trajectory_length == math.pi
    assert rule.final(new_state, tune._replace(longest_scale=4.0)).trajectory_length == 5.0  # the cap, 10 * 0.5
    assert rule.final(new_state, tune._replace(longest_scale=None)).trajectory_length < 1.1
    plain = adaptation.TrajectoryLengthAdaptation(max_leapfrog=10, length_floor=False)
    assert plain.final(new_state, tune).trajectory_length < 1.1
    one = _transition(start[:1], proposal[:1], momentum[:1], torch.full((1,), 0.9), torch.zeros(1, dtype=torch.bool))
    one_state, _ = plain.update(state, one, StepParams(tune.step_size[:1], 2, 0.7, True), tune)
    assert one_state.log_length == state.log_length and one_state.count == 1


def _correlated_gaussian():
    """A 4-D Gaussian with scales 1, 3, 0.3, 1 and correlations up to 0.9: its correlation matrix's top eigenvalue
    is 2.355, so the floor after a diagonal metric is pi/2 sqrt(2.355) = 2.41."""
    scales = torch.tensor([1.0, 3.0, 0.3, 1.0], dtype=torch.float64)
    corr = torch.tensor([[1.0, 0.9, 0.5, 0.0], [0.9, 1.0, 0.6, -0.3], [0.5, 0.6, 1.0, 0.2],
                         [0.0, -0.3, 0.2, 1.0]], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    cov = corr * torch.outer(scales, scales)
    precision = torch.linalg.inv(cov)

    def potential(z):
        centred = z - mean
        return 0.5 * ((centred @ precision) * centred).sum(1)

    floor = adaptation.LENGTH_FLOOR_FACTOR * math.sqrt(torch.linalg.eigvalsh(corr)[-1])
    return potential, mean, cov, floor


def test_length_floor_sets_one_chains_trajectory_length():
    """One chain, 300 warm-up iterations: with the floor T lands near pi/2 sqrt(lambda_max) of the correlation
    matrix (0.54-1.16x of it over 20 seeds: the estimate from one window's 100 draws), without it T stays at its
    start, 1.0 (0.41x)."""
    potential, _, _, floor = _correlated_gaussian()
    lengths = {}
    for length_floor in (True, False):
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = kf.ChEES(0.1, length_floor=length_floor).run(potential, torch.randn(1, 4, dtype=torch.float64),
                                                                 0, warmup=300)
        lengths[length_floor] = result.trajectory_length / floor
    assert 0.45 < lengths[True] < 1.4 and lengths[False] == 1.0 / floor, lengths


def test_one_chain_of_chees_with_the_floor_is_exact():
    """The mean of one chain's 4000 draws is within 5 Monte-Carlo standard errors (from its own ESS) of the truth,
    its variances within 25%."""
    potential, mean, cov, _ = _correlated_gaussian()
    torch.manual_seed(4)
    result = kf.ChEES(0.1).run(potential, torch.randn(1, 4, dtype=torch.float64), 4000, warmup=300, thin=1)
    draws = result.trace[0]
    standard_error = torch.sqrt(torch.diagonal(cov) / ess_mean(result.trace))
    assert ((draws.mean(0) - mean).abs() <= 5 * standard_error).all(), (draws.mean(0), mean, standard_error)
    torch.testing.assert_close(draws.var(0), torch.diagonal(cov), rtol=0.25, atol=0)
