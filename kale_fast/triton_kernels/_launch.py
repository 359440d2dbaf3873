"""What every Triton launcher shares: the device guard, the device's size and CUDA's limit on a 1-D grid."""
import contextlib
import functools

import torch

MAX_PROGRAMS = 2**31 - 1  # CUDA's limit on grid dimension x (y and z stop at 65535: the launchers use x only)


def on_device(tensor: torch.Tensor):
    """Launch on `tensor`'s GPU (Triton launches on the current device), or nothing for the interpreter."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessors(device: torch.device) -> int:
    """The streaming multiprocessors of a CUDA device (queried once per device; 132 on an H100 SXM), or 1 for a
    CPU tensor, which Triton's interpreter runs one program at a time: what grids are sized by."""
    if device.type != "cuda":
        return 1
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


def check_programs(n_programs: int, what: str) -> int:
    if n_programs > MAX_PROGRAMS:
        raise ValueError(f"{what} needs {n_programs} programs, more than a CUDA grid holds ({MAX_PROGRAMS})")
    return n_programs
