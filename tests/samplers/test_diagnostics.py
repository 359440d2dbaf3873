"""Convergence diagnostics: every function against ArviZ on seeded traces of many shapes (rtol 1e-6), one-chain
R-hat (where ArviZ gives NaN) against a scipy twin, known answers that need no ArviZ (iid, AR(1), shifted chains),
edge cases and bad input, and the conversion to ArviZ's data object. The known-answer tolerances were calibrated
on 200 other seeds (1000..1199): each is about 1.5 times the largest deviation seen there, and the R-hat > 1.1
checks held with R-hat >= 1.17 on all of them."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from scipy.special import ndtri
from scipy.stats import rankdata

from kale_fast.samplers.diagnostics import ess_bulk, ess_mean, ess_tail, rhat
from kale_fast.samplers.summary import to_inference_data


def ar1(n_chains, n_draws, dims, rho, seed):
    """Stationary AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t, N(0, 1) marginals: (chain, draw, *dims);
    integrated autocorrelation time (1 + rho) / (1 - rho)."""
    scale = math.sqrt(1 - rho ** 2)
    noise = normal((n_chains, n_draws, *dims), seed).numpy()
    noise[:, 0] /= scale  # x_0 = e_0 ~ N(0, 1): the chain starts in its stationary distribution
    return torch.from_numpy(lfilter([scale], [1.0, -rho], noise, axis=1))


def normal(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


TRACES = {
    "iid": lambda seed: normal((4, 200, 3), seed),
    "one chain": lambda seed: normal((1, 301, 5), seed),
    "AR(1) 0.95": lambda seed: ar1(3, 501, (4,), 0.95, seed),
    "AR(1) 0.99 one chain": lambda seed: ar1(1, 400, (3,), 0.99, seed),
    "AR(1) -0.7": lambda seed: ar1(4, 100, (3,), -0.7, seed),
    "many chains few draws": lambda seed: normal((17, 9, 2), seed),
    "5 draws": lambda seed: normal((2, 5, 6), seed),
    "4 draws": lambda seed: normal((3, 4, 6), seed),
    "7 draws": lambda seed: normal((3, 7, 6), seed),
    "ties": lambda seed: torch.randint(0, 3, (4, 50, 3), generator=torch.Generator().manual_seed(seed)).double(),
    "two values": lambda seed: torch.randint(0, 2, (3, 21, 8), generator=torch.Generator().manual_seed(seed)).double(),
    "(2, 3) dims": lambda seed: normal((3, 40, 2, 3), seed),
    "no dims": lambda seed: normal((2, 30), seed),
    "shifted chain": lambda seed: normal((4, 100, 2), seed) + torch.tensor([0.0, 0.0, 0.0, 3.0]).view(4, 1, 1),
    "heavy tails": lambda seed: normal((4, 150, 3), seed) ** 3,
    "infinite draws": lambda seed: normal((3, 40, 3), seed).index_put_((torch.tensor([1]), torch.tensor([seed + 5])),
                                                                       torch.tensor(math.inf, dtype=torch.float64)),
}


def arviz_diagnostic(arviz, trace, method, **kwargs):
    """ArviZ's R-hat (method "rank") or ESS (other methods) of a (chain, draw, *dims) array, for 0.x and 1.x."""
    compute = arviz.rhat if method == "rank" else arviz.ess
    if int(arviz.__version__.split(".")[0]) >= 1:  # array interface, chain axis 0 and draw axis 1 by default
        return np.asarray(compute(trace, method=method, **kwargs), dtype=float)
    return compute(arviz.convert_to_dataset(trace), method=method, **kwargs)["x"].values.astype(float)


@pytest.mark.filterwarnings("ignore:More chains:UserWarning")  # ArviZ 0.x on purpose: 17 chains of 9 draws
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(TRACES))
def test_agrees_with_arviz(case, seed):
    arviz = pytest.importorskip("arviz")
    trace = TRACES[case](seed)
    ours = {"rank": rhat(trace), "bulk": ess_bulk(trace), "tail": ess_tail(trace), "mean": ess_mean(trace),
            "tail 0.2": ess_tail(trace, prob=0.2)}
    theirs = {method: arviz_diagnostic(arviz, trace.numpy(), method) for method in ("rank", "bulk", "mean")}
    theirs["tail"] = arviz_diagnostic(arviz, trace.numpy(), "tail", prob=(0.05, 0.95))
    theirs["tail 0.2"] = arviz_diagnostic(arviz, trace.numpy(), "tail", prob=(0.2, 0.8))
    for method, values in ours.items():
        assert values.dtype == torch.float64 and values.shape == trace.shape[2:]
        if method == "rank" and trace.shape[0] == 1:
            assert np.isnan(theirs[method]).all()  # ArviZ needs 2 chains; ours compares the two halves
            assert torch.isfinite(values).all()
            continue
        np.testing.assert_allclose(values.numpy(), theirs[method], rtol=1e-6, atol=0, err_msg=method)


def rhat_reference(trace: np.ndarray) -> np.ndarray:
    """A scipy twin of the rank-normalised split R-hat of a (chain, draw, *dims) trace, one coordinate at a time."""
    def classic(chains):
        n = chains.shape[1]
        between = n * chains.mean(1).var(ddof=1)
        within = chains.var(1, ddof=1).mean()
        return np.sqrt((between / within + n - 1) / n)

    def z(values):
        return ndtri((rankdata(values, method="average").reshape(values.shape) - 0.375) / (values.size + 0.25))

    n_chains, n_draws = trace.shape[:2]
    flat = trace.reshape(n_chains, n_draws, -1)
    half = n_draws // 2
    out = []
    for coordinate in range(flat.shape[-1]):
        x = flat[..., coordinate]
        split = np.concatenate([x[:, :half], x[:, n_draws - half:]])
        out.append(max(classic(z(split)), classic(z(np.abs(split - np.median(split))))))
    return np.array(out).reshape(trace.shape[2:])


@pytest.mark.parametrize("shape, rho", [((1, 301, 5), 0.0), ((1, 400, 3), 0.99), ((1, 9, 4), 0.5), ((3, 60, 2), 0.9)])
def test_rhat_against_scipy_twin(shape, rho):
    trace = ar1(shape[0], shape[1], shape[2:], rho, seed=sum(shape))
    np.testing.assert_allclose(rhat(trace).numpy(), rhat_reference(trace.numpy()), rtol=1e-12)


def test_iid_chains_rhat_one_and_ess_about_n():
    trace = normal((4, 1000, 50), seed=10)
    assert (rhat(trace) - 1).abs().max() < 0.006
    for ess in (ess_bulk(trace), ess_mean(trace)):
        assert abs(ess.mean() / 4000 - 1) < 0.045
        assert ((ess / 4000 - 1).abs() < 0.36).all()
    assert ((ess_tail(trace) / 4000 - 1).abs() < 0.47).all()


def test_one_iid_chain_ess_about_n():
    # The old estimator gave every coordinate the cap n log10 n = 14408 here: its between-chain term was NaN.
    ess = ess_bulk(normal((1, 4000, 50), seed=11))
    assert abs(ess.mean() / 4000 - 1) < 0.06
    assert ((ess / 4000 - 1).abs() < 0.38).all()


@pytest.mark.parametrize("n_chains", [1, 4])
@pytest.mark.parametrize("rho, mean_tol, max_tol, rhat_tol", [(0.5, 0.055, 0.33, 0.006), (0.9, 0.11, 0.72, 0.036)])
def test_ar1_ess_matches_integrated_autocorrelation(n_chains, rho, mean_tol, max_tol, rhat_tol):
    n_draws = 16000 // n_chains
    trace = ar1(n_chains, n_draws, (20,), rho, seed=int(rho * 10) + n_chains)
    expected = n_chains * n_draws * (1 - rho) / (1 + rho)
    for ess in (ess_bulk(trace), ess_mean(trace)):
        assert abs(ess.mean() / expected - 1) < mean_tol
        assert ((ess / expected - 1).abs() < max_tol).all()
    assert (rhat(trace) - 1).abs().max() < rhat_tol


def test_shifted_chain_and_drifting_single_chain_flagged():
    trace = normal((4, 1000, 3), seed=12)
    trace[0] += 2.0
    assert (rhat(trace) > 1.1).all()
    drifting = normal((1, 1000, 3), seed=13) + torch.linspace(0, 3, 1000, dtype=torch.float64).view(1, -1, 1)
    assert (rhat(drifting) > 1.1).all()
    wider = normal((4, 1000, 3), seed=14)
    wider[0] *= 4.0  # same location, different scale: only the folded (tail) R-hat sees it
    assert (rhat(wider) > 1.1).all()


def test_rank_based_diagnostics_invariant_under_monotone_maps():
    # Not R-hat: its folded half ranks |x - median|, which a monotone map changes.
    trace = ar1(3, 300, (4,), 0.8, seed=15)
    for diagnostic in (ess_bulk, ess_tail):
        torch.testing.assert_close(diagnostic(trace.exp()), diagnostic(trace), rtol=1e-10, atol=0)


def test_constant_nan_and_dtypes():
    trace = normal((3, 21, 3), seed=16)
    trace[..., 0] = 2.5
    trace[1, 3, 1] = math.nan
    split_draws = 2 * 3 * (21 // 2)
    for ess in (ess_bulk(trace), ess_tail(trace), ess_mean(trace)):
        assert ess[0] == split_draws and ess[1].isnan() and ess[2].isfinite()
    r = rhat(trace)
    assert r[0].isnan() and r[1].isnan() and r[2].isfinite()
    single = rhat(trace[..., 2].float())
    assert single.shape == () and single.dtype == torch.float64
    torch.testing.assert_close(single, r[2], rtol=1e-6, atol=0)  # float32 draws, float64 arithmetic


@pytest.mark.parametrize("diagnostic", [rhat, ess_bulk, ess_tail, ess_mean])
def test_bad_traces_rejected(diagnostic):
    with pytest.raises(TypeError, match="trace must be a torch.Tensor"):
        diagnostic(np.zeros((2, 10)))
    with pytest.raises(TypeError, match="trace must be real"):
        diagnostic(torch.zeros(2, 10, dtype=torch.complex64))
    for shape in [(10,), (2, 3), (0, 10), (2, 10, 0)]:
        with pytest.raises(ValueError, match=r"non-empty \(chain, draw, \*dims\) tensor with draw >= 4"):
            diagnostic(torch.zeros(shape))


@pytest.mark.parametrize("prob", [0.0, 1.0, -0.1, "0.05", True])
def test_ess_tail_rejects_bad_prob(prob):
    with pytest.raises(ValueError, match="prob must be a float in"):
        ess_tail(normal((2, 10, 1), seed=0), prob=prob)


def test_to_inference_data_layout_and_values():
    arviz = pytest.importorskip("arviz")
    trace = ar1(3, 200, (4,), 0.7, seed=17)
    potential = normal((3, 200), seed=18)
    accept_prob = torch.rand(3, 200, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    data = to_inference_data(trace, {"potential": potential, "accept_prob": accept_prob})
    z = data["posterior"]["z"]
    assert z.dims == ("chain", "draw", "latent") and z.shape == (3, 200, 4)
    np.testing.assert_array_equal(z.values, trace.numpy())
    np.testing.assert_array_equal(data["sample_stats"]["potential"].values, potential.numpy())
    np.testing.assert_array_equal(data["sample_stats"]["accept_prob"].values, accept_prob.numpy())
    # ArviZ reading the object back gives our numbers: the (chain, draw, latent) layout is the one it expects.
    np.testing.assert_allclose(np.asarray(arviz.ess(data)["z"]), ess_bulk(trace).numpy(), rtol=1e-6)
    bare = to_inference_data(trace)
    groups = set(bare.children) if hasattr(bare, "children") else set(bare.groups())  # DataTree / InferenceData
    assert groups == {"posterior"}


def test_to_inference_data_bad_input():
    pytest.importorskip("arviz")
    trace = normal((2, 10, 3), seed=0)
    with pytest.raises(TypeError, match="trace must be a torch.Tensor"):
        to_inference_data(trace.numpy())
    with pytest.raises(ValueError, match=r"trace must be a \(chain, draw, L\) tensor"):
        to_inference_data(trace[..., 0])
    with pytest.raises(ValueError, match=r"sample_stats\['potential'\] must be a \(chain, draw\)"):
        to_inference_data(trace, {"potential": torch.zeros(10, 2)})


def test_to_inference_data_without_arviz_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "arviz", None)  # makes `import arviz` raise ImportError
    with pytest.raises(ImportError, match="pip install"):
        to_inference_data(normal((2, 10, 3), seed=0))
