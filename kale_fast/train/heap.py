"""The process's malloc settings for compiled training steps (KALETrainer(compile=True))."""
import ctypes
import os
import platform

# glibc's mallopt parameters (malloc.h) and the values keep_freed_heap sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_ABOVE_BYTES = 32 << 20   # glibc's own ceiling for its dynamic mmap threshold on 64-bit
_TRIM_ABOVE_BYTES = 128 << 20  # freed heap kept mapped, at most
# a process's own choices win: glibc's environment settings, or this opt-out ("0" leaves malloc alone)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OPT_OUT = "KALE_FAST_KEEP_FREED_HEAP"
_thresholds_fixed = False


def keep_freed_heap() -> bool:
    """Keep freed heap memory mapped in this process (once; process-wide; glibc only: elsewhere a no-op, False).

    A compiled call allocates its buffers fresh and frees them at its end; glibc may then trim the heap's free top
    after every call (its dynamic trim threshold is twice the largest mmapped block freed so far) and the next call
    faults the pages back in, zeroed by the kernel: on the toy config, in some processes, 743 minor faults and
    2.8 ms of system time per round, 6% of the compiled round's CPU time (eager rounds, which free as they go,
    fault about none). With fixed thresholds (blocks up to 32 MiB from the heap, its free top trimmed above
    128 MiB) the pages stay mapped: 4 faults per round. Fixing them turns off glibc's dynamic thresholds for the
    whole process. Left alone (False) where the process set glibc's MALLOC_MMAP_THRESHOLD_ or
    MALLOC_TRIM_THRESHOLD_, or KALE_FAST_KEEP_FREED_HEAP=0."""
    global _thresholds_fixed
    if _thresholds_fixed or os.environ.get(OPT_OUT) == "0" or any(name in os.environ for name in _USER_SETTINGS):
        return _thresholds_fixed
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        _thresholds_fixed = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE_BYTES)
                                 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE_BYTES))
    return _thresholds_fixed
