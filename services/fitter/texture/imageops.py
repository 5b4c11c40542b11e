"""OpenCV's image filters of the texture code, on torch tensors where they live.

The texture completion works on ``[S, S]`` and ``[S, S, C]`` float32 maps. On the host (CPU
tensors, numpy views without a copy) each filter here is OpenCV's own call, exactly what the
completion did in numpy. On a GPU every one of them is a separable linear filter, so it is
two dense operator matrices applied as matmuls, ``A_rows @ X @ A_cols^T`` per channel; the
matrices are OpenCV's own (read off by filtering an identity: :func:`resize`,
:func:`gaussian_blur`) or OpenCV's documented formula (:func:`pyr_down`, :func:`pyr_up`),
built once per filter, size and device. Both agree to float32 rounding
(``tests/test_texture_imageops.py``, which also runs the GPU formulation on the CPU).

Shapes: ``x`` is ``float32 [H, W]`` or ``[H, W, C]``; pixel centres at integers, OpenCV's
conventions (``INTER_AREA`` / ``INTER_LINEAR`` with half-pixel centres, ``BORDER_REFLECT``
for the blur, ``BORDER_REFLECT_101`` for the pyramid).
"""

from __future__ import annotations

import enum
import functools
import threading

import cv2
import numpy as np
import torch
from torch import Tensor


class Interp(enum.Enum):
    """How :func:`resize` resamples: OpenCV's ``INTER_AREA`` (shrinking) or ``INTER_LINEAR``."""

    AREA = cv2.INTER_AREA
    LINEAR = cv2.INTER_LINEAR


#: run the GPU formulation (operator matrices) for CPU tensors too: tests only
FORCE_MATRICES = False

_OPS: dict[tuple, Tensor] = {}
_LOCK = threading.Lock()


def _on_host(x: Tensor) -> bool:
    return not x.is_cuda and not FORCE_MATRICES


def _np(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)


def _back(a: np.ndarray, like: Tensor) -> Tensor:
    """OpenCV's result as a tensor shaped like ``like`` (OpenCV drops a last axis of 1)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if like.dim() == 3 and t.dim() == 2:
        t = t[..., None]
    return t


def _operator(key: tuple, build, device: torch.device) -> Tensor:
    """The cached ``float32 [n_out, n_in]`` operator ``key`` on ``device`` (``build()`` makes it
    as numpy)."""
    k = (*key, str(device))
    with _LOCK:
        op = _OPS.get(k)
    if op is None:
        op = torch.from_numpy(np.ascontiguousarray(build(), dtype=np.float32)).to(device)
        with _LOCK:
            _OPS[k] = op
    return op


def _separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ X @ cols^T`` on each channel of ``x [H, W]`` / ``[H, W, C]``."""
    if x.dim() == 2:
        return rows @ x @ cols.T
    return (rows @ x.permute(2, 0, 1) @ cols.T).permute(1, 2, 0)


def _resize_op(n_in: int, n_out: int, interp: Interp) -> np.ndarray:
    # OpenCV resizing the rows of an identity along them: column j is what input j becomes
    return cv2.resize(np.eye(n_in, dtype=np.float32), (n_out, n_in),
                      interpolation=interp.value).T


def resize(x: Tensor, size: tuple[int, int], interp: Interp) -> Tensor:
    """``cv2.resize(x, (w, h), interpolation)`` of ``x [H, W(, C)]`` to ``size = (h, w)``."""
    h, w = size
    if _on_host(x):
        return _back(cv2.resize(_np(x), (w, h), interpolation=interp.value), x)
    dev = x.device
    rows = _operator(("resize", x.shape[0], h, interp), lambda: _resize_op(x.shape[0], h, interp),
                     dev)
    cols = _operator(("resize", x.shape[1], w, interp), lambda: _resize_op(x.shape[1], w, interp),
                     dev)
    return _separable(x, rows, cols)


def _kernel_size(sigma: float) -> int:
    """OpenCV's Gaussian kernel size for float images and ``ksize = (0, 0)``."""
    return int(round(sigma * 8 + 1)) | 1


def _blur_op(n: int, sigma: float) -> np.ndarray:
    # a symmetric kernel: blurring the identity's rows gives the operator (its transpose)
    return cv2.GaussianBlur(np.eye(n, dtype=np.float32), (_kernel_size(sigma), 1),
                            sigmaX=sigma, sigmaY=0, borderType=cv2.BORDER_REFLECT).T


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``cv2.GaussianBlur(x, (0, 0), sigma, sigma, borderType=BORDER_REFLECT)``."""
    if _on_host(x):
        return _back(cv2.GaussianBlur(_np(x), (0, 0), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REFLECT), x)
    dev, s = x.device, float(sigma)
    rows = _operator(("blur", x.shape[0], s), lambda: _blur_op(x.shape[0], s), dev)
    cols = _operator(("blur", x.shape[1], s), lambda: _blur_op(x.shape[1], s), dev)
    return _separable(x, rows, cols)


def _reflect101(i: int, n: int) -> int:
    i = abs(i)
    return 2 * (n - 1) - i if i >= n else i


def _pyr_down_op(n: int) -> np.ndarray:
    """OpenCV's pyrDown along one axis: the 5-tap binomial (1 4 6 4 1) / 16 at the even
    samples, ``BORDER_REFLECT_101``."""
    taps = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
    op = np.zeros(((n + 1) // 2, n))
    for i in range(op.shape[0]):
        for k, t in enumerate(taps):
            op[i, _reflect101(2 * i + k - 2, n)] += t
    return op


def _pyr_up_op(n: int) -> np.ndarray:
    """OpenCV's pyrUp along one axis, ``n`` -> ``2 n``: even outputs ``(x[i-1] + 6 x[i] +
    x[i+1]) / 8``, odd ``(x[i] + x[i+1]) / 2``, ``x[-1] = x[1]`` and ``x[n] = x[n-1]``."""
    op = np.zeros((2 * n, n))
    for i in range(n):
        for j, t in ((i - 1, 1 / 8), (i, 6 / 8), (i + 1, 1 / 8)):
            op[2 * i, _reflect101(j, n) if j < n else n - 1] += t
        for j, t in ((i, 0.5), (i + 1, 0.5)):
            op[2 * i + 1, min(j, n - 1)] += t
    return op


def pyr_down(x: Tensor) -> Tensor:
    """``cv2.pyrDown(x)``: ``[H, W(, C)]`` -> ``[(H + 1) // 2, (W + 1) // 2(, C)]``."""
    if _on_host(x):
        return _back(cv2.pyrDown(_np(x)), x)
    dev = x.device
    rows = _operator(("pyrdown", x.shape[0]), lambda: _pyr_down_op(x.shape[0]), dev)
    cols = _operator(("pyrdown", x.shape[1]), lambda: _pyr_down_op(x.shape[1]), dev)
    return _separable(x, rows, cols)


def pyr_up(x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """``cv2.pyrUp(x, dstsize=(w, h))``: ``[H, W(, C)]`` -> ``size = (h, w)`` (default
    ``(2 H, 2 W)``; an odd side one less is OpenCV's too, computed on the host)."""
    h, w = x.shape[0], x.shape[1]
    size = (2 * h, 2 * w) if size is None else tuple(size)
    if _on_host(x) or size != (2 * h, 2 * w):
        out = _back(cv2.pyrUp(_np(x.cpu()), dstsize=(size[1], size[0])), x)
        return out.to(x.device)
    dev = x.device
    rows = _operator(("pyrup", h), lambda: _pyr_up_op(h), dev)
    cols = _operator(("pyrup", w), lambda: _pyr_up_op(w), dev)
    return _separable(x, rows, cols)


def erode3(x: Tensor) -> Tensor:
    """``cv2.erode(x, np.ones((3, 3)))`` of ``float32 [H, W]``: the minimum of each 3 x 3
    neighbourhood (the border does not erode)."""
    if _on_host(x):
        return _back(cv2.erode(_np(x), np.ones((3, 3), np.uint8)), x)
    return -torch.nn.functional.max_pool2d(-x[None, None], 3, stride=1, padding=1)[0, 0]


def square_max(x: Tensor, r: int) -> Tensor:
    """The maximum over the ``(2 r + 1)`` square round each texel of ``float32 [H, W]`` (the
    border does not grow), as a row pass and a column pass: ``4 r + 2`` comparisons a texel
    instead of the square's ``(2 r + 1)^2`` (r = 16 at 1024: 2.0 s against 0.35 s on cpu2).
    Minus it of minus ``x`` erodes."""
    x = torch.nn.functional.max_pool2d(x[None, None], (1, 2 * r + 1), stride=1, padding=(0, r))
    return torch.nn.functional.max_pool2d(x, (2 * r + 1, 1), stride=1, padding=(r, 0))[0, 0]


def box_mean(x: Tensor, r: int) -> Tensor:
    """The mean over the ``(2 r + 1)`` square round each texel of ``float32 [H, W]``, of the
    texels inside the image, as a row pass and a column pass."""
    pool = torch.nn.functional.avg_pool2d
    x = pool(x[None, None], (1, 2 * r + 1), stride=1, padding=(0, r), count_include_pad=False)
    return pool(x, (2 * r + 1, 1), stride=1, padding=(r, 0), count_include_pad=False)[0, 0]


def distance_inside(mask: Tensor) -> Tensor:
    """``cv2.distanceTransform(mask, DIST_L2, 5)`` of bool ``[H, W]``: each true pixel's
    distance to the nearest false one (float32, on ``mask``'s device; computed by OpenCV on
    the host, one byte a pixel each way)."""
    m = mask.detach().to("cpu", torch.uint8).numpy()
    d = cv2.distanceTransform(np.ascontiguousarray(m), cv2.DIST_L2, 5)
    return torch.from_numpy(d).to(mask.device)


def median(x: Tensor, dim: int = 0) -> Tensor:
    """``np.median(x, axis=dim)`` of a float tensor: the middle value, or the mean of the two
    middle ones for an even count (``torch.median`` takes the lower one; ``torch.quantile``
    refuses more than 2 ** 24 elements, a 4096 atlas's skin)."""
    n = x.shape[dim]
    s = x.sort(dim).values
    hi = s.select(dim, n // 2)
    return hi if n % 2 else (s.select(dim, n // 2 - 1) + hi) / 2


def numpy_io(fn):
    """Let a torch function of the texture code take numpy arrays too: numpy arguments become
    CPU tensors (no copy) and, when any argument was numpy, tensor results come back as numpy
    (tuples element by element). Tensors pass as they are."""
    def conv(a):
        return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a

    def back(r):
        if isinstance(r, Tensor):
            return r.detach().cpu().numpy()
        if isinstance(r, tuple):
            return tuple(back(x) for x in r)
        return r

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_numpy = any(isinstance(a, np.ndarray) for a in (*args, *kwargs.values()))
        out = fn(*(conv(a) for a in args), **{k: conv(v) for k, v in kwargs.items()})
        return back(out) if was_numpy else out

    return wrapper


@numpy_io
def normalized_blur(img: Tensor, w: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Weighted Gaussian smoothing that ignores weight-0 texels.

    Args:
        img: ``float32 [S, S, C]``; w: ``float32 [S, S]`` (tensors, or numpy:
            :func:`numpy_io`).
    Returns:
        smoothed ``[S, S, C]`` and the smoothed weight ``[S, S]``.
    """
    # downsample first: large sigmas on 1024 maps are slow
    s = img.shape[0]
    f = max(1, int(sigma // 4))
    x = img * w[..., None]
    if f > 1:
        small = (s // f, s // f)
        num = resize(gaussian_blur(resize(x, small, Interp.AREA), sigma / f), (s, s),
                     Interp.LINEAR)
        den = resize(gaussian_blur(resize(w, small, Interp.AREA), sigma / f), (s, s),
                     Interp.LINEAR)
    else:
        num = gaussian_blur(x, sigma)
        den = gaussian_blur(w, sigma)
    if num.dim() == 2:
        num = num[..., None]
    return num / den.clamp(min=1e-6)[..., None], den
