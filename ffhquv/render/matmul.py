"""Points times small per-batch matrices, with a GPU-friendly gradient for the matrices.

``apply_matrices(points [B, P, K], mats [B, C, K]) -> [B, P, C]`` is ``points @ mats^T`` (a
rotation of vertices, SH lighting of pixels). Its backward for ``mats`` is a batched GEMM with a
tiny output (``[B, C, K]``, e.g. 3 x 9) over a long reduction (``P``: 50 176 pixels of a 224
raster): cuBLAS runs that batched shape on a handful of tiles without splitting the reduction,
1.5 ms a call for a batch of 4 on an H200, the largest single item of a fit's device time
(BENCHMARKS.md, fifteenth session). On CUDA the reduction is cut into chunks of ``CHUNK``
points, one small GEMM each in one batched call, and the chunks summed: the same gradient to
float32 rounding. On the CPU (and for short reductions) it is the plain product, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: points per chunk of the matrices' gradient reduction on CUDA
CHUNK = 256


class _ChunkedMatrixGrad(torch.autograd.Function):
    """``points @ mats^T`` whose ``mats`` gradient sums per-chunk products."""

    @staticmethod
    def forward(ctx, points: Tensor, mats: Tensor, chunk: int) -> Tensor:  # noqa: D102
        ctx.save_for_backward(points, mats)
        ctx.chunk = chunk
        return points @ mats.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        points, mats = ctx.saved_tensors
        g_points = g_mats = None
        if ctx.needs_input_grad[0]:
            g_points = grad @ mats
        if ctx.needs_input_grad[1]:
            b, p, k = points.shape
            c = mats.shape[1]
            pad = (-p) % ctx.chunk
            gp, pp = grad, points
            if pad:  # zero rows add nothing to the sums
                gp = F.pad(grad, (0, 0, 0, pad))
                pp = F.pad(points, (0, 0, 0, pad))
            s = (p + pad) // ctx.chunk
            gc = gp.reshape(b * s, ctx.chunk, c).transpose(1, 2)  # [B*S, C, L]
            pc = pp.reshape(b * s, ctx.chunk, k)  # [B*S, L, K]
            g_mats = torch.bmm(gc, pc).reshape(b, s, c, k).sum(1)
        return g_points, g_mats, None


def apply_matrices(points: Tensor, mats: Tensor, chunk: int | None = None) -> Tensor:
    """``points @ mats^T`` per batch element.

    Args:
        points: ``float32 [B, P, K]`` (or ``[B, ..., K]``: the middle axes are one ``P``;
            or ``[P, K]``, the same points for each matrix).
        mats: ``float32 [B, C, K]``.
        chunk: points per chunk of the ``mats`` gradient; None: ``CHUNK`` on CUDA when
            ``P > 2 * CHUNK``, else the plain product (0 forces the plain product).
    Returns:
        ``float32 [B, P, C]`` (``[B, ..., C]``), differentiable in both.
    """
    if points.dim() == 2 and mats.dim() == 3:  # [P, K] shared by the batch (broadcast)
        points = points[None].expand(mats.shape[0], -1, -1)
    if points.dim() < 2 or mats.dim() != 3 or points.shape[0] != mats.shape[0] \
            or points.shape[-1] != mats.shape[2]:
        raise ValueError(f"apply_matrices: points [B, ..., K] and mats [B, C, K], got "
                         f"{tuple(points.shape)} and {tuple(mats.shape)}")
    if points.dim() != 3:  # [B, ..., K]: the middle axes as one
        out = apply_matrices(points.reshape(points.shape[0], -1, points.shape[-1]), mats, chunk)
        return out.reshape(*points.shape[:-1], mats.shape[1])
    if chunk is None:
        chunk = CHUNK if points.is_cuda and points.shape[1] > 2 * CHUNK else 0
    if chunk <= 0 or not torch.is_grad_enabled() or not mats.requires_grad:
        return points @ mats.transpose(1, 2)
    return _ChunkedMatrixGrad.apply(points, mats, chunk)
