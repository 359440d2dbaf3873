"""Progress of long stages: a tqdm bar on a terminal, plain lines elsewhere (a log file gets one line when a stage
starts, one when it ends and, for long stages, one at most every LINE_EVERY_S seconds with the latest values;
never a flood of carriage returns)."""
import contextlib
import sys
import time
from typing import Iterator

from tqdm.auto import tqdm


LINE_EVERY_S = 30.0


class _Lines:
    """The bar's stand-in off a terminal: counts; set_postfix prints a line at most every LINE_EVERY_S seconds
    (when `description` is given)."""

    def __init__(self, description: str = "", total: int = 0, initial: int = 0):
        self.n, self.total, self.description = initial, total, description
        self.last_line = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, values: dict) -> None:
        if self.description and time.perf_counter() - self.last_line >= LINE_EVERY_S:
            self.last_line = time.perf_counter()
            shown = ", ".join(f"{key} {value}" for key, value in values.items())
            print(f"{self.description}: {self.n}/{self.total}, {shown}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(description: str, total: int, enabled: bool = True, initial: int = 0) -> Iterator:
    """A progress bar of `total` units (`initial` done already) for the `with` block (update(n) as units finish,
    set_postfix(dict) for the latest values), on stderr. Off a terminal: a line "description ..." at the start,
    "description: done in S s" at the end and the latest values at most every LINE_EVERY_S seconds; nothing when
    not enabled."""
    stream = sys.stderr
    if not enabled:
        yield _Lines()
        return
    if stream.isatty():
        with tqdm(total=total, initial=initial, desc=description, file=stream, leave=True,
                  dynamic_ncols=True) as bar:
            yield bar
        return
    print(f"{description} ...", file=stream, flush=True)
    start = time.perf_counter()
    yield _Lines(description, total, initial)
    print(f"{description}: done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
