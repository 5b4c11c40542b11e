"""Small procedural meshes for tests, benchmarks and previews (model frame: y up, +z forward)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def uv_sphere(n_lat: int = 48, n_lon: int = 96, radius: float = 1.0
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A latitude-longitude sphere with a seamed equirectangular UV layout.

    Args:
        n_lat: rings from pole to pole (>= 2).
        n_lon: segments around (>= 3).
        radius: sphere radius.
    Returns:
        ``(vertices [N, 3] float, tri [T, 3] long (CCW seen from outside),
        uv [M, 2] float OBJ convention (v = 1 at the north pole +y, u = 0.5 facing +z),
        uv_tri [T, 3] long)`` with ``T = 2 * n_lon * (n_lat - 1)``.
    """
    lat = torch.linspace(0, math.pi, n_lat + 1)  # 0 = north pole (+y)
    lon = torch.linspace(-math.pi, math.pi, n_lon + 1)  # u = 0.5 at lon = 0 (+z)
    th, ph = torch.meshgrid(lat, lon, indexing="ij")
    xyz = torch.stack([th.sin() * ph.sin(), th.cos(), th.sin() * ph.cos()], -1) * radius
    uv = torch.stack([(ph + math.pi) / (2 * math.pi), 1 - th / math.pi], -1)
    grid = torch.arange((n_lat + 1) * (n_lon + 1)).view(n_lat + 1, n_lon + 1)
    # geometric vertex ids: merge the seam column and collapse each pole to one vertex
    geo = grid.clone()
    geo[:, -1] = geo[:, 0]
    geo[0, :] = 0
    geo[-1, :] = grid[-1, 0]
    a, b = grid[:-1, :-1], grid[:-1, 1:]
    c, d = grid[1:, :-1], grid[1:, 1:]
    quads = []
    for r in range(n_lat):
        for t1, t2 in (((a, c, d), (a, d, b)),):
            if r > 0:
                quads.append(torch.stack([x[r] for x in t2], -1))
            if r < n_lat - 1:
                quads.append(torch.stack([x[r] for x in t1], -1))
    uv_tri = torch.cat(quads, 0)
    tri = geo.reshape(-1)[uv_tri]
    used, tri_c = torch.unique(tri, return_inverse=True)
    return xyz.reshape(-1, 3)[used].contiguous(), tri_c, uv.reshape(-1, 2), uv_tri
