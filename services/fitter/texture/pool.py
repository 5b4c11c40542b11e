"""The per-photo thread pool of a batch's host work (:func:`per_photo`): the head masks, the
completion, the hair layer, stage 3's finish and the outputs run each photo of a GPU batch on
a thread of their own; :class:`Beside` starts such work and lets the caller go on (the host
work of a batch beside its next GPU stage)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


def _workers(n: int) -> int:
    """Threads for ``n`` photos' work: one a photo, at most one a core and 8."""
    return max(1, min(n, os.cpu_count() or 1, 8))


def per_photo(fn: Callable[[int], T], n: int) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, on a thread pool when ``n > 1``.

    The per-photo texture work is numpy / OpenCV on the host (they release the GIL): in a GPU
    batch it would otherwise run one photo after the other while the GPU waits.
    """
    if n <= 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=_workers(n)) as pool:
        return list(pool.map(fn, range(n)))


class Beside(Generic[T]):
    """``fn(0), ..., fn(n - 1)`` started at once on threads of their own, collected later with
    :meth:`result`, while the caller's thread goes on (on a GPU: its next stage, through which
    the host would otherwise wait). A context manager: leaving it waits for the threads (none
    outlives the block; work not yet started is dropped when the block ends by an error)."""

    def __init__(self, fn: Callable[[int], T], n: int):
        self._pool = ThreadPoolExecutor(max_workers=_workers(n), thread_name_prefix="beside")
        self._jobs = [self._pool.submit(fn, i) for i in range(n)]

    def result(self, i: int) -> T:
        """``fn(i)``'s value (waits for it; raises what it raised)."""
        return self._jobs[i].result()

    def __enter__(self) -> Beside[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
