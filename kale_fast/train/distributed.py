"""Data-parallel training across processes (torchrun): every process trains on its own batches and the
gradients are averaged after each step, so the replicas stay identical.

The averaging is done here with one all_reduce of a flattened buffer per step, rather than by wrapping the
networks in DistributedDataParallel: the energy step takes an input gradient with create_graph for the
penalty and the base step takes parameter gradients with autograd.grad, two patterns DDP's reducer does not
support; what it would do is exactly this all_reduce.
"""
import os
from typing import Iterable, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def init_from_environment(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def rank_and_size() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Every process starts from rank 0's values."""
    if rank_and_size()[1] > 1:
        for param in params:
            dist.broadcast(param.data, src=0)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each .grad by its mean over the processes (one all_reduce)."""
    _, size = rank_and_size()
    grads = [p.grad for p in params if p.grad is not None]
    if size == 1 or not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= size
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def gather_objects(obj) -> List:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    _, size = rank_and_size()
    if size == 1:
        return [obj]
    gathered = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def check_replicas_agree(params: Iterable[torch.Tensor]) -> None:
    """Raise if the processes' parameters differ (they must, bit for bit, after every averaged step)."""
    if rank_and_size()[1] == 1:
        return
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    copies = gather_objects(flat.cpu())
    if any(not torch.equal(copies[0], c) for c in copies[1:]):
        raise RuntimeError("data-parallel replicas diverged: their parameters differ")
