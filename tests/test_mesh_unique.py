"""``ffhquv.mesh.unique_rows``: numpy's ``unique(axis=0)`` results, exactly, for index rows."""

import numpy as np
import pytest

from ffhquv.mesh import unique_rows


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint8])
@pytest.mark.parametrize("shape", [(2000, 2), (3000, 3), (0, 2), (1, 1), (7, 4)])
def test_same_as_numpy(dtype, shape):
    a = np.random.default_rng(sum(shape)).integers(0, 40, shape).astype(dtype)
    want = np.unique(a, axis=0, return_inverse=True, return_counts=True)
    rows, inverse, counts = unique_rows(a, return_inverse=True, return_counts=True)
    assert rows.dtype == a.dtype
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(inverse, want[1].reshape(-1))
    np.testing.assert_array_equal(counts, want[2])
    np.testing.assert_array_equal(unique_rows(a), want[0])


def test_mesh_corners_rebuild_the_input():
    # (vertex, uv) corners of a real-sized mesh: rows[inverse] gives the corners back
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, 20000, 120000), rng.integers(0, 25000, 120000)], -1)
    rows, inverse = unique_rows(pairs, return_inverse=True)
    np.testing.assert_array_equal(rows[inverse], pairs)
    assert (np.diff(rows[:, 0]) >= 0).all()


@pytest.mark.parametrize("a", [
    np.array([[-3, 1], [2, -1], [-3, 1]]),              # negative entries
    np.array([[2**40, 1, 2**40], [0, 2**40, 5]]),       # ranges past int64 when packed
])
def test_numpys_path_where_keys_cannot_pack(a):
    want = np.unique(a, axis=0, return_inverse=True, return_counts=True)
    rows, inverse, counts = unique_rows(a, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(inverse, want[1].reshape(-1))
    np.testing.assert_array_equal(counts, want[2])


def test_rejects_floats():
    with pytest.raises(ValueError, match="integer"):
        unique_rows(np.zeros((3, 2)))
