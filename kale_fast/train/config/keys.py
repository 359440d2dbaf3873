"""How a config key is declared and checked, whatever its section: `key` (its default, one-line help and allowed
values), `Section` (a dataclass of keys that checks every key's type and choices in one place, then its own
rules), the bounds on sizes and seeds, and the device check.

Nothing is coerced silently: bool is not an int, an int is a float (YAML writes 1e-4 as a float but 1 as an int),
nothing else.
"""
import dataclasses
import math
import typing
from typing import Any, Iterable, Optional, Tuple, Union

import torch

from kale_fast._suggest import did_you_mean

SEED_LIMIT = 2 ** 32 - 1  # NumPy's legacy generator takes seeds up to this
# The most a config may ask for: far above any real run, low enough that a typo (or a crafted saved config) ends
# as an error naming its key, not as an allocation of terabytes.
SIZE_LIMITS = dict(n_train=10 ** 8, n_test=10 ** 8, latent_dim=1 << 16, hidden=1 << 16, flow_hidden=1 << 16,
                   depth=1024, flow_layers=1024, batch_size=1 << 24, n_eval=10 ** 7, sampler_steps=10 ** 7,
                   n_partition_samples=10 ** 10, seed=SEED_LIMIT, split_seed=SEED_LIMIT)


def key(default: Any, help: str, choices: Optional[Tuple[str, ...]] = None):
    """A config key with its one-line description (and allowed values), read by the CLI and the docs."""
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices))


class Section:
    """Base of the config's sections (dataclasses of keys). Constructing one checks each key's type and choices
    (here, for every section) and its size bounds, then the section's own rules (`check`)."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value, choices = getattr(self, field.name), field.metadata["choices"]
            if not _has_type(value, hints[field.name]):
                raise TypeError(f"config key {field.name!r} must be {type_name(hints[field.name])}, got {value!r} "
                                f"({type(value).__name__})")
            if choices is not None and value not in choices:
                raise ValueError(f"config key {field.name!r} must be one of {choices}, got {value!r}"
                                 f"{did_you_mean(value, choices)}")
            limit = SIZE_LIMITS.get(field.name)
            if limit is not None and isinstance(value, int) and value > limit:  # (latent_dim may be "auto")
                raise ValueError(f"config key {field.name!r} must be <= {limit}, got {value}")
        self.check()

    def check(self) -> None:
        """The section's own rules (ranges, keys that go together); its keys' types are checked already."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def at_least(section: Section, minimum: int, keys: Iterable[str]) -> None:
    for name in keys:
        if getattr(section, name) < minimum:
            raise ValueError(f"config key {name!r} must be >= {minimum}, got {getattr(section, name)}")


def finite(section: Section, keys: Iterable[str]) -> None:
    for name in keys:
        value = getattr(section, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"config key {name!r} must be a finite number, got {value}")


def in_unit_interval(section: Section, keys: Iterable[str], meaning: str = "") -> None:
    """Each key in [0, 1) (`meaning`: what 0 means, e.g. " (0: off)")."""
    for name in keys:
        if not 0 <= getattr(section, name) < 1:
            raise ValueError(f"config key {name!r} must be in [0, 1){meaning}, got {getattr(section, name)}")


def check_seed(name: str, value: Optional[int]) -> None:
    if value is not None and value < 0:
        raise ValueError(f"config key {name!r} must be an integer from 0 to {SEED_LIMIT}, got {value}")


def unavailable_device(text: str) -> Optional[str]:
    """Why the torch device named `text` cannot hold a run on this machine (unparsable, meta, absent), or None
    when it can. Checked before anything is allocated, so that the error names the setting, not a kernel."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as error:
        return f"{text!r} is not a torch device ({error}); expected cpu, cuda or cuda:<index>"
    if device.type == "meta":
        return "'meta' tensors hold no data, so nothing can be trained or sampled there; expected cpu or cuda"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"{text!r}: this machine has no CUDA GPU that torch can use; use cpu"
        if device.index is not None and device.index >= count:
            return f"{text!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)  # mps, xpu: torch.<type>.is_available() says
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            return f"{text!r}: no {device.type} device is available here; expected cpu or cuda"
    return None


def _has_type(value: Any, expected) -> bool:
    """Strict: bool is not an int, an int is a float, nothing else."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Union:  # Optional[X], Union[X, Y]
        return any(_has_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected in (int, float):
        return isinstance(value, (int, float) if expected is float else int) and not isinstance(value, bool)
    return isinstance(value, expected)


def type_name(expected) -> str:
    """'int' for int and Optional[int] (None is named in the key's help), 'list of str or int' for
    Optional[List[Union[str, int]]]."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Union:
        return " or ".join(type_name(arg) for arg in args if arg is not type(None))
    if origin is list:
        return f"list of {type_name(args[0])}"
    return expected.__name__
