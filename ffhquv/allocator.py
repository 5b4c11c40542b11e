"""glibc malloc settings of a process: one place for both policies (glibc only; elsewhere
no-ops that return False).

- :func:`keep_large_freed`, every ``ffhquv`` process at start (``ffhquv_cli/__init__.py``):
  a photo's texture work allocates and frees hundreds of 4-25 MB arrays (1024 x 1024 texels,
  3 float channels). glibc returned each freed block above its mmap threshold to the kernel,
  so the next was mapped and zero-filled page by page again: on cpu2 10 of 55 CPU seconds of
  three warm photos went to page faults. With the threshold fixed at 32 MiB (glibc's maximum)
  the freed arrays are reused from the heap (6 s, 10 % less wall time, ~0.3 GB more resident).
  Fixing it also fixes the trim threshold (glibc keeps it at twice the mmap threshold only while
  it adjusts both), which then stayed at 128 KiB: each thread's arena gave its freed top back
  and faulted it in again; it is set to twice the mmap threshold, as glibc would.
- :func:`tune_allocator`, the CPU services and the gateway (``ffhquv serve``, after the
  above): their multi-megabyte buffers pass between gRPC's threads and their own, and
  per-thread heap arenas fragmented (the ``serve all`` soak saw the gateway's RSS climb ~1.7 MB
  a request): buffers of 1 MB and more go back to the system, at most two arenas.

A user's ``MALLOC_*`` environment variables (read by glibc at start) win over the first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _mallopt():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no libc, or one without mallopt (not glibc)
        return None


def keep_large_freed(mmap_threshold: int = 32 << 20) -> bool:
    """Serve freed blocks below ``mmap_threshold`` bytes (glibc's most: 32 MiB) from the heap
    again instead of unmapping them, and keep up to twice that free at the top of an arena
    (the trim threshold); nothing when the environment sets ``MALLOC_*``."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    return bool(mallopt(_M_TRIM_THRESHOLD, 2 * int(mmap_threshold))) and ok


def tune_allocator(mmap_threshold: int = 1 << 20, arenas: int = 2) -> bool:
    """Keep a long-running CPU service's resident memory flat: every buffer of at least
    ``mmap_threshold`` bytes goes back to the system when freed, at most ``arenas`` heap
    arenas bound the fragmentation of the rest. Called once at start by the CPU services and
    the gateway (not the fitter: :func:`keep_large_freed`)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
    ok = bool(mallopt(_M_ARENA_MAX, int(arenas))) and ok
    log.debug("allocator tuned", extra={"mmap_threshold": mmap_threshold, "arenas": arenas,
                                         "ok": ok})
    return ok
