"""Step-size adaptation by dual averaging (Hoffman & Gelman 2014, Algorithm 5), on tensors, per chain or
shared, with no host synchronisation. Used during warm-up only; the sampler then freezes the averaged step."""
import math
from typing import NamedTuple

import torch
from torch import Tensor


class DualAveragingState(NamedTuple):
    log_step: Tensor        # (B,) the step size used next, log
    log_step_avg: Tensor    # (B,) the iterate average, log: the step size kept after warm-up
    error_avg: Tensor       # (B,) running average of target_accept - accept_prob
    mu: Tensor              # (B,) shrinkage point, log(10 h0)
    count: int


# Hoffman & Gelman's constants: gamma = 0.05, t0 = 10, kappa = 0.75.
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75


def dual_averaging_init(step_size: Tensor) -> DualAveragingState:
    log_step = torch.log(step_size)
    return DualAveragingState(log_step, log_step.clone(), torch.zeros_like(step_size), log_step + math.log(10.0), 0)


def dual_averaging_update(state: DualAveragingState, accept_prob: Tensor, target_accept: float,
                          per_chain: bool) -> DualAveragingState:
    """One update from this step's acceptance probabilities (B,); shared adaptation averages them over chains."""
    if not per_chain:
        accept_prob = accept_prob.mean().expand_as(state.log_step)
    t = state.count + 1
    weight = 1.0 / (t + T0)
    error_avg = (1 - weight) * state.error_avg + weight * (target_accept - accept_prob)
    log_step = state.mu - math.sqrt(t) / GAMMA * error_avg
    eta = t ** -KAPPA
    log_step_avg = eta * log_step + (1 - eta) * state.log_step_avg
    return DualAveragingState(log_step, log_step_avg, error_avg, state.mu, t)
