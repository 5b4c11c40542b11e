"""Repack texture-coordinate islands into one square atlas, and check atlases by rasterising.

UVs are OBJ convention (u right, v up) in [0, 1]. An *island* is a set of triangles with its own
copy of texture coordinates; islands are moved rigidly (scale, 90-degree rotation, translation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


@dataclass
class Island:
    """Triangles ``tris`` ``[K]`` (indices into the mesh triangles) with their corner uvs
    ``uv`` ``[K, 3, 2]``; ``weight`` multiplies the island's texel density."""

    tris: np.ndarray
    uv: np.ndarray
    weight: float = 1.0
    name: str = ""


def uv_islands(uv_faces: np.ndarray, n_uv: int, group: np.ndarray | None = None) -> np.ndarray:
    """Connected components of triangles sharing texture coordinates.

    Args:
        uv_faces: ``[T, 3]`` indices into the uv array.
        n_uv: length of the uv array.
        group: optional ``[T]`` int; triangles of different groups are never connected (the
            cut between groups becomes a seam).
    Returns:
        ``[T]`` int island id per triangle.
    """
    g = np.zeros(len(uv_faces), np.int64) if group is None else np.asarray(group, np.int64)
    node = (uv_faces + g[:, None] * n_uv).ravel()
    uniq, inv = np.unique(node, return_inverse=True)
    inv = inv.reshape(-1, 3)
    i = np.concatenate([inv[:, 0], inv[:, 1]])
    j = np.concatenate([inv[:, 1], inv[:, 2]])
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(len(uniq), len(uniq)))
    _, lab = connected_components(a, directed=False)
    return lab[inv[:, 0]]


def pack_islands(islands: list[Island], margin: float, size: int = 1024, grid: int = 256
                 ) -> list[np.ndarray]:
    """Pack islands into [0, 1]^2, largest common scale found by bisection.

    Islands keep their shape and orientation (uniform scale ``s * weight``). Each island is
    rasterised conservatively on a ``grid`` x ``grid`` occupancy map, grown by ``margin``, and
    placed at the top-most, then left-most free position (islands may nest in each other's
    concavities); the biggest islands go first.

    Args:
        islands: the islands (their ``uv`` in any common unit, v up).
        margin: gap in uv units between islands and to the atlas border (e.g. 6 / 1024).
        size: texture size (for reference only: the margin is in uv units).
        grid: occupancy resolution.
    Returns:
        one ``[K, 3, 2]`` array of packed uvs per island (v up), in [0, 1].
    """
    from scipy.ndimage import binary_dilation
    from scipy.signal import fftconvolve

    cell = 1.0 / grid
    pad = int(np.ceil(margin / cell))
    shapes = []
    for isl in islands:
        p = isl.uv.reshape(-1, 2)
        shapes.append((p - p.min(0)).reshape(-1, 3, 2))
    order = sorted(range(len(islands)), key=lambda k: -np.prod(
        shapes[k].reshape(-1, 2).max(0) * islands[k].weight))

    def footprint(q: np.ndarray) -> np.ndarray:
        """Cells touched by the triangles of ``q`` (grid units, rows = v down), dilated."""
        ext = q.reshape(-1, 2).max(0)
        w, h = int(np.ceil(ext[0])) + 1, int(np.ceil(ext[1])) + 1
        res = max(w, h) * 4  # rasterise finely, then pool to cells
        uvn = q.reshape(-1, 2) / (max(w, h))
        count, _ = rasterize_uv(np.c_[uvn[:, 0], uvn[:, 1]], np.arange(len(uvn)).reshape(-1, 3),
                                res, inclusive=True)
        fine = count[::-1] > 0  # rows increasing with v
        m = fine.reshape(max(w, h), 4, max(w, h), 4).any((1, 3))[:h, :w]
        m = m[::-1]  # row 0 = top of the island (largest v)
        # conservative: cover partially touched cells, then the margin
        return binary_dilation(np.pad(m, 1 + pad), iterations=1 + pad)

    def layout(s: float):
        occ = np.zeros((grid, grid), bool)
        occ[:pad, :] = occ[-pad:, :] = occ[:, :pad] = occ[:, -pad:] = True
        placed: dict[int, np.ndarray] = {}
        for k in order:
            q = shapes[k] * s * islands[k].weight / cell
            fp = footprint(q)
            fh, fw = fp.shape
            if fh > grid or fw > grid:
                return None
            hits = fftconvolve(occ.astype(np.float32), fp[::-1, ::-1].astype(np.float32),
                               mode="valid")
            free = np.argwhere(hits < 0.5)
            if len(free) == 0:
                return None
            r, c = free[0]  # argwhere is row-major: top-most, then left-most
            occ[r:r + fh, c:c + fw] |= fp
            # footprint row 0 is the island's top; the dilation added 1 + pad cells around it
            off = 1 + pad
            u0 = (c + off) * cell
            v_top = 1.0 - (r + off) * cell
            ext_v = q.reshape(-1, 2).max(0)[1] * cell
            placed[k] = q * cell + np.array([u0, v_top - ext_v])
        return [placed[k] for k in range(len(islands))]

    lo, hi = 0.0, 1.0
    while layout(hi) is not None:
        lo, hi = hi, hi * 2
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        if layout(mid) is not None:
            lo = mid
        else:
            hi = mid
    out = layout(lo)
    assert out is not None
    return out


def upright(uv: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Rotate an island so that ``height`` (a per-corner 3D quantity, e.g. model y) increases
    along +v: the least-squares gradient of ``height`` in uv is turned to point up.

    Args:
        uv: ``[K, 3, 2]`` corner uvs of the island.
        height: ``[K, 3]`` per-corner values.
    Returns:
        ``[K, 3, 2]`` rotated uvs (about the island's centroid).
    """
    p = uv.reshape(-1, 2)
    a = np.c_[p, np.ones(len(p))]
    g = np.linalg.lstsq(a, height.reshape(-1), rcond=None)[0][:2]
    if np.linalg.norm(g) < 1e-12:
        return uv
    ang = np.pi / 2 - np.arctan2(g[1], g[0])
    c, s = np.cos(ang), np.sin(ang)
    rot = np.array([[c, -s], [s, c]])
    m = p.mean(0)
    return ((p - m) @ rot.T + m).reshape(uv.shape)


def rasterize_uv(uv: np.ndarray, uv_faces: np.ndarray, size: int = 1024,
                 inclusive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which texels each uv triangle claims (texel centres strictly inside the triangle).

    Args:
        uv: ``[M, 2]`` OBJ uvs (v up) in [0, 1].
        uv_faces: ``[T, 3]`` indices into ``uv``.
        size: texture size.
    Returns:
        ``(count, owner)``: ``[size, size]`` int32 number of triangles covering each texel
        (row 0 = top = v 1), and ``[size, size]`` int32 the last triangle id covering it (-1
        for none). Texels exactly on a shared edge are claimed by neither side, so
        ``count > 1`` means overlapping triangles. ``inclusive`` counts edge texels too.
    """
    eps = -1e-9 if inclusive else 1e-9
    count = np.zeros((size, size), np.int32)
    owner = np.full((size, size), -1, np.int32)
    p = uv[uv_faces] * size  # [T, 3, 2] in texel units, x = u * size, y_up = v * size
    p = np.stack([p[..., 0], size - p[..., 1]], -1)  # y down (rows)
    for t in range(len(uv_faces)):
        a, b, c = p[t]
        x0 = max(int(np.floor(min(a[0], b[0], c[0]) - 0.5)), 0)
        x1 = min(int(np.ceil(max(a[0], b[0], c[0]) - 0.5)), size - 1)
        y0 = max(int(np.floor(min(a[1], b[1], c[1]) - 0.5)), 0)
        y1 = min(int(np.ceil(max(a[1], b[1], c[1]) - 0.5)), size - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(area) < 1e-12:
            continue
        w0 = ((b[0] - xs) * (c[1] - ys) - (b[1] - ys) * (c[0] - xs)) / area
        w1 = ((c[0] - xs) * (a[1] - ys) - (c[1] - ys) * (a[0] - xs)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 > eps) & (w1 > eps) & (w2 > eps)
        count[y0:y1 + 1, x0:x1 + 1] += inside
        owner[y0:y1 + 1, x0:x1 + 1][inside] = t
    return count, owner
