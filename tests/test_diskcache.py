"""Cache files are written whole or not at all, and a bad one costs a rebuild, not a fit."""

from __future__ import annotations

import numpy as np

from ffhquv.diskcache import load_arrays, save_arrays, write_atomically


def test_arrays_round_trip_and_nothing_half_written(tmp_path):
    path = tmp_path / "sub" / "x.npz"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert save_arrays(path, {"a": a}, "test")
    np.testing.assert_array_equal(load_arrays(path, "test")["a"], a)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.npz"]

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    assert not write_atomically(path, broken, "test")
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.npz"]  # the old one stays
    np.testing.assert_array_equal(load_arrays(path, "test")["a"], a)


def test_missing_unreadable_and_unwritable(tmp_path):
    assert load_arrays(tmp_path / "none.npz", "test") is None
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    assert load_arrays(bad, "test") is None
    (tmp_path / "file").write_text("in the way")
    assert not save_arrays(tmp_path / "file" / "x.npz", {"a": np.zeros(2)}, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "file"]
