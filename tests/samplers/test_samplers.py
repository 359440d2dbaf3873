"""Samplers: exactness of MALA and HMC against targets with known moments, the expected step-size bias of
the unadjusted samplers, adaptation, resume, diagnostics and bad input. Fixed seeds; tolerances are a few
Monte-Carlo standard errors computed from the number of independent chains."""
import dataclasses
import math

import pytest
import torch
from scipy import stats

import kale_fast as kf
from kale_fast.samplers import LatentPotential, Metric, SamplerState, value_and_grad
from kale_fast.samplers.adaptation import metric_windows
from kale_fast.samplers.core import Tuning
from kale_fast.samplers.hmc import halton


class Gaussian:
    """U(z) = 0.5 (z - mean)^T precision (z - mean), with its gradient in closed form."""

    def __init__(self, mean, cov):
        self.mean, self.cov = mean, cov
        self.precision = torch.linalg.inv(cov)

    def __call__(self, z):
        return self.value_and_grad(z)[0]

    def value_and_grad(self, z):
        centred = z - self.mean
        grad = centred @ self.precision
        return 0.5 * (centred * grad).sum(1), grad


def mixture_1d(z, weights=(0.3, 0.7), means=(-1.0, 1.5), scale=0.7):
    """U of a 1-D two-component Gaussian mixture, through autograd (the generic potential path)."""
    comps = torch.stack([math.log(w) - 0.5 * ((z[:, 0] - m) / scale) ** 2 for w, m in zip(weights, means)])
    return -torch.logsumexp(comps, dim=0)


def mixture_1d_cdf(x, weights=(0.3, 0.7), means=(-1.0, 1.5), scale=0.7):
    return sum(w * stats.norm.cdf(x, loc=m, scale=scale) for w, m in zip(weights, means))


def _final_states(sampler, potential, n_chains, dim, n_steps, warmup, seed, init_scale=1.0, compile=False):
    torch.manual_seed(seed)
    z0 = init_scale * torch.randn(n_chains, dim, dtype=torch.float64)
    return sampler.run(potential, z0, n_steps, warmup=warmup, compile=compile)


def _assert_moments(z, mean, cov, n_sigma=5.0):
    """Sample mean and covariance of independent chains within n_sigma standard errors of the truth."""
    n = z.shape[0]
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((z.mean(0) - mean).abs() <= n_sigma * se_mean).all(), (z.mean(0), mean)
    sample_cov = torch.cov(z.T)
    se_cov = torch.sqrt((cov**2 + torch.outer(torch.diagonal(cov), torch.diagonal(cov))) / n)
    assert ((sample_cov - cov).abs() <= n_sigma * se_cov).all(), (sample_cov, cov)


EXACT = [pytest.param(lambda: kf.MALA(0.3, adapt_step_size=True), id="mala"),
         pytest.param(lambda: kf.HMC(0.3, 5, adapt_step_size=True, jitter=0.2), id="hmc")]


# The compiled path (whole iterations per call, its own block draws) is held to the same statistical tests. Its
# cases are slow (CI's `pytest -m slow`): with a cold inductor cache, as on a fresh machine, they compile for
# about 4 minutes; the recompilation test below stays in the default suite.
COMPILE = [pytest.param(False, id="eager"), pytest.param(True, id="compiled", marks=pytest.mark.slow)]


@pytest.mark.parametrize("compile", COMPILE)
@pytest.mark.parametrize("make_sampler", EXACT)
def test_exact_on_standard_gaussian_10d(make_sampler, compile):
    target = Gaussian(torch.zeros(10, dtype=torch.float64), torch.eye(10, dtype=torch.float64))
    result = _final_states(make_sampler(), target, 3000, 10, 150, 100, seed=0, init_scale=3.0, compile=compile)
    _assert_moments(result.z, target.mean, target.cov)


@pytest.mark.parametrize("compile", COMPILE)
@pytest.mark.parametrize("make_sampler", EXACT)
def test_exact_on_correlated_gaussian(make_sampler, compile):
    scales = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    corr = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)
    target = Gaussian(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), corr * torch.outer(scales, scales))
    result = _final_states(make_sampler(), target, 3000, 3, 300, 150, seed=1, compile=compile)
    _assert_moments(result.z, target.mean, target.cov)


@pytest.mark.parametrize("compile", COMPILE)
@pytest.mark.parametrize("make_sampler", EXACT)
def test_exact_on_two_component_mixture_ks(make_sampler, compile):
    result = _final_states(make_sampler(), mixture_1d, 3000, 1, 400, 150, seed=2, compile=compile)
    weights, means, scale = torch.tensor([0.3, 0.7]), torch.tensor([-1.0, 1.5]), 0.7
    mean = (weights * means).sum()
    var = (weights * (means**2 + scale**2)).sum() - mean**2
    _assert_moments(result.z, mean.double()[None], var.double()[None, None])
    assert stats.kstest(result.z[:, 0].numpy(), mixture_1d_cdf).pvalue > 1e-3


@pytest.mark.parametrize("compile", COMPILE)
def test_ula_shows_the_textbook_step_size_bias(compile):
    """ULA on N(0, I) with step h has stationary variance 1 / (1 - h/2)."""
    h = 0.4
    target = Gaussian(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    result = _final_states(kf.ULA(h), target, 4000, 4, 200, 0, seed=3, compile=compile)
    pooled_var = result.z.var(0).mean().item()
    se = math.sqrt(2 / (4000 * 4)) / (1 - h / 2)
    assert abs(pooled_var - 1 / (1 - h / 2)) < 5 * se
    assert pooled_var - 1 > 10 * se  # the bias is there, not just noise


@pytest.mark.parametrize("compile", COMPILE)
def test_kinetic_langevin_positions_are_unbiased_on_gaussians(compile):
    """BAOAB samples the exact configurational law of a harmonic potential at any h (Leimkuhler & Matthews),
    where ULA at the same h is visibly biased."""
    h = 0.5
    target = Gaussian(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    result = _final_states(kf.KineticLangevin(h, friction=1.0), target, 4000, 4, 200, 0, seed=4, compile=compile)
    pooled_var = result.z.var(0).mean().item()
    assert abs(pooled_var - 1.0) < 5 * math.sqrt(2 / (4000 * 4))
    assert abs(result.z.mean().item()) < 5 / math.sqrt(16000)


@pytest.mark.parametrize("make_sampler, target_accept, per_chain", [
    (lambda **kw: kf.MALA(1.0, **kw), 0.574, False), (lambda **kw: kf.MALA(1.0, **kw), 0.574, True),
    (lambda **kw: kf.HMC(1.0, 4, **kw), 0.8, False)], ids=["mala-shared", "mala-per_chain", "hmc-shared"])
def test_dual_averaging_reaches_target_acceptance(make_sampler, target_accept, per_chain):
    """Per-chain adaptation of HMC is left out: one chain's HMC acceptance is nearly 0/1 noise, and 300
    warm-up steps leave its averaged step too small (0.96 acceptance against 0.8 measured); shared
    adaptation, the default, averages over chains and lands on target."""
    target = Gaussian(torch.zeros(20, dtype=torch.float64), torch.eye(20, dtype=torch.float64))
    sampler = make_sampler(adapt_step_size=True, per_chain_adaptation=per_chain, metric="identity")
    result = _final_states(sampler, target, 500, 20, 200, 300, seed=5)
    assert abs(result.accept_rate.mean().item() - target_accept) < 0.05
    assert per_chain or torch.all(result.step_size == result.step_size[0])


@pytest.mark.parametrize("make_sampler", [lambda: kf.ULA(0.1), lambda: kf.MALA(0.5, adapt_step_size=True),
                                          lambda: kf.HMC(0.3, 3, adapt_step_size=True, jitter=0.1),
                                          lambda: kf.KineticLangevin(0.2, 0.5)], ids=["ula", "mala", "hmc", "kinetic"])
def test_save_and_resume_continue_exactly(make_sampler, tmp_path):
    """Saving after 5 sampling steps and resuming for 7 gives the bit-identical chains, step sizes and
    acceptance counts of one run of 12."""
    target = Gaussian(torch.zeros(6, dtype=torch.float64), torch.eye(6, dtype=torch.float64))
    z0 = torch.randn(40, 6, dtype=torch.float64)
    full = make_sampler().run(target, z0, 12, warmup=6, generator=torch.Generator().manual_seed(7))
    first = make_sampler().run(target, z0, 5, warmup=6, generator=torch.Generator().manual_seed(7))
    first.state.save(tmp_path / "state.pt")
    resumed = make_sampler().run(target, None, 7, state=SamplerState.load(tmp_path / "state.pt"))
    assert torch.equal(resumed.z, full.z) and torch.equal(resumed.step_size, full.step_size)
    torch.testing.assert_close(5 * first.accept_rate + 7 * resumed.accept_rate, 12 * full.accept_rate)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # the atomic write left no temporary file


def test_manual_seed_repeats_a_run_and_thin_records_a_trace():
    target = Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(kf.MALA(0.5).run(target, torch.randn(8, 3, dtype=torch.float64), 20, thin=5))
    assert torch.equal(runs[0].z, runs[1].z)
    assert runs[0].trace.shape == (8, 4, 3) and runs[0].potential_trace.shape == (8, 4)  # (chain, draw, ...)
    assert torch.equal(runs[0].trace[:, -1], runs[0].z)


def test_chunks_of_chains_give_one_result():
    target = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    result = kf.HMC(0.4, 3).run(target, torch.randn(10, 2, dtype=torch.float64), 15, thin=5, chunk_size=4)
    assert result.z.shape == (10, 2) and result.trace.shape == (10, 3, 2) and result.accept_rate.shape == (10,)
    assert (result.accept_rate > 0.3).all()


def test_nonfinite_proposals_are_rejected_and_counted():
    """A potential that is NaN beyond |z| > 2 and -inf in a thin shell: MALA and HMC never enter either."""
    def guarded(z):
        u = 0.5 * (z * z).sum(1)
        u = torch.where(z.norm(dim=1) > 2.0, torch.full_like(u, math.nan), u)
        return torch.where((z.norm(dim=1) - 1.9).abs() < 0.02, torch.full_like(u, -math.inf), u)

    for sampler in (kf.MALA(0.8), kf.HMC(0.5, 3)):
        torch.manual_seed(0)
        result = sampler.run(guarded, 0.3 * torch.randn(200, 3, dtype=torch.float64), 30)
        assert torch.isfinite(result.potential).all() and (result.z.norm(dim=1) <= 2.0).all()
        assert result.n_divergent.sum() > 0


def test_latent_potential_takes_input_gradients_only():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    energy = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1)).double()
    potential = LatentPotential(base, energy, temperature=2.0)
    z = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    expected = 0.5 * (z * z).sum(1) + 2.0 * energy(base(z)).squeeze(1)
    (expected_grad,) = torch.autograd.grad(expected.sum(), z)
    value, grad = value_and_grad(potential, z.detach())
    torch.testing.assert_close(value, expected.detach())
    torch.testing.assert_close(grad, expected_grad)
    kf.HMC(0.1, 2).run(potential, z.detach(), 3)
    assert all(p.grad is None for p in list(base.parameters()) + list(energy.parameters()))


def test_hmc_costs_n_leapfrog_gradients_per_iteration():
    calls = []
    target = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))

    class Counting:
        def __call__(self, z):
            raise AssertionError("the samplers must use value_and_grad, never a separate forward")

        def value_and_grad(self, z):
            calls.append(1)
            return target.value_and_grad(z)

    kf.HMC(0.2, 4).run(Counting(), torch.randn(3, 2, dtype=torch.float64), 5)
    assert len(calls) == 1 + 5 * 4  # the initial evaluation, then 4 per iteration


def test_result_diagnostics_and_progress_bar(capsys):
    target = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    result = kf.MALA(0.8).run(target, torch.randn(16, 2, dtype=torch.float64), 40, thin=2, progress=True)
    assert result.rhat().shape == (2,) and result.ess().shape == (2,)
    assert "MALA" in capsys.readouterr().err
    with pytest.raises(ValueError, match="thin >= 1"):
        kf.MALA(0.8).run(target, torch.randn(4, 2, dtype=torch.float64), 2).ess()


def test_cuda_graph_request_on_cpu_warns_and_runs():
    target = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    with pytest.warns(UserWarning, match="cuda_graph=True needs CUDA tensors"):
        result = kf.ULA(0.1).run(target, torch.randn(4, 2, dtype=torch.float64), 3, cuda_graph=True)
    assert result.z.shape == (4, 2)


@pytest.mark.parametrize("call, error, match", [
    (lambda t: kf.MALA(0.1).run(t, torch.tensor([[0.0, math.nan]]), 2), ValueError, "z0 must be finite"),
    (lambda t: kf.MALA(0.1).run(lambda z: z.sum(), torch.zeros(3, 2), 2), ValueError, "one value per chain"),
    (lambda t: kf.MALA(0.1).run(t, torch.zeros(3), 2), ValueError, r"z0 must be a non-empty \(B, L\)"),
    (lambda t: kf.MALA(0.1).run(t, [[0.0]], 2), TypeError, "z0 must be a"),
    (lambda t: kf.MALA(0.1).run("U", torch.zeros(3, 2), 2), TypeError, "potential must be callable"),
    (lambda t: kf.MALA(0.1).run(t, torch.zeros(3, 2), -1), ValueError, "n_steps must be an int"),
    (lambda t: kf.MALA(0.0), ValueError, "step_size must be a positive"),
    (lambda t: kf.HMC(torch.tensor([0.1, -0.1]), 3), ValueError, "finite and > 0"),
    (lambda t: kf.HMC(torch.ones(2), 3).run(t, torch.zeros(3, 2), 1), ValueError, r"shape \(3,\)"),
    (lambda t: kf.HMC(0.1, 0), ValueError, "n_leapfrog must be"),
    (lambda t: kf.ULA(0.1, adapt_step_size=True), TypeError, "unexpected keyword"),
    (lambda t: kf.KineticLangevin(0.1, friction=-1.0), ValueError, "friction must be"),
    (lambda t: kf.MALA(0.1, adapt_step_size=True, target_accept=1.5), ValueError, "target_accept"),
    (lambda t: kf.MALA(0.1).run(lambda z: z.sum(1) + math.inf, torch.zeros(3, 2), 1),
     ValueError, "potential is NaN or infinite at z0"),
    (lambda t: kf.MALA(0.1).run(lambda z: (z * z).sum(1).double(), torch.zeros(3, 2), 1),
     TypeError, "must have z's dtype torch.float32"),
])
def test_bad_input_is_rejected(call, error, match):
    target = Gaussian(torch.zeros(2), torch.eye(2))
    with pytest.raises(error, match=match):
        call(target)


def test_latent_potential_bf16_autocast_keeps_state_in_fp32():
    torch.manual_seed(0)
    base, energy = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    exact = LatentPotential(base, energy)
    mixed = LatentPotential(base, energy, autocast=torch.bfloat16)
    z = torch.randn(64, 2)
    (v_exact, g_exact), (v_mixed, g_mixed) = value_and_grad(exact, z), value_and_grad(mixed, z)
    assert v_mixed.dtype == g_mixed.dtype == torch.float32
    torch.testing.assert_close(v_mixed, v_exact, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(g_mixed, g_exact, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="autocast must be"):
        LatentPotential(base, energy, autocast=torch.float64)


# --- metric and trajectory adaptation ------------------------------------------------------------------

def _badly_scaled(dim=10):
    sd = torch.logspace(-1, 1, dim, dtype=torch.float64)  # scales 0.1 to 10: a 100x condition in sd
    return Gaussian(torch.zeros(dim, dtype=torch.float64), torch.diag(sd**2)), sd


def _correlated():
    scales = torch.tensor([1.0, 3.0, 0.3, 1.0], dtype=torch.float64)
    corr = torch.tensor([[1.0, 0.9, 0.5, 0.0], [0.9, 1.0, 0.6, -0.3], [0.5, 0.6, 1.0, 0.2],
                         [0.0, -0.3, 0.2, 1.0]], dtype=torch.float64)
    return Gaussian(torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64), corr * torch.outer(scales, scales))


ADAPTIVE = [pytest.param(lambda m: kf.MALA(0.1, adapt_step_size=True, metric=m), id="mala"),
            pytest.param(lambda m: kf.HMC(0.1, 5, adapt_step_size=True, metric=m), id="hmc"),
            pytest.param(lambda m: kf.ChEES(0.1, metric=m), id="chees")]


@pytest.mark.parametrize("compile", COMPILE)
@pytest.mark.parametrize("make_sampler", ADAPTIVE)
def test_adaptive_samplers_are_exact_on_a_badly_scaled_gaussian(make_sampler, compile):
    target, _ = _badly_scaled()
    result = _final_states(make_sampler("diag"), target, 2000, 10, 100, 300, seed=21, compile=compile)
    _assert_moments(result.z, target.mean, target.cov)


@pytest.mark.parametrize("make_sampler", ADAPTIVE)
def test_adaptive_samplers_are_exact_on_a_correlated_gaussian_with_a_dense_metric(make_sampler):
    target = _correlated()
    result = _final_states(make_sampler("dense"), target, 2000, 4, 100, 300, seed=22)
    _assert_moments(result.z, target.mean, target.cov)


def test_metric_adaptation_estimates_the_target_scales():
    """Pooled over 400 chains, the adapted diagonal metric is the target's sd and the dense one its covariance
    (within the Monte-Carlo error of the last window's 400 x 175 draws, a few per cent)."""
    target, sd = _badly_scaled()
    diag = _final_states(kf.HMC(0.1, 5, adapt_step_size=True), target, 400, 10, 0, 300, seed=23)
    torch.testing.assert_close(diag.metric.scale, sd, rtol=0.08, atol=0)
    correlated = _correlated()
    dense = _final_states(kf.HMC(0.1, 5, adapt_step_size=True, metric="dense"), correlated, 400, 4, 0, 300, seed=24)
    chol = dense.metric.cholesky
    torch.testing.assert_close(chol @ chol.T, correlated.cov, rtol=0.1, atol=0.05)
    assert kf.HMC(0.1, 5).run(target, torch.randn(3, 10, dtype=torch.float64), 1, warmup=10).metric.kind == "identity"


def test_metric_adaptation_speeds_up_mixing_on_a_badly_scaled_target():
    """Same gradient budget: the diagonal metric turns a 100x scale spread into a unit-scale problem."""
    target, _ = _badly_scaled()
    ess = {}
    for metric in ("identity", "diag"):
        torch.manual_seed(25)
        result = kf.HMC(0.1, 5, adapt_step_size=True, metric=metric).run(
            target, torch.randn(16, 10, dtype=torch.float64), 300, warmup=300, thin=1)
        ess[metric] = result.ess().min().item()
    assert ess["diag"] > 5 * ess["identity"], ess


def test_chees_adapts_the_trajectory_length_from_a_short_start():
    """From T = one step (0.05) on a unit-scale Gaussian, ChEES grows T to the order of the target's
    half-period (pi/2 for N(0, 1)) and reaches its harmonic-mean acceptance target."""
    target = Gaussian(torch.zeros(20, dtype=torch.float64), torch.eye(20, dtype=torch.float64))
    result = _final_states(kf.ChEES(0.05, trajectory_length=0.05, metric="identity"), target, 128, 20, 100, 400,
                           seed=26)
    assert 0.8 < result.trajectory_length < 20, result.trajectory_length
    harmonic = 1 / (1 / result.accept_rate.clamp_min(1e-3)).mean()
    assert 0.5 < harmonic.item() < 0.85


def test_chees_trajectory_length_is_not_dragged_by_restarted_step_sizes():
    """With the diagonal metric's windows, dual averaging restarts at 10x the step after each window; T used to
    be floored at that step and stayed there (unit 16-D Gaussian, 64 chains: T 7.5 with this seed, up to 11.2
    with others, where the Halton-jittered criterion peaks at 2.25). It now stays near the criterion's maximum
    (1.7 measured)."""
    target = Gaussian(torch.zeros(16, dtype=torch.float64), torch.eye(16, dtype=torch.float64))
    result = _final_states(kf.ChEES(0.05), target, 64, 16, 0, 300, seed=27)
    assert 1.0 < result.trajectory_length < 4.0, result.trajectory_length


def test_metric_windows_follow_stans_schedule():
    assert metric_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    assert metric_windows(100) == [(15, 90)]
    assert metric_windows(19) == []
    for warmup in range(20, 400, 7):  # contiguous, inside the buffers, ending where the last fast window starts
        windows = metric_windows(warmup)
        assert all(a[1] == b[0] for a, b in zip(windows, windows[1:])) and windows[0][0] > 0
        assert windows[-1][1] < warmup


def test_halton_sequence():
    assert [halton(i) for i in range(1, 8)] == [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
    for index in list(range(1, 4097)) + [2 ** 40 + 12345, 2 ** 52 - 1]:  # the sum of its bits' weights
        assert halton(index) == sum(0.5 ** (bit + 1) for bit in range(index.bit_length()) if index >> bit & 1)


# --- purity, compiled path, resume of adapted runs ------------------------------------------------------

@pytest.mark.parametrize("make_sampler", [lambda: kf.ULA(0.1), lambda: kf.KineticLangevin(0.2),
                                          lambda: kf.MALA(0.3), lambda: kf.HMC(0.2, 3), lambda: kf.ChEES(0.2)],
                         ids=["ula", "kinetic", "mala", "hmc", "chees"])
def test_a_run_never_modifies_what_the_caller_holds(make_sampler):
    target = Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    z0 = torch.randn(6, 3, dtype=torch.float64)
    z0_copy = z0.clone()
    first = make_sampler().run(target, z0, 3)
    kept = {name: t.clone() for name, t in first.state.chains._asdict().items()}
    z_kept = first.z.clone()
    make_sampler().run(target, None, 3, state=first.state)
    assert torch.equal(z0, z0_copy) and torch.equal(first.z, z_kept)
    assert all(torch.equal(getattr(first.state.chains, name), t) for name, t in kept.items())


ALL_SAMPLERS = [pytest.param(lambda: kf.ULA(0.1), id="ula"),
                pytest.param(lambda: kf.KineticLangevin(0.2), id="kinetic"),
                pytest.param(lambda: kf.MALA(0.3, adapt_step_size=True), id="mala"),
                pytest.param(lambda: kf.HMC(0.3, 3, adapt_step_size=True), id="hmc"),
                pytest.param(lambda: kf.HMC(0.3, 3, per_chain_adaptation=True), id="hmc-per-chain"),
                pytest.param(lambda: kf.ChEES(0.3), id="chees")]


def _scaled():
    """A 4-D Gaussian of scales 0.5 to 2: every sampler here is stable on it, and the adapted metric differs
    from the identity."""
    sd = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    return Gaussian(torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64), torch.diag(sd**2))


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


# Each case compiles its sampler's graphs cold (13-67 s a case on a loaded 2-core machine): `make test` runs the
# compiled paths: whole iterations (ULA), leapfrog chunks (ChEES's warm-up) and whole iterations of while_loops of
# leapfrog steps (ChEES's sampling); the other samplers run under -m slow.
_COMPILE_PATHS = {"ula", "chees"}


@pytest.mark.parametrize("make_sampler", [p if p.id in _COMPILE_PATHS else pytest.param(*p.values, id=p.id,
                                                                                        marks=pytest.mark.slow)
                                          for p in ALL_SAMPLERS])
def test_compiled_runs_do_not_recompile_as_warm_up_adapts(make_sampler):
    """Step sizes, dual-averaging state, metrics and trajectory lengths change through warm-up: none of them may
    be a constant of a compiled graph. A first run compiles a few graphs (its chunk of whole iterations;
    ChEES's warm-up leapfrog chunks, at most one per power of two up to 16, and its sampling's whole iterations,
    whose leapfrog counts are a tensor; the identity metric of the first window
    passed as a scale of ones, so the same graph as the adapted diagonal metric); runs of the same lengths from
    other step sizes, and from a resumed state with the adapted metric, compile none. (On the CPU one while_loop
    runs any number of iterations; unrolled chunks elsewhere may need single iterations where a chunk would cross
    a window edge, kale_fast.samplers.run, and compile that once.)"""
    target = _scaled()
    z0 = torch.randn(16, 4, dtype=torch.float64)
    before = _unique_graphs()
    first = make_sampler().run(target, z0, 24, warmup=40, compile=True)
    compiled_first = _unique_graphs() - before
    assert 1 <= compiled_first <= 6, compiled_first  # ChEES: up to 5 leapfrog chunks and its whole iterations
    assert first.metric.kind == "diag"
    sampler = make_sampler()
    sampler.step_size = 0.05
    sampler.run(target, z0, 24, warmup=40, compile=True)
    sampler.run(target, None, 24, warmup=40, state=first.state, compile=True)
    assert _unique_graphs() - before == compiled_first


@pytest.mark.slow
def test_per_chain_step_sizes_in_unrolled_compiled_iterations_compile_once():
    """Per-chain adaptation in unrolled whole iterations (the while_loop's case, B x L <= 64, is in the test
    above): the step sizes are a (B,) tensor whatever the statistic, so a second run and a resumed one compile
    nothing, and the chains end with steps of their own."""
    from kale_fast.samplers import compiled

    target = _scaled()
    z0 = torch.randn(32, 4, dtype=torch.float64)
    assert not compiled.loops(kf.HMC(0.3, 3), z0, None)
    before = _unique_graphs()
    first = kf.HMC(0.3, 3, per_chain_adaptation=True).run(target, z0, 24, warmup=40, compile=True)
    compiled_first = _unique_graphs() - before
    kf.HMC(0.05, 3, per_chain_adaptation=True).run(target, z0, 24, warmup=40, compile=True)
    kf.HMC(0.3, 3, per_chain_adaptation=True).run(target, None, 24, warmup=40, state=first.state, compile=True)
    assert _unique_graphs() - before == compiled_first
    assert len(set(first.step_size.tolist())) == 32


@pytest.mark.slow
@pytest.mark.parametrize("make_sampler", ALL_SAMPLERS)
def test_compiled_iterations_compute_the_algebra_of_the_eager_code(make_sampler, monkeypatch):
    """compile=True runs k whole iterations per call, from random numbers drawn in blocks (not the fused
    kernels' in-kernel noise, so its chains differ from the eager path's). The compiler must not change what they
    compute: with torch.compile replaced by the identity, the same Python code runs eagerly, and fp64 chains
    agree to rounding through warm-up (step size and metric adaptation) and sampling. (ChEES's warm-up runs eager
    iterations around leapfrog chunks, its sampling whole iterations: both compared.)"""
    target = _scaled()
    z0 = torch.randn(8, 4, dtype=torch.float64)
    result = make_sampler().run(target, z0, 10, warmup=25, generator=torch.Generator().manual_seed(3), compile=True)
    again = make_sampler().run(target, z0, 10, warmup=25, generator=torch.Generator().manual_seed(3), compile=True)
    assert torch.equal(result.z, again.z)  # repeatable bit for bit under a seed
    _uncompiled(monkeypatch)
    expected = make_sampler().run(_scaled(), z0, 10, warmup=25, generator=torch.Generator().manual_seed(3),
                                  compile=True)
    # fp64 rounding differences (the compiler fuses and reorders sums) grow along 35 iterations of chaotic
    # dynamics (HMC: 105 leapfrog steps) to about 1e-8; a wrong computation, or one Metropolis decision that
    # differs, moves a chain by O(1).
    torch.testing.assert_close(result.z, expected.z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.step_size, expected.step_size, rtol=1e-6, atol=0)


def _uncompiled(monkeypatch):
    """torch.compile replaced by the identity: the compiled path's Python code runs eagerly."""
    from kale_fast.samplers import compiled, leapfrog

    identity = lambda fn, name, mode=None, specialize_floats=False: fn  # noqa: E731
    monkeypatch.setattr(compiled, "compile_function", identity)
    monkeypatch.setattr(leapfrog, "compile_function", identity)


@pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")
@pytest.mark.parametrize("n_chains, looped", [(16, True), (32, False)], ids=["while_loop", "unrolled"])
def test_compiled_chees_samples_whole_iterations_whatever_its_leapfrog_counts(monkeypatch, n_chains, looped):
    """ChEES's leapfrog count ceil(halton(i) T / h) changes every iteration: its compiled sampling passes the
    counts of a call's iterations as a tensor (each iteration's steps a while_loop, inside the iterations'
    while_loop at B x L <= 64, else in 8 unrolled iterations), so sampling runs of other trajectory lengths and
    step sizes compile nothing new; no sampling iteration runs eagerly; runs repeat bit for bit under a seed; and
    the chains agree to rounding with the same Python code run eagerly, counts of one step included."""
    from kale_fast.samplers import compiled
    from kale_fast.samplers import run as run_module

    target = _scaled()
    z0 = torch.randn(n_chains, 4, dtype=torch.float64)
    assert compiled.loops(kf.ChEES(), z0, None) == looped
    warmed = kf.ChEES(0.3).run(target, z0, 0, warmup=40, generator=torch.Generator().manual_seed(4), compile=True)
    states = [warmed.state, dataclasses.replace(warmed.state, trajectory_length=2.5 * warmed.trajectory_length,
                                                step_size=0.7 * warmed.state.step_size)]
    counts = [[kf.ChEES().params(Tuning(s.step_size, s.trajectory_length, float(s.step_size.mean())), i, False)
               .n_leapfrog for i in range(40, 64)] for s in states]
    assert 1 in counts[0] and counts[0] != counts[1], counts

    def no_eager_steps(*args):
        raise AssertionError("a sampling iteration ran eagerly")
    monkeypatch.setattr(run_module._Engine, "step", no_eager_steps)
    before = _unique_graphs()
    results = [kf.ChEES(0.3).run(target, None, 24, state=s, compile=True, thin=1) for s in states]
    assert _unique_graphs() - before == 1  # the iterations' while_loop, or 8 unrolled iterations
    again = kf.ChEES(0.3).run(target, None, 24, state=states[1], compile=True, thin=1)
    assert torch.equal(again.trace, results[1].trace)  # repeatable bit for bit
    assert _unique_graphs() - before == 1
    _uncompiled(monkeypatch)
    for state, result in zip(states, results):
        expected = kf.ChEES(0.3).run(_scaled(), None, 24, state=state, compile=True, thin=1)
        torch.testing.assert_close(result.trace, expected.trace, rtol=1e-6, atol=1e-6)


def test_whole_iterations_per_call_by_sampler_and_chains():
    """How many iterations a compiled call runs (compiled.chunk_iterations): HMC with more leapfrog steps than
    MAX_UNROLLED_GRADIENTS none, looped or not (its unrolled steps would take too long to compile); ChEES the
    loop's rows where it loops (B x L <= 64), else 8; HMC-4 the loop's rows, or its unrolled count."""
    from kale_fast.samplers import compiled

    small, large = torch.zeros(1, 4), torch.zeros(64, 4)
    for z in (small, large):
        long_hmc = kf.HMC(0.3, compiled.MAX_UNROLLED_GRADIENTS + 4)
        assert compiled.chunk_iterations(long_hmc, z, None, compiled.loops(long_hmc, z, None)) == 0
    assert compiled.chunk_iterations(kf.ChEES(), small, None, True) == compiled.loop_rows((1, 4))
    assert compiled.chunk_iterations(kf.ChEES(), large, None, False) == compiled.MAX_CHUNK_ITERATIONS
    assert compiled.chunk_iterations(kf.HMC(0.3, 4), small, None, True) == compiled.loop_rows((1, 4))
    assert compiled.chunk_iterations(kf.HMC(0.3, 4), large, None, False) >= 1


@pytest.mark.parametrize("make_sampler", [lambda: kf.ChEES(0.2), lambda: kf.MALA(0.3, adapt_step_size=True),
                                          lambda: kf.KineticLangevin(0.2, metric="dense")],
                         ids=["chees", "mala", "kinetic-dense"])
def test_resume_after_metric_adaptation_continues_exactly(make_sampler, tmp_path):
    target = _correlated()
    z0 = torch.randn(20, 4, dtype=torch.float64)
    full = make_sampler().run(target, z0, 12, warmup=40, generator=torch.Generator().manual_seed(8))
    first = make_sampler().run(target, z0, 5, warmup=40, generator=torch.Generator().manual_seed(8))
    assert first.metric.kind != "identity"
    first.state.save(tmp_path / "state.pt")
    resumed = make_sampler().run(target, None, 7, state=SamplerState.load(tmp_path / "state.pt"))
    torch.testing.assert_close(resumed.z, full.z, rtol=1e-12, atol=1e-12)
    assert resumed.trajectory_length == full.trajectory_length


def test_saved_states_load_without_running_code_and_are_checked(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "kale_fast.SamplerState/2", "sampler": Payload()}, tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match="not a readable sampler state"):
        SamplerState.load(tmp_path / "crafted.pt")
    assert not marker.exists()
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="not a readable sampler state"):
        SamplerState.load(tmp_path / "truncated.pt")
    target = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    state = kf.MALA(0.3).run(target, torch.randn(4, 2, dtype=torch.float64), 2).state
    state.step_size = -state.step_size
    with pytest.raises(ValueError, match="state.step_size"):
        kf.MALA(0.3).run(target, None, 2, state=state)


@pytest.mark.parametrize("call, error, match", [
    (lambda: kf.HMC(0.1, 3, metric="full"), ValueError, "metric must be one of"),
    (lambda: kf.HMC(0.1, 3, jitter=1.0), ValueError, "jitter must be"),
    (lambda: kf.ChEES(0.1, trajectory_length=-1.0), ValueError, "trajectory_length must be"),
    (lambda: kf.ChEES(0.1, max_leapfrog=0), ValueError, "max_leapfrog must be"),
    (lambda: kf.MALA(0.1, metric=Metric(scale=torch.ones(3))).run(lambda z: (z * z).sum(1), torch.zeros(2, 2), 1),
     ValueError, r"metric.scale must be a floating \(2,\)"),
    (lambda: kf.MALA(0.1, metric=Metric(cholesky=torch.ones(2, 2))).run(lambda z: (z * z).sum(1),
                                                                         torch.zeros(2, 2), 1),
     ValueError, "lower-triangular"),
])
def test_bad_adaptation_options_are_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_given_metric_is_used_as_is():
    """A user's metric (the target's own covariance here) is used without adaptation and returned."""
    target = _correlated()
    chol = torch.linalg.cholesky(target.cov)
    result = _final_states(kf.HMC(0.5, 4, metric=Metric(cholesky=chol)), target, 2000, 4, 60, 0, seed=27)
    assert torch.equal(result.metric.cholesky, chol)
    _assert_moments(result.z, target.mean, target.cov)


@pytest.mark.slow
def test_compiled_chees_takes_a_given_dense_metric():
    """ChEES's compiled sampling at few chains runs each iteration's leapfrog steps as a while_loop, into whose body
    the dense metric's Cholesky factor is lifted: a transposed view of it lifted beside it was input-to-input
    aliasing, which TorchDynamo refused (before 2026-12-07). (Its exactness under a dense metric is tested eagerly
    above; compiled iterations draw their random numbers differently, so the chains are not the eager ones.)"""
    target = _correlated()
    chol = torch.linalg.cholesky(target.cov)
    z0 = target.mean + torch.randn(4, chol.shape[0], dtype=chol.dtype, generator=torch.Generator().manual_seed(3))
    result = kf.ChEES(0.3, metric=Metric(cholesky=chol)).run(target, z0, 6, warmup=4, compile=True,
                                                             generator=torch.Generator().manual_seed(4))
    assert torch.equal(result.metric.cholesky, chol)
    assert torch.isfinite(result.z).all() and float(result.accept_rate.mean()) > 0.2


def test_an_expanded_autograd_gradient_is_made_dense_for_the_fused_updates():
    """U(z) = sum(z) has the gradient ones expanded from (B,) (stride 0): the fused kernels read the gradient as
    a dense block, so every step must get it contiguous. MALA on this linear potential moves by -h + noise."""
    value, grad = value_and_grad(lambda z: z.sum(1), torch.zeros(4, 3))
    assert grad.is_contiguous() and torch.equal(grad, torch.ones(4, 3))
    torch.manual_seed(0)
    result = kf.ULA(0.01, metric="identity").run(lambda z: z.sum(1), torch.zeros(2000, 3, dtype=torch.float64), 50)
    drift = result.z.mean().item()  # 50 steps of -h, plus noise of sd sqrt(2 h 50) / sqrt(6000)
    assert abs(drift + 0.5) < 5 * math.sqrt(2 * 0.01 * 50 / 6000)
