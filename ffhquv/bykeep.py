"""Values made once per object: a small, thread-safe, least-recently-used table keyed by the
identities of the objects they were made from.

A face model's tensors and its read-only host arrays are the same objects for every photo;
what is made from them (a host copy, a message's shared parts) is made once and found again by
their ``id``. The table holds the objects themselves with each value, so an ``id`` is not
reused by another object while its entry lives; the oldest entry goes once ``maxsize`` are
held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

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
