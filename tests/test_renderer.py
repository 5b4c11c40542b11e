"""The pure-torch rasteriser backend against brute-force references and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffhquv.errors import InvalidInput, PreconditionFailed
from ffhquv.render.raster import RasterBackend, TorchRasterizer, get_backend
from ffhquv.render.raster.torch_backend import _opposite_vertices

torch.set_num_threads(min(2, torch.get_num_threads()))


def random_mesh(seed: int, b: int = 2, v: int = 14, t: int = 12, dtype=torch.float64):
    """Random triangles in clip space with varied w (perspective) and z."""
    g = torch.Generator().manual_seed(seed)
    ndc = torch.rand(b, v, 3, generator=g, dtype=dtype) * 2.2 - 1.1
    ndc[..., 2] *= 0.9
    w = torch.rand(b, v, 1, generator=g, dtype=dtype) * 1.5 + 0.5
    pos = torch.cat([ndc * w, w], -1)
    tri = torch.randint(0, v, (t, 3), generator=g, dtype=torch.int32)
    tri = tri[(tri[:, 0] != tri[:, 1]) & (tri[:, 1] != tri[:, 2]) & (tri[:, 0] != tri[:, 2])]
    return pos, tri


def brute_force(pos: torch.Tensor, tri: torch.Tensor, h: int, w: int):
    """Per-pixel reference in float64 numpy: for each pixel the sorted list of
    (z/w, triangle, u, v, min screen barycentric) of the triangles covering its centre."""
    p = pos.detach().double().numpy()
    nd = p[..., :3] / p[..., 3:]
    tr = tri.long().numpy()
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    x = (jj + 0.5) / w * 2 - 1
    y = (ii + 0.5) / h * 2 - 1
    out = []
    for b in range(p.shape[0]):
        frags = [[[] for _ in range(w)] for _ in range(h)]
        for k, (a0, a1, a2) in enumerate(tr):
            (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = nd[b, a0], nd[b, a1], nd[b, a2]
            area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            if area == 0:
                continue
            b0 = ((x1 - x) * (y2 - y) - (x2 - x) * (y1 - y)) / area
            b1 = ((x2 - x) * (y0 - y) - (x0 - x) * (y2 - y)) / area
            b2 = 1 - b0 - b1
            z = b0 * z0 + b1 * z1 + b2 * z2
            q0, q1, q2 = b0 / p[b, a0, 3], b1 / p[b, a1, 3], b2 / p[b, a2, 3]
            qs = q0 + q1 + q2
            mb = np.minimum(np.minimum(b0, b1), b2)
            for i, j in zip(*np.nonzero((mb > -1e-9) & (np.abs(z) <= 1)), strict=False):
                frags[i][j].append((z[i, j], k, q0[i, j] / qs[i, j], q1[i, j] / qs[i, j],
                                    mb[i, j]))
        for row in frags:
            for f in row:
                f.sort()
        out.append(frags)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rasterize_matches_brute_force(seed):
    pos, tri = random_mesh(seed)
    h, w = 19, 27
    rast = TorchRasterizer().rasterize(pos, tri, (h, w))
    assert rast.shape == (2, h, w, 4) and rast.dtype == pos.dtype
    ref = brute_force(pos, tri, h, w)
    checked = empty = 0
    for b in range(2):
        for i in range(h):
            for j in range(w):
                f = ref[b][i][j]
                got = rast[b, i, j]
                if not f:
                    assert float(got[3]) == 0 and float(got.abs().sum()) == 0
                    empty += 1
                    continue
                z, k, u, v, mb = f[0]
                ambiguous = mb < 1e-6 or (len(f) > 1 and f[1][0] - z < 1e-6)
                if ambiguous:
                    continue
                assert int(got[3]) == k + 1, (b, i, j, f, got)
                assert abs(float(got[0]) - u) < 1e-5
                assert abs(float(got[1]) - v) < 1e-5
                assert abs(float(got[2]) - z) < 1e-6
                checked += 1
    assert checked > 50 and empty > 20


def test_rasterize_float32_and_int64_tri_agree():
    pos, tri = random_mesh(5)
    be = TorchRasterizer()
    a = be.rasterize(pos, tri, (32, 32))
    b = be.rasterize(pos.float(), tri.long(), (32, 32))
    same = a[..., 3] == b[..., 3]
    assert same.float().mean() > 0.98  # only pixels exactly on edges may differ
    assert torch.allclose(a[..., :3][same].float(), b[..., :3][same], atol=1e-4)


def grid_mesh(n: int, jitter: float, seed: int = 0):
    """An n x n grid of quads (two triangles each) over most of the screen, w = 1."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.linspace(-0.9, 0.9, n + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    xy = torch.stack([xx, yy], -1)
    xy[1:-1, 1:-1] += (torch.rand(n - 1, n - 1, 2, generator=g, dtype=torch.float64) - 0.5) * (
        jitter * 1.8 / n)
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    tri = torch.cat([torch.stack([a, b, d], -1).view(-1, 3),
                     torch.stack([a, d, c], -1).view(-1, 3)]).int()
    pos = torch.cat([xy.view(-1, 2), torch.zeros((n + 1) ** 2, 1, dtype=torch.float64),
                     torch.ones((n + 1) ** 2, 1, dtype=torch.float64)], -1)
    return pos[None], tri


@pytest.mark.parametrize("n,jitter,res", [(8, 0.0, 64), (16, 0.6, 50), (10, 0.0, 40)])
def test_shared_edges_are_watertight(n, jitter, res):
    """Every pixel centre inside a grid mesh is covered exactly once, including centres lying
    exactly on shared edges (the unjittered grid aligns diagonals with pixel centres)."""
    pos, tri = grid_mesh(n, jitter)
    for p in (pos, pos.float()):
        be = TorchRasterizer()
        count = be.coverage_count(p, tri, (res, res))[0]
        lo, hi = int(np.ceil(0.05 * res - 0.5)) + 1, int(0.95 * res - 0.5) - 1
        inner = count[lo:hi, lo:hi]
        assert int(inner.min()) == 1 and int(inner.max()) == 1
        assert int(count.max()) == 1
        rast = be.rasterize(p, tri, (res, res))
        assert bool((rast[0, lo:hi, lo:hi, 3] > 0).all())


def test_nearest_depth_wins_and_ties_take_lowest_id():
    # two coplanar full-screen quads at different depths, the far one first
    quad = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * 1.5
    far = torch.cat([quad, torch.full((4, 1), 0.5), torch.ones(4, 1)], 1)
    near = torch.cat([quad, torch.full((4, 1), -0.5), torch.ones(4, 1)], 1)
    pos = torch.cat([far, near])[None]
    tri = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]], dtype=torch.int32)
    rast = TorchRasterizer().rasterize(pos, tri, (8, 8))
    assert set(rast[0, ..., 3].unique().tolist()) == {3.0, 4.0}
    assert torch.allclose(rast[0, ..., 2], torch.tensor(-0.5))
    # identical depth: the lower triangle id wins
    pos2 = torch.cat([far, far])[None]
    rast2 = TorchRasterizer().rasterize(pos2, tri, (8, 8))
    assert set(rast2[0, ..., 3].unique().tolist()) == {1.0, 2.0}
    # depth clipping: beyond z/w = 1 nothing is drawn
    clipped = torch.cat([quad, torch.full((4, 1), 1.2), torch.ones(4, 1)], 1)[None]
    assert float(TorchRasterizer().rasterize(clipped, tri[:2], (8, 8))[..., 3].sum()) == 0


def test_pixel_centre_convention():
    """Row 0 is ndc y = -1, column 0 is ndc x = -1, pixel centres at (j + 0.5) / W * 2 - 1."""
    # a thin triangle covering only the centre of pixel (row 1, col 5) of a 4 x 8 raster
    cx, cy = (5 + 0.5) / 8 * 2 - 1, (1 + 0.5) / 4 * 2 - 1
    e = 0.05
    pos = torch.tensor([[[cx - e, cy - e, 0, 1], [cx + e, cy - e, 0, 1], [cx, cy + e, 0, 1]]])
    rast = TorchRasterizer().rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (4, 8))
    cov = (rast[0, ..., 3] > 0).nonzero().tolist()
    assert cov == [[1, 5]]


def test_barycentric_gradients_match_finite_differences():
    pos, tri = random_mesh(7, b=1, v=6, t=4)
    be = TorchRasterizer()
    h, w = 12, 10
    with torch.no_grad():
        ids = be.rasterize(pos, tri, (h, w))[..., 3].clone()
    # only keep pixels well inside their triangle so a small perturbation keeps the ids
    weights = torch.randn(1, h, w, 3, dtype=torch.float64)

    def f(p):
        r = be.rasterize(p, tri, (h, w))
        assert torch.equal(r[..., 3], ids)
        return (r[..., :3] * weights).sum()

    p = pos.clone().requires_grad_(True)
    f(p).backward()
    eps = 1e-7
    num = torch.zeros_like(pos)
    for idx in np.ndindex(*pos.shape):
        d = torch.zeros_like(pos)
        d[idx] = eps
        num[idx] = (f(pos + d) - f(pos - d)) / (2 * eps)
    assert torch.allclose(p.grad, num, atol=1e-5, rtol=1e-4), (p.grad - num).abs().max()


def test_interpolate_values_and_gradients():
    pos, tri = random_mesh(8, b=2, v=8, t=6)
    be = TorchRasterizer()
    rast = be.rasterize(pos, tri, (9, 11))
    attr = torch.randn(2, 8, 3, dtype=torch.float64)
    out = be.interpolate(attr, rast, tri)
    assert out.shape == (2, 9, 11, 3)
    cov = rast[..., 3] > 0
    assert float(out[~cov].abs().sum()) == 0
    # the interpolated clip position reproduces the pixel's own ndc position
    ndc = be.interpolate(pos, rast, tri)
    xy = ndc[..., :2] / ndc[..., 3:4]
    jj, ii = torch.meshgrid(torch.arange(11), torch.arange(9), indexing="xy")
    px = (jj + 0.5) / 11 * 2 - 1
    py = (ii + 0.5) / 9 * 2 - 1
    assert torch.allclose(xy[..., 0][cov], px.expand(2, -1, -1)[cov].double(), atol=1e-9)
    assert torch.allclose(xy[..., 1][cov], py.expand(2, -1, -1)[cov].double(), atol=1e-9)
    # [V, C] broadcast equals [B, V, C]
    a2 = torch.randn(8, 2, dtype=torch.float64)
    assert torch.allclose(be.interpolate(a2, rast, tri), be.interpolate(a2.expand(2, -1, -1),
                                                                        rast, tri))
    # gradients in attr and in the barycentric channels of rast
    ids = rast[..., 2:].detach()

    def f(a, bary):
        return be.interpolate(a, torch.cat([bary, ids], -1), tri)

    assert torch.autograd.gradcheck(f, (attr.clone().requires_grad_(True),
                                        rast[..., :2].detach().clone().requires_grad_(True)))


def test_texture_matches_manual_bilinear_and_gradients():
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(2, 5, 7, 3, generator=g, dtype=torch.float64)
    uv = torch.rand(2, 4, 6, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    be = TorchRasterizer()
    out = be.texture(tex, uv)
    # manual bilinear with texel centres at ((j + .5) / W, (i + .5) / H), clamp to edge
    x = (uv[..., 0] * 7 - 0.5).clamp(0, 6)
    y = (uv[..., 1] * 5 - 0.5).clamp(0, 4)
    x0, y0 = x.floor().long().clamp(max=5), y.floor().long().clamp(max=3)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    bi = torch.arange(2)[:, None, None]
    ref = (tex[bi, y0, x0] * (1 - fx) * (1 - fy) + tex[bi, y0, x0 + 1] * fx * (1 - fy)
           + tex[bi, y0 + 1, x0] * (1 - fx) * fy + tex[bi, y0 + 1, x0 + 1] * fx * fy)
    assert torch.allclose(out, ref, atol=1e-12)
    # texel centre lookups return the texel exactly; (0, 0) is the first texel in memory
    centre = torch.tensor([[[[0.5 / 7, 0.5 / 5], [6.5 / 7, 0.5 / 5]]]], dtype=torch.float64)
    got = be.texture(tex[:1], centre)
    assert torch.allclose(got[0, 0, 0], tex[0, 0, 0]) and torch.allclose(got[0, 0, 1],
                                                                           tex[0, 0, 6])
    uv_in = torch.rand(2, 3, 3, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    assert torch.autograd.gradcheck(lambda t, u: be.texture(t, u),
                                    (tex.clone().requires_grad_(True),
                                     uv_in.clone().requires_grad_(True)))


def test_opposite_vertices():
    tri = torch.tensor([[0, 1, 2], [2, 1, 3], [3, 1, 4]])
    opp = _opposite_vertices(tri, 5)
    # edge i of a triangle joins corners i+1 and i+2
    assert opp[0].tolist() == [3, -1, -1]  # edge (1, 2) is shared with triangle 1
    assert opp[1].tolist() == [4, -1, 0]
    assert opp[2].tolist() == [-1, -1, 2]


def silhouette_setup(dtype=torch.float64):
    """A triangle over a background whose right edge is nearly vertical."""
    pos = torch.tensor([[[-0.6, -0.7, 0.0, 1.0], [0.23, -0.75, 0.0, 1.0],
                         [0.27, 0.8, 0.0, 1.0]]], dtype=dtype)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    return pos, tri


def test_antialias_blends_silhouettes_and_matches_finite_differences():
    pos, tri = silhouette_setup()
    be = TorchRasterizer()
    h = w = 16
    rast = be.rasterize(pos, tri, (h, w))
    color = (rast[..., 3:4] > 0).double().expand(-1, -1, -1, 3).contiguous()
    aa = be.antialias(color, rast, pos, tri)
    # values strictly between 0 and 1 appear, only next to the silhouette
    frac = ((aa > 1e-6) & (aa < 1 - 1e-6))[..., 0]
    assert int(frac.sum()) > 10
    assert bool(torch.equal(aa[..., 0][~frac].round(), aa[..., 0][~frac]))
    # coverage is preserved on average along each row: the antialiased mask sums to the area
    area_px = 0.5 * abs((0.23 + 0.6) * (0.8 + 0.7) - (0.27 + 0.6) * (-0.75 + 0.7)) * (w / 2) * (
        h / 2)
    assert abs(float(aa[..., 0].sum()) - area_px) < 0.1 * area_px
    # position gradients of a weighted sum agree with central differences
    weights = torch.rand(1, h, w, 3, dtype=torch.float64)

    def f(p):
        r = be.rasterize(p, tri, (h, w))
        c = (r[..., 3:4] > 0).double().expand(-1, -1, -1, 3)
        return (be.antialias(c, r, p, tri) * weights).sum()

    p = pos.clone().requires_grad_(True)
    f(p).backward()
    assert float(p.grad.abs().sum()) > 0
    eps = 1e-6
    num = torch.zeros_like(pos)
    for idx in np.ndindex(*pos.shape):
        d = torch.zeros_like(pos)
        d[idx] = eps
        num[idx] = (f(pos + d) - f(pos - d)) / (2 * eps)
    assert torch.allclose(p.grad, num, atol=1e-5, rtol=1e-4), (p.grad, num)
    # colour gradients: antialias is linear in colour
    assert torch.autograd.gradcheck(lambda c: be.antialias(c, rast, pos, tri),
                                    (color.clone().requires_grad_(True),))


def test_antialias_ignores_interior_edges():
    """Two triangles forming a quad: the shared diagonal is not a silhouette."""
    pos = torch.tensor([[[-0.7, -0.7, 0, 1], [0.7, -0.7, 0, 1], [0.7, 0.7, 0, 1],
                         [-0.7, 0.7, 0, 1]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    be = TorchRasterizer()
    rast = be.rasterize(pos, tri, (20, 20))
    color = torch.where(rast[..., 3:4] == 1, 1.0, 0.5).double() * (rast[..., 3:4] > 0)
    aa = be.antialias(color, rast, pos, tri)
    inner = (rast[..., 3] > 0)
    inner[:, [3, 16], :] = False
    inner[:, :, [3, 16]] = False
    assert torch.equal(aa[inner], color[inner])


def test_get_backend_and_errors():
    be = get_backend("cpu")
    assert isinstance(be, TorchRasterizer) and isinstance(be, RasterBackend)
    assert get_backend(torch.device("cpu"), prefer="torch").name == "torch"
    if not torch.cuda.is_available():
        with pytest.raises(PreconditionFailed):
            get_backend("cpu", prefer="nvdiffrast")
    with pytest.raises(InvalidInput):
        get_backend("cpu", prefer="opengl")
    pos, tri = random_mesh(0)
    with pytest.raises(InvalidInput, match=r"pos must be \[B, V, 4\]"):
        be.rasterize(pos[0], tri, (4, 4))
    with pytest.raises(InvalidInput, match="tri indices"):
        be.rasterize(pos, tri + 100, (4, 4))
    with pytest.raises(InvalidInput, match="int32 or int64"):
        be.rasterize(pos, tri.float(), (4, 4))
    with pytest.raises(InvalidInput, match="resolution"):
        be.rasterize(pos, tri, (0, 4))
    with pytest.raises(InvalidInput, match="rast must be"):
        be.interpolate(pos, torch.zeros(2, 4, 4), tri)
    with pytest.raises(InvalidInput, match="boundary_mode"):
        be.texture(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 2), boundary_mode="wrap")


def test_empty_and_offscreen_inputs():
    be = TorchRasterizer()
    pos = torch.tensor([[[5.0, 5.0, 0, 1], [6.0, 5.0, 0, 1], [5.0, 6.0, 0, 1],
                         [0, 0, 0, -1.0]]])
    tri = torch.tensor([[0, 1, 2], [0, 1, 3]], dtype=torch.int32)
    rast = be.rasterize(pos.requires_grad_(True), tri, (8, 8))
    assert float(rast.detach().abs().sum()) == 0
    rast.sum().backward()  # no covered pixels, still differentiable
    empty = be.rasterize(pos, tri[:0], (4, 4))
    assert empty.shape == (1, 4, 4, 4)
    # a visible triangle next to a degenerate one and one behind the eye: finite gradients
    p = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [0, 0.8, 0, 1], [0.1, 0.1, 0, 1],
                       [0.2, 0.2, 0, 1], [0.3, 0.3, 0, 1], [0.2, 0.1, 0, -0.5]]],
                     requires_grad=True)
    t = torch.tensor([[0, 1, 2], [3, 4, 5], [0, 1, 6]], dtype=torch.int32)
    r = be.rasterize(p, t, (16, 16))
    assert set(r[..., 3].unique().tolist()) == {0.0, 1.0}
    (r[..., :3].sum() + be.antialias(r[..., :3].contiguous(), r, p, t).sum()).backward()
    assert torch.isfinite(p.grad).all() and float(p.grad[0, :3].abs().sum()) > 0


def test_chunked_rasterisation_matches_single_pass():
    pos, tri = random_mesh(11, b=3, v=40, t=60)
    a = TorchRasterizer().rasterize(pos, tri, (48, 40))
    b = TorchRasterizer(max_candidates=300).rasterize(pos, tri, (48, 40))
    assert torch.equal(a, b)


def test_take_rows_is_advanced_indexing_with_the_same_gradient_as_index_select():
    """``take_rows`` (advanced indexing on the host, ``index_select`` on CUDA): both
    formulations give the same values and gradients, repeated indices included."""
    from ffhquv.render.renderer import take_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 3, generator=g, requires_grad=True)
    idx = torch.randint(0, 50, (80,), generator=g)
    w = torch.randn(2, 80, 3, generator=g)
    (take_rows(x, idx) * w).sum().backward()
    ga = x.grad.clone()
    x.grad = None
    (x.index_select(1, idx) * w).sum().backward()
    torch.testing.assert_close(take_rows(x, idx), x.index_select(1, idx), rtol=0, atol=0)
    torch.testing.assert_close(ga, x.grad, rtol=1e-6, atol=1e-6)
