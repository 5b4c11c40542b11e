"""``ffhquv.bykeep``: values made once per object identity or array content, LRU."""

import numpy as np
import pytest

from ffhquv.bykeep import KeptByIdentity, kept_by_content


def test_a_value_is_made_once_per_object_and_extra_key():
    kept: KeptByIdentity[int] = KeptByIdentity(4)
    a, b = np.zeros(3), np.zeros(3)  # equal, not the same object
    calls = []

    def make(tag):
        def build():
            calls.append(tag)
            return len(calls)
        return build

    assert kept.get((a,), "x", make("a")) == 1
    assert kept.get((a,), "x", make("again")) == 1  # found: not made again
    assert kept.get((b,), "x", make("b")) == 2  # another object, however equal
    assert kept.get((a,), "y", make("a-y")) == 3  # another extra key
    assert kept.get((a, None), "x", make("pair")) == 4  # a tuple of objects, None among them
    assert calls == ["a", "b", "a-y", "pair"]


def test_the_oldest_entry_goes_and_its_objects_with_it():
    kept: KeptByIdentity[str] = KeptByIdentity(2)
    objs = [object() for _ in range(3)]
    for i, o in enumerate(objs):
        kept.get((o,), None, lambda i=i: f"v{i}")
    assert len(kept) == 2
    kept.get((objs[1],), None, lambda: "not made")  # found; objs[2] is the oldest now
    kept.get((objs[0],), None, lambda: "v0 again")
    assert kept.get((objs[1],), None, lambda: "not this") == "v1"
    assert kept.get((objs[2],), None, lambda: "v2 again") == "v2 again"  # evicted, made again
    kept.clear()
    assert len(kept) == 0


def test_a_kept_object_keeps_its_identity_alive():
    """The table holds what it was given: a freed object's id cannot come back as another's
    while its value is kept (a new object at that address would find the old value)."""
    kept: KeptByIdentity[str] = KeptByIdentity(8)
    kept.get((np.ones(4),), None, lambda: "first")  # the caller drops its only reference
    later = [np.ones(4) for _ in range(64)]
    assert all(kept.get((x,), None, lambda: "new") == "new" for x in later)


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError, match="maxsize"):
        KeptByIdentity(0)


def test_kept_by_content_keys_arrays_by_their_bytes_dtype_and_shape():
    calls = []

    @kept_by_content(4)
    def total(scale, a):
        calls.append((scale, a.dtype.str, a.shape))
        assert not a.flags.writeable  # the kept value may hold it
        return float(a.sum()) * scale

    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert total(2, a) == 30.0
    assert total(2, a.copy()) == 30.0  # the same contents in another array: kept
    assert total(2, np.asfortranarray(a)) == 30.0  # any memory layout of them
    assert total(3, a) == 45.0  # another plain argument
    assert total(2, a.reshape(3, 2)) == 30.0  # the same bytes, another shape
    assert total(2, a.astype(np.int32)) == 30.0  # another dtype
    assert calls == [(2, "<i8", (2, 3)), (3, "<i8", (2, 3)), (2, "<i8", (3, 2)),
                     (2, "<i4", (2, 3))]
    assert total.cache_info().currsize == 4
    total.cache_clear()
    assert total.cache_info().currsize == 0
