"""Host allocations that CPU training reuses instead of faulting in afresh.

glibc's malloc returns large freed blocks to the kernel (blocks over a threshold
are their own mappings, and a free heap top is trimmed), so every training step
that allocates its activations again pages them in again, zeroed by the kernel.
``keep_freed_memory`` raises both thresholds for the process it runs in, so freed
blocks are reused: the demo's epochs in a worker took 0.90–0.91× as long on a
2-core CPU, with the same peak resident memory (1.13 GB against 1.14 GB). Blocks
of 32 MB or more are still their own mappings, and at most 256 MB of free heap top
is kept.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds (above); False where malloc is not glibc's
    (nothing changed). Both are set: setting either alone stops glibc adapting the
    other, which made the demo's epochs 6 % to 75 % slower."""
    if os.name != "posix":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent from macOS's and musl's C libraries
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
