"""Keeping freed memory in the process for reuse (glibc's ``malloc``), for CPU training.

Imports neither torch nor Lightning, so plain scripts (``benchmarks/end_to_end.py``) can use it.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept_freed_memory = False


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's ``malloc`` keep freed memory in the process for reuse; returns whether the
    process now does (``False`` off Linux/glibc, where nothing is changed).

    A training step allocates and frees the same large tensors (activations, gradients) again
    and again. glibc serves allocations above an adaptive threshold (128 KiB to 32 MiB) with a
    fresh ``mmap`` and unmaps them on ``free``, and returns the top of the heap to the system
    once more than twice that threshold is free there; either way the next step touches new
    pages, one minor page fault (zero-filled by the kernel) per 4 KiB. Whether a process ends up
    there depends on its allocation history, so two processes doing the same work can differ by
    20 % (the CLI's DCGAN on MNIST: 3.8 million faults in 3 epochs, 6 s of system time).
    Here ``mallopt(M_MMAP_MAX, 0)`` serves every allocation from the heap (glibc still falls
    back to ``mmap`` where the heap cannot grow) and ``mallopt(M_TRIM_THRESHOLD, trim_threshold)``
    returns only free stretches above ``trim_threshold`` (1 GiB) at the heap's top: freed memory
    is reused, as by the caching allocators (jemalloc, tcmalloc) PyTorch's CPU performance guide
    recommends preloading. Applied once per process; it cannot be undone (glibc has no getter
    for its adaptive state).
    """
    global _kept_freed_memory
    if _kept_freed_memory:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept_freed_memory = bool(mallopt(_M_MMAP_MAX, 0)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _kept_freed_memory
