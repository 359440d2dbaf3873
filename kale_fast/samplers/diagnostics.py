"""Convergence diagnostics over chains: split R-hat and effective sample size (Vehtari et al. 2021 without
rank normalisation; Geyer's initial monotone sequence for the autocorrelation sum)."""
import torch
from torch import Tensor


def _check_trace(trace: Tensor) -> Tensor:
    if not isinstance(trace, Tensor) or trace.dim() < 2 or trace.shape[0] < 4:
        raise ValueError("trace must be a (T, B, ...) tensor with T >= 4 draws per chain")
    return trace.double()


def split_rhat(trace: Tensor) -> Tensor:
    """Split R-hat of a (T, B, ...) trace, one value per trailing coordinate; about 1 when chains agree."""
    trace = _check_trace(trace)
    half = trace.shape[0] // 2
    chains = torch.cat([trace[:half], trace[-half:]], dim=1)  # (half, 2B, ...)
    n = chains.shape[0]
    chain_means = chains.mean(0)
    within = chains.var(0, unbiased=True).mean(0)
    between = n * chain_means.var(0, unbiased=True)
    var_plus = (n - 1) / n * within + between / n
    return torch.sqrt(var_plus / within)


def effective_sample_size(trace: Tensor) -> Tensor:
    """Bulk ESS of a (T, B, ...) trace over all chains, one value per trailing coordinate."""
    trace = _check_trace(trace)
    n_draws, n_chains = trace.shape[:2]
    centred = trace - trace.mean(0, keepdim=True)
    size = 2 * n_draws
    spectrum = torch.fft.rfft(centred, n=size, dim=0)
    acov = torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=0)[:n_draws] / n_draws  # (T, B, ...)
    chain_var = acov[0] * n_draws / (n_draws - 1)
    within = chain_var.mean(0)
    var_plus = within * (n_draws - 1) / n_draws + trace.mean(0).var(0, unbiased=True) * (n_chains > 1)
    rho = 1 - (within - acov.mean(1)) / var_plus  # (T, ...)
    rho[0] = 1.0
    # Geyer: sum pairs rho_2k + rho_2k+1 while positive, made monotone.
    n_pairs = n_draws // 2
    pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2, *rho.shape[1:]).sum(1)
    positive = torch.cumprod((pairs > 0).to(pairs.dtype), dim=0)
    monotone = torch.cummin(torch.where(positive > 0, pairs, torch.zeros_like(pairs)), dim=0).values
    tau = -1 + 2 * (monotone * positive).sum(0)
    return n_draws * n_chains / tau.clamp_min(1.0 / torch.log10(torch.tensor(float(n_draws * n_chains))))


# TEMPORARY until the diagnostics rewrite lands (layout (chain, draw, ...)).
def rhat(trace):
    return split_rhat(trace.transpose(0, 1))


def ess_bulk(trace):
    return effective_sample_size(trace.transpose(0, 1))


ess_tail = ess_bulk
