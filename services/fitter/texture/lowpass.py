"""Low frequencies of a texture, computed on the mesh surface instead of in the atlas.

Everything low-frequency (the skin template, the symmetrisation, the spread of the stage-3
offsets) is computed on the mesh, not in the atlas (:func:`mesh_lowpass`): the atlas cuts
the head into islands, and a blur in UV would print each cut as a colour step on the head.
The low frequencies are made left/right symmetric (:func:`symmetrize_lowfreq`), so one-sided
light that the SH model missed does not survive in the texture.
"""

from __future__ import annotations

import math

import numpy as np

from services.fitter.facemodel.topology import screened_smooth
from services.fitter.texture.atlas import UVMaps


def to_vertices(maps: UVMaps, img: np.ndarray, weight: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Gather texels onto mesh vertices (the transpose of the barycentric interpolation).

    Args:
        maps: UV maps of size S.
        img: ``[S, S, C]``; weight: ``[S, S]`` >= 0.
    Returns:
        ``(values [N, C], vertex weight [N])``: the weighted mean of the texels around each
        vertex, and the mean texel weight there (0 for vertices that cover no texel).
    """
    s = maps.size
    w = np.asarray(weight, np.float32).reshape(s * s)
    num = maps.to_vertex @ (np.asarray(img, np.float32).reshape(s * s, -1) * w[:, None])
    den = maps.to_vertex @ w
    foot = maps.footprint
    vals = num / np.maximum(den, 1e-9)[:, None]
    return vals, np.where(foot > 1e-9, den / np.maximum(foot, 1e-9), 0.0)


def to_texels(maps: UVMaps, values: np.ndarray) -> np.ndarray:
    """``[N, C]`` per-vertex values -> ``float32 [S, S, C]`` (0 outside the atlas)."""
    s = maps.size
    return (maps.to_texel @ np.asarray(values, np.float32).reshape(values.shape[0], -1)
            ).reshape(s, s, -1)


def mesh_lowpass(maps: UVMaps, img: np.ndarray, weight: np.ndarray, sigma: float,
                 prior: np.ndarray | None = None, reach: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Low frequencies of a texture, computed on the surface instead of in the atlas.

    A Gaussian blur in UV mixes islands that touch in the atlas but not on the head, and
    stops at seams that are one surface on the head: its result jumps at every seam. This
    gathers the texels onto the vertices, smooths there (:func:`screened_smooth`) and
    interpolates back, so the result is continuous across seams.

    Args:
        maps: UV maps of size S.
        img: ``[S, S, C]``; weight: ``[S, S]`` confidence (0 = no data).
        sigma: smoothing scale in texels of this atlas (converted with ``maps.texel_len``).
        prior: ``[C]`` value far from any data; reach: how far (texels) data carries.
    Returns:
        ``(texels float32 [S, S, C], vertex values [N, C])``.
    """
    vals, wv = to_vertices(maps, img, weight)
    # 1 / (1 + l^2 k^2) and exp(-sigma^2 k^2 / 2) agree to second order for l = sigma / sqrt 2
    length = sigma * maps.texel_len / math.sqrt(2.0)
    x = screened_smooth(maps.laplacian, vals, wv, length, prior=prior,
                        reach=None if reach is None else reach * maps.texel_len)
    return to_texels(maps, x), x


def symmetrize_lowfreq(tex: np.ndarray, maps: UVMaps, sigma: float) -> np.ndarray:
    """Replace the low frequencies of ``tex`` by the mean of theirs and their mirror's.

    Args:
        tex: ``float32 [S, S, 3]``.
        maps: UV maps of size S.
        sigma: scale (texels of this atlas, smoothed on the surface: :func:`mesh_lowpass`)
            separating low from high frequencies.
    Returns:
        ``float32 [S, S, 3]`` with left/right-symmetric shading-scale brightness, continuous
        across the atlas's seams.
    """
    mask = maps.mask.cpu().numpy().astype(np.float32)
    # on the vertices (seam-free, see mesh_lowpass): add half the mirror's difference; a
    # second pass removes what the first left (the low-pass of a per-vertex correction read
    # back from the texels is not exactly that correction)
    for _ in range(2):
        _, low_v = mesh_lowpass(maps, tex, mask, sigma)
        corr = 0.5 * (low_v[maps.vertex_mirror] - low_v)
        tex = tex + to_texels(maps, corr) * mask[..., None]
    return tex


def spread_offsets(offsets: np.ndarray, gate: np.ndarray, maps: UVMaps) -> np.ndarray:
    """Stage-3 texel offsets, with their low frequencies carried smoothly past the gate.

    Stage 3 changes the texels the photo showed (``offsets`` already multiplied by the
    own-view ``gate``). A broad change there (a brightened forehead, say) would end in a
    visible edge where the gate ends; its low frequencies are therefore continued over the
    surface beyond the gate, relaxing to 0 over ``S / 8`` texels (:func:`mesh_lowpass`), and
    only the detail stops at the gate. At the seams only the seam-free low part is kept.

    Args:
        offsets: ``float32 [S, S, 3]`` gated offsets; gate: ``float32 [S, S]`` in [0, 1].
        maps: UV maps of size S.
    Returns:
        ``float32 [S, S, 3]`` offsets to add to the stage-2 texture.
    """
    s = maps.size
    g = np.clip(gate, 0, 1).astype(np.float32)
    raw = offsets / np.maximum(g, 1e-3)[..., None]
    low, _ = mesh_lowpass(maps, raw, g, sigma=s / 24, prior=np.zeros(offsets.shape[-1]),
                          reach=s / 8)
    fade = maps.seam_fade[..., None]
    out = fade * offsets + (1 - fade * g[..., None]) * low
    return (out * maps.mask.cpu().numpy()[..., None]).astype(np.float32)
