"""Progress of long stages: a tqdm bar on a terminal, plain lines elsewhere (a log file gets one line when a stage
starts and one when it ends, never a flood of carriage returns)."""
import contextlib
import sys
import time
from typing import Iterator

from tqdm.auto import tqdm


class _Lines:
    """The bar's stand-in off a terminal: counts, prints nothing until the stage ends."""

    def __init__(self):
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass


@contextlib.contextmanager
def stage(description: str, total: int, enabled: bool = True) -> Iterator:
    """A progress bar of `total` units for the `with` block (update(n) as units finish), on stderr. Off a terminal:
    a line "description ..." at the start and "description: done in S s" at the end; nothing when not enabled."""
    stream = sys.stderr
    if not enabled:
        yield _Lines()
        return
    if stream.isatty():
        with tqdm(total=total, desc=description, file=stream, leave=True, dynamic_ncols=True) as bar:
            yield bar
        return
    print(f"{description} ...", file=stream, flush=True)
    start = time.perf_counter()
    yield _Lines()
    print(f"{description}: done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
