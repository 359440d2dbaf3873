"""The KALE steps' gradients in one compiled graph each (KALETrainer(compile=True), the config key `compile`).

Eager autograd runs an energy step as some 280 small ops (the penalty's double backward through SiLU recomputes
exp for its first and second derivatives, dozens of transposes); here the step is written as a function of the
parameters, differentiated with torch.func (grad of the energy in x for the penalty, grad_and_value in the
parameters for the step) and handed to torch.compile whole: AOTAutograd traces forward, double backward and
parameter gradients into one graph, and inductor fuses its elementwise work (SiLU's sigmoid computed once for
the value and both derivatives) between the GEMMs. The optimizer (fused Adam) steps on the gradients it returns.

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
from typing import Dict, Optional

import torch
from torch import Tensor, nn
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


class CompiledSteps:
    """Compiled gradients of the energy step and the base step of (base, energy); see the module docstring."""

    def __init__(self, base: nn.Module, energy: nn.Module, penalty: float, objective: str):
        _check_functional("base", base)
        _check_functional("energy", energy)
        self.base, self.energy, self.penalty, self.objective = base, energy, penalty, objective
        self._energy_gradients = torch.compile(self._energy_gradients_eager, dynamic=False)
        self._base_gradients = torch.compile(self._base_gradients_eager, dynamic=False)

    # --- the functions compiled (also the eager twins the tests compare with) ------------------------------

    def _energy_loss(self, params: Dict[str, Tensor], log_partition: Optional[Tensor], x_real: Tensor,
                     x_base: Tensor, t: Tensor):
        def energies(x: Tensor) -> Tensor:
            return functional_call(self.energy, params, (x,)).reshape(x.shape[0])

        loss, penalty = energy_objective(energies, grad(lambda x: energies(x).sum()), x_real, x_base, t,
                                         log_partition, self.penalty, traceable_kale_loss)
        return loss + penalty, (loss, penalty)

    def _energy_gradients_eager(self, params: Dict[str, Tensor], log_partition: Optional[Tensor], x_real: Tensor,
                                x_base: Tensor, t: Tensor):
        """((d params, d A or None), (loss, penalty))."""
        if log_partition is None:  # Donsker-Varadhan: no A
            grads, (_, aux) = grad_and_value(self._energy_loss, has_aux=True)(params, None, x_real, x_base, t)
            return (grads, None), aux
        grads, (_, aux) = grad_and_value(self._energy_loss, argnums=(0, 1), has_aux=True)(
            params, log_partition, x_real, x_base, t)
        return grads, aux

    def _base_loss(self, base_params: Dict[str, Tensor], energy_params: Dict[str, Tensor], z: Tensor) -> Tensor:
        x = functional_call(self.base, base_params, (z,))
        e = functional_call(self.energy, energy_params, (x,)).reshape(z.shape[0])
        return -(torch.logsumexp(-e, 0) - math.log(z.shape[0]))

    def _base_gradients_eager(self, base_params: Dict[str, Tensor], energy_params: Dict[str, Tensor], z: Tensor):
        """(d base params, loss)."""
        return grad_and_value(self._base_loss)(base_params, energy_params, z)

    # --- the steps -----------------------------------------------------------------------------------------

    @staticmethod
    def _values(module: nn.Module) -> Dict[str, Tensor]:
        return {key: p.detach() for key, p in module.named_parameters()}

    def energy_step(self, optimizer: torch.optim.Optimizer, x_real: Tensor, x_base: Tensor, t: Tensor,
                    log_partition: Optional[Tensor], reduce_gradients: Optional[GradientHook]) -> EnergyStep:
        a = None if log_partition is None else log_partition.detach()
        (param_grads, a_grad), (loss, penalty) = self._energy_gradients(self._values(self.energy), a, x_real,
                                                                        x_base.detach(), t)
        params = dict(self.energy.named_parameters())
        for key, value in param_grads.items():
            params[key].grad = value
        if log_partition is not None:
            log_partition.grad = a_grad.reshape(log_partition.shape)
        if reduce_gradients is not None:
            reduce_gradients([*params.values(), *([] if log_partition is None else [log_partition])])
        optimizer.step()
        return EnergyStep(loss.detach(), penalty.detach())

    def base_step(self, optimizer: torch.optim.Optimizer, z: Tensor,
                  reduce_gradients: Optional[GradientHook]) -> Tensor:
        grads, loss = self._base_gradients(self._values(self.base), self._values(self.energy), z)
        params = dict(self.base.named_parameters())
        for key, value in grads.items():
            params[key].grad = value
        if reduce_gradients is not None:
            reduce_gradients(list(params.values()))
        optimizer.step()
        return loss.detach()
