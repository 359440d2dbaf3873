"""ChEES's trajectory-length adaptation (kale_fast.samplers.adaptation): divergent transitions left out, T's bounds,
the warning below CHEES_MIN_CHAINS chains."""
import math
import warnings

import pytest
import torch

import kale_fast as kf
from kale_fast.samplers import adaptation
from kale_fast.samplers.hmc import ChEESTransition


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


@pytest.mark.parametrize("n_chains, says", [(1, "B = 1 chain: "), (4, "B = 4 chains: "), (16, None)])
def test_chees_warns_naming_the_number_of_chains_below_its_minimum(n_chains, says):
    """A warm-up of ChEES with fewer than CHEES_MIN_CHAINS chains warns once, naming B (one chain: T is not
    adapted at all); with enough chains, or without a warm-up (nothing adapts T), it does not."""
    def potential(z):
        return 0.5 * (z * z).sum(1)

    z0 = torch.randn(n_chains, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = kf.ChEES(0.3).run(potential, z0, 2, warmup=25)
        kf.ChEES(0.3).run(potential, None, 2, state=result.state)
    about_t = [w for w in caught if "trajectory length T" in str(w.message)]
    if says is None:
        assert about_t == []
    else:
        assert len(about_t) == 1 and says in str(about_t[0].message) and "B >= 16" in str(about_t[0].message)
        assert about_t[0].filename == __file__  # at the user's call
