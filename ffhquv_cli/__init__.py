"""The ``ffhquv`` command line: the wiring above the services and the gateway.

:mod:`ffhquv_cli.main` builds the parser and dispatches (the ``ffhquv`` console script,
``python -m ffhquv_cli``); :mod:`ffhquv_cli.commands` implements the subcommands, importing the
services, the gateway and (for ``ffhquv deploy``) :mod:`ffhquv_deploy` lazily. Nothing in the
base package ``ffhquv`` or in a service imports this package (tests/test_imports.py).
"""

import os

# numpy's OpenBLAS starts a thread per core and keeps them spinning after each product; the
# products numpy computes in the services are small (a colour conversion of one texture), so
# every one of them charged idle cores' spinning to the photo: on a 16-core GPU host the
# fitter's host work cost up to 4x its single-thread CPU time, and `serve all`'s processes
# took those cores from each other. Set before numpy loads (torch's own threads are set
# apart: OMP_NUM_THREADS / torch.set_num_threads); a user's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# glibc's malloc hands every freed block above its mmap threshold back to the kernel, and that
# threshold starts at 128 KiB: each photo's texture work allocates and frees hundreds of 4-25
# MB arrays (1024 x 1024 texels, 3 float channels), so each was mapped, zero-filled page by
# page and unmapped again. On cpu2 that was 10 of 55 CPU seconds for three warm photos in
# sys time (page faults); with the threshold at 32 MiB (glibc's maximum) the freed arrays are
# reused from the heap: 6 s, 10 % less wall time, about 0.3 GB more resident. A user's
# MALLOC_* variables win (glibc read them at start).
_M_MMAP_THRESHOLD = -3


def _keep_freed_arrays() -> None:
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    except (OSError, AttributeError):  # not glibc (musl, ...)
        pass


_keep_freed_arrays()
