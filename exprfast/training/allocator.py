"""``keep_freed_memory()``: let a training process reuse the memory it frees (glibc only).

A training step allocates and frees the same large buffers every step: activations, gradients,
the op's folded weights. With glibc's defaults a block above the mmap threshold (32 MB at most)
is mapped fresh and unmapped when freed, and freed heap memory above the trim threshold is
handed back to the system, so every step faults its pages in again, and the kernel zeroes each
one. ``keep_freed_memory`` turns both off (``mallopt``: ``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD``
at its largest), so freed blocks stay in the process for the next step; its peak resident
memory stays about what a step needs. On this project's machine the fp32 steps at 128 and
256 px got 5–6 % faster, with 1–3 % more peak memory (``benchmarks/allocator.md``). Elsewhere
(macOS, Windows, musl) it changes nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_LARGEST_INT = 2**31 - 1


def keep_freed_memory() -> str:
    """Configure glibc's malloc to keep freed memory (module docstring); returns what was done,
    for the run's log."""
    if not sys.platform.startswith("linux"):
        return f"allocator left as it is (not glibc: {sys.platform})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "allocator left as it is (no glibc mallopt in this C library)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, _LARGEST_INT)):
        return "allocator left as it is (glibc refused the settings)"
    return "allocator keeps freed memory (glibc: no mmap blocks, no trimming)"
