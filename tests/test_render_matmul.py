"""``apply_matrices``: the product and both gradients of its chunked (CUDA) formulation equal
the plain batched product's, for any chunk length, padded or not (run here on the CPU by
asking for the chunks)."""

from __future__ import annotations

import pytest
import torch

from ffhquv.render.camera import rigid_transform, rotate_normals
from ffhquv.render.matmul import apply_matrices
from ffhquv.render.sh import irradiance


def _grads(points, mats, chunk):
    p = points.clone().requires_grad_()
    m = mats.clone().requires_grad_()
    w = torch.linspace(-1, 1, p.shape[0] * p.shape[1] * m.shape[1]).reshape(
        p.shape[0], p.shape[1], m.shape[1])
    out = apply_matrices(p, m, chunk)
    (out * w).sum().backward()
    return out.detach(), p.grad, m.grad


@pytest.mark.parametrize("p,chunk", [(1000, 256), (1024, 256), (50, 16), (7, 256)])
def test_chunked_gradient_equals_the_plain_product(p, chunk):
    g = torch.Generator().manual_seed(p)
    points = torch.randn(3, p, 9, generator=g)
    mats = torch.randn(3, 3, 9, generator=g)
    ref = _grads(points, mats, 0)
    got = _grads(points, mats, chunk)
    for r, x in zip(ref, got, strict=True):
        torch.testing.assert_close(x, r, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ref[0], torch.einsum("bpk,bck->bpc", points, mats))


def test_shapes_other_than_three_axes():
    g = torch.Generator().manual_seed(0)
    mats = torch.randn(2, 3, 3, generator=g)
    grid = torch.randn(2, 4, 5, 3, generator=g)
    out = apply_matrices(grid, mats)
    assert out.shape == (2, 4, 5, 3)
    torch.testing.assert_close(out[1, 2, 3], mats[1] @ grid[1, 2, 3])
    shared = torch.randn(6, 3, generator=g)
    torch.testing.assert_close(apply_matrices(shared, mats)[1], shared @ mats[1].T)
    with pytest.raises(ValueError, match=r"points \[B, \.\.\., K\]"):
        apply_matrices(torch.zeros(2, 5, 4), mats)


def test_callers_keep_their_meaning():
    """The camera's rigid transform and the SH irradiance give what they gave as plain
    products (the formulation changed, not the maths)."""
    from ffhquv.render.camera import euler_to_rotation

    g = torch.Generator().manual_seed(1)
    pts = torch.randn(2, 30, 3, generator=g)
    ang = torch.randn(2, 3, generator=g) * 0.3
    tr = torch.randn(2, 3, generator=g)
    rot = euler_to_rotation(ang)
    torch.testing.assert_close(rigid_transform(pts, ang, tr),
                               torch.einsum("bij,bnj->bni", rot, pts) + tr[:, None])
    torch.testing.assert_close(rotate_normals(pts, ang), torch.einsum("bij,bnj->bni", rot, pts))
    n = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3, generator=g), dim=-1)
    gamma = torch.zeros(2, 27)
    assert irradiance(n, gamma).shape == (2, 4, 4, 3)
