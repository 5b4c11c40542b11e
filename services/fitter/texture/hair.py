"""Hair and skin in the texture: what of the unwrapped skin is really skin
(:func:`hair_weight`), and the head of hair painted on the scalp (:func:`hair_layer`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.imaging import LUMA
from services.fitter.texture.atlas import (
    UVMaps,
    atlas_tensors,
    derived_arrays,
    host_array,
    spare_rect,
)
from services.fitter.texture.imageops import (
    box_mean,
    median,
    normalized_blur,
    numpy_io,
    square_max,
)
from services.fitter.texture.lowpass import mesh_lowpass

HAIR_RATIO = (0.7, 0.85)


@numpy_io
def hair_weight(albedo: Tensor, weight: Tensor, maps: UVMaps) -> Tensor:
    """Down-weight hair over the forehead and temples: skin texels there whose de-shaded
    luma is well below that of the central face's skin.

    The photo masks let through fringes and strands of hair whose colour is close to skin;
    once the fitted shading is divided out they are much darker than the skin albedo (0.3 to
    0.8 of it), while shading that the light model explains is gone. (Blond strands lighter
    than the skin are left to the photo-space colour test, :func:`skin_colour_weight`.)
    Brows (not skin in the model) and the lower face (stubble) are left alone.

    Args:
        albedo: ``float32 [S, S, 3]``; weight: ``float32 [S, S]`` own-view confidence.
        maps: UV maps of size S.
    Returns:
        ``float32 [S, S]`` in [0, 1]: 0 below ``HAIR_RATIO[0]`` of the skin luma, 1 above
        ``HAIR_RATIO[1]``, 1 outside the forehead.
    """
    at = atlas_tensors(maps, albedo.device)
    lum = albedo @ torch.as_tensor(LUMA, device=albedo.device)
    skin = at.skin > 0.5
    ref = skin & at.central_face & (weight > 0.5)
    if int(ref.sum()) < 50:
        return torch.ones_like(weight)
    ratio = lum / max(float(median(lum[ref])), 1e-3)
    lo, hi = HAIR_RATIO
    w = ((ratio - lo) / (hi - lo)).clamp(0, 1)
    return torch.where(skin & at.forehead, w, 1.0).to(torch.float32)


# a fringe: when less than FRINGE_SEEN of the forehead zone is seen in pieces at least
# 2 x FRINGE_GAP x S texels wide (S the atlas side; 32 texels at 1024), what is seen of it
# is skin glimpsed between the strands: lit unlike the rest of the face and isolated, it
# printed as bright windows on a filled forehead. On 24 faces-dev / FFHQ photos such pieces
# cover 0 % of the zone on fd15 (bangs) and fd06 (its forehead mostly taken for strands),
# 6-33 % on the 22 others (fd14 and fd16's fringes 9 and 8 %)
FRINGE_GAP = 1 / 64
FRINGE_SEEN = 0.03


def fringe_gap_weight(weight: Tensor, maps: UVMaps) -> Tensor:
    """Drop the skin seen between the strands of a fringe that hides the forehead.

    The seen forehead (``weight > 0.5`` in ``maps.forehead``) is opened morphologically (a
    square of side ``2 r + 1``, r = ``FRINGE_GAP`` x S; on a copy at most 256 texels on a
    side). When what survives covers less than
    ``FRINGE_SEEN`` of the zone, the seen texels that did not survive are faded out over
    r / 2 (the completion fills them as it fills the hidden rest); otherwise nothing changes.
    Computed on ``weight``'s device.

    Args:
        weight: ``float32 [S, S]`` own-view confidence.
        maps: UV maps of size S.
    Returns:
        ``float32 [S, S]`` in [0, 1]: all ones unless a fringe hides the forehead, and
        outside the forehead.
    """
    at = atlas_tensors(maps, weight.device)
    r = max(1, round(maps.size * FRINGE_GAP))
    seen = ((weight > 0.5) & at.forehead).to(torch.float32)
    # the opening on a copy at most 256 texels on a side (its gate and its pieces need no
    # finer steps; at 1024 it took 0.35-2 s on cpu2)
    q = max(1, maps.size // 256)
    rq = max(1, round(r / q))
    small = (F.avg_pool2d(seen[None, None], q)[0, 0] > 0.5).to(torch.float32) if q > 1 else seen
    opened = square_max(-square_max(-small, rq), rq)
    zone = float(at.forehead.sum())
    if zone < 1 or float(opened.sum()) * q * q >= FRINGE_SEEN * zone:
        return torch.ones_like(weight)
    if q > 1:
        opened = F.interpolate(opened[None, None], scale_factor=q, mode="nearest")[0, 0]
    dropped = (seen > 0) & (opened < 0.5)
    f = max(1, r // 2)
    soft = box_mean(square_max(dropped.to(torch.float32), f), f)
    return torch.where(at.forehead, 1 - soft, 1.0).to(torch.float32)


@dataclass
class HairLayer:
    """A head of hair in UV, painted over the completed skin texture.

    Attributes:
        color: ``float32 [S, S, 3]`` hair albedo (sRGB in [0, 1]).
        matte: ``float32 [S, S]`` in [0, 1], where hair covers the skin.
        info: ``{"has_hair", "long_hair", "hair_rgb", "hair_amp", "hair_px", "skin_px",
            "crown_hair_share"}`` for the report.
        curtain: long hair's :class:`CurtainStrip` (painted into the atlas's spare room after
            the islands' padding, :func:`paint_curtain`), else None.
    """

    color: np.ndarray
    matte: np.ndarray
    info: dict
    curtain: CurtainStrip | None = None


# the curtain's strip: the angles about the head's vertical axis across it (degrees, 0 at the
# back, the sign of the hair mesh's columns) and its length down the curtain (inter-ocular
# distances of the mean shape): the curtain's columns and rows read it at these, so its
# strands keep the scalp's scale whatever the curtain's length
STRIP_DEG = (-120.0, 120.0)
STRIP_LENGTH_IOD = 4.0


@dataclass(frozen=True)
class CurtainStrip:
    """Where long hair's curtain (:mod:`services.fitter.hair_mesh`) reads its texture: a
    rectangle of the atlas that no island covers
    (:func:`~services.fitter.texture.atlas.spare_rect`), painted with the hair of the back of
    the head drawn down in strands.

    Attributes:
        rect: ``(r0, r1, c0, c1)`` its texel rows and columns in the atlas of side ``size``.
        size: the atlas side S.
        degrees: ``(first, last)`` the angles about the head's axis at its first and last
            column (0 at the back; :data:`STRIP_DEG`).
        length: model units down the curtain from its top (row ``r0``) to row ``r1 - 1``.
        rgb: ``float32 [r1 - r0, c1 - c0, 3]`` its pixels (sRGB in [0, 1]).
    """

    rect: tuple[int, int, int, int]
    size: int
    degrees: tuple[float, float]
    length: float
    rgb: np.ndarray = field(repr=False, compare=False)

    def uv(self, degrees: np.ndarray, down: np.ndarray) -> np.ndarray:
        """UVs ``[..., 2]`` (row 0 = ``v = 1``) of the curtain's points at angles ``degrees``
        about the head's axis and ``down`` model units below its top (broadcast together),
        clamped to the strip's texel centres."""
        r0, r1, c0, c1 = self.rect
        a = np.clip((np.asarray(degrees, np.float64) - self.degrees[0])
                    / (self.degrees[1] - self.degrees[0]), 0.0, 1.0)
        t = np.clip(np.asarray(down, np.float64) / self.length, 0.0, 1.0)
        col = c0 + 0.5 + a * (c1 - c0 - 1)
        row = r0 + 0.5 + t * (r1 - r0 - 1)
        u, v = np.broadcast_arrays(col / self.size, 1.0 - row / self.size)
        return np.stack([u, v], -1)


def paint_curtain(tex: np.ndarray, strip: CurtainStrip | None) -> np.ndarray:
    """``tex`` ``[S, S, 3]`` with ``strip``'s pixels in its rectangle (a copy; ``tex`` itself
    when there is no strip)."""
    if strip is None:
        return tex
    r0, r1, c0, c1 = strip.rect
    out = np.array(tex, copy=True)
    out[r0:r1, c0:c1] = strip.rgb
    return out


def curtain_strip(color: np.ndarray, matte: np.ndarray, maps: UVMaps,
                  swatch: np.ndarray | None, amp: float) -> CurtainStrip | None:
    """Long hair's :class:`CurtainStrip`: the colour of the hair painted over the back of the
    head (the median of ``color`` where ``matte`` is hair, behind the ears), times the
    photo's own hair texture (``swatch``, :func:`hair_swatch`; its rows down the curtain, its
    columns round it, at the scale :func:`swatch_on_head` lays it on the scalp) or, without
    one, strand noise of strand contrast ``amp``. None when the atlas has no spare room
    (:func:`~services.fitter.texture.atlas.spare_rect`) or ``matte`` no hair at the back.

    Args:
        color: ``float32 [S, S, 3]`` the hair layer's colour; matte: ``float32 [S, S]``.
        maps: the atlas; swatch: ``float32 [SWATCH, SWATCH]`` log-luma detail or None.
    """
    rect = spare_rect(maps)
    if rect is None:
        return None
    around, _, radius = _head_angles(maps)
    back = (matte > 0.8) & (np.abs(around) > np.radians(180.0 - STRIP_DEG[1] / 2))
    if back.sum() < 20:
        return None
    colour = np.median(color[back], 0).astype(np.float32)
    r0, r1, c0, c1 = rect
    length = STRIP_LENGTH_IOD * maps.iod
    # the texture at the swatch's scale (SWATCH_PER_IOD pixels per inter-ocular distance, as
    # on the scalp), round the curtain at the scalp's radius and down it; then area-resampled
    # to the strip's texels
    per_unit = SWATCH_PER_IOD / max(maps.iod, 1e-9)
    wide = max(int(round(math.radians(STRIP_DEG[1] - STRIP_DEG[0]) * radius * per_unit)), 1)
    tall = max(int(round(length * per_unit)), 1)
    if swatch is not None:  # the photo's hair, tiled: its rows run down the curtain
        reps = (-(-tall // swatch.shape[0]), -(-wide // swatch.shape[1]))
        native = np.tile(swatch, reps)[:tall, :wide]
    else:  # strands of the photo's contrast
        native = amp * strip_noise(tall, wide)
    detail = cv2.resize(native.astype(np.float32), (c1 - c0, r1 - r0),
                        interpolation=cv2.INTER_AREA)
    rgb = np.clip(colour * np.exp(detail)[..., None], 1.0 / 255, 1.0).astype(np.float32)
    return CurtainStrip(rect=rect, size=maps.size, degrees=STRIP_DEG, length=float(length),
                        rgb=rgb)


# bangs (a fringe the photo shows dense over the forehead, not :func:`fringe_gap_weight`'s
# glimpses): the forehead's texels below the hair zone that the photo saw (BANGS_SEEN) as hair
# (BANGS_HAIR of their weight), when they are BANGS_SHARE of its seen forehead at least. On
# 8 captured photos: fd15's bangs 0.95, fd16's wispy ones 0.55, fd14 and fd01's strands over
# a side 0.31-0.32, the rest 0.03 at most (painted, the wispy and the side ones read as
# smudges and drawn lines on the forehead)
BANGS_SEEN = 0.3
BANGS_HAIR = 0.6
BANGS_SHARE = 0.8


def _bangs(frac: np.ndarray, seen: np.ndarray, zone: np.ndarray, maps: UVMaps) -> np.ndarray:
    """``float32 [S, S]`` in [0, 1]: hair the photo shows over the forehead, below the hair
    zone (``zone`` ``[S, S]``), where its hair fraction ``frac`` and its seen weight ``seen``
    (``[S, S]``) say hair; 0 everywhere when it is under :data:`BANGS_SHARE` of the seen
    forehead (stray strands are no bangs). Soft-edged over ``S / 256`` texels."""
    s = maps.size
    forehead = np.asarray(maps.forehead)
    fore = forehead & (zone < 0.5)
    looked = fore & (seen > BANGS_SEEN)
    hair = looked & (frac > BANGS_HAIR)
    if looked.sum() == 0 or hair.sum() < BANGS_SHARE * looked.sum():
        return np.zeros((s, s), np.float32)
    k = max(3, s // 64 | 1)  # the skin glimpsed between its strands is under it
    solid = cv2.morphologyEx(hair.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    # ... and so is the forehead above it, up to the hairline, which the photo sees at a
    # grazing angle (a fringe hangs from there; the face's UV island runs up the head, row 0
    # at v = 1)
    solid = solid.astype(bool)
    # (through the hair zone's soft lower edge too: the zone's share of hair there left a
    # band of skin between the bangs and the hairline)
    solid |= forehead & np.maximum.accumulate(solid[::-1], axis=0)[::-1]
    # soft-edged within the islands (the empty texels past an island's border are no edge)
    covered = host_array(maps, "mask").astype(np.float32)
    soft, _ = normalized_blur(solid.astype(np.float32)[..., None], covered, max(1.0, s / 256))
    return (np.clip(soft[..., 0], 0, 1) * forehead).astype(np.float32)


def hair_layer(color: np.ndarray, w_hair: np.ndarray, w_skin: np.ndarray, maps: UVMaps,
               stats: dict) -> HairLayer | None:
    """The hair of the scalp: where it grows, and its colour with strands.

    Where: the mean shape's hair zone (``maps.hair_zone``) times a field that is the seen
    hair / (hair + skin) fraction where the photo shows the scalp (a receding or shaved
    hairline stays skin, a lower one stays as the zone says) and continues over the unseen
    scalp toward 1 (:func:`~services.fitter.texture.lowpass.mesh_lowpass`); long hair
    (``stats["long_hair"]``) also covers what ``maps.hair_zone_long`` adds (behind the ears,
    the back of the neck) whatever the photo saw there; dense bangs the photo shows over the
    forehead (:func:`_bangs`) are hair too, in the synthesised colour (the photo's own pixels
    there hold the skin glimpsed between the strands). A bald head (``stats["has_hair"]``
    false) gets none. Other hair that hangs over the face, and hair over the ears or
    shoulders, is never painted: the zone is 0 there.

    Colour: the seen hair's colour continued smoothly over the scalp from the photo's median
    hair colour, times the texture of the photo's own hair (``stats["hair_swatch"]``, from
    :func:`hair_swatch`: curls stay curls) laid over the head by
    :func:`swatch_on_head`, or, when too little hair was seen for one, strand noise
    (:func:`strand_noise`) with the photo's strand contrast (both are functions of each
    texel's 3D position: no seams); the photo's own hair texels where they were seen well.

    Args:
        color: ``float32 [S, S, 3]`` the photo colour sampled into UV (hair is not de-lit:
            its albedo is the photo's hair colour under the average light, like the skin's).
        w_hair, w_skin: ``float32 [S, S]`` unwrap confidences of the hair and skin masks.
        maps: UV maps of size S.
        stats: the photo's ``HeadMasks.hair_stats`` entry.
    Returns:
        :class:`HairLayer`, or None for a bald head.
    """
    info = hair_info(stats)
    if not info["has_hair"]:
        return None
    s = maps.size
    hair_rgb = np.asarray(stats["hair_rgb"], np.float32)
    covered = host_array(maps, "mask")
    zone = maps.hair_zone * covered
    # long hair: below the short line it hangs over whatever the photo saw there (the side of
    # the neck at a grazing angle): the zone alone, with its smooth edge
    hang = (np.clip(maps.hair_zone_long - maps.hair_zone, 0, 1) * covered
            if info.get("long_hair") else 0.0)
    seen = np.clip(w_hair + w_skin, 0, 1).astype(np.float32)
    frac = (w_hair / np.maximum(w_hair + w_skin, 1e-6)).astype(np.float32)
    field, _ = mesh_lowpass(maps, frac[..., None], seen, sigma=s / 96, prior=np.ones(1),
                            reach=s / 16)
    t = np.clip((field[..., 0] - 0.35) / 0.3, 0, 1)
    bangs = _bangs(frac, seen, zone, maps)
    matte = np.clip(np.maximum(zone * t * t * (3 - 2 * t), bangs) + hang, 0, 1)
    w_col = (w_hair * (np.maximum(zone, hang) > 0.05)).astype(np.float32)
    base, _ = mesh_lowpass(maps, color, w_col, sigma=s / 32, prior=hair_rgb, reach=s / 6)
    swatch = stats.get("hair_swatch")
    if swatch is not None:  # the photo's own hair, synthesised over the scalp
        detail = swatch_on_head(swatch, maps)
    else:  # too little hair seen: strands of the photo's contrast
        detail = float(stats["hair_amp"]) * _atlas_strands(maps)
    synth = base * np.exp(detail)[..., None]
    own = np.clip((w_col - 0.3) / 0.5, 0, 1)[..., None]
    out = np.clip(own * color + (1 - own) * synth, 1.0 / 255, 1.0).astype(np.float32)
    curtain = (curtain_strip(out, matte, maps, swatch, float(stats["hair_amp"]))
               if info.get("long_hair") else None)
    return HairLayer(color=out, matte=matte.astype(np.float32), info=info, curtain=curtain)


# hair_swatch: a tileable SWATCH x SWATCH texture at SWATCH_PER_IOD pixels per inter-ocular
# distance, quilted from PATCH x PATCH patches of the seen hair (fewer than SWATCH_MIN_PATCHES
# places for a patch at every share of SWATCH_COVERS: no swatch); its log-luma contrast kept
# within SWATCH_STD
SWATCH = 256
SWATCH_PER_IOD = 128
PATCH = 24
SWATCH_MIN_PATCHES = 4
SWATCH_STD = (0.04, 0.3)
# the share of a patch's pixels that must be hair, tried in turn: below the first, what is not
# hair in a patch adds no detail (a hair mask that moves by a pixel with the landmarks must
# not switch the photo's hair for the synthetic strands: fd18, glasses, long hair)
SWATCH_COVERS = (0.85, 0.7)
SWATCH_ALONG = 6.0  # swatch pixels: how far straight hair's patches are drawn out


def hair_swatch(hires: np.ndarray, hair: np.ndarray, iod_px: float, seed: int = 0
                ) -> np.ndarray | None:
    """A tileable texture of the photo's own hair (patch-based synthesis), for the scalp the
    photo did not show.

    The hair pixels are taken at :data:`SWATCH_PER_IOD` pixels per inter-ocular distance;
    their log-luma detail (the hair's texture without its shading, finer than ``PATCH / 8``
    pixels) is cut into ``PATCH``-pixel patches lying on hair (:data:`SWATCH_COVERS` of their
    pixels), each turned so that its strands run down the meridians, and the patches are laid
    at random on a toroidal ``SWATCH``-pixel grid, half-overlapping, cross-faded. Curls,
    waves, coils or straight strands come out as the photo shows them, at their size.

    Args:
        hires: ``uint8`` or ``float [Sh, Sh, 3]`` RGB crop (float in [0, 1]).
        hair: bool ``[H, W]`` hair pixels of the same crop at any resolution.
        iod_px: the inter-ocular distance (outer eye corners) in pixels of ``hair``.
        seed: the patches' random placement.
    Returns:
        ``float32 [SWATCH, SWATCH]`` log-luma detail (zero mean), or None when the photo
        shows too little hair.
    """
    img = np.asarray(hires, np.float32)
    if img.max() > 1.5:
        img = img / 255.0
    sh = img.shape[0]
    scale = SWATCH_PER_IOD / max(iod_px * sh / hair.shape[0], 1e-6)
    side = max(int(round(sh * scale)), 1)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA if scale < 1
                     else cv2.INTER_LINEAR)
    m = cv2.resize(hair.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    luma = np.maximum(img @ LUMA, 1.0 / 255)
    detail = np.log(luma) - np.log(cv2.GaussianBlur(luma, (0, 0), PATCH / 8))
    # top-left corners of the patches lying on hair (a share SWATCH_COVERS of their pixels
    # at least): a handful of distinct places, not one blob
    inner = cv2.erode(m, np.ones((3, 3), np.uint8))
    cover = cv2.boxFilter(inner.astype(np.float32), -1, (PATCH, PATCH), anchor=(0, 0),
                          normalize=True, borderType=cv2.BORDER_CONSTANT)
    cover = cover[: side - PATCH + 1, : side - PATCH + 1]
    for share in SWATCH_COVERS:
        ys, xs = np.nonzero(cover >= share)
        if len(ys) >= SWATCH_MIN_PATCHES * PATCH:
            break
    else:
        return None
    if share < SWATCH_COVERS[0]:  # patches partly off the hair: what is not hair adds no detail
        detail = detail * (inner > 0)
    coherence, out = _quilt(detail, ys, xs, np.random.default_rng(seed))
    # straight hair (its patches' gradients share one direction): drawn out along the strands,
    # which the cross-faded patches had broken into pieces; curls (no shared direction) keep
    # their shape
    along = SWATCH_ALONG * float(np.clip((coherence - 0.2) / 0.4, 0, 1))
    if along > 0.5:
        m_ = int(math.ceil(3 * along))  # the swatch tiles: blur it as a torus
        big = np.pad(out, ((m_, m_), (2, 2)), mode="wrap")
        out = cv2.GaussianBlur(big, (0, 0), sigmaX=0.5, sigmaY=along)[m_:-m_, 2:-2]
    out -= out.mean()
    # the cross-fades average patches and lower the contrast: back to the seen hair's
    seen = float(np.std(detail[inner > 0]))
    target = float(np.clip(seen, *SWATCH_STD))
    return (out * (target / max(float(np.std(out)), 1e-6))).astype(np.float32)


def _quilt(detail: np.ndarray, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator
           ) -> tuple[float, np.ndarray]:
    """:func:`hair_swatch`'s quilt: ``PATCH``-pixel patches of ``detail`` (top-left corners
    drawn from ``ys, xs``, one per half-overlapping place of the toroidal ``SWATCH`` grid, row
    by row), each turned so that its gradients run along the x axis (strands down the rows),
    cross-faded by a ``sin^2`` window.

    All patches are cut by one ``cv2.remap`` (bilinear, zero outside, as ``cv2.warpAffine``
    of each patch; the sample points equal to ~1/32 pixel, OpenCV's fixed-point step) and
    summed by ``np.bincount``.

    Args:
        detail: ``float32 [H, W]`` log-luma detail; ys, xs: ``int [K]`` patch corners.
        rng: draws the patch of each place.
    Returns:
        ``(coherence, float32 [SWATCH, SWATCH])``: the median structure-tensor coherence of
        the places a patch can come from (1 = strands share one direction, 0 = none), and
        the quilt.
    """
    box = (PATCH, PATCH)
    gx_, gy_ = cv2.Sobel(detail, cv2.CV_32F, 1, 0), cv2.Sobel(detail, cv2.CV_32F, 0, 1)
    jxx = cv2.boxFilter(gx_ * gx_, -1, box, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    jyy = cv2.boxFilter(gy_ * gy_, -1, box, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    jxy = cv2.boxFilter(gx_ * gy_, -1, box, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    coh = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / np.maximum(jxx + jyy, 1e-9)
    coherence = float(np.median(coh[ys, xs]))
    step = PATCH // 2
    places = np.arange(0, SWATCH, step)
    n = len(places) ** 2
    k = rng.integers(len(ys), size=n)
    y0, x0 = ys[k], xs[k]
    # the gradients' main direction at each patch, across the strands (radians from x); the
    # patch is that turned to the x axis about its centre: destination pixel (u, v) samples
    # the source at centre + R(-across) ((u, v) - PATCH / 2 + 0.5), R(t) the rotation by t
    # in image axes (y down), as cv2.getRotationMatrix2D(centre, degrees(across)) inverted
    across = 0.5 * np.arctan2(2.0 * jxy[y0, x0], jxx[y0, x0] - jyy[y0, x0]).astype(np.float64)
    c, s_ = np.cos(across), np.sin(across)
    pad = PATCH
    cx, cy = x0 + pad + PATCH / 2 - 0.5, y0 + pad + PATCH / 2 - 0.5
    d = np.arange(PATCH, dtype=np.float64) - (PATCH / 2 - 0.5)
    du, dv = d[None, None, :], d[None, :, None]
    mx = cx[:, None, None] + c[:, None, None] * du - s_[:, None, None] * dv
    my = cy[:, None, None] + s_[:, None, None] * du + c[:, None, None] * dv
    padded = cv2.copyMakeBorder(detail, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    patches = cv2.remap(padded, mx.reshape(n * PATCH, PATCH).astype(np.float32),
                        my.reshape(n * PATCH, PATCH).astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(n, PATCH, PATCH)
    ramp = np.sin(np.linspace(0, np.pi, PATCH, dtype=np.float32)) ** 2 + 1e-3
    win = ramp[:, None] * ramp[None, :]
    # where each patch's pixels land on the torus (places row by row, as k was drawn)
    gy, gx = np.meshgrid(places, places, indexing="ij")
    idx = np.arange(PATCH)
    rows = (gy.reshape(-1, 1, 1) + idx[None, :, None]) % SWATCH
    cols = (gx.reshape(-1, 1, 1) + idx[None, None, :]) % SWATCH
    flat = (rows * SWATCH + cols).ravel()
    acc = np.bincount(flat, weights=(patches * win).ravel(), minlength=SWATCH * SWATCH)
    wsum = np.bincount(flat, weights=np.broadcast_to(win, (n, PATCH, PATCH)).ravel(),
                       minlength=SWATCH * SWATCH)
    return coherence, (acc / wsum).astype(np.float32).reshape(SWATCH, SWATCH)


def _head_angles(maps: UVMaps) -> tuple[np.ndarray, np.ndarray, float]:
    """``(around, down, radius)`` of every texel of ``maps`` (:func:`head_angles` from
    ``maps.head_centre``) and the scalp's median distance from the centre; made once per
    atlas (:func:`~services.fitter.texture.atlas.derived_arrays`)."""
    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        around, down, r = head_angles(host_array(maps, "pos_mean"), maps.head_centre)
        scalp = maps.hair_zone > 0.5
        return around, down, np.float64(np.median(r[scalp] if scalp.any() else r))

    around, down, radius = derived_arrays(maps, "hair-angles", build, (__file__,))
    return around, down, float(radius)


def swatch_on_head(swatch: np.ndarray, maps: UVMaps) -> np.ndarray:
    """:func:`hair_swatch` laid over the head of ``maps``: the swatch's rows run down the
    meridians from the crown (the photo's vertical over the forehead), its columns around the
    head, at the photo's scale (``SWATCH_PER_IOD`` pixels per ``maps.iod``, on a sphere of
    the scalp's radius); a whole number of tiles goes round, so the back of the head has no
    seam. Returns ``float32 [S, S]``."""
    around, down, radius = _head_angles(maps)
    per_unit = SWATCH_PER_IOD / max(maps.iod, 1e-9)
    tiles = max(1, int(round(2 * np.pi * radius * per_unit / SWATCH)))
    mx = ((around + np.pi) / (2 * np.pi) * tiles * SWATCH).astype(np.float32)
    my = (down * radius * per_unit).astype(np.float32)
    return cv2.remap(swatch, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def _atlas_strands(maps: UVMaps) -> np.ndarray:
    """:func:`strand_noise` at every texel of ``maps`` (``float32 [S, S]``), made once per
    atlas and kept on disk beside it (about 1.1 s to make, each new process)."""
    return derived_arrays(maps, "hair-strands", lambda: (
        strand_noise(host_array(maps, "pos_mean"), maps.head_centre),), (__file__,))[0]


def hair_info(stats: dict) -> dict:
    """What ``report.json`` says of the hair: ``has_hair`` (a head of hair was found and has a
    colour), the band's hair / skin pixel counts, and the colour and strand contrast when
    painted, its volume and length (:func:`~services.fitter.texture.masks.hair_extent`), and
    ``texture``: ``"photo"`` (:func:`hair_swatch`) or ``"strands"``
    (:func:`strand_noise`). ``stats``: a ``HeadMasks.hair_stats`` entry."""
    info = {k: stats.get(k) for k in ("hair_px", "skin_px", "crown_hair_share")}
    info["has_hair"] = bool(stats.get("has_hair")) and "hair_rgb" in stats
    if info["has_hair"]:
        # where the unseen scalp's hair texture came from: the photo's hair or strand noise
        info["texture"] = "photo" if stats.get("hair_swatch") is not None else "strands"
        info["long_hair"] = bool(stats.get("long_hair"))
        info["hair_amp"] = stats.get("hair_amp")
        info["hair_rgb"] = [round(float(c), 4) for c in stats["hair_rgb"]]
        # the hair mesh's measures (masks.hair_extent), in face heights
        for k in ("long_hair_share", "hair_volume", "hair_below", "hair_cut"):
            if k in stats:
                info[k] = stats[k]
    return info


# strand noise: octaves of (cycles per radian across the strands, along them, amplitude)
_STRAND_OCTAVES = ((40, 3, 0.55), (110, 8, 0.35), (260, 14, 0.25), (520, 30, 0.15))


def head_angles(pos: np.ndarray, centre: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-space points ``[..., 3]`` (y up, face toward +z) seen from ``centre`` ``[3]``:
    ``(around, down, r)``, the angle around the vertical axis (0 at the face, radians), the
    angle down from the crown (0 at the top) and the distance, all ``float64 [...]``."""
    d = np.asarray(pos, np.float64) - np.asarray(centre, np.float64)
    r = np.linalg.norm(d, axis=-1) + 1e-9
    return (np.arctan2(d[..., 0], d[..., 2]), np.arccos(np.clip(d[..., 1] / r, -1.0, 1.0)),
            r)


def strand_noise(pos: np.ndarray, centre: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hair-strand noise at model-space points: fast across, slow along the meridians that
    run from the crown (the ``+y`` pole over ``centre``) down the head.

    Args:
        pos: ``[..., 3]`` model-space points (y up, face toward +z); centre: ``[3]``.
        seed: the noise lattice's seed (the same seed gives the same hair).
    Returns:
        ``float32 [...]``, zero mean, standard deviation about 0.5.
    """
    around, down, _ = head_angles(pos, centre)
    total = np.zeros(around.shape, np.float64)
    for k, (ka, kd, amp) in enumerate(_STRAND_OCTAVES):
        total += amp * _value_noise(around, down, seed + k, ka, kd)
    norm = math.sqrt(sum(a * a for _, _, a in _STRAND_OCTAVES))
    return (total / norm).astype(np.float32)


def _value_noise(a: np.ndarray, b: np.ndarray, seed: int, ka: float, kb: float) -> np.ndarray:
    """Smooth value noise on a lattice of ``2 pi ka`` x ``pi kb`` cells, periodic in ``a``
    (radians around), ``b`` in [0, pi] (radians down from the pole)."""
    rng = np.random.default_rng(seed)
    na, nb = max(4, int(round(2 * math.pi * ka))), int(math.ceil(math.pi * kb)) + 2
    grid = rng.standard_normal((nb, na))
    x = np.mod(a, 2 * math.pi) / (2 * math.pi) * na
    y = np.clip(b * kb, 0, nb - 1.001)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    x1, x0, y1 = (x0 + 1) % na, x0 % na, np.minimum(y0 + 1, nb - 1)
    top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
    bot = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
    return top * (1 - fy) + bot * fy


# the curtain's strand noise: octaves of (wavelength across the strands, along them, in swatch
# pixels; amplitude)
_STRIP_OCTAVES = ((24, 160, 0.55), (12, 80, 0.35), (6, 40, 0.25), (3, 20, 0.15))


def strip_noise(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Strand noise on a flat ``rows x cols`` grid of swatch pixels (:data:`SWATCH_PER_IOD` a
    inter-ocular distance), its strands running down the rows: smooth (bicubic) value noise
    of :data:`_STRIP_OCTAVES`. Returns ``float32 [rows, cols]``, zero mean, standard
    deviation about 0.5 (as :func:`strand_noise`)."""
    rng = np.random.default_rng(seed)
    total = np.zeros((rows, cols), np.float32)
    for across, along, amp in _STRIP_OCTAVES:
        gr, gc = rows // along + 4, cols // across + 4
        grid = rng.standard_normal((gr, gc)).astype(np.float32)
        big = cv2.resize(grid, (gc * across, gr * along), interpolation=cv2.INTER_CUBIC)
        total += amp * big[along:along + rows, across:across + cols]
    total -= total.mean()
    return (0.5 * total / max(float(total.std()), 1e-6)).astype(np.float32)
