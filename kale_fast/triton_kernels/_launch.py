"""What every Triton launcher shares: the device guard and CUDA's limit on a 1-D grid."""
import contextlib

import torch

MAX_PROGRAMS = 2**31 - 1  # CUDA's limit on grid dimension x (y and z stop at 65535: the launchers use x only)


def on_device(tensor: torch.Tensor):
    """Launch on `tensor`'s GPU (Triton launches on the current device), or nothing for the interpreter."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def check_programs(n_programs: int, what: str) -> int:
    if n_programs > MAX_PROGRAMS:
        raise ValueError(f"{what} needs {n_programs} programs, more than a CUDA grid holds ({MAX_PROGRAMS})")
    return n_programs
