"""A differentiable rasteriser in plain torch (any device), with nvdiffrast.torch semantics.

Conventions are those of :mod:`ffhquv.render.raster.base` (clip space, pixel centres, the
``rast`` layout, texture coordinates).

How :func:`rasterize` works (vectorised, no Python loop over triangles):

1. Vertices go to continuous pixel coordinates ``sx = (x/w + 1) * W/2 - 0.5`` (pixel ``j`` has
   its centre at ``sx = j``), likewise ``sy`` for rows.
2. Each triangle's clamped bounding box is expanded to candidate pixels
   (``repeat_interleave``), processed in chunks of at most ``max_candidates``.
3. Coverage by edge functions. Each edge is evaluated in a canonical vertex order (lower vertex
   id first), so the two triangles sharing an edge compute bit-identical values of opposite
   sign; pixels exactly on an edge go to one side only (a top-left-style ownership rule). Shared
   edges are therefore watertight: no cracks, no double coverage.
4. Depth test: ``z/w`` (interpolated linearly in screen space, fragments outside [-1, 1] are
   clipped) is turned into an order-preserving int32 and packed with the triangle id into one
   int64 key; a ``scatter_reduce(amin)`` z-buffer then gives "nearest wins, lowest triangle id on
   exact ties" in one pass.
5. For the winning (pixel, triangle) pairs only, the perspective-correct barycentrics and
   ``z/w`` are recomputed from ``pos`` with autograd on, which is where gradients to ``pos`` come
   from (mathematically the same as nvdiffrast's analytic barycentric gradients).

Known simplification: triangles with a vertex at ``w <= 0`` (behind the eye) are culled instead
of being clipped against the near plane.

:func:`antialias` follows nvdiffrast's analytic antialiasing (Laine et al. 2020): for each pair of
horizontally / vertically adjacent pixels whose triangle ids differ, the front triangle is chosen,
and if its edge crossing the segment between the two pixel centres is a *silhouette* edge (no
neighbour triangle across it, or the neighbour folds back in screen space), the colour of one
pixel is blended towards the other by ``alpha = 0.5 - t`` where ``t`` is where the edge crosses
the segment. ``t`` is a differentiable function of the edge's two vertices, giving gradients to
``pos`` at silhouettes; they vanish when the blend saturates, as in nvdiffrast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.errors import InvalidInput

_EMPTY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


def _check_pos_tri(pos: Tensor, tri: Tensor) -> None:
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise InvalidInput(f"pos must be [B, V, 4] clip coordinates, got {tuple(pos.shape)}")
    if tri.dim() != 2 or tri.shape[-1] != 3:
        raise InvalidInput(f"tri must be [T, 3], got {tuple(tri.shape)}")
    if tri.dtype not in (torch.int32, torch.int64):
        raise InvalidInput(f"tri must be int32 or int64, got {tri.dtype}")
    if not pos.is_floating_point():
        raise InvalidInput(f"pos must be a float tensor, got {pos.dtype}")
    if tri.device != pos.device:
        raise InvalidInput(f"pos on {pos.device} but tri on {tri.device}")
    if tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= pos.shape[1]):
        raise InvalidInput(
            f"tri indices must lie in [0, {pos.shape[1]}), got [{int(tri.min())}, "
            f"{int(tri.max())}]"
        )


def _check_rast(rast: Tensor) -> None:
    if rast.dim() != 4 or rast.shape[-1] != 4:
        raise InvalidInput(f"rast must be [B, H, W, 4], got {tuple(rast.shape)}")


def _screen(pos: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``[B, V, 4]`` clip -> pixel coords ``sx, sy``, ``z/w`` and ``1/w`` (each ``[B, V]``)."""
    iw = 1.0 / pos[..., 3]
    sx = (pos[..., 0] * iw + 1.0) * (w * 0.5) - 0.5
    sy = (pos[..., 1] * iw + 1.0) * (h * 0.5) - 0.5
    return sx, sy, pos[..., 2] * iw, iw


def _ordered_key(z: Tensor, tid: Tensor) -> Tensor:
    """Pack float32 depth and a non-negative id into an int64 whose order is (z, id)."""
    bits = z.contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits.to(torch.int64) << 32) | tid



class _Instances(NamedTuple):
    """Per triangle instance (``n`` drawn (photo, triangle) pairs) of one rasterisation.

    Attributes:
        edges: three ``(ax, ay, gdx, gdy)`` tuples of ``[n]``: each edge's canonical start and
            its direction times the inside sign.
        zr: ``[n, 3]`` ``z_i / |area2|``.
        ylo / bh / xlo / xhi: ``[n]`` int64 bounding box (first row, rows, first / last column).
        tinst: ``[n]`` triangle index; pixbase: ``[n]`` flat index of the photo's first pixel.
        fx / fy: ``[n, 3]`` screen-space corner positions (pixels).
    """

    edges: list[tuple[Tensor, Tensor, Tensor, Tensor]]
    zr: Tensor
    ylo: Tensor
    bh: Tensor
    xlo: Tensor
    xhi: Tensor
    tinst: Tensor
    pixbase: Tensor
    fx: Tensor
    fy: Tensor

class TorchRasterizer:
    """The pure-torch backend. Works on CPU and on CUDA tensors.

    Args:
        device: default device (informational: inputs decide where work happens).
        max_candidates: upper bound on candidate (pixel, triangle) pairs held in memory at once
            (about 100 bytes each).
    """

    name = "torch"
    capturable = False  # data-dependent shapes (nonzero) in every op

    def __init__(self, device: str | torch.device = "cpu", max_candidates: int = 4_000_000):
        self.device = torch.device(device)
        self.max_candidates = int(max_candidates)

    # ------------------------------------------------------------------------------ rasterize
    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """See :meth:`RasterBackend.rasterize`. ``pos [B,V,4]``, ``tri [T,3]`` -> ``[B,H,W,4]``."""
        _check_pos_tri(pos, tri)
        h, w = int(resolution[0]), int(resolution[1])
        if h <= 0 or w <= 0:
            raise InvalidInput(f"resolution must be positive, got {resolution}")
        tri_l = tri.long()
        with torch.no_grad():
            key = self._zbuffer(pos.detach().float(), tri_l, h, w)
        pix = (key != _EMPTY).nonzero().squeeze(1)
        tid = key[pix] & _LOW32
        return self._resolve(pos, tri_l, pix, tid, h, w)

    def attach_rast(self, pos: Tensor, tri: Tensor, rast: Tensor) -> Tensor:
        """See :meth:`RasterBackend.attach_rast`: the barycentrics and ``z/w`` of the pixels
        ``rast`` covers are recomputed from ``pos`` with autograd (same values, same
        gradients as :meth:`rasterize`)."""
        _check_pos_tri(pos, tri)
        _check_rast(rast)
        b, h, w, _ = rast.shape
        if b != pos.shape[0]:
            raise InvalidInput(f"rast batch {b} does not match pos batch {pos.shape[0]}")
        flat = rast.detach().reshape(-1, 4)
        pix = (flat[:, 3] > 0).nonzero().squeeze(1)
        tid = flat[pix, 3].long() - 1
        return self._resolve(pos, tri.long(), pix, tid, h, w)

    def triangle_ids(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """Only the visible triangle per pixel: ``[B, H, W]`` long, -1 where empty."""
        _check_pos_tri(pos, tri)
        h, w = int(resolution[0]), int(resolution[1])
        with torch.no_grad():
            key = self._zbuffer(pos.detach().float(), tri.long(), h, w)
            tid = torch.where(key != _EMPTY, key & _LOW32, torch.full_like(key, -1))
        return tid.view(pos.shape[0], h, w)

    def coverage_count(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """How many triangles cover each pixel centre (no depth test): ``[B, H, W]`` long.

        Useful for overlap checks (e.g. of a UV layout rasterised in UV space)."""
        _check_pos_tri(pos, tri)
        h, w = int(resolution[0]), int(resolution[1])
        count = torch.zeros(pos.shape[0] * h * w, dtype=torch.int64, device=pos.device)
        with torch.no_grad():
            for pix, _z, _t in self._fragments(pos.detach().float(), tri.long(), h, w):
                count.index_add_(0, pix, torch.ones_like(pix))
        return count.view(pos.shape[0], h, w)

    def _fragments(self, pos: Tensor, tri: Tensor, h: int, w: int):
        """Yield covered fragments chunk by chunk: (flat pixel ``b*H*W + row*W + col``,
        ``z/w``, triangle id), all 1-D, depth-clipped to [-1, 1]."""
        b, v, _ = pos.shape
        t = tri.shape[0]
        dev = pos.device
        if t == 0 or b == 0:
            return
        sx, sy, sz, _ = _screen(pos, h, w)
        wv = pos[..., 3]
        tx, ty, tz, tw = sx[:, tri], sy[:, tri], sz[:, tri], wv[:, tri]  # [B, T, 3]
        area2 = (tx[..., 1] - tx[..., 0]) * (ty[..., 2] - ty[..., 0]) - (
            tx[..., 2] - tx[..., 0]
        ) * (ty[..., 1] - ty[..., 0])
        ok = (tw > 0).all(-1) & (area2 != 0) & torch.isfinite(area2)
        ok &= ~((tz < -1).all(-1) | (tz > 1).all(-1))
        # bounding boxes in pixel indices (centres at integers), clamped to the raster
        big = float(max(h, w) + 2)
        xlo = tx.amin(-1).clamp(-2, big).ceil().long().clamp(0, w)
        xhi = tx.amax(-1).clamp(-2, big).floor().long().clamp(-1, w - 1)
        ylo = ty.amin(-1).clamp(-2, big).ceil().long().clamp(0, h)
        yhi = ty.amax(-1).clamp(-2, big).floor().long().clamp(-1, h - 1)
        bw = (xhi - xlo + 1).clamp(min=0)
        bh = (yhi - ylo + 1).clamp(min=0)
        ok &= (bw > 0) & (bh > 0)
        inst = ok.reshape(-1).nonzero().squeeze(1)  # triangle instances (b * T + k) drawn
        if inst.numel() == 0:
            return

        # Per-instance edge table. Edge i (opposite corner i, from corner i+1 to i+2) in
        # canonical vertex order (lower id first) with start (ax, ay) and direction (dx, dy)
        # multiplied by the sign g making the edge function positive inside: two triangles
        # sharing an edge then compute exactly opposite values.
        s = torch.sign(area2).reshape(-1)[inst]
        fx, fy, fz = (a.reshape(-1, 3)[inst] for a in (tx, ty, tz))
        vid = tri[inst % t]  # [n, 3]
        edges = []
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            flip = vid[:, j] > vid[:, k]
            ax = torch.where(flip, fx[:, k], fx[:, j])
            ay = torch.where(flip, fy[:, k], fy[:, j])
            dx = torch.where(flip, fx[:, j], fx[:, k]) - ax
            dy = torch.where(flip, fy[:, j], fy[:, k]) - ay
            g = torch.where(flip, -s, s)
            edges.append((ax, ay, g * dx, g * dy))
        absa = area2.reshape(-1)[inst].abs()
        zr = fz / absa[:, None]  # z_i / |area2|: z/w = sum_i e_i * zr_i
        ylo_i, bh_i = ylo.reshape(-1)[inst], bh.reshape(-1)[inst]
        xlo_i, xhi_i = xlo.reshape(-1)[inst], xhi.reshape(-1)[inst]
        tinst = inst % t
        pixbase = (inst // t) * (h * w)
        table = _Instances(edges, zr, ylo_i, bh_i, xlo_i, xhi_i, tinst, pixbase, fx, fy)

        # chunk the instances on their bounding-box sizes (an upper bound of the candidates)
        cnt = bw.reshape(-1)[inst] * bh_i
        ends = torch.cumsum(cnt, 0)
        total = int(ends[-1])
        bounds = [0]
        if total > self.max_candidates:
            nchunks = -(-total // self.max_candidates)
            cuts = torch.searchsorted(
                ends, torch.arange(1, nchunks, device=dev) * self.max_candidates
            )
            bounds += sorted(set(int(c) + 1 for c in cuts.tolist()))
        bounds.append(int(inst.numel()))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
            if hi > lo:
                yield from self._chunk(table, lo, hi, w, pos.dtype)

    @staticmethod
    def _chunk(table: _Instances, lo: int, hi: int, w: int, dtype: torch.dtype):
        """Fragments of instances ``lo:hi``: rows of each bounding box, then the conservative
        x-span of the triangle on each row, then exact edge tests per pixel."""
        edges, zr, ylo, bh, xlo, xhi, tinst, pixbase, fx, fy = table
        dev = zr.device
        c = bh[lo:hi]
        nr = int(c.sum())
        owner = torch.repeat_interleave(torch.arange(lo, hi, device=dev), c, output_size=nr)
        first = torch.cumsum(c, 0) - c
        row = ylo[owner] + torch.arange(nr, device=dev) - first[owner - lo]
        yr = row.to(dtype)
        # x-span of the triangle on this row (from its edges), widened by half a pixel
        xs = fx[owner]
        ys = fy[owner]
        big = torch.finfo(dtype).max
        xmin = torch.full((nr,), big, dtype=dtype, device=dev)
        xmax = torch.full((nr,), -big, dtype=dtype, device=dev)
        for j, k in ((0, 1), (1, 2), (2, 0)):
            yj, yk, xj, xk = ys[:, j], ys[:, k], xs[:, j], xs[:, k]
            dy = yk - yj
            hit = ((yr - yj) * (yr - yk) <= 0)
            flat = dy.abs() < 1e-3
            tpar = ((yr - yj) / torch.where(flat, 1.0, dy)).clamp(0, 1)
            xa = torch.where(flat, torch.minimum(xj, xk), xj + tpar * (xk - xj))
            xb = torch.where(flat, torch.maximum(xj, xk), xa)
            xmin = torch.where(hit, torch.minimum(xmin, xa), xmin)
            xmax = torch.where(hit, torch.maximum(xmax, xb), xmax)
        xl = torch.maximum((xmin - 0.5).clamp(-2, 1e7).ceil().long(), xlo[owner])
        xr = torch.minimum((xmax + 0.5).clamp(-2, 1e7).floor().long(), xhi[owner])
        cw = (xr - xl + 1).clamp(min=0)
        # per-row constants: e_i(x) = c_i - gdy_i * x; z/w(x) = z0 + zx * x
        cols = []
        zrow = torch.zeros(nr, dtype=dtype, device=dev)
        zx = torch.zeros(nr, dtype=dtype, device=dev)
        zro = zr[owner]
        for i, (ax, ay, gdx, gdy) in enumerate(edges):
            a_x, a_y, g_x, g_y = ax[owner], ay[owner], gdx[owner], gdy[owner]
            ci = g_x * (yr - a_y) + g_y * a_x
            own = ((g_y > 0) | ((g_y == 0) & (g_x < 0))).to(dtype)
            cols += [ci, g_y, own]
            zrow = zrow + ci * zro[:, i]
            zx = zx - g_y * zro[:, i]
        cols += [zrow, zx]
        rowtab = torch.stack(cols, 1)  # [nr, 11]
        keep = cw > 0
        if not bool(keep.any()):
            return
        rows_k = keep.nonzero().squeeze(1)
        cw = cw[rows_k]
        n = int(cw.sum())
        tab = torch.repeat_interleave(rowtab[rows_k], cw, dim=0, output_size=n)
        ridx = torch.repeat_interleave(rows_k, cw, output_size=n)
        firstc = torch.cumsum(cw, 0) - cw
        col = torch.arange(n, device=dev) - torch.repeat_interleave(firstc - xl[rows_k], cw,
                                                                    output_size=n)
        x = col.to(dtype)
        inside = torch.ones(n, dtype=torch.bool, device=dev)
        for i in range(3):
            e = tab[:, 3 * i] - tab[:, 3 * i + 1] * x
            inside &= (e > 0) | ((e == 0) & (tab[:, 3 * i + 2] > 0))
        zw = tab[:, 9] + tab[:, 10] * x
        inside &= (zw >= -1) & (zw <= 1)
        sel = inside.nonzero().squeeze(1)
        r = ridx[sel]
        o = owner[r]
        yield pixbase[o] + row[r] * w + col[sel], zw[sel], tinst[o]

    def _zbuffer(self, pos: Tensor, tri: Tensor, h: int, w: int) -> Tensor:
        """``[B*H*W]`` int64 keys (depth, triangle id); ``_EMPTY`` where nothing is drawn."""
        key = torch.full((pos.shape[0] * h * w,), _EMPTY, dtype=torch.int64, device=pos.device)
        for pix, zw, tid in self._fragments(pos, tri, h, w):
            key.scatter_reduce_(0, pix, _ordered_key(zw.float(), tid), "amin")
        return key

    @staticmethod
    def _resolve(pos: Tensor, tri: Tensor, pix: Tensor, tid: Tensor, h: int, w: int) -> Tensor:
        """Differentiable ``(u, v, z/w, id+1)`` for the winning (pixel, triangle) pairs.

        Per triangle instance, the perspective-correct barycentric numerators ``b_i / w_i``,
        their sum and ``z/w`` are affine in the pixel position; their coefficients are computed
        with autograd (relative to a detached integer origin near the triangle, for precision),
        then evaluated at the pixel centres."""
        b, v, _ = pos.shape
        t = tri.shape[0]
        hw = h * w
        inst = (pix // hw) * t + tid
        # the per-instance setup is cheap (elementwise over B*T) unless few instances are hit
        if inst.numel() < b * t // 4:
            used, inv = torch.unique(inst, return_inverse=True)
        else:
            used = torch.arange(b * t, device=pos.device)
            inv = inst
        bi, ti = used // t, used % t
        corners = pos.reshape(b * v, 4)[bi[:, None] * v + tri[ti]]  # [U, 3, 4]
        # instances that were never drawn (w = 0, zero area) must not put inf / nan in backward
        cw = corners[..., 3]
        iw = 1.0 / torch.where(cw.detach() == 0, torch.ones_like(cw), cw)
        x = (corners[..., 0] * iw + 1.0) * (w * 0.5) - 0.5
        y = (corners[..., 1] * iw + 1.0) * (h * 0.5) - 0.5
        rx = x[:, 2].detach().floor()
        ry = y[:, 2].detach().floor()
        x = x - rx[:, None]
        y = y - ry[:, None]
        x0, x1, x2 = x.unbind(1)
        y0, y1, y2 = y.unbind(1)
        # e_i(p, q) = A_i p + B_i q + C_i: signed area of (pixel, corner i+1, corner i+2)
        a_ = torch.stack([y1 - y2, y2 - y0, y0 - y1], 1)
        b_ = torch.stack([x2 - x1, x0 - x2, x1 - x0], 1)
        c_ = torch.stack([x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0], 1)
        area = c_.sum(1, keepdim=True)
        area = torch.where(area.detach() == 0, torch.ones_like(area), area)
        scale = iw / area  # 1 / (w_i * area)
        qa, qb, qc = a_ * scale, b_ * scale, c_ * scale  # coefficients of b_i / w_i
        zi = corners[..., 2]
        coef = torch.stack(
            [qa[:, 0], qb[:, 0], qc[:, 0], qa[:, 1], qb[:, 1], qc[:, 1],
             qa.sum(1), qb.sum(1), qc.sum(1),
             (qa * zi).sum(1), (qb * zi).sum(1), (qc * zi).sum(1)], 1)  # [U, 12]
        cf = coef[inv]
        p = ((pix % w) - rx.long()[inv]).to(pos.dtype)
        q = (((pix % hw) // w) - ry.long()[inv]).to(pos.dtype)
        q0 = cf[:, 0] * p + cf[:, 1] * q + cf[:, 2]
        q1 = cf[:, 3] * p + cf[:, 4] * q + cf[:, 5]
        qs = cf[:, 6] * p + cf[:, 7] * q + cf[:, 8]
        zw = cf[:, 9] * p + cf[:, 10] * q + cf[:, 11]
        vals = torch.stack([q0 / qs, q1 / qs, zw, (tid + 1).to(pos.dtype)], 1)
        out = torch.zeros(b * hw, 4, dtype=pos.dtype, device=pos.device)
        return out.index_copy(0, pix, vals).view(b, h, w, 4)

    # ---------------------------------------------------------------------------- interpolate
    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        """See :meth:`RasterBackend.interpolate`: ``attr [B,V,C] | [V,C]`` -> ``[B,H,W,C]``."""
        _check_rast(rast)
        if attr.dim() == 2:
            attr = attr[None]
        if attr.dim() != 3:
            raise InvalidInput(f"attr must be [B, V, C] or [V, C], got {tuple(attr.shape)}")
        b, h, w, _ = rast.shape
        ba, v, c = attr.shape
        if ba not in (1, b):
            raise InvalidInput(f"attr batch {ba} does not match rast batch {b}")
        if tri.dim() != 2 or tri.shape[-1] != 3:
            raise InvalidInput(f"tri must be [T, 3], got {tuple(tri.shape)}")
        flat = rast.reshape(-1, 4)
        pix = (flat[:, 3] > 0).nonzero().squeeze(1)
        tid = flat[pix, 3].detach().long() - 1
        if tid.numel() and int(tid.max()) >= tri.shape[0]:
            raise InvalidInput(f"rast holds triangle ids up to {int(tid.max())} but tri has "
                               f"{tri.shape[0]} triangles")
        vid = tri.long()[tid]  # [N, 3]
        if ba > 1:
            vid = vid + (pix // (h * w))[:, None] * v
        a = attr.reshape(-1, c)[vid]  # [N, 3, C]
        u = flat[pix, 0:1]
        vv = flat[pix, 1:2]
        vals = u * a[:, 0] + vv * a[:, 1] + (1 - u - vv) * a[:, 2]
        dtype = torch.promote_types(attr.dtype, rast.dtype)
        out = torch.zeros(b * h * w, c, dtype=dtype, device=attr.device)
        return out.index_copy(0, pix, vals.to(dtype)).view(b, h, w, c)

    # -------------------------------------------------------------------------------- texture
    def texture(self, tex: Tensor, uv: Tensor, boundary_mode: str = "clamp") -> Tensor:
        """See :meth:`RasterBackend.texture`: bilinear, clamp to edge.

        ``tex [B|1, Ht, Wt, C]``, ``uv [B, H, W, 2]`` -> ``[B, H, W, C]``."""
        if boundary_mode != "clamp":
            raise InvalidInput(f"boundary_mode {boundary_mode!r} not supported (only 'clamp')")
        if tex.dim() != 4:
            raise InvalidInput(f"tex must be [B, Ht, Wt, C], got {tuple(tex.shape)}")
        if uv.dim() != 4 or uv.shape[-1] != 2:
            raise InvalidInput(f"uv must be [B, H, W, 2], got {tuple(uv.shape)}")
        b = uv.shape[0]
        if tex.shape[0] not in (1, b):
            raise InvalidInput(f"tex batch {tex.shape[0]} does not match uv batch {b}")
        t = tex.permute(0, 3, 1, 2)
        if t.shape[0] != b:
            t = t.expand(b, -1, -1, -1)
        # grid_sample with align_corners=False maps g in [-1, 1] to texel edges: g = 2 * uv - 1
        out = F.grid_sample(t, uv.to(t.dtype) * 2 - 1, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.permute(0, 2, 3, 1)

    # ------------------------------------------------------------------------------ antialias
    def antialias(self, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor) -> Tensor:
        """See :meth:`RasterBackend.antialias` and the module docstring."""
        _check_rast(rast)
        _check_pos_tri(pos, tri)
        if color.dim() != 4 or color.shape[:3] != rast.shape[:3]:
            raise InvalidInput(f"color {tuple(color.shape)} must be [B, H, W, C] matching rast "
                               f"{tuple(rast.shape)}")
        b, h, w, c = color.shape
        v = pos.shape[1]
        tri_l = tri.long()
        with torch.no_grad():
            items = self._aa_items(rast.detach(), pos.detach().float(), tri_l)
        if items is None:
            return color
        p0, p1, ds, down, va, vb, cpix = items
        # differentiable crossing position of the chosen edge (va -> vb)
        pf = pos.reshape(b * v, 4)
        hw = h * w
        bi = cpix // hw
        crow = ((cpix % hw) // w).to(pos.dtype)
        ccol = (cpix % w).to(pos.dtype)
        ends = pf[torch.stack([bi * v + va, bi * v + vb], 1)]  # [N, 2, 4]
        iw = 1.0 / ends[..., 3]
        x = (ends[..., 0] * iw + 1.0) * (w * 0.5) - 0.5 - ccol[:, None]
        y = (ends[..., 1] * iw + 1.0) * (h * 0.5) - 0.5 - crow[:, None]
        dn = down[:, None]
        x, y = torch.where(dn, y, x), torch.where(dn, x, y)  # pair direction along +x
        dx = x[:, 1] - x[:, 0]
        dy = y[:, 1] - y[:, 0]
        dc = ds * (x[:, 0] * dy - y[:, 0] * dx) / dy  # where the edge crosses the segment
        alpha = ds * (0.5 - dc.clamp(0.0, 1.0))
        cf = color.reshape(b * hw, c)
        target = torch.where(alpha.detach() > 0, p0, p1)
        delta = alpha[:, None] * (cf[p1] - cf[p0])
        return cf.index_add(0, target, delta.to(cf.dtype)).view(b, h, w, c)

    @staticmethod
    def _aa_items(rast: Tensor, pos: Tensor, tri: Tensor):
        """Find the silhouette pixel pairs (no grad). Returns ``(p0, p1, ds, down, va, vb,
        centre_pixel)`` for each blending pair, or None."""
        b, h, w, _ = rast.shape
        v = pos.shape[1]
        dev = rast.device
        tidimg = rast[..., 3].long() - 1
        idx = torch.arange(b * h * w, device=dev).view(b, h, w)
        pairs = []
        for down in (0, 1):
            if down:
                a, bb_ = tidimg[:, :-1, :], tidimg[:, 1:, :]
                i0 = idx[:, :-1, :]
            else:
                a, bb_ = tidimg[:, :, :-1], tidimg[:, :, 1:]
                i0 = idx[:, :, :-1]
            sel = a != bb_
            p0 = i0[sel]
            pairs.append((p0, p0 + (w if down else 1), torch.full_like(p0, down)))
        p0 = torch.cat([p[0] for p in pairs])
        p1 = torch.cat([p[1] for p in pairs])
        down = torch.cat([p[2] for p in pairs]).bool()
        if p0.numel() == 0:
            return None
        flat = rast.reshape(-1, 4)
        t0, t1 = flat[p0, 3].long() - 1, flat[p1, 3].long() - 1
        z0, z1 = flat[p0, 2], flat[p1, 2]
        use0 = (t0 >= 0) & ((t1 < 0) | (z0 < z1))
        tsel = torch.where(use0, t0, t1)
        cpix = torch.where(use0, p0, p1)
        bi = cpix // (h * w)

        # Silhouette edges per triangle instance (edge i joins corners i+1, i+2): the opposite
        # vertex of the neighbour across the edge lies on the same side as corner i (the
        # surface folds back), or there is no neighbour. Pairs whose front triangle has no
        # silhouette edge are dropped before any per-pair work.
        t = tri.shape[0]
        sx, sy, _, _ = _screen(pos, h, w)  # [B, V]
        opp = _opposite_vertices(tri, v)  # [T, 3]
        opp = torch.where(opp < 0, tri, opp)
        px, py = sx[:, tri], sy[:, tri]  # [B, T, 3]
        ox, oy = sx[:, opp], sy[:, opp]
        bb = (px[..., 1] - px[..., 0]) * (py[..., 2] - py[..., 0]) - (
            px[..., 2] - px[..., 0]) * (py[..., 1] - py[..., 0])
        sbb = torch.signbit(bb)
        sil = []
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            a = (px[..., j] - ox[..., i]) * (py[..., k] - oy[..., i]) - (
                px[..., k] - ox[..., i]) * (py[..., j] - oy[..., i])
            sil.append(torch.signbit(a) == sbb)
        sil_inst = torch.stack(sil, -1).reshape(b * t, 3)
        inst = bi * t + tsel
        keep = sil_inst[inst].any(1).nonzero().squeeze(1)
        if keep.numel() == 0:
            return None
        p0, p1, down, use0 = p0[keep], p1[keep], down[keep], use0[keep]
        tsel, cpix, bi, inst = tsel[keep], cpix[keep], bi[keep], inst[keep]
        sil = sil_inst[inst]  # [N, 3]
        ds = torch.where(use0, 1.0, -1.0).to(pos.dtype)
        crow = ((cpix % (h * w)) // w).to(pos.dtype)
        ccol = (cpix % w).to(pos.dtype)
        vid = tri[tsel]  # [N, 3]
        base = (bi * v)[:, None]
        x = sx.reshape(-1)[base + vid] - ccol[:, None]
        y = sy.reshape(-1)[base + vid] - crow[:, None]
        dn = down[:, None]
        xs, ys = torch.where(dn, y, x), torch.where(dn, x, y)
        best = torch.full_like(ds, -float("inf"))
        di = torch.full_like(p0, -1)
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            xj, yj, yk = xs[:, j], ys[:, j], ys[:, k]
            dxi, dyi = xs[:, k] - xj, yk - yj
            straddle = torch.signbit(yj) != torch.signbit(yk)
            dci = ds * (xj * dyi - yj * dxi) / torch.where(dyi == 0, 1.0, dyi)
            dci = torch.where(straddle & (dyi != 0), dci, -float("inf"))
            ok = (dyi.abs() >= dxi.abs()) & sil[:, i]
            better = dci > best
            di = torch.where(better, torch.where(ok, i, -1), di)
            best = torch.where(better, dci, best)
        eps = 1.0 / 16
        keep = (di >= 0) & (best > -eps) & (best < 1 + eps)
        k = keep.nonzero().squeeze(1)
        if k.numel() == 0:
            return None
        di = di[k]
        vk = vid[k]
        va = vk.gather(1, ((di + 1) % 3)[:, None]).squeeze(1)
        vb = vk.gather(1, ((di + 2) % 3)[:, None]).squeeze(1)
        return p0[k], p1[k], ds[k], down[k], va, vb, cpix[k]


def _opposite_vertices(tri: Tensor, n_vertices: int) -> Tensor:
    """``[T, 3]``: for edge i of each triangle (corners i+1, i+2) the third vertex of the
    triangle on the other side of that edge, or -1 on open boundaries."""
    t = tri.shape[0]
    ea = torch.cat([tri[:, 1], tri[:, 2], tri[:, 0]])
    eb = torch.cat([tri[:, 2], tri[:, 0], tri[:, 1]])
    third = torch.cat([tri[:, 0], tri[:, 1], tri[:, 2]])
    key = torch.minimum(ea, eb) * n_vertices + torch.maximum(ea, eb)
    skey, order = torch.sort(key)
    n = skey.numel()
    partner = torch.full((n,), -1, dtype=torch.long, device=tri.device)
    if n > 1:
        same_next = torch.zeros(n, dtype=torch.bool, device=tri.device)
        same_next[:-1] = skey[1:] == skey[:-1]
        same_prev = torch.zeros(n, dtype=torch.bool, device=tri.device)
        same_prev[1:] = same_next[:-1]
        ar = torch.arange(n, device=tri.device)
        partner = torch.where(same_next, ar + 1, torch.where(same_prev, ar - 1, partner))
    opp_sorted = torch.where(partner >= 0, third[order[partner.clamp(min=0)]], -1)
    out = torch.empty(n, dtype=torch.long, device=tri.device)
    out[order] = opp_sorted
    return out.view(3, t).t().contiguous()
