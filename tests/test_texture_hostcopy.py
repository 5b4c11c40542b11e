"""``to_host``: a tensor's host copy (through pinned memory on CUDA), an array (or array-like)
as it is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.fitter.texture import to_host


def test_cpu_tensors_and_arrays():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = to_host(t)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    np.testing.assert_array_equal(a, t.numpy())
    strided = to_host(t.T)
    assert strided.flags.c_contiguous and strided.shape == (4, 3)
    np.testing.assert_array_equal(strided, t.numpy().T)
    assert to_host(t, np.float64).dtype == np.float64
    arr = np.ones((2, 2), np.uint8)
    assert to_host(arr) is arr
    np.testing.assert_array_equal(to_host([[1, 2], [3, 4]], np.float32), [[1, 2], [3, 4]])
    grad = torch.ones(2, requires_grad=True) * 2
    np.testing.assert_array_equal(to_host(grad), [2.0, 2.0])


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU (run through the device tool)")
def test_cuda_tensors_through_pinned_memory():
    t = torch.rand(4, 64, 64, 3, device="cuda")
    a = to_host(t)
    np.testing.assert_array_equal(a, t.cpu().numpy())
    u8 = to_host((t * 255).to(torch.uint8).permute(0, 3, 1, 2))
    assert u8.dtype == np.uint8 and u8.flags.c_contiguous
    np.testing.assert_array_equal(u8, (t * 255).to(torch.uint8).permute(0, 3, 1, 2).cpu().numpy())
    b = a.copy()
    del a  # the pinned buffer goes back to torch's cache; a new copy does not see old bytes
    t2 = torch.zeros_like(t)
    np.testing.assert_array_equal(to_host(t2), 0)
    np.testing.assert_array_equal(b, t.cpu().numpy())
