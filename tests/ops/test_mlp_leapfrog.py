"""kale_fast::mlp_leapfrog (csrc/mlp_potential.cpp) against its reference twin
(kale_fast.reference.mlp_potential.mlp_leapfrog) in fp64, and the samplers that run it: whole HMC trajectories on a
LatentPotential as one call, exact (moments of a LatentPotential whose posterior is a known Gaussian)."""
import pytest
import torch
from torch import nn

import kale_fast as kf
from kale_fast.ops import integrators
from kale_fast.ops import mlp_potential as fused
from kale_fast.reference import mlp_potential as reference
from kale_fast.samplers import LatentPotential, Metric, leapfrog
from kale_fast.samplers.leapfrog import eager_leapfrog
from kale_fast.samplers.metric import UnitPotential, unit_value_and_grad_function

pytestmark = [pytest.mark.skipif(fused._LEAPFROG_KERNEL is None, reason="kale_fast._C without mlp_leapfrog"),
              pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")]

ACTIVATIONS = ["silu", "identity", "tanh", ("leaky_relu", 0.1), "relu"]


def _network(dtype, seed, widths=(5, 12, 12, 9, 12, 1)):
    gen = torch.Generator().manual_seed(seed)
    weights = [(1.5 * torch.randn(o, i, generator=gen, dtype=torch.float64) / i ** 0.5).to(dtype)
               for i, o in zip(widths[:-1], widths[1:])]
    biases = [None if k == 1 else torch.randn(o, generator=gen, dtype=torch.float64).to(dtype)
              for k, o in enumerate(widths[1:])]
    return weights, biases, ACTIVATIONS[:len(weights)]


def _trajectory_inputs(batch, dim, dtype, seed, with_scale):
    gen = torch.Generator().manual_seed(seed)
    y, p = (torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    grad = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype)
    step = (0.05 + 0.2 * torch.rand(batch, generator=gen, dtype=torch.float64)).to(dtype)
    scale = (0.5 + torch.rand(dim, generator=gen, dtype=torch.float64)).to(dtype) if with_scale else None
    return y, p, grad, step, scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3, 8, 9, 200])
@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("n_steps", [1, 4])
def test_kernel_matches_the_fp64_reference(dtype, batch, with_scale, n_steps):
    """Against the reference run in fp64 on fp64 copies: fp64 to rounding; fp32 within 2e-5 of the largest entry
    (calibrated: the measured errors after 4 steps are 1e-7 to 2e-6 of it)."""
    weights, biases, activations = _network(dtype, seed=batch)
    y, p, grad, step, scale = _trajectory_inputs(batch, 5, dtype, seed=n_steps, with_scale=with_scale)
    inputs = [t.clone() for t in (y, p, grad, step)]
    out = fused.mlp_leapfrog(y, p, grad, step, n_steps, weights, biases, activations, scale=scale,
                             temperature=1.7, prior_precision=0.9)
    stack = fused.prepare(weights, biases, activations)
    expected = reference.mlp_leapfrog(
        y.double(), p.double(), grad.double(), step.double(), n_steps, None if scale is None else scale.double(),
        [w.double() for w in weights], [None if b is None else b.double() for b in biases], stack.names,
        stack.parameters, 1.7, 0.9)
    for actual, oracle in zip(out, expected):
        assert actual.dtype == dtype and actual.shape == oracle.shape
        tol = (2e-5 if dtype == torch.float32 else 1e-12) * (float(oracle.abs().max()) + 1.0)
        torch.testing.assert_close(actual.double(), oracle, rtol=0, atol=tol)
    assert all(torch.equal(a, b) for a, b in zip((y, p, grad, step), inputs))  # inputs untouched


def test_a_count_tensor_equals_the_int_and_row_blocks_in_parallel_agree_with_one_thread():
    weights, biases, activations = _network(torch.float32, seed=3)
    y, p, grad, step, scale = _trajectory_inputs(300, 5, torch.float32, seed=0, with_scale=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused.mlp_leapfrog(y, p, grad, step, 3, weights, biases, activations, scale=scale)
        torch.set_num_threads(2)
        two = fused.mlp_leapfrog(y, p, grad, step, torch.tensor(3), weights, biases, activations, scale=scale)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_the_reference_backend_runs_the_reference():
    weights, biases, activations = _network(torch.float64, seed=4)
    y, p, grad, step, scale = _trajectory_inputs(6, 5, torch.float64, seed=1, with_scale=True)
    stack = fused.prepare(weights, biases, activations)
    out = fused.mlp_leapfrog(y, p, grad, step, 2, weights, biases, activations, scale=scale, backend="reference")
    expected = reference.mlp_leapfrog(y, p, grad, step, 2, scale, weights, biases, stack.names, stack.parameters,
                                      1.0, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(out, expected))


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(n_steps=0), ValueError, "n_steps must be >= 1"),
    (lambda a: a.update(n_steps=2.0), TypeError, "n_steps must be an int or a 0-d int64 tensor"),
    (lambda a: a.update(n_steps=torch.tensor([2])), TypeError, "n_steps must be an int or a 0-d int64 tensor"),
    (lambda a: a.update(step_size=a["step_size"][:1]), ValueError, r"step_size must be a contiguous \(4,\) tensor"),
    (lambda a: a.update(step_size=torch.rand(8, dtype=torch.float64)[::2]), ValueError, "step_size must be a contig"),
    (lambda a: a.update(scale=torch.ones(3, dtype=torch.float64)), ValueError, r"scale must be None or a contiguous"),
    (lambda a: a.update(p=a["p"].float()), TypeError, "p and weights must have one dtype"),
    (lambda a: a.update(p=a["p"][:3]), ValueError, r"p must have y's shape \(4, 5\)"),
    (lambda a: a.update(grad=a["grad"][:, :4]), ValueError, r"grad must be a contiguous \(B, 5\) tensor"),
])
def test_bad_arguments_are_named(change, error, match):
    weights, biases, activations = _network(torch.float64, seed=5)
    y, p, grad, step, _ = _trajectory_inputs(4, 5, torch.float64, seed=2, with_scale=False)
    arguments = dict(y=y, p=p, grad=grad, step_size=step, n_steps=2, scale=None)
    change(arguments)
    with pytest.raises(error, match=match):
        fused.mlp_leapfrog(arguments.pop("y"), arguments.pop("p"), arguments.pop("grad"),
                           arguments.pop("step_size"), arguments.pop("n_steps"), weights, biases, activations,
                           **arguments)


def test_a_call_that_would_need_autograd_is_an_error():
    weights, biases, activations = _network(torch.float64, seed=6)
    y, p, grad, step, _ = _trajectory_inputs(4, 5, torch.float64, seed=3, with_scale=False)
    with pytest.raises(ValueError, match="p requires grad, but mlp_leapfrog has no autograd"):
        fused.mlp_leapfrog(y, p.requires_grad_(True), grad, step, 2, weights, biases, activations)
    stack = fused.prepare(weights, biases, activations)
    p.requires_grad_(False)
    scale = torch.ones(5, dtype=torch.float64)
    # the op itself, called directly, with one input requiring grad: a tensor, one in each list, the optional one
    for needs_grad in (p, weights[0], biases[0], scale):
        needs_grad.requires_grad_(True)
        with pytest.raises(RuntimeError, match="mlp_leapfrog has no autograd"):
            torch.ops.kale_fast.mlp_leapfrog(y, p, grad, step, torch.tensor(2), scale, weights, biases, stack.codes,
                                             stack.parameters, 1.0, 1.0)
        needs_grad.requires_grad_(False)
    torch.ops.kale_fast.mlp_leapfrog(y, p, grad, step, torch.tensor(2), scale, weights, biases, stack.codes,
                                     stack.parameters, 1.0, 1.0)


def test_one_opaque_op_in_a_compiled_graph():
    """A compiled HMC-like body calls kale_fast::mlp_leapfrog once for a whole trajectory, with the count a tensor
    (one graph for any count), and computes what the eager op computes."""
    from torch._dynamo.testing import CompileCounterWithBackend

    weights, biases, activations = _network(torch.float64, seed=7)
    stack = fused.prepare(weights, biases, activations)
    counter = CompileCounterWithBackend("inductor")

    @torch.compile(backend=counter, fullgraph=True)
    def trajectory(y, p, grad, step, n):
        y, p, value, grad = stack.leapfrog_kernel(y, p, grad, step, n, None, 1.0, 1.0)
        return y, p - 0.5 * step[:, None] * grad, value

    y, p, grad, step, _ = _trajectory_inputs(7, 5, torch.float64, seed=4, with_scale=False)
    with torch.no_grad():
        for n in (2, 5):
            out = trajectory(y, p, grad, step, torch.tensor(n))
            expected = fused.mlp_leapfrog(y, p, grad, step, n, weights, biases, activations)
            torch.testing.assert_close(out[0], expected[0], rtol=0, atol=0)
            torch.testing.assert_close(out[1], expected[1] - 0.5 * step[:, None] * expected[3], rtol=1e-14, atol=1e-14)
            assert torch.equal(out[2], expected[2])
    assert counter.frame_count == 1
    targets = [node.target for node in counter.graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.kale_fast.mlp_leapfrog.default) == 1


# --- the samplers' use -------------------------------------------------------------------------------------------

def _gebm_like(dtype=torch.float32):
    torch.manual_seed(0)
    base = kf.models.MLP(4, 6, (16,)).to(dtype)
    energy = kf.models.MLP(6, 1, (16,)).to(dtype)
    return LatentPotential(base.requires_grad_(False), energy.requires_grad_(False))


@pytest.mark.parametrize("with_scale", [False, True])
def test_latent_potential_trajectory_equals_its_steps_one_by_one(with_scale):
    """LatentPotential.fused_leapfrog against the eager leapfrog's step-by-step path (the fused kick-drift kernel and
    one mlp_potential call per step) on the same unit potential: fp64 to rounding."""
    potential = _gebm_like(torch.float64)
    metric = Metric(scale=torch.linspace(0.5, 2.0, 4, dtype=torch.float64)) if with_scale else Metric()
    y, p, _, step, _ = _trajectory_inputs(5, 4, torch.float64, seed=5, with_scale=False)
    value_and_grad = unit_value_and_grad_function(potential, metric)
    grad = value_and_grad(y)[1]
    steps = eager_leapfrog(integrators.kernels_for(y), value_and_grad)  # no fused trajectory: one step at a time
    expected = steps(y, p.clone(), grad, step, 6)
    out = UnitPotential(potential, metric).leapfrog(y, p, grad, step, 6)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_the_fused_trajectory_steps_aside_where_it_cannot_run():
    """A dense metric, the reference backend, a potential without one op: the steps run one by one (None)."""
    potential = _gebm_like()
    y, p, grad, step, _ = _trajectory_inputs(3, 4, torch.float32, seed=6, with_scale=False)
    assert UnitPotential(potential, Metric(cholesky=torch.eye(4))).leapfrog(y, p, grad, step, 2) is None
    with kf.use_backend("reference"):
        assert potential.fused_leapfrog(y, p, grad, step, 2) is None
    assert UnitPotential(lambda z: (z * z).sum(1), Metric()).leapfrog(y, p, grad, step, 2) is None
    assert potential.fused_leapfrog(y, p, grad, step.double(), 2) is None  # not y's dtype
    assert potential.fused_leapfrog(y, p, grad, step, 2) is not None


def test_an_extension_built_without_the_op_steps_one_by_one(monkeypatch):
    """With a kale_fast._C built before mlp_leapfrog existed, LatentPotential runs its steps one by one."""
    potential = _gaussian_latent_potential()[0]
    monkeypatch.setattr(fused, "HAS_LEAPFROG_KERNEL", False)
    y, p, grad, step, _ = _trajectory_inputs(3, 3, torch.float32, seed=7, with_scale=False)
    assert potential.fused_leapfrog(y, p, grad, step, 2) is None
    torch.manual_seed(0)
    assert torch.isfinite(kf.HMC(0.3, 3).run(potential, torch.randn(4, 3), 5).z).all()


def _gaussian_latent_potential(dim=3):
    """LatentPotential with linear networks: U(z) = |z|^2 / 2 + a^T (W z + b) + c, whose posterior is N(-W^T a, I)."""
    torch.manual_seed(1)
    base, energy = nn.Linear(dim, 5), nn.Linear(5, 1)
    with torch.no_grad():
        base.weight.mul_(2.0)
        energy.weight.mul_(3.0)
    mean = -(energy.weight @ base.weight).reshape(dim).detach().double()
    return LatentPotential(base.requires_grad_(False), energy.requires_grad_(False)), mean


@pytest.mark.parametrize("make_sampler", [lambda: kf.HMC(0.3, 5), lambda: kf.ChEES(0.3)], ids=["hmc", "chees"])
@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_hmc_through_the_fused_trajectory_is_exact(make_sampler, compile, monkeypatch):
    """Moments of a known Gaussian posterior (mean -W^T a, unit variances) from 64 chains, whose trajectories are
    one mlp_leapfrog call each: the means within 5 standard errors at an autocorrelation time of 4 (measured: ESS
    0.66-0.87 per draw, errors 0.1-0.8 of these standard errors over 3 seeds), the variances within 0.06 (measured
    0.006-0.022)."""
    potential, mean = _gaussian_latent_potential()
    calls = []
    kernel = fused.LinearStack.leapfrog_kernel
    monkeypatch.setattr(fused.LinearStack, "leapfrog_kernel", lambda *args: calls.append(1) or kernel(*args))

    def one_step(*args):
        raise AssertionError("a leapfrog step taken alone")  # what compiled iterations would do without the op
    monkeypatch.setattr(leapfrog.reference, "leapfrog_kick_drift", one_step)
    torch.manual_seed(0)
    result = make_sampler().run(potential, torch.randn(64, 3), 400, warmup=300, thin=1, compile=compile)
    assert compile or len(calls) == 300 + 400  # one call per iteration (a compiled graph does not replay appends)
    draws = result.trace.double().reshape(-1, 3)
    standard_error = (4.0 / draws.shape[0]) ** 0.5
    assert (draws.mean(0) - mean).abs().max() < 5 * standard_error
    assert (draws.var(0) - 1.0).abs().max() < 0.06
