"""Completion: a hole-free albedo texture from one unwrap.

Unseen texels are completed by (a) the left/right mirror texel (``UVMaps.mirror``), its colour
matched to what surrounds the texel on its own side (:func:`match_mirror`), and (b) a
shading-free skin-tone template (the low frequencies of the seen skin, its shadows
discounted, continued over the head on the surface and relaxing to its median colour, in the
median seen skin's hue: :func:`skin_hue`),
joined by Laplacian-pyramid blending; the template's skin takes the seen skin's fine detail
(:func:`skin_detail`: a square of it tiled, no tile repeating its neighbour). The low
frequencies are then made left/right symmetric
(:func:`~services.fitter.texture.lowpass.symmetrize_lowfreq`).

One implementation in torch for the host and the GPU: :func:`complete_texture` runs where the
atlas lives (the fitter's device), its image filters are OpenCV's on the host and the same
filters as matmuls on a GPU (:mod:`~services.fitter.texture.imageops`). The functions here
take torch tensors, or numpy arrays (computed on the host, returned as numpy:
:func:`numpy_io`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from ffhquv.imaging import LUMA
from services.fitter.texture.atlas import (
    UVMaps,
    atlas_tensors,
    host_array,
    seam_texel_pairs,
)
from services.fitter.texture.hair import CurtainStrip, fringe_gap_weight, hair_weight
from services.fitter.texture.hostcopy import to_host
from services.fitter.texture.imageops import (
    distance_inside,
    erode3,
    gaussian_blur,
    median,
    normalized_blur,
    numpy_io,
    pyr_down,
    pyr_up,
)
from services.fitter.texture.lowpass import mesh_lowpass, symmetrize_lowfreq

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _luma(rgb: Tensor) -> Tensor:
    """Rec. 601 luma of ``[..., 3]``."""
    return rgb @ torch.as_tensor(LUMA, device=rgb.device)


@numpy_io
def laplacian_blend(a: Tensor, b: Tensor, mask: Tensor, levels: int = 6) -> Tensor:
    """Laplacian-pyramid blend ``mask * a + (1 - mask) * b`` (Burt & Adelson).

    Args:
        a, b: ``float32 [S, S, C]``; mask: ``float32 [S, S]`` in [0, 1].
    Returns:
        ``float32 [S, S, C]``.
    """
    ga, gb, gm = [a], [b], [mask]
    for _ in range(levels):
        ga.append(pyr_down(ga[-1]))
        gb.append(pyr_down(gb[-1]))
        gm.append(pyr_down(gm[-1]))
    out = gm[-1][..., None] * ga[-1] + (1 - gm[-1][..., None]) * gb[-1]
    for lv in range(levels - 1, -1, -1):
        size = (ga[lv].shape[0], ga[lv].shape[1])
        la = ga[lv] - pyr_up(ga[lv + 1], size)
        lb = gb[lv] - pyr_up(gb[lv + 1], size)
        m = gm[lv][..., None]
        out = pyr_up(out, size) + m * la + (1 - m) * lb
    return out


@dataclass
class CompletedTexture:
    """A hole-free albedo texture and what it was made from.

    Attributes:
        texture: ``float32 [S, S, 3]`` in [0, 1], row 0 = ``v = 1``.
        observed: ``float32 [S, S]`` own-view confidence.
        combined: ``float32 [S, S]`` confidence after mirroring.
        skin_color: ``[3]`` mean visible skin albedo.
        hair: the hair painted over the skin (``HairLayer.info``: has_hair, hair colour ...),
            None where none was looked for.
        hair_matte: ``float32 [S, S]`` where the hair covers the scalp (``HairLayer.matte``),
            None for a bald head or where none was looked for.
        hair_curtain: long hair's curtain strip, painted into ``texture`` outside the islands
            (``HairLayer.curtain``), or None.
        skin_share: ``float32 [S, S]`` the share of each texel's photo weight that the photo
            called skin (its colour-consistent skin), None without a skin mask.
    """

    texture: np.ndarray
    observed: np.ndarray
    combined: np.ndarray
    skin_color: np.ndarray
    hair: dict | None = None
    hair_matte: np.ndarray | None = None
    hair_curtain: CurtainStrip | None = None
    skin_share: np.ndarray | None = None


@numpy_io
def flatten_shading(albedo: Tensor, skin: Tensor, maps: UVMaps,
                    strength: float = 0.6) -> Tensor:
    """Lift the photo's shadows and creases out of the skin albedo.

    The SH light explains the broad shading of the fitted shape; what remains in the
    unwrapped skin are the shadows of what the shape lacks (nose side, cheekbones, eye
    sockets) and the shading of creases, which would print as dark smears and deep wrinkles
    under a neutral light. Skin texels darker than their surroundings (luma blurred over
    ``S / 512`` against over ``S / 32`` texels, both over the skin only) are brightened by
    ``ratio ** -strength``, thin marks darker than their ``S / 128`` surroundings (strand
    remnants, creases) by ``thin ** -(1 - strength)`` more (at most 2x); brighter ones,
    fine detail below ``S / 512`` (pores) and every non-skin texel (brows, lips, beard) stay.

    Args:
        albedo: ``float32 [S, S, 3]``; skin: ``float32 [S, S]`` confidence of the
            colour-consistent skin (0 elsewhere); maps: UV maps of size S.
    Returns:
        ``float32 [S, S, 3]``.
    """
    s = maps.size
    lum = _luma(albedo)
    w = skin.clamp(0, 1).to(torch.float32)
    mid, den_mid = normalized_blur(lum[..., None], w, sigma=max(1.0, s / 512))
    broad, den = normalized_blur(lum[..., None], w, sigma=max(1.0, s / 32))
    local, _ = normalized_blur(lum[..., None], w, sigma=max(1.0, s / 128))
    ratio = mid[..., 0] / broad[..., 0].clamp(min=1e-3)
    gain = ratio.clamp(max=1.0).clamp(1e-3, 1.0) ** -strength
    # thin dark marks (strand remnants, creases: darker than their S / 128 surroundings) are
    # lifted all the way to them
    thin = mid[..., 0] / local[..., 0].clamp(min=1e-3)
    gain = gain * thin.clamp(max=1.0).clamp(1e-3, 1.0) ** -(1 - strength)
    trust = (2 * w).clamp(0, 1) * (den / 0.3).clamp(0, 1) * (den_mid / 0.3).clamp(0, 1)
    gain = 1 + trust * (gain.clamp(max=2.0) - 1)
    return (albedo * gain[..., None]).to(torch.float32)


@numpy_io
def skin_level(albedo: Tensor, skin: Tensor) -> float:
    """The skin's luma as the photo shows it: the median of the Rec. 601 luma of ``albedo``
    over the skin texels, each weighted by its confidence (which falls with the view angle as
    a texel's area in the photo does; an unweighted median over-counts the cheeks' sides,
    far more texels than pixels). NaN when no texel has confidence above 0.05.

    Args:
        albedo: ``float32 [S, S, 3]``; skin: ``float32 [S, S]`` confidence in [0, 1].
    """
    w = skin.clamp(0, 1)
    sel = w > 0.05
    if not bool(sel.any()):
        return float("nan")
    lum = _luma(albedo[sel])
    order = torch.argsort(lum)
    cum = torch.cumsum(w[sel][order].to(torch.float64), 0)
    i = int(torch.searchsorted(cum, 0.5 * cum[-1:]))
    return float(lum[order][min(i, len(lum) - 1)])


#: the low-frequency luma ratio to the mirror texel below which a texel counts as shadowed
#: (lifted fully at ``SHADOW_RATIO[0]``, not at all from ``SHADOW_RATIO[1]``), and the most a
#: shadow is lifted (as :func:`flatten_shading`)
SHADOW_RATIO = (0.65, 0.9)
SHADOW_LIFT_MAX = 2.0


@numpy_io
def lift_to_mirror(albedo: Tensor, weight: Tensor, share: Tensor, maps: UVMaps) -> Tensor:
    """Shadows only darken: where a seen skin texel is clearly darker at low frequency than
    its seen mirror texel (a cast or attached shadow the SH light cannot explain, one side of
    a side-lit face), its low frequencies are lifted toward the mirror's; its own detail
    stays (pores, stubble), and the lift is a smooth field, so no island of the other cheek's
    light (nor an edge around it) is printed on this one.

    Args:
        albedo: ``float32 [S, S, 3]``; weight: ``float32 [S, S]`` own-view confidence;
            share: ``float32 [S, S]`` share of the weight the photo called skin (a brow, a
            beard or the lips beside their mirror's skin, where the person's features do not
            sit on the mean shape's mirror line, are darker and stay); maps: UV maps of size S.
    Returns:
        ``float32 [S, S, 3]``.
    """
    s = maps.size
    at = atlas_tensors(maps, albedo.device)
    low, _ = normalized_blur(albedo, weight, sigma=max(1.0, s / 128))
    lum = low.mean(-1).reshape(-1)
    lum_m = lum[at.mirror]
    wf = weight.reshape(-1)
    lo, hi = SHADOW_RATIO
    shadowed = 1 - ((lum / lum_m.clamp(min=1e-3) - lo) / (hi - lo)).clamp(0, 1)
    use = at.has_mirror & (wf[at.mirror] > 0.3) & (wf > 0) & (share.reshape(-1) > 0.5)
    gain = 1 + torch.where(use, shadowed, 0.0) * (
        (lum_m / lum.clamp(min=1e-3)).clamp(1.0, SHADOW_LIFT_MAX) - 1)
    gain, _ = normalized_blur(gain.reshape(s, s, 1).to(torch.float32),
                              weight.clamp(min=1e-3).to(torch.float32),
                              sigma=max(1.0, s / 128))
    return (albedo * gain).to(torch.float32)


#: :func:`match_mirror`: the scale (texels of a 1024 map) of the surroundings whose colour a
#: mirrored texel takes, and the most it is scaled
MATCH_SIGMA = 24.0
MATCH_GAIN = (0.5, 2.0)


@numpy_io
def match_mirror(albedo: Tensor, weight: Tensor, maps: UVMaps) -> Tensor:
    """The mirror texels' colours, matched to what surrounds each texel on its own side.

    A hole in what the photo showed (a strand over the forehead, a mark under an eye) is
    filled from the mirror texel, whose light and skin differ from this side's: copied as
    it is, it printed a lighter or more orange island. The mirror's value is scaled per
    channel by the ratio of the own side's low frequencies around the texel to the mirror's
    (``normalized_blur`` over ``MATCH_SIGMA * S / 1024`` texels, the ratio within
    :data:`MATCH_GAIN`): its detail is kept, its colour is the surroundings'. Where this
    side has seen nothing nearby (a turned-away cheek, the unseen half of the head) the
    mirror's own colour is kept.

    Args:
        albedo: ``float32 [S, S, 3]``; weight: ``float32 [S, S]`` own-view confidence;
            maps: UV maps of size S.
    Returns:
        ``float32 [S * S, 3]``: the matched mirror value of every texel (flat, as
        ``maps.mirror`` indexes).
    """
    s = maps.size
    mirror = atlas_tensors(maps, albedo.device).mirror
    low, den = normalized_blur(albedo, weight, sigma=max(1.0, MATCH_SIGMA * s / 1024))
    low, den = low.reshape(-1, 3), den.reshape(-1)
    lo, hi = MATCH_GAIN
    gain = (low / low[mirror].clamp(min=1e-3)).clamp(lo, hi)
    trust = (den / 0.15).clamp(0, 1)[:, None] * (den[mirror] / 0.15).clamp(0, 1)[:, None]
    gain = 1 + trust * (gain - 1)
    return (albedo.reshape(-1, 3)[mirror] * gain).to(torch.float32)


@numpy_io
def skin_hue(template: Tensor, skin_color: Tensor) -> Tensor:
    """The skin template with the person's skin hue: its brightness kept, its chromaticity
    (RGB over luma) the median seen skin's. The few seen texels around unseen skin (the
    underside of the jaw and the neck in shadow, lit by the sky; a collar's edge) carried
    their cast over the whole unseen neck: a mauve neck under a brown face.

    Args:
        template: ``float32 [S, S, 3]``; skin_color: ``[3]`` the median seen skin albedo.
    Returns:
        ``float32 [S, S, 3]``.
    """
    sc = torch.as_tensor(skin_color, dtype=torch.float32, device=template.device)
    chroma = sc / max(float(_luma(sc)), 1e-3)
    return (_luma(template)[..., None] * chroma).to(torch.float32)


#: the skin template's weight of a texel rises from 0.05 at ``SHADOW_LEVEL[0]`` of the median
#: skin's luma to 1 at ``SHADOW_LEVEL[1]``: shadows and dark edges barely shape the unseen skin
SHADOW_LEVEL = (0.45, 0.75)

#: the most :func:`complete_texture` rescales a texture to keep the photo's skin level
LEVEL_MAX = 1.3

#: :func:`fit_range` leaves a texel whose brightest channel is at most this unchanged; the scale
#: (texels of a 1024 map) above which it reads a texture's level (finer is detail)
HIGHLIGHT_KNEE = 0.85
KNEE_SIGMA = 8.0


def fit_range(rgb: ArrayT, maps: UVMaps | None = None) -> ArrayT:
    """Albedo into ``[1 / 255, 1]`` keeping each texel's hue: where the brightest channel's
    level ``m`` exceeds :data:`HIGHLIGHT_KNEE` the texels are scaled as a whole (their channel
    ratios kept) so that ``m`` rolls off smoothly toward 1 (``k + (1 - k) (1 - exp(-(m - k) /
    (1 - k)))``, slope 1 at the knee). Clipping each channel at 1 instead turned the brightest
    skin of a bright photo (red at its limit, green and blue still rising) into yellow-green
    patches.

    For an atlas's texture (``maps`` given) ``m`` is the brightest channel blurred over
    ``KNEE_SIGMA * S / 1024`` texels within the islands, so the detail on a bright skin keeps
    its contrast (each texel's own knee, slope 0.48 at 0.96, flattened a fair face's freckles
    and pores), and a texel the detail lifts over 1 is scaled down as a whole. Toward the
    seams (``UVMaps.seam_fade``) and elsewhere ``m`` is each texel's own: the two sides of a
    seam carry the same colour and keep it.

    Args:
        rgb: ``float [..., 3]`` (``[..., S, S, 3]`` with ``maps``), numpy array or torch
            tensor (unclipped albedo).
        maps: optional, the atlas of size S.
    Returns:
        the same type, shape and dtype, in ``[1 / 255, 1]``.
    """
    if isinstance(rgb, np.ndarray):  # one formula: numpy arrays go through torch (no copy in)
        return fit_range(torch.from_numpy(np.ascontiguousarray(rgb)), maps).numpy()
    k = HIGHLIGHT_KNEE
    m = rgb.amax(-1, keepdim=True).clamp(min=1e-6)
    if maps is not None:
        s = maps.size
        at = atlas_tensors(maps, rgb.device)
        flat = m.reshape(-1, s, s).permute(1, 2, 0).contiguous()
        low, _ = normalized_blur(flat, at.mask, sigma=max(1.0, KNEE_SIGMA * s / 1024))
        inner = (at.mask * at.seam_fade)[..., None]
        m = (inner * low + (1 - inner) * flat).permute(2, 0, 1).reshape(m.shape)
        m = m.clamp(min=1e-6)
    over = (m - k).clamp(min=0.0)
    gain = torch.where(m > k, (k + (1 - k) * (1 - torch.exp(-over / (1 - k)))) / m,
                       torch.ones_like(m))
    out = rgb * gain
    # what the detail lifts over 1 is scaled as a whole (its hue kept), not clipped per channel
    peak = out.amax(-1, keepdim=True)
    out = torch.where(peak > 1.0, out / peak.clamp(min=1e-6), out)
    return out.clamp(1.0 / 255, 1.0)


#: :func:`skin_detail`: the scale below which a texel's colour is detail (texels of a 1024
#: map: pores, freckles, stubble; 4 was too fine to show on a head), the side of the seen
#: skin's square that is tiled, and the least share of it seen
DETAIL_SIGMA = 10.0
DETAIL_PATCH = 96
DETAIL_SEEN = 0.95


def _tiling(maps: UVMaps, p: int, seed: int, device) -> tuple[Tensor, Tensor]:
    """:func:`skin_detail`'s tiling of a ``[p, p]`` patch over the ``[S, S]`` atlas
    (:func:`tile_grid`), made once per (p, seed, device) and kept in ``maps.derived``."""
    key = ("skin-detail-tiling", p, seed, str(device))
    got = maps.derived.get(key)
    if got is not None:
        return got
    ids, wts = tile_grid(maps.size, maps.size, p, seed)
    got = (torch.as_tensor(ids, dtype=torch.int64, device=device),
           torch.as_tensor(wts, dtype=torch.float32, device=device))
    maps.derived[key] = got
    return got


def tile_grid(rows: int, cols: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The tiling of a ``[p, p]`` patch over a ``[rows, cols]`` grid: for every grid point the
    4 patch texels (flat ids, ``int64 [4, rows * cols]``) of the tiles over it and their
    ``sin^2`` window weights (``float32 [4, rows * cols]``, summing to 1). Tiles every
    ``p / 2`` points, each a fixed random flip / transpose of the patch (``seed``)."""
    h = p // 2
    ny, nx = len(range(-h, rows, h)), len(range(-h, cols, h))
    code = np.random.default_rng(seed).integers(8, size=(ny, nx))
    win = np.sin(np.pi * (np.arange(p) + 0.5) / p) ** 2
    cy, cx = np.arange(rows), np.arange(cols)
    ids, wts = [], []
    for dy in (0, 1):
        iy = cy // h + dy
        ly = cy - (iy - 1) * h
        for dx in (0, 1):
            ix = cx // h + dx
            lx = cx - (ix - 1) * h
            k = code[iy[:, None], ix[None, :]]
            yy, xx = np.broadcast_to(ly[:, None], k.shape), np.broadcast_to(lx[None, :], k.shape)
            u, v = np.where(k & 4, xx, yy), np.where(k & 4, yy, xx)
            u = np.where(k & 1, p - 1 - u, u)
            v = np.where(k & 2, p - 1 - v, v)
            ids.append((u * p + v).reshape(-1))
            wts.append((win[ly][:, None] * win[lx][None, :]).reshape(-1))
    return np.stack(ids).astype(np.int64), np.stack(wts).astype(np.float32)


def skin_detail(comb: Tensor, w: Tensor, skin: Tensor, maps: UVMaps, seed: int = 0) -> Tensor:
    """The seen skin's fine detail (pores, freckles, stubble) continued over the whole atlas.

    The high frequencies of ``comb`` (finer than ``DETAIL_SIGMA * S / 1024`` texels) in the
    ``DETAIL_PATCH``-texel square (at ``S = 1024``) of best-seen skin, tiled over the atlas at
    half-patch steps, each tile a fixed random flip / transpose of it, overlap-added under
    ``sin^2`` windows (which sum to one): no two neighbours repeat, no tile edge shows. The
    unseen skin, filled by a smooth template, read as plastic beside the photo's face.

    Args:
        comb: ``float32 [S, S, 3]`` the seen (and mirrored) albedo; w: ``float32 [S, S]`` its
            confidence; skin: ``float32 [S, S]`` the photo's skin confidence (0 off skin);
            maps: the atlas (size S); seed: the tiles' flips (fixed: the same photo, the same
            texture).
    Returns:
        ``float32 [S, S, 3]`` zero-mean detail on ``comb``'s device; zeros when no square of
        skin is seen over ``DETAIL_SEEN`` of it.
    """
    s = maps.size
    p = max(8, int(round(DETAIL_PATCH * s / 1024)) // 2 * 2)
    step = max(1, p // 4)
    low, _ = normalized_blur(comb, w, sigma=max(1.0, DETAIL_SIGMA * s / 1024))
    seen = ((w > 0.9) & (skin > 0.8)).to(torch.float32)
    share = torch.nn.functional.avg_pool2d(seen[None, None], p, stride=step)[0, 0]
    best = int(torch.argmax(share))
    if float(share.reshape(-1)[best]) < DETAIL_SEEN:
        return torch.zeros_like(comb)
    y, x = divmod(best, share.shape[1])
    y, x = y * step, x * step
    return tile_patch(((comb - low) * seen[..., None])[y:y + p, x:x + p], maps, seed)


def tile_patch(patch: Tensor, maps: UVMaps, seed: int = 0) -> Tensor:
    """A ``float32 [p, p, C]`` patch tiled over the ``[S, S]`` atlas (``[S, S, C]`` on its
    device) as :func:`skin_detail` tiles the skin's: at half-patch steps, each tile a fixed
    random flip / transpose (``seed``), overlap-added under ``sin^2`` windows."""
    p, c, s = patch.shape[0], patch.shape[-1], maps.size
    ids, wts = _tiling(maps, p, seed, patch.device)
    return (patch.reshape(p * p, c)[ids] * wts[..., None]).sum(0).reshape(s, s, c)


def tile_canvas(patch: np.ndarray, rows: int, cols: int, ids: np.ndarray,
                wts: np.ndarray) -> np.ndarray:
    """A ``float32 [p, p, C]`` patch tiled over a ``[rows, cols]`` canvas as
    :func:`tile_patch` tiles the atlas (``float32 [rows, cols, C]``), by that canvas's
    :func:`tile_grid` ``(ids, wts)`` (the caller keeps it): for a texture laid over the
    surface by 3D position rather than by texel (no seam at the atlas's cuts)."""
    p, c = patch.shape[0], patch.shape[-1]
    flat = np.ascontiguousarray(patch, np.float32).reshape(p * p, c)
    return (flat[ids] * wts[..., None]).sum(0).reshape(rows, cols, c).astype(np.float32)


# a texel belongs to a seen piece from this observed weight up
PIECE_MIN = 0.02


def cut_off_under_chin(weight: Tensor, maps: UVMaps) -> Tensor:
    """The seen texels under the chin that the face's seen region does not reach.

    A frontal photo sees the jaw's underside and the neck, if at all, at grazing angles past
    the jaw's silhouette: a thin piece there, cut off from the face's seen region by the
    unseen underside, holds the pixels of the jaw's edge in the photo (a beard hanging below
    the fitted jaw, the shadow under it) and read as a dark streak under the jaw. Seen pieces
    (``weight > PIECE_MIN``, 8-connected in the atlas and joined across its seams by
    :func:`~services.fitter.texture.atlas.seam_texel_pairs`) other than the largest, with
    most of their texels in ``UVMaps.under_chin``, are such pieces; a head tilted back, whose
    underside the photo sees, joins them to the face's piece.

    Args:
        weight: ``float32 [S, S]`` observed weight; maps: its atlas.
    Returns:
        ``bool [S, S]`` on ``weight``'s device.
    """
    under = np.asarray(maps.under_chin, bool)
    seen = to_host(weight > PIECE_MIN)
    out = torch.zeros(seen.shape, dtype=torch.bool, device=weight.device)
    if not (seen & under).any():
        return out
    n, lab = cv2.connectedComponents(seen.view(np.uint8), connectivity=8)
    a, b = seam_texel_pairs(maps)
    la, lb = lab.reshape(-1)[a], lab.reshape(-1)[b]
    both = (la > 0) & (lb > 0)
    _, piece = connected_components(
        sp.coo_matrix((np.ones(int(both.sum())), (la[both], lb[both])), shape=(n, n)),
        directed=False)
    of = piece[lab[seen]]
    area = np.bincount(of, minlength=piece.max() + 1)
    below = np.bincount(of, weights=under[seen], minlength=len(area))
    drop = below > 0.5 * area
    drop[np.argmax(area)] = False
    if not drop.any():
        return out
    cut = np.zeros_like(seen)
    cut[seen] = drop[of]
    return torch.from_numpy(cut).to(weight.device)


def complete_texture(albedo: ArrayT, weight: ArrayT, maps: UVMaps,
                     symmetric_lowfreq: bool = True,
                     skin: ArrayT | None = None) -> CompletedTexture:
    """Fill the unseen texels of one unwrap: mirror, then skin template, pyramid-blended.

    Computed where the atlas lives (``maps.mask.device``: the fitter's device); the inputs go
    there first if they are elsewhere (numpy arrays, a host copy).

    Args:
        albedo: ``float32 [S, S, 3]`` unwrapped albedo (anything where ``weight == 0``).
        weight: ``float32 [S, S]`` confidence in [0, 1].
        maps: the :class:`UVMaps` of size S.
        symmetric_lowfreq: average the low frequencies with the mirror texels.
        skin: optional ``float32 [S, S]`` confidence of the colour-consistent skin: its
            shadows and creases are lifted first (:func:`flatten_shading`).
    Returns:
        :class:`CompletedTexture` (no zero / untouched texel anywhere in the atlas), numpy.
    """
    dev = maps.mask.device

    def put(x):
        return torch.as_tensor(x).to(dev, torch.float32)

    albedo, weight = put(albedo), put(weight)
    skin = None if skin is None else put(skin)
    s = maps.size
    at = atlas_tensors(maps, dev)
    mask = at.mask
    w = weight * mask
    cut = cut_off_under_chin(w, maps)
    w = w.masked_fill(cut, 0.0)
    if skin is not None:
        skin = skin.masked_fill(cut, 0.0)
    a = albedo
    if skin is not None:
        a = flatten_shading(a, skin * mask, maps)
    # the share of each texel's weight that the photo called skin (1 without a skin mask)
    share = (torch.ones_like(w) if skin is None
             else (skin * mask / w.clamp(min=1e-6)).clamp(0, 1))
    w = w * hair_weight(a, w, maps)
    w = w * fringe_gap_weight(w, maps)
    a = lift_to_mirror(a, w, share, maps)
    # (a) mirror
    wf, af = w.reshape(-1), a.reshape(-1, 3)
    wm = torch.where(at.has_mirror, wf[at.mirror], 0.0)
    am = match_mirror(a, w, maps)
    w_tot = wf + (1 - wf) * wm
    comb = (wf[:, None] * af + ((1 - wf) * wm)[:, None] * am) / w_tot.clamp(min=1e-6)[:, None]
    comb = comb.reshape(s, s, 3)
    w_tot = w_tot.reshape(s, s)
    # thin gaps (mask borders around brows, lips, eyes) from their neighbours, push-pull like
    for sigma in (s / 512, s / 128):
        local, den = normalized_blur(comb, w_tot, sigma=max(sigma, 1.0))
        sup = (den / 0.4).clamp(0, 1) * mask
        comb = (w_tot[..., None] * comb + (1 - w_tot[..., None]) * sup[..., None] * local)
        comb = comb / (w_tot + (1 - w_tot) * sup).clamp(min=1e-6)[..., None]
        w_tot = torch.maximum(w_tot, 0.9 * sup)
    # (b) skin template: mean visible skin albedo + its low-frequency variation
    sw = w_tot * (at.skin > 0.5)
    if float(sw.sum()) < 1:
        sw = w_tot
    good = sw > 0.5
    if int(good.sum()) >= 20:  # the median: robust to brows, lips, stray hair
        skin_color = median(comb[good], dim=0)
    elif float(sw.sum()) >= 1:
        skin_color = (comb * sw[..., None]).sum((0, 1)) / sw.sum()
    else:
        skin_color = torch.tensor([0.78, 0.6, 0.5], device=dev)
    # on the surface, so that it is continuous across the atlas's seams; it continues the
    # seen skin's colour smoothly over the head and relaxes to the median skin colour. Its
    # colour, not its shadows: the shadow under the jaw (or clothing, or hair at the face's
    # edge) continued over the unseen neck as a dark band; texels darker than SHADOW_LEVEL
    # of the median skin count little
    lvl = max(float(_luma(skin_color)), 1e-3)
    lo, hi = SHADOW_LEVEL
    bright = ((_luma(comb) / lvl - lo) / (hi - lo)).clamp(0.05, 1.0)
    template, _ = mesh_lowpass(maps, comb, sw * bright, sigma=s / 24,
                               prior=skin_color.cpu().numpy(), reach=s / 4)
    template = skin_hue(template, skin_color)
    template = pad_outside(template, maps)
    # texels near a seam take the template: the photo detail on one side of a seam has no
    # counterpart on the other
    fade = at.seam_fade
    w_tot = w_tot * fade
    w = w * fade
    # where nothing (or only a thin band) was seen keep the template; soft, slightly eroded mask
    m = erode3(((w_tot - 0.05) / 0.45).clamp(0, 1))
    # the photo's detail fades in over S / 128 texels from where it ends (hair line, jaw,
    # silhouette), not at once: a detail edge there reads as a drawn outline
    inside = distance_inside(m > 0.5)
    m = torch.minimum(m, (inside / max(s / 128, 1.0)).clamp(0, 1))
    m = gaussian_blur(m, max(1.0, s / 512))
    filled = torch.where(w_tot[..., None] > 1e-3, comb, template)
    levels = int(math.log2(s)) - 3
    tex = laplacian_blend(filled, template, m, levels=max(levels, 1))
    # the coarse pyramid bands reach across the gaps between islands: pin the seams
    tex = template + fade[..., None] * (tex - template)
    if skin is not None:
        # the template's skin takes the seen skin's fine detail (not on the seams)
        tex = tex + ((1 - m) * fade * mask)[..., None] * skin_detail(
            comb, w_tot, skin * mask, maps)
    if symmetric_lowfreq:
        tex = symmetrize_lowfreq(tex, maps, sigma=s / 16)
    if skin is not None:
        # lifting the shadows (above) and trusting the brighter mirror side raise the seen
        # skin above the photo's level; the albedo keeps the photo's average skin brightness
        # (the neutral-light convention): one factor for the whole texture, no new edges
        before, after = skin_level(albedo, skin * mask), skin_level(tex, skin * mask)
        if math.isfinite(before) and math.isfinite(after) and after > 1e-3:
            tex = tex * float(np.clip(before / after, 1 / LEVEL_MAX, LEVEL_MAX))
    tex = fit_range(tex, maps)

    f32 = np.float32
    return CompletedTexture(texture=to_host(tex, f32), observed=to_host(w, f32),
                            combined=to_host(w_tot, f32), skin_color=to_host(skin_color, f32),
                            skin_share=None if skin is None else to_host(share, f32))


def pad_outside(tex: ArrayT, maps: UVMaps) -> ArrayT:
    """Fill the texels outside the atlas from their nearest covered texel (bilinear and
    mip-mapped lookups at island borders read them).

    Args:
        tex: ``[S, S, C]``, numpy or a tensor (the result is of its type and device); maps:
            its atlas (the nearest covered texel of every texel is found once per atlas and
            kept in ``maps.derived``).
    """
    src = maps.derived.get("pad_outside")
    if src is None:
        mask = host_array(maps, "mask")
        if mask.all() or not mask.any():
            src = np.arange(mask.size)
        else:
            _, lab = cv2.distanceTransformWithLabels((~mask).astype(np.uint8), cv2.DIST_L2, 5,
                                                     labelType=cv2.DIST_LABEL_PIXEL)
            ys, xs = np.nonzero(mask)
            first = np.zeros(int(lab.max()) + 1, np.int64)
            first[lab[ys, xs]] = ys * mask.shape[1] + xs
            src = first[lab.reshape(-1)]
        src.setflags(write=False)
        maps.derived["pad_outside"] = src
    if isinstance(tex, Tensor):
        key = ("pad_outside", str(tex.device))
        idx = maps.derived.get(key)
        if idx is None:
            idx = maps.derived[key] = torch.from_numpy(src.copy()).to(tex.device)
        return tex.reshape(-1, tex.shape[-1])[idx].reshape(tex.shape)
    return tex.reshape(-1, tex.shape[-1])[src].reshape(tex.shape)


def coverage(weight: np.ndarray, maps: UVMaps, threshold: float = 0.1) -> float:
    """Fraction of face-region texels seen in the photo (own view, not mirrored)."""
    face = host_array(maps, "face") > 0.5
    if face.sum() == 0:
        return 0.0
    return float((weight[face] > threshold).mean())
