"""Device tensors to host arrays through pinned memory (:func:`to_host`).

A ``.cpu()`` of a CUDA tensor copies into pageable memory: the driver stages it through a
small pinned buffer at a few GB/s, and the copy holds the GPU's copy engine and the calling
thread meanwhile. A batch of 4 photos moved about 170 MB that way in stage 2 (unwrap colours,
hair weights, completed textures): 169 ms of device time, 21 % of the batch's (BENCHMARKS.md,
fourteenth and fifteenth sessions). Copied into pinned memory (torch's caching host allocator
keeps and reuses the buffers) the same bytes move several times faster.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def to_host(x: Tensor | np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
    """A host (numpy) copy of a tensor, or an array as it is.

    Args:
        x: a tensor on any device (detached here), or a numpy array.
        dtype: the result's numpy dtype (None: the tensor's own).
    Returns:
        A C-contiguous numpy array: a CUDA tensor's copy, in pinned memory (returned to
        torch's cache when the array is freed); a CPU tensor's own memory (as ``.numpy()``)
        unless ``dtype`` or its layout asks for a copy.
    """
    if isinstance(x, np.ndarray):
        a = x
    elif x.is_cuda:
        t = x.detach()
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        torch.cuda.current_stream(t.device).synchronize()
        a = buf.numpy()
    else:
        a = x.detach().numpy()
    return np.ascontiguousarray(a, dtype=dtype)
