"""The per-photo thread pool of a batch's host work (:func:`per_photo`): the head masks, the
completion, the hair layer, stage 3's finish and the outputs run each photo of a GPU batch on
a thread of their own."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def per_photo(fn: Callable[[int], T], n: int) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, on a thread pool when ``n > 1``.

    The per-photo texture work is numpy / OpenCV on the host (they release the GIL): in a GPU
    batch it would otherwise run one photo after the other while the GPU waits.
    """
    if n <= 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(fn, range(n)))
