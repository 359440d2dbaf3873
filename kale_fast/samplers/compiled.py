"""The compiled path of the samplers (`run(..., compile=True)`): whole MCMC iterations per compiled call.

Where the time goes at small B is per call: a compiled call costs 10-30 us of its own on the CPU (guards,
wrapper, output allocations) and each eager op about 5 us, against microseconds of arithmetic for a small
potential. So the samplers whose iterations all have one shape (ULA, MALA, kinetic Langevin, HMC with at most
MAX_UNROLLED_GRADIENTS leapfrog steps) run many iterations per call: proposal, the potential's value and
gradient, the Metropolis test and the dual-averaging update of the step size, all in one graph that the compiler
fuses (the updates are tensor algebra, kale_fast.reference.integrators; the fused kernels are opaque ops that
would cost a dispatcher crossing each). Where `loops` finds it faster (the CPU, one chain of few coordinates
or one iteration of many gradients), the iterations are a torch while_loop whose body is one iteration, which
inductor's C++ wrapper runs as a C++ loop: up to loop_rows iterations per call, any count through one graph, each
iteration computed by the same code whatever the count. Elsewhere (GPUs, CUDA graphs, ULA/MALA/kinetic Langevin
from B = 16 up) k iterations are unrolled into the graph (k <= MAX_CHUNK_ITERATIONS), and calls start at
multiples of k in the chain's absolute iteration count. The random numbers are drawn before the call from the run's
generator as uniforms, one row per iteration whatever the count (uniform_rows), and turned into the sampler's
draws (Sampler.draw_kinds) inside the graph. So a run is repeatable bit for bit under a seed, and a run split
anywhere and resumed from its state repeats the unbroken run bit for bit (tested on this CPU's inductor code).
Step sizes, dual-averaging states (its count a 0-d tensor) and the metric are arguments, never constants:
warm-up changes them without recompiling. A potential with a fused trajectory (LatentPotential's fused_leapfrog,
kale_fast.samplers.metric.UnitPotential.leapfrog) runs each iteration's leapfrog steps as one op. ChEES varies its
leapfrog count from iteration to iteration: on the CPU without a compile mode its sampling passes the counts
(decided on the host) as a tensor, each iteration's leapfrog steps that op given the count, or else a while_loop
over the count (one graph for any counts), nested in the iterations' while_loop where `loops` chooses it (B x L <=
64), else k unrolled iterations per call. Its warm-up, whose trajectory-length adaptation
runs on the host, and its runs elsewhere (a while_loop tests its condition on the host: on a GPU a synchronisation
per leapfrog step, and CUDA graphs replay fixed kernels) run eager iterations around compiled chunks of leapfrog
steps (kale_fast.samplers.leapfrog.CompiledLeapfrog), or around the potential's fused trajectory where it has one.
"""
import functools
import math
import types
import weakref
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from kale_fast.samplers.core import StepParams, Tuning
from kale_fast.samplers.metric import Metric, UnitPotential, unit_value_and_grad

# Gradient evaluations unrolled into one compiled call, and iterations per call at most: compile time grows with
# the unrolled length faster than the per-call overhead it saves shrinks. Measured on the GEBM latent potential at
# B = 1 (1 thread, a 2-core machine at load 5-8, interleaved): 32 / 16 (HMC-10: 3 iterations per call) cut the
# time per gradient 1.76x (HMC-10) and 1.25x (MALA), 40 / 32 cut it 1.65x and 2.0x, but a cold compile of one
# graph took 146-255 s against 35-45 s (3.5x-6x): kept at 16 / 8. At B = 1 a call's own cost (TorchDynamo's
# guards and wrappers, the run loop's Python, the C++ wrapper's allocations) is most of the time: the fused
# kernels were 1% of a profile of compiled HMC-10. A torch._higher_order_ops.while_loop over iterations compiles
# on this CPU with torch.func's gradient in its body (15 s for any count; per gradient as fast as 8 unrolled
# iterations): the way to long chunks at a flat compile time (the CPU's path below).
MAX_UNROLLED_GRADIENTS, MAX_CHUNK_ITERATIONS = 16, 8

# Iterations per call of the CPU's while_loop (where `loops` chooses it): at most MAX_LOOP_ITERATIONS, and at most
# LOOP_REPORT_ELEMENTS positions (rows x B x L) in the call's report, which each iteration writes functionally
# (64 rows of HMC-10 at B = 1024 were 1.24x slower than 1 row, load 4-7). Each count uses the same graph: compile
# time is one iteration's.
MAX_LOOP_ITERATIONS, LOOP_REPORT_ELEMENTS, LOOP_ALWAYS_ELEMENTS = 64, 2 ** 14, 64


def loop_rows(shape: Tuple[int, int]) -> int:
    """Iterations per while_loop call for chains of shape (B, L)."""
    return max(1, min(MAX_LOOP_ITERATIONS, LOOP_REPORT_ELEMENTS // (shape[0] * shape[1])))


@functools.lru_cache(maxsize=1)
def _specialized_floats():
    """Python floats that change between compiles of one code (a sampler's jitter, a potential's temperature)
    become symbolic under TorchDynamo's default (specialize_float=False), and a symbolic float read inside a
    while_loop body fails in inductor's lowering ("unbacked_bindings", torch 2.13): the while_loop's calls keep
    floats constants (a changed value compiles anew). Made once, at first use (importing torch._dynamo costs
    about 2 s, which `import kale_fast` must not), and reused: entering the patch costs about 14 us, once per call
    of up to 64 iterations."""
    import torch._dynamo

    return torch._dynamo.config.patch(specialize_float=True)


def compile_function(fn: Callable, name: str, mode: Optional[str] = None, specialize_floats: bool = False
                     ) -> Callable:
    """torch.compile of fn under a code object of its own per shape of its chains (the first argument, a tensor
    or a tuple of tensors whose first is the chains' positions), shapes static. TorchDynamo keeps one cache (of at
    most 8 entries) per code object: without this, every potential's functions and every chunk length would
    share one cache and overflow it. Static shapes: a new number of chains compiles anew rather than turning
    every graph dynamic (slower code for the usual single B of a run). One code object per shape makes them
    static under dynamic=None (a code object that never sees a second shape is never made dynamic); dynamic=False
    did the same but patched TorchDynamo's config around every call, 20-38 us of a 140-200 us call of HMC-10's
    iteration at B = 1 (1 thread, load 2.5). mode: torch.compile's (e.g. "reduce-overhead": CUDA graphs); without
    one, inductor's C++ wrapper (cpp_wrapper) calls the kernels in place of its Python wrapper, bit for bit the
    same results: on the GEBM latent potential at B = 1 (1 thread, a 2-core machine at load 7) a 4-step leapfrog
    chunk took 1.38x less time per call, and per gradient inside a running sampler MALA 1.86x, HMC 1.52x and
    ChEES 1.21x less; a cold compile of that chunk took 2.7x longer (32 s against 12 s). With it,
    INDUCTOR_OPTIONS' matrix-product decomposition (see there) and keep_guards. specialize_floats: calls run
    with Python floats as constants (_specialized_floats)."""
    compiled: Dict[Tuple[int, ...], Callable] = {}

    def call(chains, *args):
        shape = tuple((chains if isinstance(chains, Tensor) else chains[0]).shape)
        function = compiled.get(shape)
        if function is None:
            code = fn.__code__.replace(co_name=name)
            function = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
            function = compiled[shape] = (
                torch.compile(function, fullgraph=True, mode=mode) if mode is not None else
                torch.compile(function, fullgraph=True, options={**INDUCTOR_OPTIONS, "guard_filter_fn": keep_guards}))
        if specialize_floats:
            with _specialized_floats():
                return function(chains, *args)
        return function(chains, *args)
    return call


def keep_guards(guards) -> List[bool]:
    """TorchDynamo's guard_filter_fn for the samplers' graphs: which guards a call evaluates. Evaluating all of
    them took 20-40 us of a 140-200 us compiled iteration of HMC-10 at B = 1; about a third of that is guards on
    what no run changes: kale_fast's and torch's module globals and functions (the package's own code, its
    constants such as checks.DIVERGENCE_THRESHOLD: patching them after a compile is not supported), Python's
    builtins and the namedtuple machinery of the step parameters. Kept: every tensor's guard (dtype, shape,
    device, strides, requires_grad: a changed one compiles anew), the ambient state (grad mode, autocast,
    default device), the arguments' values and types, the potential's and the sampler's attributes, and the
    globals of any other module (a potential's own code)."""
    return [not _protects_nothing(guard) for guard in guards]


def _protects_nothing(guard) -> bool:
    if guard.guard_type == "TENSOR_MATCH":
        return False
    if guard.is_global:  # names relative to this module's globals; other modules' as G['__import_<module>']
        return not guard.name.startswith("G['__import_") or guard.name.startswith(_PACKAGE_GLOBALS)
    return guard.name.startswith("dict(type(") and ("['_make']" in guard.name or "['_replace']" in guard.name)


_PACKAGE_GLOBALS = ("G['__import_kale_fast", "G['__import_torch")


# The compiled graphs' inductor options. "cpp_wrapper": compile_function. "decompose_mm_pass": inductor's rewrite of
# a matrix product into a broadcast multiply and sum that it fuses into its own C++ loops, with its default
# thresholds: on the CPU, products of one row (B = 1: each layer's forward and input-gradient product is a
# matrix-vector product) of matrices up to 2048 wide; on GPUs, only products of >= 10240 rows by matrices under 32
# wide. Measured on the GEBM latent potential (benchmarks/peers/targets.py: 16 -> 64 -> 64, 64 -> 64 -> 1, SiLU),
# 1 thread, interleaved in one process, a 2-core machine at load 4-8: at B = 1 every compiled sampler took less
# time per gradient, HMC-10 1.26x-1.29x, ULA 1.33x, ChEES 1.12x, MALA 1.09x-1.14x, kinetic 1.07x (the 7 extern
# GEMV calls per gradient, each a dispatcher crossing with its output allocation, become inductor's loops; cold
# compiles no slower), results differing from the extern GEMVs' by fp32 rounding (2e-7 to 2e-6 after 64
# iterations). Raising the threshold (a module global of
# torch/_inductor/fx_passes/decompose_mem_bound_mm.py, read at import) to the batch lost: B = 16, HMC-10 0.91x;
# B = 64, HMC-10 0.66x, MALA 0.78x: past one row, MKL's GEMMs win. max-autotune's C++ GEMM template
# ("max_autotune_gemm_backends": "CPP,ATEN") never applies here: it needs the weights as constants (freezing), and
# a potential's networks are inputs that may change between runs (training); inductor selected ATen's GEMM, bit for
# bit the same results, at B = 64 and 1024.
INDUCTOR_OPTIONS = {"cpp_wrapper": True, "post_grad_fusion_options": {"decompose_mm_pass": {}}}


_UNIT_SCALES: Dict[Tuple[int, torch.dtype, torch.device], Tensor] = {}


def metric_arguments(metric: Metric, like: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(scale, cholesky) for a compiled call on chains like `like` (B, L): the identity as a scale of ones (exact:
    multiplying by 1 changes no bit), so that the identity metric of a first warm-up window and the diagonal one
    adapted after it share one compiled graph."""
    if metric.scale is None and metric.cholesky is None:
        key = (like.shape[1], like.dtype, like.device)
        if key not in _UNIT_SCALES:
            _UNIT_SCALES[key] = torch.ones(like.shape[1], dtype=like.dtype, device=like.device)
        return _UNIT_SCALES[key], None
    return metric.scale, metric.cholesky


def potential_reference(potential) -> Callable[[], Callable]:
    """() -> potential: a weak reference where the potential allows one. The compiled functions call it inside
    their traced bodies (TorchDynamo follows weak references), so the cache of compiled paths, which holds them,
    never keeps a dropped potential (and its networks) alive."""
    try:
        return weakref.ref(potential)
    except TypeError:  # a bound method, a builtin: not cached (compiled_paths), so a strong reference is fine
        return lambda: potential


def compiled_value_and_grad(potential) -> Callable[[Tensor, Metric], Tuple[Tensor, Tensor]]:
    """(y, metric) -> (U_y(y), grad U_y(y)), compiled."""
    reference = potential_reference(potential)

    def value_and_grad(y: Tensor, scale: Optional[Tensor], cholesky: Optional[Tensor]):
        return unit_value_and_grad(reference(), y, Metric(scale, cholesky))
    compiled = compile_function(value_and_grad, "unit_value_and_grad")
    return lambda y, metric: compiled(y, *metric_arguments(metric, y))


class Report(NamedTuple):
    """What k iterations report, one row per iteration, (k, B, L) and (k, B), in unit coordinates: the chains'
    positions and potentials after each iteration, and each transition's acceptance probability, decision and
    divergence flag (kale_fast.samplers.checks; unadjusted samplers: acceptance 1 and True). The one place a loop
    reads per-iteration results from."""
    z: Tensor
    potential: Tensor
    accept_prob: Tensor
    accepted: Tensor
    divergent: Tensor

    @staticmethod
    def of_step(state, transition) -> "Report":
        return Report(state.z[None], state.potential[None], transition.accept_prob[None],
                      transition.accepted[None], transition.divergent[None])


def _unrolled_iterations(sampler) -> int:
    return max(1, min(MAX_CHUNK_ITERATIONS, MAX_UNROLLED_GRADIENTS // sampler.gradients_per_iteration()))


def loops(sampler, like: Tensor, mode: Optional[str]) -> bool:
    """Whether compiled whole iterations of `sampler` on chains like `like` (B, L) run as a while_loop, else
    unrolled. Only on the CPU without a compile mode (a while_loop tests its condition on the host every
    iteration, a synchronisation on a GPU, never measured; CUDA graphs replay fixed kernels), and only where it
    was measured to win (the GEBM latent potential, 1 thread, interleaved in one process, quiet): at one chain
    of few coordinates (B x L <= LOOP_ALWAYS_ELEMENTS; B = 1, L = 16: time per gradient 1.7x less for MALA,
    3.2x for HMC-10), and where unrolling fits one iteration per call (HMC-10, B = 64: 1.18x less; B = 1024:
    the same). Elsewhere one iteration of the loop's body costs more than one of 8 unrolled iterations (ULA,
    L = 16: 1.11x at B = 16, 1.19x at 64, 1.21x at 1024; not found why: per element, so not the call; nor the
    report's rows, which the body's C++ copies whole every iteration (the functional index_copy): leaving the
    positions' rows out of the carry kept 1.18x at B = 64; the body calls the same boxed mlp_potential). A sampler
    whose leapfrog count varies (ChEES: each iteration's steps a while_loop nested in the iterations' one) loops
    only at B x L <= LOOP_ALWAYS_ELEMENTS: on bench_peers' GEBM target (1 thread, interleaved in one process, load
    1.8, bit for bit the same chains) 64 iterations per call took 1.63x less time per gradient than 8 unrolled at
    B = 1, but 16 per call took 1.04x more than 8 unrolled at B = 64."""
    if like.device.type != "cpu" or mode is not None:
        return False
    if sampler.leapfrog_count_varies:
        return like.numel() <= LOOP_ALWAYS_ELEMENTS
    return like.numel() <= LOOP_ALWAYS_ELEMENTS or _unrolled_iterations(sampler) == 1


def chunk_iterations(sampler, like: Tensor, mode: Optional[str], looped: bool) -> int:
    """The most iterations per compiled call for a sampler whose iterations compile whole, on chains like `like`
    (B, L), else 0; looped: loops(sampler, like, mode)."""
    if sampler.leapfrog_count_varies:  # a leapfrog while_loop per iteration: the CPU without a compile mode
        if looped:
            return loop_rows(tuple(like.shape))
        # 8 per call: on bench_peers' GEBM target at B = 64 (1 thread, load 2, interleaved) ChEES took 175, 157
        # and 145 us per gradient at 4, 8 and 16 iterations per call (HMC-10: 128), 16 for 2.1x the cold compile
        # time of 8 (102 s against 48 s)
        return MAX_CHUNK_ITERATIONS if like.device.type == "cpu" and mode is None else 0
    if sampler.gradients_per_iteration() > MAX_UNROLLED_GRADIENTS:  # its steps unrolled: too long to compile
        return 0
    return loop_rows(tuple(like.shape)) if looped else _unrolled_iterations(sampler)


# --- the random numbers of compiled iterations ------------------------------------------------------------
# Each iteration draws one row of uniforms from the run's generator, transformed inside the compiled graph
# (Box-Muller normals, log-uniforms for Metropolis tests, uniforms for HMC's jitter). Rows are the same whatever
# the number of iterations per call, so a run split anywhere and resumed draws what the unbroken run drew.

def _uniforms_per_draw(kind: str, shape: Tuple[int, int]) -> int:
    """Uniforms one draw of this kind takes for chains of shape (B, L)."""
    if kind == "normal":  # Box-Muller: a pair of uniforms per pair of normals
        return 2 * ((shape[0] * shape[1] + 1) // 2)
    if kind in ("log_uniform", "uniform"):  # one per chain
        return shape[0]
    raise ValueError(f"unknown kind of draw {kind!r}")


@functools.lru_cache(maxsize=64)
def _uniforms_per_row(kinds: Tuple[str, ...], shape: Tuple[int, int]) -> int:
    """Uniforms one iteration draws, computed once per kinds and chain shape (the Python around a compiled call
    runs every iteration)."""
    return sum(_uniforms_per_draw(kind, shape) for kind in kinds)


def uniform_rows(k: int, kinds: Tuple[str, ...], like: Tensor, generator: torch.Generator,
                 out: Optional[Tensor] = None) -> Tensor:
    """(k, n) uniforms in [0, 1), one row per iteration, for draws of these kinds like the chains `like` (B, L),
    written into the first k rows of `out` where given (CPU). The CPU generator fills a tensor serially, so one
    call equals k calls of one row; other devices' generators (CUDA's Philox advances per call) draw row by
    row."""
    n = _uniforms_per_row(kinds, tuple(like.shape))
    if like.device.type == "cpu":
        return torch.rand((k, n), generator=generator, dtype=like.dtype, device=like.device,
                          out=None if out is None else out[:k])
    return torch.stack([torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
                        for _ in range(k)])


def draws_from_uniforms(rows: Tensor, kinds: Tuple[str, ...], like: Tensor) -> Tuple[Tensor, ...]:
    """The draws of these kinds for k iterations from uniform_rows (k, n): "normal" (k, B, L) standard normals,
    "log_uniform" (k, B) log u, "uniform" (k, B) u. Traced inside the compiled graph."""
    k, draws, offset = rows.shape[0], [], 0
    for kind in kinds:
        n = _uniforms_per_draw(kind, like.shape)
        block = rows[:, offset:offset + n]
        offset += n
        if kind == "normal":
            first, second = block[:, :n // 2], block[:, n // 2:]
            radius = torch.sqrt(-2.0 * torch.log1p(-first))  # 1 - u in (0, 1]: a finite radius
            angle = (2.0 * math.pi) * second
            normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
            draws.append(normals[:, :like.numel()].reshape(k, *like.shape))
        elif kind == "log_uniform":
            draws.append(torch.log(block))
        else:
            draws.append(block)
    return tuple(draws)


def _as_tensors(state, like: Tensor):
    """An adaptation state with its Python numbers as 0-d fp64 tensors: numbers would be baked into the graph
    (one recompilation per value)."""
    if state is None or isinstance(state, Tensor):
        return state
    return type(state)(*(torch.tensor(float(v), dtype=torch.float64, device=like.device)
                         if isinstance(v, (int, float)) else v for v in state))


_FLAGS: Dict[Tuple[bool, torch.device], Tensor] = {}


def _flag(value: bool, device: torch.device) -> Tensor:
    """A 0-d bool tensor, made once per value and device (an argument no compiled graph writes): torch.tensor
    costs a compiled call's Python about 7 us an iteration."""
    key = (value, device)
    if key not in _FLAGS:
        _FLAGS[key] = torch.tensor(value, device=device)
    return _FLAGS[key]


def _select(flag: Tensor, new, old):
    return type(new)(*(torch.where(flag, n, o) for n, o in zip(new, old)))


def _iteration(sampler, value_and_grad, rules: tuple, adapting: Tensor, template: StepParams, chains,
               step_size: Tensor, states: tuple, draws: Tuple[Tensor, ...]):
    """One whole iteration, traced: the sampler's algebra step, then its adaptations' updates where `adapting`
    (else kept as they are). Returns (chains, step_size, states, Report row)."""
    params = template._replace(step_size=step_size)
    chains, transition = sampler.algebra_step(chains, params, draws, value_and_grad)
    if rules:
        updated, adapted = [], Tuning(step_size)
        for rule, state in zip(rules, states):
            new_state, adapted = rule.update(state, transition, params, adapted)
            updated.append(_select(adapting, new_state, state))
        states = tuple(updated)
        step_size = torch.where(adapting, adapted.step_size, step_size)
    return chains, step_size, states, Report.of_step(chains, transition)


class CompiledIterations:
    """Whole iterations of one sampler on one potential per compiled call, with the sampler's traceable
    adaptations (Adaptation.traceable) inside the graph: a while_loop over any count up to loop_rows, or k
    unrolled iterations (`loops` chooses). `adapting` is a tensor argument, so warm-up and sampling
    share one compiled function per (count or k, with adaptations)."""

    def __init__(self, sampler, potential, mode: Optional[str] = None):
        self.sampler, self.potential, self.mode = sampler, potential_reference(potential), mode
        self.functions: Dict[Tuple[object, bool], Callable] = {}
        self._uniforms: Dict[Tuple[int, int, torch.dtype], Tensor] = {}  # the while_loop's input buffers
        self._counts: Dict[int, Tensor] = {}

    def _unrolled(self, k: int, rules: tuple) -> Callable:
        sampler, reference = self.sampler, self.potential

        def iterations(chains, template: StepParams, states, adapting, scale, cholesky, uniforms, counts):
            """counts: None, or (k,) int64 leapfrog counts (samplers whose count varies)."""
            value_and_grad = UnitPotential(reference(), Metric(scale, cholesky))
            draws = draws_from_uniforms(uniforms, sampler.draw_kinds(), chains.z)
            step_size, rows = template.step_size, []
            for i in range(k):
                params = template if counts is None else template._replace(n_leapfrog=counts[i])
                chains, step_size, states, row = _iteration(sampler, value_and_grad, rules, adapting, params,
                                                            chains, step_size, states, tuple(d[i] for d in draws))
                rows.append(row)
            return chains, step_size, states, Report(*(torch.cat(column) for column in zip(*rows)))
        return iterations

    def _looped(self, rules: tuple) -> Callable:
        from torch._higher_order_ops.while_loop import while_loop  # imports torch._dynamo: not at kale_fast's import

        sampler, reference = self.sampler, self.potential

        def iterations(chains, template: StepParams, states, adapting, scale, cholesky, uniforms, count, counts):
            """uniforms (rows, n), of which the first `count` (a 0-d int64 tensor) are this call's; the report
            has `rows` rows, of which the first `count` are written. counts: None, or (rows,) int64 leapfrog
            counts (samplers whose count varies)."""
            value_and_grad = UnitPotential(reference(), Metric(scale, cholesky))
            z, rows = chains.z, uniforms.shape[0]
            flags = lambda: torch.zeros((rows, z.shape[0]), dtype=torch.bool, device=z.device)  # noqa: E731
            report = Report(z.new_zeros((rows, *z.shape)), z.new_zeros(rows, z.shape[0]),
                            z.new_zeros(rows, z.shape[0]), flags(), flags())
            # The step sizes are carried only where adaptations change them: a carry returned unchanged would
            # alias its input, which while_loop refuses.
            carried, spec = pytree.tree_flatten((chains, states, report, (template.step_size,) if rules else ()))

            def body(i, *flat):
                chains, states, report, step_size = pytree.tree_unflatten(list(flat), spec)
                at = i.reshape(1)
                draws = draws_from_uniforms(uniforms.index_select(0, at), sampler.draw_kinds(), chains.z)
                params = template if counts is None else template._replace(n_leapfrog=counts.index_select(0, at)[0])
                chains, new_step_size, states, row = _iteration(
                    sampler, value_and_grad, rules, adapting, params, chains,
                    step_size[0] if rules else template.step_size, states, tuple(d[0] for d in draws))
                report = Report(*(column.index_copy(0, at, new) for column, new in zip(report, row)))
                return (i + 1, *pytree.tree_leaves((chains, states, report, (new_step_size,) if rules else ())))

            start = torch.zeros((), dtype=torch.int64, device=z.device)
            _, *flat = while_loop(lambda i, *flat: i < count, body, (start, *carried))
            chains, states, report, step_size = pytree.tree_unflatten(flat, spec)
            return chains, step_size[0] if rules else template.step_size, states, report
        return iterations

    def _function(self, k: Optional[int], rules: tuple) -> Callable:
        """The compiled function for k unrolled iterations, or (k None) the while_loop."""
        key = (k, bool(rules))
        if key not in self.functions:
            suffix = "_adaptive" if rules else ""
            name = f"{self.sampler.name}_iterations_{'loop' if k is None else k}{suffix}"
            fn = self._looped(rules) if k is None else self._unrolled(k, rules)
            self.functions[key] = compile_function(fn, name, self.mode, specialize_floats=(
                k is None or self.sampler.leapfrog_count_varies))
        return self.functions[key]

    def _loop_arguments(self, k: int, like: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """The while_loop's uniforms (loop_rows, n), this call's k rows drawn, and k as a 0-d tensor (both made
        once: a fixed shape, so every count shares one graph)."""
        kinds = self.sampler.draw_kinds()
        key = (like.shape[0], like.shape[1], like.dtype)
        if key not in self._uniforms:
            rows = loop_rows(tuple(like.shape))
            self._uniforms[key] = torch.empty((rows, _uniforms_per_row(kinds, tuple(like.shape))),
                                              dtype=like.dtype, device=like.device)
        if k not in self._counts:
            self._counts[k] = torch.tensor(k, dtype=torch.int64, device=like.device)
        uniforms = self._uniforms[key]
        uniform_rows(k, kinds, like, generator, out=uniforms)
        return uniforms, self._counts[k]

    def __call__(self, chains, tune: Tuning, states: tuple, rules: tuple, adapting: bool, metric: Metric, k: int,
                 params: List[StepParams], generator: torch.Generator):
        """Run k iterations: (chains, tune, adaptation states, Report). `rules` are the run's adaptations (all
        traceable), applied while `adapting`; params: each iteration's (only the first's are read, except the
        leapfrog counts of a sampler whose count varies)."""
        like = chains.z
        looped, counts = loops(self.sampler, like, self.mode), None
        if self.sampler.leapfrog_count_varies:  # the counts a tensor, the host's time 0: no constant in the graph
            # (the while_loop's padded to its rows with counts it never reads: one shape whatever k)
            padding = [1] * (loop_rows(tuple(like.shape)) - k) if looped else []
            counts = torch.tensor([p.n_leapfrog for p in params] + padding, dtype=torch.int64, device=like.device)
        params = params[0]._replace(n_leapfrog=0, trajectory_time=0.0) if counts is not None else params[0]
        if states:
            states = tuple(_as_tensors(s, like) for s in states)
        arguments = (chains, params, states, _flag(adapting, like.device), *metric_arguments(metric, like))
        if looped:
            chains, step_size, states, report = self._function(None, rules)(
                *arguments, *self._loop_arguments(k, like, generator), counts)
            report = Report(*(column[:k] for column in report))
        else:
            uniforms = uniform_rows(k, self.sampler.draw_kinds(), like, generator)
            chains, step_size, states, report = self._function(k, rules)(*arguments, uniforms, counts)
        if not rules:  # the step sizes unchanged: no new host mean (ChEES's), a synchronising read
            return chains, tune, states, report
        return chains, tune.with_step_size(step_size), states, report


class CompiledPaths(NamedTuple):
    value_and_grad: Callable[[Tensor, Metric], Tuple[Tensor, Tensor]]
    leapfrog: object  # kale_fast.samplers.leapfrog.CompiledLeapfrog
    iterations: Dict[tuple, CompiledIterations]  # by the sampler's configuration (configuration_key)


_INITIAL_VALUES = ("step_size", "metric", "trajectory_length")


def configuration_key(sampler, mode: Optional[str]) -> tuple:
    """What a sampler's compiled iterations depend on: its type and options (tensors by identity: a compiled graph
    holds the tensors of the sampler it was traced with), not the initial values that warm-up adapts."""
    options = tuple(sorted((name, id(value) if isinstance(value, Tensor) else value)
                           for name, value in vars(sampler).items()
                           if name not in _INITIAL_VALUES
                           and isinstance(value, (Tensor, int, float, str, bool, type(None)))))
    return type(sampler), options, mode


def compiled_iterations(paths: CompiledPaths, sampler, potential, mode: Optional[str]) -> CompiledIterations:
    key = configuration_key(sampler, mode)
    if key not in paths.iterations:
        paths.iterations[key] = CompiledIterations(sampler, potential, mode)
    return paths.iterations[key]


# Compiled paths outlive a run, so that a warm-up run followed by a sampling run (or many short runs) of one
# potential compile once; a potential that cannot be weakly referenced (a bound method) compiles per run. Keyed
# weakly, and the compiled functions reach the potential only through potential_reference: a dropped potential
# frees its entry, its compiled functions and its networks.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_paths(potential, make_leapfrog: Callable) -> CompiledPaths:
    """The compiled value-and-gradient, leapfrog and whole-iteration functions of a potential, made at first use."""
    try:
        return _CACHE[potential]
    except (KeyError, TypeError):
        pass
    paths = CompiledPaths(compiled_value_and_grad(potential), make_leapfrog(potential), {})
    try:
        _CACHE[potential] = paths
    except TypeError:
        pass
    return paths
