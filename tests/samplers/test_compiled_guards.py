"""What the samplers' compiled graphs still guard (kale_fast.samplers.compiled.keep_guards) after the guards that
protect nothing are dropped, one compiled function per shape of chains (compile_function), and the eager path's
value-and-gradient resolved once per run (unit_value_and_grad_function)."""
import pytest
import torch

import kale_fast as kf
from kale_fast.samplers import compiled
from kale_fast.samplers.metric import Metric, unit_value_and_grad, unit_value_and_grad_function

pytestmark = pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")  # short unadapted runs

SCALE = 1.0  # a module global of a potential's own code: its guard is kept


def _scaled_square(z):
    return 0.5 * SCALE * (z * z).sum(1)


class _Quadratic:
    """U = 0.5 * precision * |z|^2, the precision an instance attribute (a guarded value of the graph)."""

    def __init__(self, precision: float):
        self.precision = precision

    def __call__(self, z):
        return 0.5 * self.precision * (z * z).sum(1)


def test_a_compiled_function_follows_dtype_shape_and_values_it_was_not_traced_with():
    """The guards kept are enough: a changed dtype or shape of the chains, a changed attribute of the potential
    and a changed global of the potential's module each give the eager function's result, never a graph traced
    for other inputs."""
    global SCALE
    potential = _Quadratic(1.0)
    function = compiled.compiled_value_and_grad(potential)  # the package's compiled value and gradient
    for dtype, shape in ((torch.float32, (2, 3)), (torch.float64, (2, 3)), (torch.float32, (5, 3)),
                         (torch.float64, (1, 4))):
        y, metric = torch.randn(shape, dtype=dtype), Metric(torch.rand(shape[1], dtype=dtype) + 0.5)
        for precision in (1.0, 3.0):
            potential.precision = precision
            value, grad = function(y, metric)
            expected_value, expected_grad = unit_value_and_grad(potential, y, metric)
            assert value.dtype == dtype and grad.shape == shape
            torch.testing.assert_close(value, expected_value)
            torch.testing.assert_close(grad, expected_grad)

    function = compiled.compiled_value_and_grad(_scaled_square)
    y = torch.randn(3, 2, dtype=torch.float64)
    try:
        for SCALE in (1.0, 2.0):
            value, grad = function(y, Metric())
            torch.testing.assert_close(value, 0.5 * SCALE * (y * y).sum(1))
            torch.testing.assert_close(grad, SCALE * y)
    finally:
        SCALE = 1.0


def test_whole_iterations_follow_a_changed_float_of_the_potential_and_of_the_sampler():
    """The CPU's while_loop keeps Python floats constants (compiled._specialized_floats): a changed float, which
    TorchDynamo would otherwise turn symbolic on the second compile (and inductor's while_loop lowering fails on a
    symbolic float read in the body), compiles anew and is followed: the potential's precision here, HMC's jitter
    below (two samplers of one configuration but the jitter share the loop's code name)."""
    potential = _Quadratic(1.0)
    z0 = torch.randn(4, 2, dtype=torch.float64)
    for precision in (1.0, 4.0):
        potential.precision = precision
        result = kf.MALA(0.2).run(potential, z0, 5, compile=True, thin=1)
        torch.testing.assert_close(result.potential_trace, 0.5 * precision * (result.trace ** 2).sum(2))
    for jitter in (0.5, 0.2):
        kf.HMC(0.3, 2, jitter=jitter).run(potential, z0, 3, compile=True)


def test_keep_guards_drops_only_the_package_and_builtin_globals():
    class Entry:
        def __init__(self, name, guard_type="ID_MATCH", is_global=True):
            self.name, self.guard_type, self.is_global = name, guard_type, is_global

    dropped = [Entry("G['math']"), Entry("G['__import_kale_fast_dot_samplers_dot_checks'].DIVERGENCE_THRESHOLD",
                                          "CONSTANT_MATCH"),
               Entry("G['__import_torch_dot_nn_dot_functional']"), Entry("G['__builtins_dict___0']['zip']"),
               Entry("dict(type(template).__dict__)['_make'].__func__", "CLOSURE_MATCH", is_global=False)]
    kept = [Entry("G['__import_mymodel'].SCALE", "CONSTANT_MATCH"), Entry("G['math'].x", "TENSOR_MATCH"),
            Entry("chains.z", "TENSOR_MATCH", is_global=False), Entry("k", "CONSTANT_MATCH", is_global=False),
            Entry("reference().temperature", "CONSTANT_MATCH", is_global=False),
            Entry("", "GLOBAL_STATE", is_global=False)]
    assert compiled.keep_guards(dropped + kept) == [False] * len(dropped) + [True] * len(kept)


class _ReturnsItsInput:
    """U = |z|^2 / 2 with the closed-form gradient z returned as z itself."""

    def __call__(self, z):
        return 0.5 * (z * z).sum(1)

    def value_and_grad(self, z):
        return self(z), z


class _ReturnsACopy(_ReturnsItsInput):
    def value_and_grad(self, z):
        return self(z), z.clone()


def test_a_gradient_that_is_the_input_itself_is_copied():
    """The fused leapfrog updates positions in place: a potential returning z as its gradient gets a copy, on the
    run's fast path and through value_and_grad, and the chains are those of a potential returning a copy."""
    z = torch.randn(3, 4, dtype=torch.float64)
    for value_and_grad in (unit_value_and_grad_function(_ReturnsItsInput(), Metric()),
                           lambda y: unit_value_and_grad(_ReturnsItsInput(), y, Metric())):
        _, grad = value_and_grad(z)
        assert grad.data_ptr() != z.data_ptr()
        torch.testing.assert_close(grad, z)
    runs = [kf.HMC(0.3, 5, metric="identity").run(potential, z, 6, generator=torch.Generator().manual_seed(2))
            for potential in (_ReturnsItsInput(), _ReturnsACopy())]
    assert torch.equal(runs[0].z, runs[1].z)


def test_counts_summed_in_batches_match_the_trace():
    """Acceptance counts are summed every _Tally.FLUSH_ROWS rows and at the end: over a run longer than one batch,
    eager and compiled, HMC's accepted transitions are the iterations that moved a chain."""
    z0 = torch.randn(3, 2, dtype=torch.float64)
    n = 70
    for compile in (False, True):
        result = kf.HMC(1.5, 3, metric="identity").run(_ReturnsACopy(), z0, n, thin=1, compile=compile,
                                                       generator=torch.Generator().manual_seed(3))
        path = torch.cat([z0[:, None], result.trace], dim=1)
        moved = (path[:, 1:] != path[:, :-1]).any(dim=2).sum(dim=1)
        assert 0 < int(moved.min()) and int(moved.max()) < n  # both decisions occur
        torch.testing.assert_close(result.accept_rate * n, moved.to(result.accept_rate.dtype))
