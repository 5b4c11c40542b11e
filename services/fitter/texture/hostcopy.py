"""Device tensors to host arrays through pinned memory (:func:`to_host`).

A ``.cpu()`` of a CUDA tensor copies into pageable memory: the driver stages it through a
small pinned buffer at a few GB/s, and the copy holds the GPU's copy engine and the calling
thread meanwhile. A fit of 4 photos spent 145 ms of device time, 21 % of its total, in such
copies (unwrap colours, hair weights, completed textures, masks; BENCHMARKS.md, fifteenth
session); through pinned memory (torch's caching host allocator keeps and reuses the buffers)
the same copies took 33 ms.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_host(x, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A host (numpy) copy of a tensor, or an array (or array-like) as it is.

    Args:
        x: a tensor on any device (detached here), or a numpy array or array-like.
        dtype: the result's numpy dtype (None: the tensor's own).
    Returns:
        A C-contiguous numpy array: a CUDA tensor's copy, in pinned memory (returned to
        torch's cache when the array is freed); a CPU tensor's own memory (as ``.numpy()``)
        unless ``dtype`` or its layout asks for a copy.
    """
    if not isinstance(x, Tensor):
        a = np.asarray(x)
    elif x.is_cuda:
        t = x.detach()
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        a = buf.numpy()
    else:
        a = x.detach().numpy()
    return np.ascontiguousarray(a, dtype=dtype)
