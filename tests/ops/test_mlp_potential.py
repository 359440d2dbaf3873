"""mlp_potential (kale_fast.ops.mlp_potential) against its reference twin and torch.autograd: every activation, batch
sizes on both sides of the kernel's switch from row loops to tiled products (8 rows), of its 64-row blocks and of a
parallel task (128 rows), odd widths, the junction of two Linears, temperatures and prior precisions;
LatentPotential's use of it and its fallbacks; the argument checks; no silent autograd; one opaque node under
torch.compile."""
import pytest
import torch
from torch import nn

import kale_fast as kf
from kale_fast.ops import mlp_potential as fused
from kale_fast.reference import mlp_potential as reference
from kale_fast.samplers import LatentPotential, value_and_grad

pytestmark = [pytest.mark.skipif(fused._KERNEL is None, reason="kale_fast._C without mlp_potential"),
              pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")]  # unadapted step sizes

ACTIVATIONS = ["identity", "silu", "relu", ("leaky_relu", 0.1), "tanh"]
BATCHES = [1, 2, 3, 8, 9, 64, 65, 129, 1000]


def _network(widths, activations, dtype, seed, bias=True):
    """Random weights (scale ~ 1.5 / sqrt(fan_in), so activations reach their nonlinear ranges) in fp64, cast."""
    gen = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        weights.append((1.5 * torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) / n_in**0.5).to(dtype))
        with_bias = bias if isinstance(bias, bool) else bias[i]
        biases.append(torch.randn(n_out, generator=gen, dtype=torch.float64).to(dtype) if with_bias else None)
    return weights, biases, list(activations)


def _reference64(z, weights, biases, activations, temperature, prior_precision):
    """The reference in fp64 on fp64 copies: the oracle of both dtypes."""
    stack = fused.prepare([w.double() for w in weights], [None if b is None else b.double() for b in biases],
                          activations)
    return reference.mlp_potential(z.double(), stack.weights, stack.biases, stack.names, stack.parameters,
                                   temperature, prior_precision)


def _assert_close_to(actual, expected):
    """fp64: to rounding. fp32 (calibrated: measured errors are 1e-7 to 1e-6 of the largest entry on these
    networks): 2e-5 of the largest entry of the expected tensor, per entry."""
    assert actual.dtype in (torch.float32, torch.float64) and actual.shape == expected.shape
    scale = float(expected.abs().max()) + 1.0
    tol = 2e-5 if actual.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("batch", BATCHES)
def test_kernel_matches_the_reference(dtype, activation, batch):
    """Odd widths, the activation under test between layers, an identity junction of two Linears (the base's last
    layer into the energy's first), a layer without bias, temperature != 1 and prior precision != 1."""
    widths = [5, 7, 13, 11, 1]
    activations = [activation, "identity", activation, "identity"]
    weights, biases, activations = _network(widths, activations, dtype, seed=batch, bias=[True, True, False, True])
    z = torch.randn(batch, 5, generator=torch.Generator().manual_seed(batch + 1), dtype=torch.float64).to(dtype)
    value, grad = fused.mlp_potential(z, weights, biases, activations, temperature=2.5, prior_precision=0.7)
    expected_value, expected_grad = _reference64(z, weights, biases, activations, 2.5, 0.7)
    assert value.dtype == dtype and grad.dtype == dtype and grad.is_contiguous()
    _assert_close_to(value, expected_value)
    _assert_close_to(grad, expected_grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 64])
def test_single_layer_and_activation_on_the_last_layer(dtype, batch):
    weights, biases, activations = _network([4, 1], ["tanh"], dtype, seed=3)
    z = torch.randn(batch, 4, dtype=dtype)
    value, grad = fused.mlp_potential(z, weights, biases, activations, temperature=0.3, prior_precision=0.0)
    expected_value, expected_grad = _reference64(z, weights, biases, activations, 0.3, 0.0)
    _assert_close_to(value, expected_value)
    _assert_close_to(grad, expected_grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 8, 9])
def test_wide_layers_through_every_register_block(dtype, batch):
    """Widths that take the row loops' every path in both dtypes: whole groups of outputs with a tail of inputs,
    outputs past the last group, and the backward's blocks of 8, 4, 2 and 1 vectors with a scalar tail."""
    weights, biases, activations = _network([123, 70, 37, 100, 1], ["silu", "tanh", "identity", "silu"], dtype,
                                            seed=11, bias=[True, False, True, True])
    z = torch.randn(batch, 123, generator=torch.Generator().manual_seed(12), dtype=torch.float64).to(dtype)
    value, grad = fused.mlp_potential(z, weights, biases, activations, temperature=1.3, prior_precision=0.4)
    expected_value, expected_grad = _reference64(z, weights, biases, activations, 1.3, 0.4)
    _assert_close_to(value, expected_value)
    _assert_close_to(grad, expected_grad)


def test_row_blocks_in_parallel_agree_with_one_thread():
    weights, biases, activations = _network([16, 64, 64, 64, 1], ["silu", "identity", "silu", "identity"],
                                            torch.float64, seed=5)
    z = torch.randn(1000, 16, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused.mlp_potential(z, weights, biases, activations)
        torch.set_num_threads(4)
        four = fused.mlp_potential(z, weights, biases, activations)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_the_reference_backend_runs_the_reference():
    weights, biases, activations = _network([3, 8, 1], ["silu", "identity"], torch.float64, seed=6)
    z = torch.randn(5, 3, dtype=torch.float64)
    with kf.backend("reference"):
        value, grad = fused.mlp_potential(z, weights, biases, activations)
    expected = reference.mlp_potential(z, weights, biases, activations, [0.0, 0.0], 1.0, 1.0)
    assert torch.equal(value, expected[0]) and torch.equal(grad, expected[1])


# --- LatentPotential ---------------------------------------------------------------------------------------------

def _autograd_value_and_grad(potential, z):
    with kf.backend("reference"):  # the modules' own path: torch.autograd through the networks
        assert potential._linear_stack(z) is None
        return value_and_grad(potential.__call__, z)


NETWORKS = {
    "mlp-silu": lambda: (kf.models.MLP(6, 9, (17,)), kf.models.MLP(9, 1, (13, 5))),
    "sequential-leaky-tanh": lambda: (nn.Sequential(nn.Linear(6, 10), nn.LeakyReLU(0.2), nn.Linear(10, 7), nn.Tanh()),
                                      nn.Sequential(nn.Linear(7, 12), nn.ReLU(), nn.Linear(12, 1))),
    "bare-linears": lambda: (nn.Linear(6, 4, bias=False), nn.Linear(4, 1)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("batch", [1, 9, 64, 300])
def test_latent_potential_runs_the_op_and_matches_autograd(dtype, name, batch):
    torch.manual_seed(batch)
    base, energy = (net.to(dtype) for net in NETWORKS[name]())
    potential = LatentPotential(base, energy, temperature=1.7)
    z = torch.randn(batch, 6, dtype=dtype)
    assert potential._linear_stack(z) is not None  # the op's path is taken
    value, grad = potential.value_and_grad(z)
    expected_value, expected_grad = _autograd_value_and_grad(potential, z)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, expected_value, **tol)
    torch.testing.assert_close(grad, expected_grad, **tol)
    assert not value.requires_grad and not grad.requires_grad  # the parameters require grad: none is built


def test_latent_potential_keeps_its_own_path_where_the_op_does_not_apply():
    torch.manual_seed(0)
    base, energy = kf.models.MLP(3, 4, (8,)), kf.models.MLP(4, 1, (8,))
    z = torch.randn(5, 3)
    assert LatentPotential(base, energy)._linear_stack(z) is not None
    assert LatentPotential(base, energy, autocast=torch.bfloat16)._linear_stack(z) is None
    assert LatentPotential(base, energy)._linear_stack(z.half()) is None
    assert LatentPotential(base, energy)._linear_stack(z.double()) is None  # networks in fp32
    assert LatentPotential(base, nn.Sequential(energy, nn.Softplus()))._linear_stack(z) is None
    assert LatentPotential(base, nn.Sequential(nn.SiLU(), energy))._linear_stack(z) is not None  # after base's Linear
    assert LatentPotential(nn.Sequential(nn.SiLU(), base), energy)._linear_stack(z) is None  # before any Linear
    with kf.backend("reference"):
        assert LatentPotential(base, energy)._linear_stack(z) is None
    potential = LatentPotential(base, kf.models.with_spectral_norm(kf.models.MLP(4, 1, (8,))).eval())
    assert potential._linear_stack(z) is None
    torch.testing.assert_close(potential.value_and_grad(z)[1], value_and_grad(potential.__call__, z)[1])
    # A hook registered after a first call is seen at the next one (the kept stack is not trusted blindly).
    potential = LatentPotential(base, energy)
    assert potential._linear_stack(z) is not None
    handle = energy.net[0].register_forward_hook(lambda module, args, out: out * 2)
    try:
        assert potential._linear_stack(z) is None
        torch.testing.assert_close(potential.value_and_grad(z)[0], potential(z))
    finally:
        handle.remove()


def test_latent_potential_follows_a_dtype_change_of_its_networks():
    base, energy = kf.models.MLP(3, 4, (8,)), kf.models.MLP(4, 1, (8,))
    potential = LatentPotential(base, energy)
    assert potential._linear_stack(torch.randn(2, 3)).dtype == torch.float32
    base.double(), energy.double()
    z = torch.randn(2, 3, dtype=torch.float64)
    assert potential._linear_stack(z).dtype == torch.float64
    torch.testing.assert_close(potential.value_and_grad(z)[1], _autograd_value_and_grad(potential, z)[1])


def _assert_follows_the_modules(potential, z):
    """value_and_grad (twice: the second call takes the kept stack) equals autograd through the modules as they
    are now."""
    expected_value, expected_grad = _autograd_value_and_grad(potential, z)
    for _ in range(2):
        value, grad = potential.value_and_grad(z)
        torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", [
    "in-place weight update", "replaced parameter", "replaced submodule", "replaced MLP body", "forward hook",
    "forward pre-hook", "global forward hook", "instance forward", "parametrization", "leaky slope", "dtype",
])
def test_latent_potential_kept_stack_sees_every_change_of_its_modules(change):
    """The stack kept between calls (LatentPotential._linear_stack, its StackWatch) never computes with what the
    modules no longer hold: after each change, made between two calls, the next call computes what autograd
    through the changed modules computes (through the op where it still applies, else through the modules)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 4))
    energy = kf.models.MLP(4, 1, (8,))
    potential = LatentPotential(base, energy)
    z = torch.randn(5, 3)
    kept = potential._linear_stack(z)
    assert kept is not None and potential._linear_stack(z) is kept  # kept: the second call does not walk
    _assert_follows_the_modules(potential, z)
    handles = []
    if change == "in-place weight update":
        with torch.no_grad():
            base[0].weight.mul_(-1.5)  # an optimizer's step: same Parameter, new values
    elif change == "replaced parameter":
        base[2].weight = nn.Parameter(torch.randn(4, 8))
    elif change == "replaced submodule":
        base[0] = nn.Linear(3, 8)
    elif change == "replaced MLP body":
        energy.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))
    elif change == "forward hook":
        handles.append(base[2].register_forward_hook(lambda module, args, out: out * 2))
    elif change == "forward pre-hook":
        handles.append(energy.net[0].register_forward_pre_hook(lambda module, args: (args[0] + 1,)))
    elif change == "global forward hook":
        handles.append(nn.modules.module.register_module_forward_hook(lambda module, args, out: out))
    elif change == "instance forward":
        base[1].forward = lambda x: torch.tanh(x)
    elif change == "parametrization":
        torch.nn.utils.parametrize.register_parametrization(base[0], "weight", _Doubled())
    elif change == "leaky slope":
        base[1].negative_slope = 0.5
    elif change == "dtype":
        base.double(), energy.double()
        z = z.double()
    try:
        _assert_follows_the_modules(potential, z)
        stays_on_the_op = change in ("in-place weight update", "replaced parameter", "replaced submodule",
                                     "replaced MLP body", "leaky slope", "dtype")
        assert (potential._linear_stack(z) is not None) == stays_on_the_op
        if change == "in-place weight update":
            assert potential._linear_stack(z) is kept  # nothing to re-read: the op reads the parameters
    finally:
        for handle in handles:
            handle.remove()


def test_latent_potential_follows_its_networks_to_another_device_and_back():
    """Moved to the meta device, the networks are not taken for the op on a CPU z (no kept CPU stack is used); moved
    back with new values, the op reads the new CPU parameters."""
    torch.manual_seed(0)
    base, energy = kf.models.MLP(3, 4, (8,)), kf.models.MLP(4, 1, (8,))
    potential = LatentPotential(base, energy)
    z = torch.randn(2, 3)
    assert potential._linear_stack(z) is not None
    base.to("meta"), energy.to("meta")
    assert potential._linear_stack(z) is None
    base.to_empty(device="cpu"), energy.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in (*base.parameters(), *energy.parameters()):
            parameter.copy_(torch.randn_like(parameter))
    assert potential._linear_stack(z) is not None
    _assert_follows_the_modules(potential, z)


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


# --- argument checks, autograd -------------------------------------------------------------------------------------

def _good():
    weights, biases, activations = _network([4, 6, 1], ["silu", "identity"], torch.float32, seed=0)
    return torch.randn(3, 4), weights, biases, activations


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a.update(weights=[a["weights"][0], torch.randn(1, 5)]), ValueError, r"weights\[1\] takes 5 inputs"),
    (lambda a: a.update(weights=[a["weights"][0], torch.randn(2, 6)], biases=[a["biases"][0], None]), ValueError,
     "last layer must have width 1"),
    (lambda a: a.update(z=torch.randn(3, 5)), ValueError, r"z must be a contiguous \(B, 4\)"),
    (lambda a: a.update(z=torch.randn(4, 3).t()), ValueError, "z must be a contiguous"),
    (lambda a: a.update(z=torch.randn(3, 4, dtype=torch.float64)), TypeError, "z and weights must have one dtype"),
    (lambda a: a.update(z=torch.randn(3, 4, device="meta")), ValueError, "z and weights must be on one device"),
    (lambda a: a.update(weights=[a["weights"][0], a["weights"][1].double()]), TypeError, r"weights\[1\] and weights"),
    (lambda a: a.update(biases=[a["biases"][0].double(), None]), TypeError, r"biases\[0\] and weights\[0\]"),
    (lambda a: a.update(biases=[torch.randn(5), None]), ValueError, r"biases\[0\] must be None or a contiguous \(6,\)"),
    (lambda a: a.update(activations=["swish", "identity"]), ValueError, r"activations\[0\] must be one of"),
    (lambda a: a.update(activations=["leaky_relu", "identity"]), ValueError, r"activations\[0\] must be one of"),
    (lambda a: a.update(activations=[("leaky_relu", "0.1"), "identity"]), TypeError, r"activations\[0\]: the neg"),
    (lambda a: a.update(activations=[nn.SiLU(), "identity"]), TypeError, r"activations\[0\] must be a str"),
    (lambda a: a.update(activations=["silu"]), ValueError, "one entry per layer"),
    (lambda a: a.update(weights=[]), ValueError, "at least one layer"),
    (lambda a: a.update(z=torch.randint(0, 3, (3, 4))), TypeError, "z must be a floating-point tensor"),
    (lambda a: a.update(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
    (lambda a: a.update(prior_precision=-1.0), ValueError, "prior_precision must be a finite number >= 0"),
    (lambda a: a.update(temperature="1"), TypeError, "temperature must be a number"),
])
def test_bad_arguments_are_named(change, error, match):
    z, weights, biases, activations = _good()
    arguments = dict(z=z, weights=weights, biases=biases, activations=activations, temperature=1.0,
                     prior_precision=1.0)
    change(arguments)
    with pytest.raises(error, match=match):
        fused.mlp_potential(arguments.pop("z"), arguments.pop("weights"), arguments.pop("biases"),
                            arguments.pop("activations"), **arguments)


def test_a_call_that_would_need_autograd_is_an_error():
    z, weights, biases, activations = _good()
    weights[1].requires_grad_(True)
    with pytest.raises(ValueError, match=r"weights\[1\] requires grad, but mlp_potential has no autograd"):
        fused.mlp_potential(z, weights, biases, activations)
    with pytest.raises(ValueError, match="z requires grad"):
        fused.mlp_potential(z.requires_grad_(True), weights, biases, activations)
    with pytest.raises(RuntimeError, match="mlp_potential has no autograd"):  # the op itself, called directly
        torch.ops.kale_fast.mlp_potential(z, weights, biases, [1, 0], [0.0, 0.0], 1.0, 1.0)
    with torch.no_grad():
        value, grad = fused.mlp_potential(z, weights, biases, activations)
        direct = torch.ops.kale_fast.mlp_potential(z, weights, biases, [1, 0], [0.0, 0.0], 1.0, 1.0)
    assert torch.equal(value, direct[0]) and torch.equal(grad, direct[1])


# --- torch.compile ---------------------------------------------------------------------------------------------------

def test_one_opaque_op_in_a_compiled_graph():
    """The compiled function's graph calls kale_fast::mlp_potential once and nothing of the networks' arithmetic,
    and computes what the eager op computes."""
    from torch._dynamo.testing import CompileCounterWithBackend

    weights, biases, activations = _network([4, 6, 6, 1], ["silu", "identity", "identity"], torch.float64, seed=1)
    stack = fused.prepare(weights, biases, activations)
    counter = CompileCounterWithBackend("inductor")

    @torch.compile(backend=counter, fullgraph=True)
    def step(z):
        value, grad = stack.call_unchecked(z, 1.5, 1.0)
        return z - 0.1 * grad, value

    z = torch.randn(7, 4, dtype=torch.float64)
    with torch.no_grad():
        out, value = step(z)
        expected_value, expected_grad = stack(z, 1.5, 1.0)
    assert counter.frame_count == 1
    targets = [node.target for node in counter.graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.kale_fast.mlp_potential.default) == 1
    assert not any("linear" in str(t) or "mm" in str(t) or "silu" in str(t) for t in targets)
    torch.testing.assert_close(out, z - 0.1 * expected_grad, rtol=1e-14, atol=1e-14)
    assert torch.equal(value, expected_value)


@pytest.mark.slow
def test_compiled_hmc_on_an_mlp_potential_compiles_once_and_repeats_under_a_seed(monkeypatch):
    """The sampler's compiled paths trace LatentPotential into the op (counted while tracing); a second run of the
    same lengths compiles nothing more, and repeats the first bit for bit under a seed."""
    from torch._dynamo.utils import counters

    traced = []
    call = fused.LinearStack.call_kernel
    monkeypatch.setattr(fused.LinearStack, "call_kernel", lambda *args: traced.append(1) or call(*args))
    torch.manual_seed(0)
    potential = LatentPotential(kf.models.MLP(4, 6, (16,)), kf.models.MLP(6, 1, (16,)))
    z0 = torch.randn(8, 4)
    before = counters["stats"]["unique_graphs"]
    first = kf.HMC(0.05, 3).run(potential, z0, 12, compile=True, generator=torch.Generator().manual_seed(2))
    compiled = counters["stats"]["unique_graphs"] - before
    assert traced and 1 <= compiled <= 2  # the starting value-and-gradient, the leapfrog chunk
    again = kf.HMC(0.05, 3).run(potential, z0, 12, compile=True, generator=torch.Generator().manual_seed(2))
    assert counters["stats"]["unique_graphs"] - before == compiled
    runs = [first, again]
    assert torch.equal(runs[0].z, runs[1].z)
