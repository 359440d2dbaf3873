"""ChEES's trajectory-length adaptation (kale_fast.samplers.adaptation): divergent transitions left out, T's bounds,
the warning below CHEES_MIN_CHAINS chains, the length floor and the metric windows' longest scale it reads."""
import math
import warnings

import pytest
import torch

import kale_fast as kf
from kale_fast.samplers import adaptation
from kale_fast.samplers.diagnostics import ess_mean
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


def _correlated_draws(n, seed):
    """n draws (n, 3) of a Gaussian with scales 0.5, 2, 5 and correlations up to 0.8, in float64."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.tensor([[0.5, 0.0, 0.0], [1.6, 1.2, 0.0], [-1.0, 2.0, 4.4]], dtype=torch.float64)
    return torch.randn(n, 3, generator=g, dtype=torch.float64) @ mixing.T + torch.tensor([1.0, -3.0, 0.5])


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_longest_scale_is_the_top_eigenvalue_of_the_whitened_covariance(kind):
    """Pooled over updates of uneven batches, longest_scale is sqrt(lambda_max(S^-1 C S^-T)) of the draws' sample
    covariance C, for the estimated metric, a given one and the identity; the diagonal metric is the same with
    the whole covariance kept as without it."""
    draws = _correlated_draws(300, seed=1)
    estimator = MetricEstimator(kind, 3, draws.device, full_covariance=True)
    for batch in torch.split(draws, [1, 64, 100, 135]):
        estimator.update(batch)
    cov = torch.cov(draws.T)
    estimated = estimator.metric(torch.float64)
    if kind == "diag":
        plain = MetricEstimator("diag", 3, draws.device)
        for batch in torch.split(draws, [1, 64, 100, 135]):
            plain.update(batch)
        assert torch.equal(plain.metric(torch.float64).scale, estimated.scale)
        with pytest.raises(ValueError, match="full_covariance"):
            plain.longest_scale(estimated)
        transform = torch.diag(1 / estimated.scale)
    else:
        transform = torch.linalg.inv(estimated.cholesky)
    given = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    for metric, inverse in ((estimated, transform), (Metric(scale=given), torch.diag(1 / given)),
                            (Metric(), torch.eye(3, dtype=torch.float64))):
        expected = math.sqrt(torch.linalg.eigvalsh(inverse @ cov @ inverse.T)[-1])
        assert math.isclose(estimator.longest_scale(metric), expected, rel_tol=1e-10), metric.kind


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
    matrix (0.91-1.18x of it over 20 seeds), without it T stays near its start, about one step (0.28-0.56x)."""
    potential, _, _, floor = _correlated_gaussian()
    lengths = {}
    for length_floor in (True, False):
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = kf.ChEES(0.1, length_floor=length_floor).run(potential, torch.randn(1, 4, dtype=torch.float64),
                                                                 0, warmup=300)
        lengths[length_floor] = result.trajectory_length / floor
    assert 0.75 < lengths[True] < 1.4 and lengths[False] < 0.7, lengths


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
