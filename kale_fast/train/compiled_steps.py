"""The KALE steps as one compiled graph each (KALETrainer(compile=True), the config key `compile`).

Eager autograd runs an energy step as some 280 small ops (the penalty's double backward through SiLU recomputes
exp for its first and second derivatives, dozens of transposes), then an optimizer step of its own. Here a whole
step is one function of tensors handed to torch.compile: the base samples B(z) of the energy step, the loss written
as a function of the parameters and differentiated with torch.func (grad of the energy in x for the penalty,
grad_and_value in the parameters), and the optimizer's Adam update (torch.optim.Adam's arithmetic, applied in
place to the parameters and to the optimizer's own state tensors, so checkpoints and resumes see a plain
torch.optim.Adam). AOTAutograd traces forward, double backward and parameter gradients into one graph, inductor
fuses the elementwise work (SiLU and its derivatives, bias additions, Adam's moments) between the GEMMs
(_GraphRewrites below), and the graph's wrapper is C++. A step costs one compiled call and a few host-side draws;
energy_steps runs k energy steps (a round's) as one compiled call, which saves the host's work per call (guards,
Adam's scalars, the wrapper's buffers) and maps the base samples of all k in one forward.

With a gradient hook (data-parallel averaging under torchrun), or an optimizer that is not a plain one-group Adam,
the graph stops at the gradients: they go to .grad, the hook averages them and the optimizer steps eagerly.

Same results as eager up to fp32 rounding, given the same random draws: the latents and interpolation weights
are drawn outside the compiled graph, from the trainer's generator, in eager's order (inductor's own random
numbers differ from eager's under the same seed, and a graph that draws them gives another minibatch: that, not
rounding, is what made an earlier compiled penalty gradient differ from eager by 8.6e-3; see
tests/train/test_steps.py). The KALE loss is kale_fast.ops.kale.traceable_kale_loss, kf.kale_loss in plain
torch ops: kf.kale_loss's custom op cannot be traced under torch.func's transforms by torch.compile (torch 2.13).

Networks whose forward updates state in place (batch norm's running statistics, spectral norm's power iteration)
cannot be a functional graph; they are refused with a ValueError (constant buffers, a flow's masks, are fine).
"""
import math
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.func import functional_call, grad, grad_and_value
from torch.nn.utils import parametrize

from kale_fast.ops.kale import traceable_kale_loss
from kale_fast.train.steps import EnergyStep, GradientHook, energy_objective


def _check_functional(name: str, module: nn.Module) -> None:
    """Refuse networks whose forward updates state in place: batch norm (running statistics) and parametrizations
    (spectral norm's power iteration). Constant buffers (a flow's masks) are fine."""
    stateful = sorted({type(layer).__name__ for layer in module.modules()
                       if isinstance(layer, nn.modules.batchnorm._BatchNorm) or parametrize.is_parametrized(layer)})
    if stateful:
        raise ValueError(f"compile: the {name} has layers that update state during a forward ({', '.join(stateful)}: "
                         f"batch norm or spectral norm), which a compiled functional step cannot; use compile: false "
                         f"for this network")


class AdamState(NamedTuple):
    """A plain torch.optim.Adam's moments for the parameters of one or more steps (the optimizer's own tensors,
    which the compiled graph updates in place) and the steps' scalars, computed on the host in double precision as
    torch's Adam computes them: per step and parameter, the step size lr / (1 - beta1^t) and sqrt(1 - beta2^t) at
    its step count t. Passed as a tensor, so that neither the step count nor a changed learning rate recompiles."""
    exp_avgs: List[Tensor]
    exp_avg_sqs: List[Tensor]
    scalars: Tensor  # (n_steps, len(params), 2) float64: step size, sqrt of the second moment's bias correction
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    def of_step(self, step: int) -> "AdamState":
        """The state with the scalars of the step-th of its steps only ((len(params), 2)), as apply_adam takes it."""
        return self._replace(scalars=self.scalars[step])


def adam_state(optimizer: torch.optim.Optimizer, params: Sequence[Tensor],
               n_steps: int = 1) -> Optional[AdamState]:
    """Advance the step count of `params` (the parameters that get a gradient) in `optimizer` by n_steps and return
    their AdamState for those steps, creating their state as torch.optim.Adam does where they have none (others in
    the optimizer are left alone, as Adam skips a parameter without a gradient); or None, touching nothing, where
    the optimizer is not a plain Adam with one group holding them all (amsgrad, maximize, differentiable or
    capturable options, a tensor lr: those keep their own optimizer step)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    held = {id(p) for p in group["params"]}
    if (group["amsgrad"] or group["maximize"] or group["differentiable"] or group["capturable"]
            or group.get("decoupled_weight_decay", False) or isinstance(group["lr"], Tensor)
            or not all(id(p) in held for p in params)):
        return None
    lr, (beta1, beta2) = float(group["lr"]), group["betas"]
    states = [optimizer.state[param] for param in params]
    for param, state in zip(params, states):
        if not state:  # torch.optim.Adam's own lazy initialisation (_init_group), so its state_dict reads the same
            fused = group["fused"]
            state["step"] = torch.zeros((), dtype=torch.float32 if fused else _default_scalar_dtype(),
                                        device=param.device if fused else torch.device("cpu"))
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, n_steps)  # as Adam's steps begin (one op for all: this runs before every compiled call)
    counts = torch.stack(steps).tolist()  # whole numbers, exact in float32 up to 2^24 steps
    first = [count - n_steps + 1 for count in counts]  # each parameter's count at the first of these steps
    scalars = [[(lr / (1 - beta1 ** (t + j)), (1 - beta2 ** (t + j)) ** 0.5) for t in first] for j in range(n_steps)]
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    return AdamState(exp_avgs, exp_avg_sqs, torch.tensor(scalars, dtype=torch.float64), float(beta1), float(beta2),
                     float(group["eps"]), float(group["weight_decay"]))


def _default_scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def apply_adam(params: List[Tensor], grads: List[Tensor], adam: AdamState) -> None:
    """Adam's update in place on params and adam's moments (adam.scalars: (len(params), 2), one step's: see
    AdamState.of_step), traced into the compiled graph: the arithmetic of
    torch.optim.Adam's single-tensor step (torch/optim/adam.py, not capturable) with its host-side scalars read
    from adam.scalars. (torch.optim.adam.adam itself, traced, recomputes the bias corrections' powers of the step
    for every vector of 16 elements: measured 0.1-0.2 ms of a 3 ms step.)"""
    for i, (param, gradient, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, adam.exp_avgs, adam.exp_avg_sqs)):
        if adam.weight_decay != 0:
            gradient = gradient.add(param, alpha=adam.weight_decay)
        exp_avg.lerp_(gradient, 1 - adam.beta1)
        exp_avg_sq.mul_(adam.beta2).addcmul_(gradient, gradient, value=1 - adam.beta2)
        denom = exp_avg_sq.sqrt() / adam.scalars[i, 1] + adam.eps
        param.sub_(adam.scalars[i, 0] * exp_avg / denom)


class _GraphRewrites(CustomGraphPass):
    """An inductor graph pass over the steps' graphs (measured on a compiled toy round on CPU):
    - addmm(bias, a, b) -> mm(a, b) + bias, so that the bias is added inside the fused elementwise kernel that
      reads the product next (SiLU, Adam's update) instead of being copied into the output before the GEMM, a pass
      over the output per Linear layer (9% of the round; inductor does this itself on GPUs only);
    - a product over an inner dimension of at most 4 (the first layer of a network on 2-D points or latents) ->
      a broadcast multiply and sum, which inductor unrolls into the elementwise kernel around it (3%);
    - SiLU's sigmoid once per pre-activation: the forward's u / (1 + exp(-u)) and the sigmoid(u) of each
      derivative (the penalty's double backward differentiates SiLU twice) become u * s and s of one node
      s = sigmoid(u), which inductor then computes once into a buffer (a reused node with an exp) instead of
      recomputing exp in every kernel that reads it (exp was 10% of a compiled toy round)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        self._split_bias_additions(graph)
        self._unroll_thin_products(graph)
        self._share_sigmoids(graph)

    @staticmethod
    def _split_bias_additions(graph: torch.fx.Graph) -> None:
        for node in list(graph.find_nodes(op="call_function", target=torch.ops.aten.addmm.default)):
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                continue
            bias, a, b = node.args[:3]
            with graph.inserting_before(node):
                product = graph.call_function(torch.ops.aten.mm.default, (a, b))
                total = graph.call_function(torch.ops.aten.add.Tensor, (product, bias))
            product.meta, total.meta = dict(node.meta), dict(node.meta)
            node.replace_all_uses_with(total)
            graph.erase_node(node)

    @staticmethod
    def _unroll_thin_products(graph: torch.fx.Graph) -> None:
        for node in list(graph.find_nodes(op="call_function", target=torch.ops.aten.mm.default)):
            a, b = node.args
            if a.meta["val"].shape[1] > 4:
                continue
            with graph.inserting_before(node):
                columns = graph.call_function(torch.ops.aten.unsqueeze.default, (a, 2))  # (m, k, 1)
                rows = graph.call_function(torch.ops.aten.unsqueeze.default, (b, 0))     # (1, k, n)
                terms = graph.call_function(torch.ops.aten.mul.Tensor, (columns, rows))
                total = graph.call_function(torch.ops.aten.sum.dim_IntList, (terms, [1]))
            columns.meta["val"], rows.meta["val"] = a.meta["val"].unsqueeze(2), b.meta["val"].unsqueeze(0)
            terms.meta["val"] = columns.meta["val"] * rows.meta["val"]
            total.meta = dict(node.meta)
            node.replace_all_uses_with(total)
            graph.erase_node(node)

    @staticmethod
    def _share_sigmoids(graph: torch.fx.Graph) -> None:
        """One sigmoid(u) per u for every sigmoid(u) node and every SiLU decomposed as div(u, add(exp(neg(u)), 1)),
        placed right after u (before all its users)."""
        aten = torch.ops.aten
        shared: Dict[torch.fx.Node, torch.fx.Node] = {}

        def sigmoid_of(u: torch.fx.Node) -> torch.fx.Node:
            if u not in shared:
                with graph.inserting_after(u):
                    shared[u] = graph.call_function(aten.sigmoid.default, (u,))
                shared[u].meta["val"] = u.meta["val"].sigmoid()
            return shared[u]

        for node in list(graph.find_nodes(op="call_function", target=aten.sigmoid.default)):
            if node in shared.values():
                continue
            node.replace_all_uses_with(sigmoid_of(node.args[0]))
            graph.erase_node(node)
        for node in list(graph.find_nodes(op="call_function", target=aten.div.Tensor)):
            u, denominator = node.args
            if not (isinstance(denominator, torch.fx.Node) and denominator.target in (aten.add.Tensor, aten.add.Scalar)
                    and denominator.args[1] == 1 and denominator.kwargs.get("alpha", 1) == 1):
                continue
            exp = denominator.args[0]
            if not (isinstance(exp, torch.fx.Node) and exp.target is aten.exp.default
                    and exp.args[0].target is aten.neg.default and exp.args[0].args[0] is u):
                continue
            with graph.inserting_before(node):
                silu = graph.call_function(aten.mul.Tensor, (u, sigmoid_of(u)))
            silu.meta = dict(node.meta)
            node.replace_all_uses_with(silu)
            graph.erase_node(node)
        graph.eliminate_dead_code()

    def uuid(self):
        return get_hash_for_files((__file__,))


# The inductor options of both steps (one object, so that every CompiledSteps shares the compiled graphs of its
# shapes): the passes above, and the graph's wrapper in C++ (measured 5% of a compiled toy round: the Python wrapper
# allocates and launches some 60 buffers and kernels per step).
_INDUCTOR_OPTIONS = {"post_grad_custom_post_pass": _GraphRewrites(), "cpp_wrapper": True}


class CompiledSteps:
    """Compiled energy and base steps of (base, energy); see the module docstring."""

    def __init__(self, base: nn.Module, energy: nn.Module, penalty: float, objective: str):
        _check_functional("base", base)
        _check_functional("energy", energy)
        self.base, self.energy, self.penalty, self.objective = base, energy, penalty, objective
        self._energy_step = torch.compile(self._energy_step_eager, dynamic=False, options=_INDUCTOR_OPTIONS)
        self._base_step = torch.compile(self._base_step_eager, dynamic=False, options=_INDUCTOR_OPTIONS)
        self._energy_steps = torch.compile(self._energy_steps_eager, dynamic=False, options=_INDUCTOR_OPTIONS)

    # --- the functions compiled (also the eager twins the tests compare with) ------------------------------

    def _energy_loss(self, params: Dict[str, Tensor], log_partition: Optional[Tensor], x_real: Tensor,
                     x_base: Tensor, t: Tensor):
        def energies(x: Tensor) -> Tensor:
            return functional_call(self.energy, params, (x,)).reshape(x.shape[0])

        loss, penalty = energy_objective(energies, grad(lambda x: energies(x).sum()), x_real, x_base, t,
                                         log_partition, self.penalty, traceable_kale_loss)
        return loss + penalty, (loss, penalty)

    def _energy_gradients(self, params: Dict[str, Tensor], log_partition: Optional[Tensor], x_real: Tensor,
                          x_base: Tensor, t: Tensor):
        """((d params, d A or None), (loss, penalty))."""
        if log_partition is None:  # Donsker-Varadhan: no A
            grads, (_, aux) = grad_and_value(self._energy_loss, has_aux=True)(params, None, x_real, x_base, t)
            return (grads, None), aux
        grads, (_, aux) = grad_and_value(self._energy_loss, argnums=(0, 1), has_aux=True)(
            params, log_partition, x_real, x_base, t)
        return grads, aux

    def _energy_step_eager(self, params: Dict[str, Tensor], log_partition: Optional[Tensor],
                           base_params: Dict[str, Tensor], x_real: Tensor, z: Tensor, t: Tensor,
                           adam: Optional[AdamState]):
        """The energy step on the base samples B(z): with adam, the update applied in place to params, A and
        adam's state, returning (None, (loss, penalty)); without, ((d params, d A or None), (loss, penalty))."""
        x_base = functional_call(self.base, base_params, (z,))
        return self._energy_update(params, log_partition, x_real, x_base, t, adam)

    def _energy_update(self, params: Dict[str, Tensor], log_partition: Optional[Tensor], x_real: Tensor,
                       x_base: Tensor, t: Tensor, adam: Optional[AdamState]):
        """_energy_step_eager on the base samples x_base."""
        (param_grads, a_grad), aux = self._energy_gradients(params, log_partition, x_real, x_base, t)
        if adam is None:
            return (param_grads, a_grad), aux
        trained = [*params.values(), *([] if log_partition is None else [log_partition])]
        apply_adam(trained, [*param_grads.values(), *([] if log_partition is None else [a_grad])], adam)
        return None, aux

    def _energy_steps_eager(self, params: Dict[str, Tensor], log_partition: Optional[Tensor],
                            base_params: Dict[str, Tensor], x_reals: Tensor, zs: Tensor, ts: Tensor, adam: AdamState):
        """len(zs) energy steps in a row, each updating params, A and adam's state in place before the next, on its
        own batch: x_reals (k, n, ...), zs (k, n, latent_dim), ts (k, n, 1, ...). Returns (loss, penalty) of the
        last step. The base, which these steps do not train, maps all k n latents in one forward (larger GEMMs):
        each latent on its own, as every base kale_fast builds does (a flow's batch norm samples with its running
        statistics; batch norm layers that would use the batch's are refused)."""
        x_bases = functional_call(self.base, base_params, (zs.flatten(0, 1),)).unflatten(0, zs.shape[:2])
        for step in range(len(zs)):
            _, aux = self._energy_update(params, log_partition, x_reals[step], x_bases[step], ts[step],
                                         adam.of_step(step))
        return aux

    def _base_loss(self, base_params: Dict[str, Tensor], energy_params: Dict[str, Tensor], z: Tensor) -> Tensor:
        x = functional_call(self.base, base_params, (z,))
        e = functional_call(self.energy, energy_params, (x,)).reshape(z.shape[0])
        return -(torch.logsumexp(-e, 0) - math.log(z.shape[0]))

    def _base_step_eager(self, base_params: Dict[str, Tensor], energy_params: Dict[str, Tensor], z: Tensor,
                         adam: Optional[AdamState]):
        """The base step: with adam, the update applied in place (None, loss); without, (d base params, loss)."""
        grads, loss = grad_and_value(self._base_loss)(base_params, energy_params, z)
        if adam is None:
            return grads, loss
        apply_adam(list(base_params.values()), list(grads.values()), adam)
        return None, loss

    # --- the steps -----------------------------------------------------------------------------------------

    @staticmethod
    def _values(module: nn.Module) -> Dict[str, Tensor]:
        """The parameters' values, detached: views of the same storage, which the in-graph update writes."""
        return {key: p.detach() for key, p in module.named_parameters()}

    def energy_step(self, optimizer: torch.optim.Optimizer, x_real: Tensor, z: Tensor, t: Tensor,
                    log_partition: Optional[Tensor], reduce_gradients: Optional[GradientHook]) -> EnergyStep:
        """One energy step on x_real (n, ...) against the base samples of the latents z (n, latent_dim), with the
        interpolation weights t (n, 1, ...). optimizer: over the energy's parameters and A (as KALETrainer builds
        it)."""
        params = dict(self.energy.named_parameters())
        trained = [*params.values(), *([] if log_partition is None else [log_partition])]
        adam = None if reduce_gradients is not None else adam_state(optimizer, trained)
        a = None if log_partition is None else log_partition.detach()
        grads, (loss, penalty) = self._energy_step(self._values(self.energy), a, self._values(self.base), x_real, z,
                                                   t, adam and adam.of_step(0))
        if adam is None:
            param_grads, a_grad = grads
            for key, value in param_grads.items():
                params[key].grad = value
            if log_partition is not None:
                log_partition.grad = a_grad.reshape(log_partition.shape)
            if reduce_gradients is not None:
                reduce_gradients(trained)
            optimizer.step()
        return EnergyStep(loss.detach(), penalty.detach())

    def energy_steps(self, optimizer: torch.optim.Optimizer, x_reals: Tensor, zs: Tensor, ts: Tensor,
                     log_partition: Optional[Tensor]) -> Optional[EnergyStep]:
        """len(zs) energy steps in one compiled call (one graph per count of steps), each on its batch: x_reals
        (k, n, ...), zs (k, n, latent_dim), ts (k, n, 1, ...); the last one's EnergyStep. None, touching nothing,
        where the optimizer is not one the graph can run (adam_state): then run energy_step k times."""
        params = [*self.energy.parameters(), *([] if log_partition is None else [log_partition])]
        adam = adam_state(optimizer, params, len(zs))
        if adam is None:
            return None
        a = None if log_partition is None else log_partition.detach()
        loss, penalty = self._energy_steps(self._values(self.energy), a, self._values(self.base), x_reals, zs, ts,
                                           adam)
        return EnergyStep(loss.detach(), penalty.detach())

    def base_step(self, optimizer: torch.optim.Optimizer, z: Tensor,
                  reduce_gradients: Optional[GradientHook]) -> Tensor:
        params = dict(self.base.named_parameters())
        adam = None if reduce_gradients is not None else adam_state(optimizer, list(params.values()))
        grads, loss = self._base_step(self._values(self.base), self._values(self.energy), z, adam and adam.of_step(0))
        if adam is None:
            for key, value in grads.items():
                params[key].grad = value
            if reduce_gradients is not None:
                reduce_gradients(list(params.values()))
            optimizer.step()
        return loss.detach()
