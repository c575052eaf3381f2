"""The host (CPU) memory allocator of the scripts: freed memory stays in the process for reuse (README, "Speed").

By default glibc's malloc serves a request above its mmap threshold (128 KiB at start, raised adaptively up to
32 MiB) with a fresh ``mmap`` and hands it back with ``munmap`` when it is freed, and it returns free memory at the
top of its heap to the system beyond a 128 KiB trim threshold. A step on the CPU allocates and frees hundreds of
activations of megabytes, so most of them land on fresh pages: page faults and zero-filling of every page, often
costing more than the operation that fills the tensor. With both thresholds raised the freed blocks are reused
instead; the peak resident memory stays that of the step.

`keep_freed_host_memory` is applied by the four scripts (`engine.cli.run_cli`) and the benchmarks. It changes
nothing where the C library is not glibc, where the user chose the allocator (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``, or a malloc
library in ``LD_PRELOAD`` such as jemalloc or tcmalloc) or where ``BIDENSE_HOST_ALLOCATOR=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

HOST_ALLOCATOR_ENV = "BIDENSE_HOST_ALLOCATOR"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Requests up to 1 GiB come from the heap; older glibc refuses mmap thresholds above 32 MiB (HEAP_MAX_SIZE / 2).
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
_TRIM_THRESHOLD = (1 << 31) - 1
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def user_chose_allocator(environ: Mapping[str, str] = os.environ) -> str | None:
    """The environment variable through which the user chose the allocator or its settings, else None."""
    if environ.get(HOST_ALLOCATOR_ENV, "") == "default":
        return HOST_ALLOCATOR_ENV
    for name in _GLIBC_VARIABLES:
        if name in environ:
            return name
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if "malloc" in environ.get("LD_PRELOAD", ""):
        return "LD_PRELOAD"
    return None


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_host_memory() -> bool:
    """Raise glibc's mmap threshold (to 1 GiB, else 32 MiB) and its trim threshold (to 2 GiB) so that freed host
    memory is reused rather than unmapped; True when both were set, False otherwise (not glibc, a refused value, or
    `user_chose_allocator`: then nothing is changed). Process-wide, for the allocations that follow; forked
    data-loader workers inherit it."""
    if user_chose_allocator() is not None:
        return False
    libc = _glibc()
    if libc is None:
        return False
    if not any(libc.mallopt(_M_MMAP_THRESHOLD, value) for value in _MMAP_THRESHOLDS):
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
