"""A full beard continued where the photo does not show it.

The photo shows a beard on the chin and the jaw's front. The jaw's sides toward the ears and
the chin's underside are seen at a grazing angle or not at all, and the completion fills them
with the person's skin: a full beard stopped half-way to the ears over a bare neck. When the
seen part of the beard zone (``UVMaps.beard_zone``) holds a beard on the chin and on a side of
the jaw, with a beard's strand texture, the unseen zone of that side (and under the chin)
takes the beard's colour and its own fine detail, tiled as the skin's is
(:func:`~services.fitter.texture.completion.tile_patch`).

A seen texel is facial hair when the photo did not call it skin (its skin share, the photo's
colour-consistent skin over all it took) and it is darker, at low frequency, than the face
skin. A shadow under the jaw or long hair over it passes that test too, and is told apart by
the chin (hair hanging beside the jaw leaves it bare) and by the detail (a shadow is smooth).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ffhquv.imaging import LUMA
from services.fitter.texture.atlas import BeardPart, UVMaps, derived_arrays, host_array
from services.fitter.texture.completion import tile_canvas, tile_grid
from services.fitter.texture.hair import head_angles
from services.fitter.texture.imageops import normalized_blur

# a texel is seen from this observed weight; facial hair when less than BEARD_SKIN of it is
# skin and its low-passed luma is under BEARD_LUMA x the face skin's
BEARD_SEEN = 0.2
BEARD_SKIN = 0.5
BEARD_LUMA = 0.9
# a beard: at least BEARD_CHIN of the seen chin and BEARD_SIDE of a seen side of the jaw is
# facial hair, its fine detail at least BEARD_DETAIL x the face skin's. On 18 photos: full
# beards (fd07, fd14) chin 0.78-0.79, sides 0.71-1.0, detail 5.4-5.6; fd10's beard 0.42,
# 0.93 / 0.36, 3.3; stubble, goatees, jaw shadows and hair over the jaw chin 0.23 at most,
# detail 2.2 at most
BEARD_CHIN = 0.35
BEARD_SIDE = 0.5
BEARD_DETAIL = 2.0
# the least seen texels of a part to judge it (at 1024; scaled by the area)
BEARD_MIN_SEEN = 2000
# the detail: the low-pass scale and the tiled square (texels at 1024) and the least share of
# that square that is seen facial hair
BEARD_SIGMA = 6.0
BEARD_PATCH = 64
BEARD_PATCH_SEEN = 0.8
# the photo's texels keep their own colour from this observed weight up
BEARD_KEEP = 0.5


@dataclass
class BeardInfo:
    """What :func:`beard_layer` found, for the report.

    Attributes:
        beard: whether the unseen zone was painted (on one side at least).
        chin, sides: the facial hair's share of the seen chin and of each seen side of the
            jaw (``-x``, ``+x``; NaN where too little is seen).
        detail: its fine detail over the face skin's (NaN without facial hair).
    """

    beard: bool
    chin: float
    sides: tuple[float, float]
    detail: float

    def as_dict(self) -> dict:
        def r(x: float) -> float | None:
            return None if not np.isfinite(x) else round(float(x), 3)

        return {"beard": self.beard, "beard_chin": r(self.chin),
                "beard_sides": [r(x) for x in self.sides], "beard_detail": r(self.detail)}


def _low(img: np.ndarray, w: np.ndarray, sigma: float) -> np.ndarray:
    """``img`` (``float32 [H, W]`` or ``[H, W, C]``) under
    :func:`~services.fitter.texture.imageops.normalized_blur` with the weights ``w``
    (bool or float ``[H, W]``), same shape."""
    low, _ = normalized_blur(img if img.ndim == 3 else img[..., None], w.astype(np.float32),
                             sigma)
    return low if img.ndim == 3 else low[..., 0]


def _window(maps: UVMaps) -> tuple[slice, slice]:
    """The rows and columns of the atlas that hold the beard zone's chin and sides and the
    central face, with the low-pass's reach round them (made once per atlas)."""
    hit = maps.derived.get("beard-window")
    if hit is None:
        part = np.asarray(maps.beard_part)
        m = np.isin(part, (BeardPart.CHIN, BeardPart.SIDE_NEG, BeardPart.SIDE_POS))
        m |= np.asarray(maps.central_face)
        # on the chin's UV island (the zone reaches into others under the jaw)
        _, isl = cv2.connectedComponents(host_array(maps, "mask").astype(np.uint8))
        cy, cx = np.nonzero(part == BeardPart.CHIN)
        if len(cy):
            m &= isl == isl[int(np.median(cy)), int(np.median(cx))]
        ys, xs = np.nonzero(m)
        s, pad = maps.size, int(3 * BEARD_SIGMA * maps.size / 1024) + 1
        if not len(ys):
            ys = xs = np.array([0, s - 1])
        hit = maps.derived["beard-window"] = (
            slice(max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, s)),
            slice(max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, s)))
    return hit


def _zone_place(maps: UVMaps) -> tuple[np.ndarray, np.ndarray]:
    """``(col, row)``, ``float32 [S, S]``: each texel's place on the head, in texels of the
    beard zone (the median size of the zone's texels on the head) from the zone's first: the
    arc round the vertical axis and the arc down from the crown, on the sphere of the zone's
    median distance from ``maps.head_centre`` (:func:`head_angles`). Made once per atlas."""
    def build() -> tuple[np.ndarray, np.ndarray]:
        pos = host_array(maps, "pos_mean").astype(np.float64)
        around, down, r = head_angles(pos, maps.head_centre)
        zone = np.asarray(maps.beard_zone) > 0
        if not zone.any():
            z = np.zeros(zone.shape, np.float32)
            return z, z
        radius = float(np.median(r[zone]))
        # the zone's texel size: the steps to the next texel along rows and columns inside it
        inside = zone & host_array(maps, "mask")
        steps = np.concatenate([
            np.linalg.norm(pos[1:] - pos[:-1], axis=-1)[inside[1:] & inside[:-1]],
            np.linalg.norm(pos[:, 1:] - pos[:, :-1], axis=-1)[inside[:, 1:] & inside[:, :-1]]])
        texel = float(np.median(steps)) if steps.size else 1.0
        col, row = around * radius / texel, down * radius / texel
        return ((col - col[zone].min()).astype(np.float32),
                (row - row[zone].min()).astype(np.float32))

    return derived_arrays(maps, "beard-place", build, (__file__,))


def _detail_on_head(patch: np.ndarray, maps: UVMaps) -> np.ndarray:
    """The beard's detail ``patch`` (``float32 [p, p, 3]``, texels of the face's island)
    tiled over the beard zone by position on the head (:func:`_zone_place`), not by texel:
    the atlas cuts the jaw into islands of different texel sizes, and a tiling by texel drew
    each cut as a line across the beard (fd07, fd14). The tiling (:func:`tile_grid` over the
    zone's extent) is made once per atlas and patch size. Returns ``float32 [S, S, 3]``,
    0 off the zone."""
    s, p = maps.size, patch.shape[0]
    col, row = _zone_place(maps)
    zone = np.asarray(maps.beard_zone) > 0
    out = np.zeros((s, s, 3), np.float32)
    if not zone.any():
        return out
    key = ("beard-tiling", p)
    grid = maps.derived.get(key)
    if grid is None:
        rows = min(int(np.ceil(float(row[zone].max()))) + 2, 4 * s)
        cols = min(int(np.ceil(float(col[zone].max()))) + 2, 4 * s)
        grid = maps.derived[key] = (rows, cols, *tile_grid(rows, cols, p, seed=1))
    canvas = tile_canvas(patch, *grid)
    got = cv2.remap(canvas, col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0)
    out[zone] = got[zone]
    return out


def beard_layer(texture: np.ndarray, observed: np.ndarray, share: np.ndarray,
                maps: UVMaps) -> tuple[np.ndarray, BeardInfo]:
    """The completed texture with a seen full beard continued over the unseen beard zone.

    Args:
        texture: ``float32 [S, S, 3]`` the completed texture (``CompletedTexture.texture``).
        observed: ``float32 [S, S]`` the photo's weight on it (``CompletedTexture.observed``).
        share: ``float32 [S, S]`` the share of each texel's weight that the photo called skin
            (``CompletedTexture.skin_share``).
        maps: the atlas (size S).
    Returns:
        The texture (``float32 [S, S, 3]``, a new array when painted, else ``texture``) and
        :class:`BeardInfo`.
    """
    s = maps.size
    area = (s / 1024) ** 2
    sigma = BEARD_SIGMA * s / 1024
    nan = float("nan")
    # the tests read the chin, the jaw's sides and the central face only: their window
    win = _window(maps)
    zone, part = np.asarray(maps.beard_zone)[win], np.asarray(maps.beard_part)[win]
    tex_w, obs_w, share_w = texture[win], observed[win], share[win]
    seen = obs_w > BEARD_SEEN
    lum = tex_w @ LUMA
    ref = (obs_w > BEARD_KEEP) & np.asarray(maps.central_face)[win] & (share_w > 0.8)
    if ref.sum() < 100 * area:
        return texture, BeardInfo(False, nan, (nan, nan), nan)
    level = float(np.median(lum[ref]))
    low = _low(lum, seen, sigma)
    hairy = seen & (zone > 0.5) & (share_w < BEARD_SKIN) & (low < BEARD_LUMA * level)

    def frac(p: BeardPart) -> float:
        m = seen & (part == p)
        return float(hairy[m].mean()) if m.sum() >= BEARD_MIN_SEEN * area else nan

    chin = frac(BeardPart.CHIN)
    sides = (frac(BeardPart.SIDE_NEG), frac(BeardPart.SIDE_POS))
    fine = np.abs(lum - low)
    det = (float(np.median(fine[hairy]) / max(float(np.median(fine[ref])), 1e-5))
           if hairy.sum() >= 50 * area else nan)
    on = [bool(chin >= BEARD_CHIN and det >= BEARD_DETAIL and x >= BEARD_SIDE) for x in sides]
    info = BeardInfo(any(on), chin, sides, det)
    if not info.beard:
        return texture, info
    # the beard's colour: the darker of its seen sides' (which it continues) and the whole
    # seen beard's (a chin beard is denser than the sides' front on one face, sparser on the
    # next; along the jaw, where it is painted, a beard grows densest); one colour: the same
    # on both sides of the atlas's seams
    base = np.median(tex_w[hairy], axis=0).astype(np.float32)
    cont = hairy & np.isin(part, [p for p, ok in zip((BeardPart.SIDE_NEG, BeardPart.SIDE_POS),
                                                      on, strict=True) if ok])
    if cont.sum() >= 50 * area:
        sides_rgb = np.median(tex_w[cont], axis=0).astype(np.float32)
        if sides_rgb @ LUMA < base @ LUMA:
            base = sides_rgb
    # its fine detail: the best-seen square of facial hair, tiled
    p = max(8, int(round(BEARD_PATCH * s / 1024)) // 2 * 2)
    step = max(1, p // 4)
    share_p = cv2.blur(hairy.astype(np.float32), (p, p))[p // 2::step, p // 2::step]
    iy, ix = np.unravel_index(int(np.argmax(share_p)), share_p.shape)
    detail = np.zeros_like(texture)
    if share_p[iy, ix] >= BEARD_PATCH_SEEN:
        # its high frequencies, low-passed over the patch and the blur's reach round it
        r = int(3 * sigma) + 1
        y0, x0 = iy * step, ix * step
        ya, xa = max(y0 - r, 0), max(x0 - r, 0)
        t, h = tex_w[ya:y0 + p + r, xa:x0 + p + r], hairy[ya:y0 + p + r, xa:x0 + p + r]
        hf = ((t - _low(t, h, sigma)) * h[..., None])[
            y0 - ya:y0 - ya + p, x0 - xa:x0 - xa + p]
        detail = _detail_on_head(hf, maps)
    paint = base + detail
    # where: the painted sides' zone (and the chin's underside), not what the photo shows well
    where = np.zeros((s, s), np.float32)
    x = host_array(maps, "pos_mean")[..., 0]
    for side, ok in zip((x < 0, x >= 0), on, strict=True):
        if ok:
            where[side] = 1.0
    zone = np.asarray(maps.beard_zone)
    unseen = 1 - np.clip(observed / BEARD_KEEP, 0, 1)
    # softened within the islands (a blur across an island's edge with the empty atlas round
    # it thinned the beard along every cut: a pale line on the jaw)
    cover = host_array(maps, "mask")
    alpha = _low((zone * where * unseen).astype(np.float32), cover, max(1.0, s / 512)) * unseen
    alpha *= (zone > 0) & cover
    paint = np.clip(paint, 1 / 255, 1)
    return (texture + alpha[..., None] * (paint - texture)).astype(np.float32), info
