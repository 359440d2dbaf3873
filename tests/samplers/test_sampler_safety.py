"""Samplers that are safe by default and say when they fail: exact resumes at any split, divergences counted,
kept out of adaptation and reported, the default step-size adaptation, end-of-run warnings and summary()."""
import math

import pytest
import torch

import kale_fast as kf
from kale_fast.samplers import SamplerState

SAMPLERS = {"ula": lambda: kf.ULA(0.05), "mala": lambda: kf.MALA(0.3), "hmc": lambda: kf.HMC(0.2, 3),
            "chees": lambda: kf.ChEES(0.2), "kinetic_langevin": lambda: kf.KineticLangevin(0.1, 0.5)}


def quartic(z):
    """A non-Gaussian, badly scaled potential whose chains are chaotic: last-bit differences grow."""
    scales = torch.linspace(0.5, 2.0, z.shape[1], dtype=z.dtype)
    y = z / scales
    return 0.05 * (y ** 4).sum(1) + 0.5 * (y ** 2).sum(1) + 0.3 * y[:, 0] * y[:, -1]


# --- exact resume ------------------------------------------------------------------------------------------

# Every sampler with every metric, in fp32 and fp64 by turns: each sampler and each metric runs in both dtypes (all
# pairs of the three factors, in 15 cases instead of their 30 products).
RESUME_CASES = [pytest.param(name, metric, (torch.float32, torch.float64)[(i + j) % 2],
                             id=f"{name}-{metric}-{('fp32', 'fp64')[(i + j) % 2]}")
                for i, name in enumerate(SAMPLERS) for j, metric in enumerate(["identity", "diag", "dense"])]


@pytest.mark.parametrize("name, metric, dtype", RESUME_CASES)
def test_a_run_split_anywhere_and_resumed_equals_the_unbroken_run(name, metric, dtype, tmp_path):
    """Warm-up of 24 (metric and step size adapted), then 10 sampling steps, split after 1, 4 and 9 of them
    (once through a saved file): chains, potentials, gradients, step sizes and counts equal bit for bit."""
    make = SAMPLERS[name]
    z0 = torch.randn(12, 4, generator=torch.Generator().manual_seed(3), dtype=dtype)

    def run(z, n, warmup=0, state=None):
        sampler = make()
        sampler.metric = metric
        return sampler.run(quartic, z, n, warmup=warmup, state=state, generator=torch.Generator().manual_seed(5))

    full = run(z0, 10, warmup=24)
    assert full.metric.kind == metric
    for split in (1, 4, 9):
        first = run(z0, split, warmup=24)
        state = first.state
        if split == 4:
            state.save(tmp_path / "state.pt")
            state = SamplerState.load(tmp_path / "state.pt")
        resumed = run(None, 10 - split, state=state)
        for field, value in full.state.chains._asdict().items():
            assert torch.equal(getattr(resumed.state.chains, field), value), (split, field)
        assert torch.equal(resumed.step_size, full.step_size)
        assert resumed.trajectory_length == full.trajectory_length
        assert torch.equal(first.n_divergent + resumed.n_divergent, full.n_divergent)


def test_states_saved_before_unit_chains_still_load_and_resume(tmp_path):
    """Format 2 (no unit chains) resumes from z; a tampered unit state and a text file are refused in one line."""
    target = lambda z: 0.5 * (z * z).sum(1)  # noqa: E731
    first = kf.MALA(0.3).run(target, torch.randn(4, 2, dtype=torch.float64), 3, warmup=25)
    state = first.state
    torch.save(dict(format="kale_fast.SamplerState/2", sampler=state.sampler, chains=state.chains._asdict(),
                    step_size=state.step_size, metric=state.metric._asdict(), trajectory_length=None,
                    iteration=state.iteration, generator_state=state.generator_state), tmp_path / "old.pt")
    old = SamplerState.load(tmp_path / "old.pt")
    assert old.unit_chains is None
    resumed = kf.MALA(0.3).run(target, None, 2, state=old)
    assert resumed.z.shape == (4, 2) and torch.isfinite(resumed.z).all()
    state.chains = state.chains._replace(z=state.chains.z + 1.0)
    with pytest.raises(ValueError, match="unit_chains do not match"):
        kf.MALA(0.3).run(target, None, 2, state=state)
    (tmp_path / "text.pt").write_text("not a sampler state\n")
    with pytest.raises(ValueError, match="not a readable sampler state"):
        SamplerState.load(tmp_path / "text.pt")
    torch.save(dict(format="kale_fast.SamplerState/3", sampler="mala", chains=[1, 2]), tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged sampler state"):
        SamplerState.load(tmp_path / "damaged.pt")


# --- divergences -----------------------------------------------------------------------------------------------

WALL = 1.0


def truncated_gaussian(z):
    """N(0, 1) on z < 1, +inf beyond: an infinite wall, met by trajectories that cross it."""
    u = 0.5 * (z * z).sum(1)
    return torch.where(z[:, 0] >= WALL, torch.full_like(u, math.inf), u)


def test_the_truncated_gaussian_reference_mean():
    """E[z | z < 1] = -phi(1) / Phi(1) = -0.2876 (the issue's reference), from the normal density in closed form."""
    phi = math.exp(-0.5 * WALL ** 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(WALL / math.sqrt(2)))
    assert abs(-phi / cdf - (-0.2876)) < 1e-4


@pytest.mark.parametrize("name, make, min_step", [("hmc", lambda: kf.HMC(0.1, 5), 0.2),
                                                  ("chees", lambda: kf.ChEES(0.1), 0.02),
                                                  ("mala", lambda: kf.MALA(0.1), 0.2)])
def test_divergences_at_an_infinite_wall_are_counted_warned_and_kept_out_of_adaptation(name, make, min_step):
    """The exact samplers on the truncated Gaussian: divergent transitions counted per chain and warned about,
    the step size not collapsed (ChEES fell to 0.001 when the wall's zeros entered its harmonic mean), and the
    mean within 5 Monte-Carlo standard errors (from the bulk ESS) of -0.2876."""
    phi = math.exp(-0.5 * WALL ** 2) / math.sqrt(2 * math.pi)
    reference = -phi / (0.5 * (1 + math.erf(WALL / math.sqrt(2))))
    torch.manual_seed(0)
    z0 = torch.randn(128, 1, dtype=torch.float64).clamp(max=0.9)
    with pytest.warns(kf.samplers.SamplerWarning, match="diverged"):
        result = make().run(truncated_gaussian, z0, 600, warmup=400, thin=1)
    assert result.n_divergent.shape == (128,) and result.n_divergent.dtype == torch.long
    assert int(result.n_divergent.sum()) > 0 and int(result.n_divergent_warmup.sum()) > 0
    assert float(result.step_size.mean()) > min_step, result.step_size.mean()
    assert (result.z < WALL).all()
    ess = float(result.ess())
    assert ess > 5000, ess
    sd = float(result.trace.std())
    assert abs(float(result.trace.mean()) - reference) < 5 * sd / math.sqrt(ess)
    summary = result.summary()
    assert int(summary.n_divergent.sum()) == int(result.n_divergent.sum())


@pytest.mark.parametrize("make", [lambda: kf.ULA(0.1), lambda: kf.KineticLangevin(0.1)], ids=["ula", "kinetic"])
def test_unadjusted_samplers_count_divergences_and_warn_when_chains_end_nonfinite(make):
    """ULA and kinetic Langevin step into the wall (no Metropolis test): those steps are divergent, and the
    chains that end at infinite potential are warned about."""
    torch.manual_seed(1)
    with pytest.warns(kf.samplers.SamplerWarning, match="ended NaN or infinite"):
        result = make().run(truncated_gaussian, torch.randn(64, 1, dtype=torch.float64).clamp(max=0.9), 200)
    ended = ~torch.isfinite(result.potential)
    assert ended.any() and (result.n_divergent[ended] > 0).all()


def test_a_diverging_warmup_does_not_make_the_metric_nan():
    """ULA on a quartic overflows the chains that start far out (h z^2 > 2) during warm-up: they are counted
    and warned about, and the metric, estimated from the finite chains only, stays finite (it used to turn
    every chain NaN)."""
    target = lambda z: 0.25 * (z ** 4).sum(1) + 0.5 * (z * z).sum(1)  # noqa: E731
    z0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z0[:8] = 30.0
    with pytest.warns(kf.samplers.SamplerWarning, match="8 of 32 chains ended NaN or infinite"):
        result = kf.ULA(0.01).run(target, z0, 20, warmup=60)
    assert torch.isfinite(result.metric.scale).all()
    assert (result.n_divergent_warmup[:8] > 0).all() and torch.isfinite(result.z[8:]).all()


def test_a_nan_gradient_where_the_potential_is_finite_is_a_divergence():
    class NanGradient:
        def __call__(self, z):
            return self.value_and_grad(z)[0]

        def value_and_grad(self, z):
            grad = z.clone()
            grad[z[:, 0] > 1.5] = math.nan
            return 0.5 * (z * z).sum(1), grad

    torch.manual_seed(2)
    for make in (lambda: kf.ULA(0.2), lambda: kf.MALA(0.5), lambda: kf.HMC(0.3, 3)):
        with pytest.warns(kf.samplers.SamplerWarning):
            result = make().run(NanGradient(), torch.randn(64, 2, dtype=torch.float64), 100)
        assert int(result.n_divergent.sum()) > 0


def test_energy_errors_above_the_threshold_are_divergences():
    """HMC with a step far beyond a stiff Gaussian's stability limit: finite energies, errors far above 1000."""
    target = lambda z: 0.5 * 1e4 * (z * z).sum(1)  # noqa: E731  sd 0.01; leapfrog unstable above h = 0.02
    z0 = 0.01 * torch.randn(16, 3, dtype=torch.float64)
    with pytest.warns(kf.samplers.SamplerWarning, match="diverged"):
        result = kf.HMC(0.5, 4, adapt_step_size=False, metric="identity").run(target, z0, 20)
    assert (result.n_divergent == 20).all() and torch.isfinite(result.potential).all()
    with pytest.warns(kf.samplers.SamplerWarning, match="diverged"):
        result = kf.MALA(0.5, adapt_step_size=False, metric="identity").run(target, z0, 20)
    assert (result.n_divergent == 20).all()


# --- safe defaults and warnings --------------------------------------------------------------------------------

def narrow(z):
    return 0.5 * ((z / 0.1) ** 2).sum(1)


@pytest.mark.parametrize("make, target_accept", [(lambda: kf.MALA(0.5), 0.574), (lambda: kf.HMC(0.5, 4), 0.8),
                                                  (lambda: kf.ChEES(0.5), None)], ids=["mala", "hmc", "chees"])
def test_step_size_adaptation_is_on_by_default_with_a_warmup(make, target_accept):
    """kf.MALA(0.5).run(narrow, z0, 200, warmup=200) accepted 0.0 without a word; now it adapts (no warning)."""
    torch.manual_seed(3)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", kf.samplers.SamplerWarning)
        result = make().run(narrow, 0.1 * torch.randn(64, 2, dtype=torch.float64), 200, warmup=200)
    if target_accept is not None:
        assert abs(float(result.accept_rate.mean()) - target_accept) < 0.1
    assert float(result.step_size.mean()) != 0.5


def test_adapt_step_size_true_without_warmup_warns_and_false_keeps_the_step():
    z0 = 0.1 * torch.randn(16, 2, dtype=torch.float64)
    with pytest.warns(kf.samplers.SamplerWarning, match="warmup=0"):
        kf.MALA(0.005, adapt_step_size=True).run(narrow, z0, 20)
    with pytest.warns(kf.samplers.SamplerWarning, match="far too small"):
        result = kf.MALA(0.005, adapt_step_size=False).run(narrow, z0, 20, warmup=30)
    assert (result.step_size == 0.005).all()
    with pytest.raises(TypeError, match="adapt_step_size must be"):
        kf.MALA(0.1, adapt_step_size="yes")


def test_acceptance_near_zero_or_one_is_warned_about():
    z0 = 0.1 * torch.randn(32, 2, dtype=torch.float64)
    with pytest.warns(kf.samplers.SamplerWarning, match="hardly move"):
        kf.MALA(0.5).run(narrow, z0, 50)
    with pytest.warns(kf.samplers.SamplerWarning, match="far too small"):
        kf.HMC(1e-4, 2).run(narrow, z0, 50)


# ChEES's trajectory adaptation follows the runaway chains: by its 7th iteration an iteration runs 875 leapfrog
# steps, near max_leapfrog (1000), so 200 + 200 iterations cost some 55,000 gradients (13-20 s); 20 + 20 show the
# same warning for 3,400.
@pytest.mark.parametrize("make, n_steps", [(lambda: kf.MALA(0.5), 200), (lambda: kf.HMC(0.5, 4), 200),
                                           (lambda: kf.ChEES(0.5), 20)], ids=["mala", "hmc", "chees"])
def test_a_log_density_passed_as_the_potential_is_named(make, n_steps):
    """A BlackJAX user's logdensity_fn, -U, passed for U: the chains run away, and the warning says why."""
    log_density = lambda z: -narrow(z)  # noqa: E731
    torch.manual_seed(4)
    with pytest.warns(kf.samplers.SamplerWarning, match="probably a log-density"):
        make().run(log_density, 0.1 * torch.randn(64, 2, dtype=torch.float64), n_steps, warmup=n_steps)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_healthy_run_warns_about_nothing(name):
    """A standard Gaussian from its typical set, with warm-up (and with none, one chain, where the given step is
    not far too small: HMC's 0.2 accepts 0.999 there and is warned about): no SamplerWarning."""
    import warnings
    target = lambda z: 0.5 * (z * z).sum(1)  # noqa: E731
    for warmup, n_chains in ((100, 32), (0, 1)) if name not in ("hmc", "chees") else ((100, 32),):
        torch.manual_seed(5)
        sampler = SAMPLERS[name]()
        with warnings.catch_warnings():
            warnings.simplefilter("error", kf.samplers.SamplerWarning)
            sampler.run(target, torch.randn(n_chains, 3, dtype=torch.float64), 100, warmup=warmup)


def test_summary_has_arviz_columns_and_matches_the_diagnostics():
    torch.manual_seed(6)
    result = kf.MALA(0.5).run(lambda z: 0.5 * (z * z).sum(1), torch.randn(8, 3, dtype=torch.float64), 200,
                              warmup=100, thin=1)
    summary = result.summary()
    assert list(summary.columns) == ["mean", "sd", "median", "eti_5%", "eti_95%", "mcse_mean", "ess_bulk",
                                     "ess_tail", "r_hat"]
    torch.testing.assert_close(summary.columns["ess_bulk"], result.ess())
    torch.testing.assert_close(summary.columns["r_hat"], result.rhat())
    torch.testing.assert_close(summary.columns["mean"], result.trace.reshape(-1, 3).mean(0))
    text = str(summary)
    assert "z[2]" in text and "acceptance" in text and "divergent" in text
    final_only = kf.MALA(0.5).run(lambda z: 0.5 * (z * z).sum(1), torch.randn(8, 3, dtype=torch.float64), 5).summary()
    assert torch.isnan(final_only.columns["ess_bulk"]).all() and "need a trace" in str(final_only)


def test_the_energy_errors_are_minus_the_log_metropolis_ratios():
    """The energy errors the reference Metropolis tests return: MALA's against -log of its ratio, HMC's against
    H' - H (fp64)."""
    from kale_fast.reference import integrators as reference
    from kale_fast.samplers import checks
    g = torch.Generator().manual_seed(7)
    y, y_prop, grad, grad_prop = (torch.randn(50, 6, generator=g, dtype=torch.float64) for _ in range(4))
    u, u_prop, h = (torch.rand(50, generator=g, dtype=torch.float64) + 0.1 for _ in range(3))
    log_q_forward = -((y_prop - y + h[:, None] * grad) ** 2).sum(1) / (4 * h)
    log_q_backward = -((y - y_prop + h[:, None] * grad_prop) ** 2).sum(1) / (4 * h)
    log_ratio = (u - u_prop) + log_q_backward - log_q_forward
    energy_error = reference.mala_accept(y, u, grad, y_prop, u_prop, grad_prop, h, torch.full_like(u, -1.0))[5]
    torch.testing.assert_close(energy_error, -log_ratio)
    momentum, kinetic0 = torch.randn(50, 6, generator=g, dtype=torch.float64), u_prop * 2
    *_, accept_prob, _, error = reference.hmc_trajectory_end(y_prop, momentum, grad_prop, u_prop, y, u, grad,
                                                             kinetic0, h, torch.full_like(u, -1e-300))
    end_momentum = momentum - 0.5 * h[:, None] * grad_prop
    torch.testing.assert_close(error, (u_prop + 0.5 * (end_momentum * end_momentum).sum(1)) - (u + kinetic0))
    torch.testing.assert_close(torch.exp(torch.clamp(-error, max=0.0)), accept_prob)
    assert checks.divergent(torch.tensor([0.0, 999.0, 1001.0, math.inf, -math.inf, math.nan])).tolist() == \
        [False, False, True, True, True, True]
