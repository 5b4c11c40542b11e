"""Values made once and kept, the least recently used going first: by the identities of the
objects they were made from (:class:`KeptByIdentity`), or by the contents of the arrays they
were made from (:func:`kept_by_content`).

A face model's tensors and its read-only host arrays are the same objects for every photo;
what is made from them (a host copy, a message's shared parts) is made once and found again by
their ``id``. The table holds the objects themselves with each value, so an ``id`` is not
reused by another object while its entry lives; the oldest entry goes once ``maxsize`` are
held. Where the arrays arrive anew with every request (a mesh from a message: every head of a
face model has the same faces, UVs and morph targets), their bytes are the key instead.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np

V = TypeVar("V")


class KeptByIdentity(Generic[V]):
    """``get(objects, extra, make)``: ``make()``'s value for these very objects and ``extra``,
    made on the first call and returned by the later ones (``maxsize`` most recent kept).

    Two threads that miss together may both call ``make``; the later value is kept. ``make``
    runs outside the lock (it may be slow: a device copy, a message build).
    """

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple, tuple[tuple, V]] = OrderedDict()

    def get(self, objects: Sequence[object], extra: Hashable, make: Callable[[], V]) -> V:
        """The value for ``objects`` (compared by identity) and ``extra`` (by equality)."""
        objs = tuple(objects)
        key = (tuple(id(o) for o in objs), extra)
        with self._lock:
            hit = self._kept.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[0], objs, strict=True)):
                self._kept.move_to_end(key)
                return hit[1]
        value = make()
        with self._lock:
            self._kept[key] = (objs, value)
            self._kept.move_to_end(key)
            while len(self._kept) > self.maxsize:
                self._kept.popitem(last=False)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


def kept_by_content(maxsize: int) -> Callable[[Callable[..., V]], Callable[..., V]]:
    """Decorator: ``fn(*args)`` made once per content of its arguments, the ``maxsize`` most
    recent kept (:func:`functools.lru_cache`, thread-safe).

    A numpy array argument counts by its dtype, shape and bytes (a copy of them is the key;
    ``fn`` gets a read-only array of the same contents, C-contiguous); any other argument by
    equality (it must be hashable). The decorated function has ``cache_info`` and
    ``cache_clear``. What ``fn`` returns is shared by every later call: return read-only
    arrays.
    """
    def decorate(fn: Callable[..., V]) -> Callable[..., V]:
        @functools.lru_cache(maxsize=maxsize)
        def cached(*key: tuple) -> V:
            return fn(*(np.frombuffer(k[3], k[1]).reshape(k[2]) if k[0] else k[1]
                        for k in key))

        @functools.wraps(fn)
        def wrapper(*args):
            return cached(*((True, a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())
                            if isinstance(a, np.ndarray) else (False, a) for a in args))

        wrapper.cache_info = cached.cache_info  # type: ignore[attr-defined]
        wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return wrapper

    return decorate
