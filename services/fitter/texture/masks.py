"""Photo-space masks: which pixels of the aligned crop may go into the texture.

The detector's parse labels (skin / brows / nose / lips) times a ramp of the skin
probability, a colour-consistency test against the photo's own central-face skin
(:func:`skin_colour_weight`), eroded along the outline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.imaging import LUMA
from ffhquv.vocab import ParseLabel
from services.fitter.texture.hair import hair_swatch
from services.fitter.texture.hostcopy import to_host
from services.fitter.texture.pool import per_photo

# ParseLabel values of the detector's parse mask, as plain ints (compared with tensors)
PARSE_BG, PARSE_SKIN, PARSE_BROWS, PARSE_EYES, PARSE_NOSE, PARSE_LIPS, PARSE_MOUTH = (
    int(v) for v in ParseLabel)
TEXTURE_LABELS = (PARSE_SKIN, PARSE_BROWS, PARSE_NOSE, PARSE_LIPS)


def photo_face_mask(parse: Tensor, skin: Tensor, photo: Tensor | None = None,
                    landmarks: Tensor | None = None, erode_px: int = 2) -> Tensor:
    """Soft mask of the photo pixels that may go into the texture.

    Args:
        parse: ``[B, H, W]`` uint8 ParseLabel map.
        skin: ``[B, H, W]`` uint8 skin probability 0..255.
        photo: optional ``[B, H, W, 3]`` crop in [0, 1]; with ``landmarks`` it enables the
            colour-consistency test of :func:`skin_colour_weight` (drops hair strands, beard
            stubble, glasses frames and deep shadows that the masks let through).
        landmarks: optional ``[B, 68, 2]`` crop landmarks (pixels).
        erode_px: pixels removed along the mask border (silhouette colours mix background).
    Returns:
        ``[B, H, W, 1]`` float in [0, 1]: labels skin / brows / nose / lips; for the skin label
        times a ramp of the skin probability (0 at 0.5, 1 at 0.8; hair scores about 0.5) and
        the colour-consistency weight (brows and lips are not skin-coloured); eroded.
    """
    lab = parse.long()
    ok = torch.zeros_like(lab, dtype=torch.float32)
    for v in TEXTURE_LABELS:
        ok = ok + (lab == v).float()
    sk = skin.float() / 255.0
    skin_w = ((sk - 0.5) / 0.3).clamp(0.0, 1.0)
    if photo is not None and landmarks is not None:
        skin_w = skin_w * skin_colour_weight(photo, (lab == PARSE_SKIN) & (sk > 0.8), landmarks)
    soft = torch.where(lab == PARSE_SKIN, skin_w, torch.ones_like(sk))
    # erode the face region at its outline (silhouette / hair line: colours mix there) and by
    # one pixel along the eyes and the mouth opening, but not along the inner label borders
    # (lips, brows and skin next to each other are all valid texture)
    region = ok[:, None]
    if erode_px > 0:
        region = -F.max_pool2d(-region, 2 * erode_px + 1, stride=1, padding=erode_px)
    holes = ((lab == PARSE_EYES) | (lab == PARSE_MOUTH)).float()[:, None]
    holes = F.max_pool2d(holes, 3, stride=1, padding=1)
    m = region * (1 - holes) * soft[:, None]
    return m.permute(0, 2, 3, 1).contiguous()


def _ycbcr(rgb: Tensor) -> Tensor:
    r, g, b = rgb.unbind(-1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.564 * (b - y), 0.713 * (r - y)], -1)


def skin_colour_weight(photo: Tensor, skin: Tensor, landmarks: Tensor,
                       highlights: bool = False) -> Tensor:
    """Per-pixel consistency with the photo's own skin colour.

    A robust colour model (median and MAD in Y Cb Cr) is taken from the skin pixels of the
    central face (between the outer eye corners, from the eyes down to the mouth corners,
    which hair rarely covers); pixels whose chroma is far from it, or that are much darker, get
    weight 0. Luma above the median is tolerated (highlights are explained by the shading).

    Args:
        photo: ``[B, H, W, 3]`` in [0, 1].
        skin: ``[B, H, W]`` bool, confident skin pixels.
        landmarks: ``[B, 68, 2]`` pixels.
        highlights: also accept a shine: a pixel brighter than the skin whose chroma is the
            skin's scaled down to no less than ``HIGHLIGHT_CHROMA`` of it (the skin's hue,
            less saturated; fd06's shiny forehead: 0.62 of it, the same hue) is judged by its
            distance from that line alone.
    Returns:
        ``[B, H, W]`` float in [0, 1].
    """
    plain, shiny = _skin_colour(photo, skin, landmarks, highlights)
    return shiny if highlights else plain


def _skin_colour(photo: Tensor, skin: Tensor, landmarks: Tensor, shine: bool
                 ) -> tuple[Tensor, Tensor | None]:
    """:func:`skin_colour_weight` without and (``shine``) with its highlights, from one
    colour model per photo: ``([B, H, W], [B, H, W] or None)``."""
    b, h, w, _ = photo.shape
    ycc = _ycbcr(photo)
    yy, xx = torch.meshgrid(torch.arange(h, device=photo.device),
                            torch.arange(w, device=photo.device), indexing="ij")
    out = torch.ones(b, h, w, device=photo.device)
    out_shine = torch.ones(b, h, w, device=photo.device) if shine else None
    for i in range(b):
        lm = landmarks[i]
        x0, x1 = float(lm[36, 0]), float(lm[45, 0])
        y0 = float(lm[36:48, 1].mean())
        y1 = float(lm[[48, 54], 1].mean())
        ref = skin[i] & (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        if int(ref.sum()) < 50:
            continue
        v = ycc[i][ref]  # [P, 3]
        med = v.median(0).values
        mad = (v - med).abs().median(0).values * 1.4826 + torch.tensor(
            [0.02, 0.006, 0.006], device=photo.device)
        d = (ycc[i] - med) / mad
        dark = (-d[..., 0]).clamp(min=0) / 5.0  # shading darkens skin: tolerate ~5x more
        dist = torch.sqrt(d[..., 1] ** 2 + d[..., 2] ** 2 + dark**2)
        out[i] = ((3.0 - dist) / 1.0).clamp(0, 1)
        if out_shine is not None:
            c, m = ycc[i][..., 1:], med[1:]
            t = (c @ m) / (m @ m).clamp(min=1e-8)
            off = (c - t[..., None] * m) / mad[1:]
            lit = (d[..., 0] > 0) & (t >= HIGHLIGHT_CHROMA) & (t <= 1)
            out_shine[i] = ((3.0 - torch.where(lit, torch.minimum(dist, off.norm(dim=-1)),
                                               dist)) / 1.0).clamp(0, 1)
    return out, out_shine


#: :func:`skin_colour_weight` with ``highlights``: the least share of the skin's chroma a
#: shine keeps (a specular highlight adds white: the skin's hue, brighter and paler)
HIGHLIGHT_CHROMA = 0.4


@dataclass
class HeadMasks:
    """Photo-space masks of the whole head, made once the head's pose is known (stage 2).

    Attributes:
        texture: ``float32 [B, H, W, 1]`` in [0, 1], the pixels that go into the skin texture:
            the face labels (colour-tested above the nose, not below it, so beards, moustaches
            and stubble stay), facial hair below the jaw line, and the person's skin-coloured
            head pixels outside the face (ears, neck, forehead top, a bald scalp).
        hair: ``float32 [B, H, W, 1]`` 0/1, hair of the head (not face labels, not skin).
        skin: ``float32 [B, H, W, 1]`` the colour-consistent skin of the face (no beard,
            brows or lips), whose shadows are lifted from the albedo; None to keep them.
        hair_stats: per photo ``{"hair_px", "skin_px", "dark_px", "crown_hair_share",
            "has_hair", "hair_rgb" [3],
            "hair_swatch" (:func:`~services.fitter.texture.hair.hair_swatch` or None),
            "hair_amp", "long_hair", "long_hair_share", "hair_volume", "hair_below",
            "hair_cut", "glasses"}``: hair and skin pixel counts of the head above the brows
            (``dark_px`` of the hair: darker than the face skin of its column), the hair's
            share in the band's upper third and whether the person has a head of hair
            (:func:`crown_hair_share`), the hair colour (:func:`hair_colour`, sRGB in [0, 1]),
            the spread of its log-luma (strand contrast), whether it is long (hangs beside the
            cheeks, :func:`long_hair_share`, or beside the neck past the frame,
            :data:`LONG_HAIR_BELOW`), how it stands off the head and hangs
            (:func:`hair_extent`) and :func:`eyeglass_frames`' stats.
    """

    texture: Tensor
    hair: Tensor
    hair_stats: list[dict]
    skin: Tensor | None = None


def head_masks(photo: Tensor, parse: Tensor, skin: Tensor, landmarks: Tensor,
               head: Tensor, hires: Tensor | None = None) -> HeadMasks:
    """Skin, facial hair and hair of the whole head in the aligned crops.

    The head is told from the background by OpenCV's GrabCut, seeded by the fitted head's
    silhouette (probable foreground), the face labels (foreground) and the pixels far outside
    the silhouette (background). Head pixels that are neither face labels nor skin-coloured
    (:func:`skin_colour_weight` and the detector's skin probability; highlights brighter than
    the skin with a skin hue count as skin) or that carry strand texture (fine detail well
    above the face skin's, measured on the high-resolution crop: white, grey and blond hair)
    are hair; so are, above the brows, pixels much darker than the face skin of their column
    (:data:`DARK_HAIR`) and, in a side light's shadow, those without the skin's saturation
    (:data:`NEUTRAL_HAIR`), whatever the skin model and the parse say.

    Args:
        photo: ``float [B, H, W, 3]`` crops in [0, 1].
        parse: ``uint8 [B, H, W]`` ParseLabel maps; skin: ``uint8 [B, H, W]`` skin probability.
        landmarks: ``float [B, 68, 2]`` crop pixels.
        head: ``float [B, H, W]`` coverage of the fitted head rendered at the photo's pose.
        hires: optional ``float [B, Sh, Sh, 3]`` the same crops at a higher resolution (the
            strand-texture test; without it the crops are used).
    Returns:
        :class:`HeadMasks` on ``photo``'s device.
    """
    lab = parse.long()
    sk = skin.float() / 255.0
    ref = (lab == PARSE_SKIN) & (sk > 0.8)
    # the texture also takes the skin's shine (a shiny forehead is skin, not a strand)
    cw, cw_tex = _skin_colour(photo, ref, landmarks, shine=True)
    # one transfer each to the host; the photos' host work then runs on per_photo's threads
    # (OpenCV's GrabCut and filters release the GIL)
    photo_np = to_host(photo)
    src = photo_np if hires is None else to_host(hires)
    photo_u8 = (photo_np * 255 + 0.5).astype(np.uint8)
    lm_np, par_np = to_host(landmarks), to_host(parse)
    sk_np, cw_np, head_np = to_host(sk), to_host(cw), to_host(head)
    cwt_np = to_host(cw_tex)
    size = photo.shape[1]

    def one(i: int) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
        lm_i, par_i = lm_np[i], par_np[i]
        t, h, st = _head_masks_one(photo_u8[i], par_i, sk_np[i],
                                   SkinColour(cw_np[i], cwt_np[i]), lm_i, head_np[i],
                                   strand_energy(src[i: i + 1], size)[0],
                                   dark_marks(src[i: i + 1], size)[0])
        if st.get("glasses", {}).get("has_glasses"):
            t = t * ~lens_glints(src[i], photo_u8[i], par_i, lm_i)
        seen = st.pop("hair_seen", [])
        if st.get("has_hair") and seen:
            # the hair's own texture for the unseen scalp (hair_layer), from the sharper crop
            iod_i = float(np.linalg.norm(lm_i[36] - lm_i[45]))
            for mask in seen:  # the first that shows enough hair
                st["hair_swatch"] = hair_swatch(src[i], mask, iod_i)
                if st["hair_swatch"] is not None:
                    break
        # ... nor are the brows (bushy brows reach beyond their label: not creases to lift)
        keep = ((t > 0) | (par_i != PARSE_SKIN)) & ~brow_band(lm_i, par_i.shape)
        return t, h, st, keep

    tex, hair, stats, keep = zip(*per_photo(one, photo.shape[0]), strict=True)
    dev = photo.device
    skin_face = (lab == PARSE_SKIN).float() * ((sk - 0.5) / 0.3).clamp(0, 1) * cw
    # what the texture leaves out (strands, strand edges, frames) is not skin to flatten either
    skin_face = skin_face * torch.tensor(np.stack(keep), device=dev).float()
    return HeadMasks(texture=torch.tensor(np.stack(tex), device=dev)[..., None],
                     hair=torch.tensor(np.stack(hair), device=dev)[..., None],
                     hair_stats=list(stats),
                     skin=skin_face[..., None])


def strand_energy(img: Tensor | np.ndarray, size: int) -> np.ndarray:
    """Fine-detail energy (hair strands, not smooth skin) per pixel of a ``size`` raster.

    Args:
        img: ``float [B, S, S, 3]`` in [0, 1], tensor or array (S >= size; 448 is enough for
            strands).
        size: output side.
    Returns:
        ``float32 [B, size, size]``: local mean of ``|luma - blur(luma, 1 px)|`` at up to 448
        pixels, blurred over 2 px and resampled to ``size``.
    """
    out = []
    for im in to_host(img):
        side = min(im.shape[0], 448)
        if im.shape[0] != side:
            im = cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
        luma = im.astype(np.float32) @ LUMA
        hp = np.abs(luma - cv2.GaussianBlur(luma, (0, 0), 1.0))
        e = cv2.GaussianBlur(hp, (0, 0), 2.0)
        out.append(cv2.resize(e, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out).astype(np.float32)


# thin dark marks: darker than their closing over a disc of MARK_RADIUS_IOD x the inter-ocular
# distance by at least this fraction (hair strands on skin ~0.3-0.6, eyeglass frames > 0.5,
# skin creases and pores < 0.2), measured at MARK_SIDE pixels
MARK_RADIUS_IOD = 0.05
MARK_SIDE = 448
STRAND_CONTRAST = 0.3
FRAME_CONTRAST = 0.4
# an eyeglass frame's fainter pixels (joined to the confident ones, :func:`eyeglass_frames`)
# and the ellipse around each eye they are looked for in (half-axes, x the inter-ocular
# distance)
FRAME_FAINT = 0.15
FRAME_ZONE_IOD = (0.7, 0.5)
# a frame's top rim under the brows (dlib's brow points on it, the brows' label over it) is
# found inside the brows' bodies only where it is this dark and joined to the frame found
# beside them: brow hair reaches 0.4-0.6 (fd18), a black rim 0.7-1 (fd07)
FRAME_ON_BROW = 0.6


class Frames(NamedTuple):
    """:func:`eyeglass_frames`' result: ``mask`` ``float32 [H, W]`` 0/1 frame pixels (all 0
    without glasses), ``on_brows`` bool ``[H, W]`` those of them inside the brows' bodies (a
    top rim that the brows' label covers), and ``stats`` ``{"bridge", "rims",
    "has_glasses"}``."""

    mask: np.ndarray
    on_brows: np.ndarray
    stats: dict

    @classmethod
    def none(cls, shape: tuple[int, int], stats: dict) -> Frames:
        """No frame pixels in an ``[H, W]`` crop."""
        return cls(np.zeros(shape, np.float32), np.zeros(shape, bool), stats)


def dark_marks(img: Tensor | np.ndarray, size: int) -> np.ndarray:
    """Relative darkness of thin structures (hair strands, eyeglass frames) per pixel.

    Args:
        img: ``float [B, S, S, 3]`` in [0, 1], tensor or array (the hi-res crops; resampled
            to 448).
        size: side of the photo raster the masks are made at (224).
    Returns:
        ``float32 [B, 448, 448]`` in [0, 1]: ``1 - luma / closing(luma)`` with a disc of
        ``MARK_RADIUS_IOD`` times a typical inter-ocular distance (0.4 of the crop side):
        0 on smooth skin, about 0.3 on a strand, near 1 on a black frame.
    """
    side = MARK_SIDE
    r = max(2, int(round(MARK_RADIUS_IOD * 0.4 * side)))
    out = []
    for im in to_host(img):
        if im.shape[0] != side:
            im = cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
        luma = im.astype(np.float32) @ LUMA
        close = cv2.morphologyEx(luma, cv2.MORPH_CLOSE, _disc(r))
        out.append(np.clip(1 - luma / np.maximum(close, 1e-3), 0, 1))
    return np.stack(out).astype(np.float32)


def _to_photo(m: np.ndarray, size: int) -> np.ndarray:
    """A 0/1 mask at MARK_SIDE pixels -> ``float32 [size, size]``, any covered pixel counts."""
    return (cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
            > 0.15).astype(np.float32)


def _columns(m: np.ndarray, x0: float, x1: float) -> float:
    """Fraction of the columns ``x0..x1`` of ``m`` that hold a pixel of it."""
    c = m.any(0)[max(0, int(np.ceil(x0))):max(0, int(x1) + 1)]
    return float(c.mean()) if c.size else 0.0


def eyeglass_frames(marks: np.ndarray, lm: np.ndarray, parse: np.ndarray) -> Frames:
    """Eyeglass frames in a crop: thin dark structures around the eyes, outside the eyes.

    Glasses are present when a dark line crosses the nose bridge (between the inner eye
    corners, below the brows) over most of its width and one rim (below the eyes or
    between them and the brows) runs across both eyes; the frames are then the thin dark
    pixels (:func:`dark_marks` > ``FRAME_CONTRAST``) in an ellipse around each eye and the
    bridge, outside the eyes and the brows, with the fainter ones (> ``FRAME_FAINT``, in a
    wider ellipse: ``FRAME_ZONE_IOD``) joined to them (a thin metal rim). A top rim that
    runs just under the brows lies inside their label and bodies (the brows' landmarks sit
    on it): there only the darkest pixels (> ``FRAME_ON_BROW``) joined to the frame found
    beside the brows count (left in the photo, it came out as a dark band under the brows,
    carried to both sides by the texture's mirror fill).

    Args:
        marks: ``float32 [448, 448]`` :func:`dark_marks` of the crop.
        lm: ``[68, 2]`` landmarks in pixels of the ``[H, W]`` ``parse`` map.
        parse: ``uint8 [H, W]`` ParseLabel map.
    Returns:
        :class:`Frames` at the ``[H, W]`` of ``parse``.
    """
    size, side = parse.shape[0], marks.shape[0]
    k = side / size
    p = (lm + 0.5) * k - 0.5
    iod = float(np.linalg.norm(p[36] - p[45]))
    thin = marks > FRAME_CONTRAST
    eyes = np.zeros((side, side), np.uint8)
    for a in (36, 42):
        cv2.fillPoly(eyes, [np.round(p[a:a + 6]).astype(np.int32)], 1)
    near_eyes = cv2.dilate(eyes, _disc(max(1, int(0.06 * iod))))
    thin &= near_eyes == 0
    brows = cv2.resize((parse == PARSE_BROWS).astype(np.uint8), (side, side),
                       interpolation=cv2.INTER_NEAREST)
    thin &= cv2.dilate(brows, _disc(max(1, int(0.03 * iod)))) == 0
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    xb0, xb1 = p[39, 0] + 0.08 * iod, p[42, 0] - 0.08 * iod
    box = ((xx >= xb0) & (xx <= xb1) & (yy >= p[[21, 22], 1].mean() + 0.05 * iod)
           & (yy <= p[28, 1]))
    bridge = _columns(thin & box, xb0, xb1)
    lower, upper = [], []
    for a in (36, 42):
        e = p[a:a + 6]
        x0, x1 = float(e[:, 0].min()), float(e[:, 0].max())
        across = (xx >= x0) & (xx <= x1)
        yl, yu = e[:, 1].max() + 0.08 * iod, e[:, 1].min() - 0.05 * iod
        lower.append(_columns(thin & across & (yy >= yl) & (yy <= yl + 0.35 * iod), x0, x1))
        upper.append(_columns(thin & across & (yy <= yu) & (yy >= yu - 0.35 * iod), x0, x1))
    has = bridge >= 0.6 and max(float(np.mean(lower)), float(np.mean(upper))) >= 0.6
    st = {"bridge": round(bridge, 3), "rims": [round(float(np.mean(lower)), 3),
                                               round(float(np.mean(upper)), 3)],
          "has_glasses": bool(has)}
    if not has:
        return Frames.none(parse.shape, st)

    def around_eyes(ax: float, ay: float) -> np.ndarray:
        """The bridge's box and an ellipse of half-axes ``ax``, ``ay`` (x the inter-ocular
        distance) round each eye's centre."""
        out = box.copy()
        for a in (36, 42):
            c = p[a:a + 6].mean(0)
            out |= ((xx - c[0]) / (ax * iod)) ** 2 + ((yy - c[1]) / (ay * iod)) ** 2 <= 1
        return out

    zone = around_eyes(0.6, 0.45)
    # the whole frame, hysteresis-like: the fainter dark pixels (a thin metal rim, a lit
    # edge) in a wider ellipse, in the pieces that hold a confident frame pixel. The
    # confident pixels alone left the lower rims of thin metal frames, printed as the
    # glasses' outline on the face
    wide = around_eyes(*FRAME_ZONE_IOD)
    faint = (marks > FRAME_FAINT) & wide & (near_eyes == 0) & (brows == 0)
    _, lab = cv2.connectedComponents(faint.astype(np.uint8), connectivity=8)
    seeds = np.unique(lab[thin & zone & faint])
    frame = np.isin(lab, seeds[seeds > 0]) | (thin & zone)
    # the top rim inside the brows' bodies: the darkest pixels there, joined to the frame
    body = brow_bodies(p, (side, side))
    cand = (marks > FRAME_ON_BROW) & body & wide
    _, lab = cv2.connectedComponents((cand | (frame & ~body)).astype(np.uint8), connectivity=8)
    seeds = np.unique(lab[frame & ~body])
    on_brows = np.isin(lab, seeds[seeds > 0]) & cand
    frames = cv2.dilate(frame.astype(np.uint8), _disc(max(1, int(0.03 * iod)))) > 0
    on_brows = cv2.dilate(on_brows.astype(np.uint8), _disc(1)) > 0
    return Frames(_to_photo(frames | on_brows, size), _to_photo(on_brows, size) > 0, st)


# hair is darker than DARK_HAIR x the luma of the face skin in its column
DARK_HAIR = 0.5
# ... or, darker than the face skin's median, has less than NEUTRAL_HAIR x its saturation:
# grey, ash and black hair in a side light's shadow is about as dark as the shadowed skin
# of its column, and shading leaves saturation as it is (on 24 photos only fd11's shadowed
# temple moved from the texture to the hair: 1740 px of texture weight, 1290 px of hair in
# the 224 crop; fd01 and fd18 gained 2 and 22 px of hair)
NEUTRAL_HAIR = 0.4
# ... in a column whose face skin is darker than SHADOW_COLUMN x the face skin's median (in
# the shadow; black hair over dark skin is as dark as the skin and unsaturated too)
SHADOW_COLUMN = 0.6
# below the jaw, facial hair (and the neck's shadow) is darker than this fraction of the face
# skin's luma in its column, or streaky: on 24 photos this kept 77-100 % of the pixels the test
# took before (97 % or more on 19 of them; fd08 77 %, fd19 86 %), and 39 % of fd18's with the
# quick look, its white collar left out (BENCHMARKS.md, nineteenth session)
BEARD_DARK = 0.85
# fine-detail energy against the face skin's median above which a forehead pixel is a streak
# of hair (strands over the forehead, :func:`_forehead_strands`)
STREAK_RATIO = 4.0


def _column_skin_luma(lum: np.ndarray, ref: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Median luma of the face skin per image column (``float32 [W]``), from the reference
    skin ``ref`` between the eyes and the mouth (hair never covers it), over columns
    0.3 inter-ocular distances wide, continued flat past the face's sides."""
    h, w = lum.shape
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    rows = np.zeros((h, 1), bool)
    rows[int(max(0, lm[36:48, 1].mean())):int(min(h, lm[[48, 54], 1].mean())) + 1] = True
    m = ref & rows
    glob = float(np.median(lum[m])) if m.sum() > 20 else float(np.median(lum[ref])) \
        if ref.sum() > 20 else float(np.median(lum))
    half = max(1, int(0.15 * iod))
    out = np.full(w, np.nan, np.float32)
    for x in range(w):
        sel = m[:, max(0, x - half):x + half + 1]
        if sel.sum() >= 15:
            out[x] = np.median(lum[:, max(0, x - half):x + half + 1][sel])
    ok = np.nonzero(np.isfinite(out))[0]
    if ok.size == 0:
        return np.full(w, max(glob, 1e-3), np.float32)
    out = np.interp(np.arange(w), ok, out[ok]).astype(np.float32)
    return np.maximum(out, 1e-3)


def _neutral(photo: np.ndarray, lum: np.ndarray, ref: np.ndarray, level: float) -> np.ndarray:
    """Pixels without the skin's colour, ``bool [H, W]``: darker than ``level`` (the median
    luma ``lum`` of the reference skin ``ref``, ``bool [H, W]``), with less than
    :data:`NEUTRAL_HAIR` x its median HSV saturation (of ``photo``, ``uint8 [H, W, 3]``,
    smoothed: JPEG noise on dark pixels)."""
    sat = cv2.cvtColor(cv2.GaussianBlur(photo, (5, 5), 0), cv2.COLOR_RGB2HSV)[..., 1] / 255.0
    return (sat < NEUTRAL_HAIR * float(np.median(sat[ref]))) & (lum < level)


def _shadowed(col_luma: np.ndarray, level: float) -> np.ndarray:
    """The image columns in a side light's shadow, ``bool [1, W]``: those whose face skin
    (``col_luma``, :func:`_column_skin_luma`) is darker than :data:`SHADOW_COLUMN` x the
    reference skin's median luma ``level``."""
    return (col_luma < SHADOW_COLUMN * level)[None, :]


def _forehead_strands(parse: np.ndarray, skin_w: np.ndarray, hair: np.ndarray,
                      marks: np.ndarray | None, lm: np.ndarray, upper: np.ndarray,
                      stranded: np.ndarray | None = None) -> np.ndarray:
    """Strands of hair over the forehead and their edges, ``float32 [H, W]`` 0/1.

    Candidates are the pixels that fail the colour test (``skin_w < 0.5``), the thin dark
    marks (:func:`dark_marks` > ``STRAND_CONTRAST``, at 448) and the pixels of strand texture
    (``stranded``, bool ``[H, W]``: blond hair passes the colour test and is not dark, but is
    streaked); those connected to the hair or to the non-face pixels above the brows
    (strands hang from the hairline; freckles, pores and creases do not touch it) are
    strands, on the skin label in ``upper`` (bool ``[H, W]``: the forehead and the brows),
    dilated by 0.04 inter-ocular distances (a strand's anti-aliased, shadowed edge).
    """
    h, w = parse.shape
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    side = h if marks is None else marks.shape[0]
    up = (lambda m: m.astype(np.uint8)) if side == h else (
        lambda m: cv2.resize(m.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST))
    cand = up((skin_w < 0.5) & upper) > 0
    if marks is not None:
        cand |= marks > STRAND_CONTRAST
    if stranded is not None:
        cand |= up(stranded) > 0
        hair = hair | ((parse == PARSE_BG) & upper)
    seed = cv2.dilate(up(hair), np.ones((3, 3), np.uint8)) > 0
    # the brows (thicker than their label on bushy brows) are neither strands nor a path
    # from the hair at the temples to the rest of the forehead
    brows = brow_band(lm, (h, w))
    cand &= (up(upper) > 0) & ~(up(brows) > 0)
    n, lab = cv2.connectedComponents((cand | seed).astype(np.uint8), connectivity=8)
    hit = np.zeros(n, bool)
    hit[np.unique(lab[seed])] = True
    hit[0] = False
    strands = hit[lab] & cand
    strands = _to_photo(strands, h) > 0 if side != h else strands
    s = (parse == PARSE_SKIN) & upper & (strands | hair)
    s = cv2.dilate(s.astype(np.uint8), _disc(max(1, int(round(0.04 * iod)))))
    return ((s > 0) & ~brows).astype(np.float32)


# half-height of the brow band around the brow landmarks, in inter-ocular distances
BROW_BAND_IOD = 0.1


def brow_band(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]``: each brow's landmarks (17-21, 22-26) swept up and down by
    ``BROW_BAND_IOD`` inter-ocular distances and filled (the brows as they are, not as thin
    as the landmark-drawn parse label)."""
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    d = np.array([0.0, BROW_BAND_IOD * iod], np.float32)
    band = np.zeros(shape, np.uint8)
    for sl in (slice(17, 22), slice(22, 27)):
        b = lm[sl].astype(np.float32)
        cv2.fillConvexPoly(band, cv2.convexHull(np.concatenate([b - d, b + d])
                                                .astype(np.int32)), 1)
    return band > 0


# the eyes' rims kept from the photo (lashes, lid margins, liner), in inter-ocular distances
# outward from the eye contour; the brows' band below their landmarks (dlib's brow points
# run along the brow's upper edge), in inter-ocular distances above and below them
EYE_RIM_IOD = 0.06
BROW_BODY_IOD = (0.04, 0.14)
# with glasses, the rims and brows keep this far (inter-ocular distances) from the frames: a
# pixel's margin (0.05 took fd18's brows and lid margins whole: her frames run just under the
# brows and round the eyes)
FRAME_CLEAR_IOD = 0.015


# behind glasses, round the eyes and brows (inter-ocular distances beyond the eyes' rims
# and the brows), the lenses' glints: pixels of the sharper crop as blue as they are red, not
# as dark as eyeliner (luma against the face skin's median), over this share of a texture
# mask pixel
LENS_ZONE_IOD = 0.15
LINER_DARK = 0.45
GLINT_SHARE = 0.2


def lens_glints(sharp: np.ndarray, photo: np.ndarray, parse: np.ndarray, lm: np.ndarray
                ) -> np.ndarray:
    """bool ``[H, W]``: the texture mask's pixels that a glasses' lens glints on.

    Light on a lens's bevel and coating (white, grey-blue, green) lies in thin lines just
    under the frame's top rim and round the eyes, where the brows' and eyes' features take
    the photo as it is: fd07's brows came out white and blue-green. The lines are thinner
    than a pixel of the ``[H, W]`` masks, so they are found on the sharper crop: skin, brow
    hair and lashes are redder than blue; glints are not, and are lighter than eyeliner.

    Args:
        sharp: ``float [S, S, 3]`` the crop in [0, 1] at its highest resolution (S >= H).
        photo: ``uint8 [H, W, 3]`` the crop at the masks' size; parse: ``uint8 [H, W]``.
        lm: ``[68, 2]`` landmarks in pixels of ``[H, W]``.
    Returns:
        bool ``[H, W]``: at least ``GLINT_SHARE`` of the pixel glints.
    """
    h, w = parse.shape
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    zone = features(lm, (h, w)) | (parse == PARSE_BROWS)
    zone = cv2.dilate(zone.astype(np.uint8), _disc(max(1, round(LENS_ZONE_IOD * iod))))
    ref = parse == PARSE_SKIN
    lum = photo.astype(np.float32) @ LUMA / 255
    level = float(np.median(lum[ref])) if ref.sum() > 50 else float(np.median(lum))
    s = sharp.shape[0]
    zone_s = cv2.resize(zone, (s, s), interpolation=cv2.INTER_NEAREST)
    # the sharp crop's colour tests inside the zone's box only (the rest of it cannot glint)
    x, y, bw, bh = cv2.boundingRect(zone_s)
    img = np.asarray(sharp[y:y + bh, x:x + bw], np.float32)
    glint = np.zeros((s, s), bool)
    glint[y:y + bh, x:x + bw] = ((zone_s[y:y + bh, x:x + bw] > 0) & (img[..., 2] >= img[..., 0])
                                 & (img @ LUMA >= LINER_DARK * level))
    share = cv2.resize(glint.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return share >= GLINT_SHARE


def features(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]``: the eyes with their rims (:func:`eye_rims`) and the brows' bodies
    (:func:`brow_bodies`). Their dark is lashes, liner and brow hair, not shadow: the texture
    takes them as the photo shows them."""
    return eye_rims(lm, shape) | brow_bodies(lm, shape)


def eye_rims(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]``: each eye contour (36-41 and 42-47) grown by ``EYE_RIM_IOD`` (the
    caller's parse labels take the eye itself out)."""
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    eyes = np.zeros(shape, np.uint8)
    for sl in (slice(36, 42), slice(42, 48)):
        cv2.fillPoly(eyes, [np.round(lm[sl]).astype(np.int32)], 1)
    return cv2.dilate(eyes, _disc(max(1, round(EYE_RIM_IOD * iod)))) > 0


def brow_bodies(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]``: each brow's landmarks swept from ``BROW_BODY_IOD[0]`` above to ``[1]``
    below (a strip along its landmarks, not :func:`brow_band`'s convex hull, which reaches
    under an arched brow toward the lid)."""
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    up = np.array([0.0, -BROW_BODY_IOD[0] * iod], np.float32)  # image rows grow downward
    down = np.array([0.0, BROW_BODY_IOD[1] * iod], np.float32)
    band = np.zeros(shape, np.uint8)
    for sl in (slice(17, 22), slice(22, 27)):
        b = lm[sl].astype(np.float32)
        strip = np.concatenate([b + up, (b + down)[::-1]])
        cv2.fillPoly(band, [np.round(strip).astype(np.int32)], 1)
    return band > 0


# natural hair hues in CIELAB (degrees in the a*b* plane): from auburn / red (about 25) to
# brown (about 70) for dark hair, to light blonde (about 90) for hair of L* 70 and more; hair
# of lower chroma than ``HAIR_NATURAL_CHROMA`` whose median hue falls outside is a colour cast
# (green foliage, blue sky, purple-tinted shadows), not dye
HAIR_HUE_DEG = (25.0, 70.0, 90.0)  # lowest, highest for dark hair, highest for light hair
HAIR_NATURAL_CHROMA = 30.0
# the darkest hair albedo (CIELAB L*): black hair reflects a few per cent; an underexposed
# photo's hair near L* 0 would paint a black cap on which no strand shows
HAIR_MIN_L = 10.0
# the chroma of the hair's darker half (CIELAB) from which its lightness is the median
# (reached at the second value): the darker half's median is for black and dark grey hair,
# whose grey sheen lifts the median (its darker half is grey: chroma 0-9 on 22 photos); on
# brown, auburn and ginger hair shade makes the darker half, still coloured (fd20's strawberry
# blonde: 25, came out a dark brown; fd08's brown 16, fd16's 12)
HAIR_CHROMATIC = (10.0, 20.0)


def hair_colour(photo: np.ndarray, hair: np.ndarray, lab: np.ndarray | None = None
                ) -> np.ndarray:
    """The colour of the hair itself, in sRGB ``float32 [3]`` in [0, 1].

    In CIELAB, from the hair pixels off the mask's border (mixed with the background or the
    skin) when enough remain: the lightness is the median of the darker half for dark, grey
    hair (below the sheen) and the median for light hair (a darker statistic makes blond hair
    look like its roots), blended between L* 30 and 60, and for hair whose darker half is
    coloured (:data:`HAIR_CHROMATIC`: brown, auburn, ginger; shade, not sheen, made it); the
    hue the median a*, b* of the lit hair body (L* between its 40th and 85th percentiles):
    deep shadows take the colour cast of what lies around (green of foliage), highlights the
    colour of the sky; the chroma the body's,
    scaled by that lightness over the body's (a darker shade is less saturated). A hue
    outside the natural range (:data:`HAIR_HUE_DEG`, by lightness) at a natural chroma is
    turned to its nearest end; strongly coloured (dyed) hair keeps its hue. No hair is darker
    than :data:`HAIR_MIN_L` (an underexposed photo's black hair is lifted to it).

    Args:
        photo: ``uint8 [H, W, 3]`` RGB; hair: bool ``[H, W]`` hair pixels (at least one);
        lab: ``photo`` in CIELAB when the caller has it (OpenCV's, of sRGB in [0, 1]).
    """
    if lab is None:
        lab = cv2.cvtColor(photo.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    core = cv2.erode(hair.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    px = lab[core if core.sum() >= 40 else hair]
    lo, mid, hi = np.percentile(px[:, 0], [40, 50, 85])
    # dark hair: the median of the darker half (its sheen and highlights, a large share of
    # the pixels on black hair, lift the median); light hair: the median
    darker = px[px[:, 0] <= mid]
    dark = float(np.median(darker[:, 0]))
    c0, c1 = HAIR_CHROMATIC
    coloured = float(np.hypot(*np.median(darker[:, 1:], 0)))
    t = max(float(np.clip((mid - 30) / 30, 0, 1)),
            float(np.clip((coloured - c0) / (c1 - c0), 0, 1)))
    light = (1 - t) * dark + t * float(mid)
    body = px[(px[:, 0] >= lo) & (px[:, 0] <= hi)]
    if not len(body):
        body = px
    a, b = np.median(body[:, 1:], 0)
    # the body's chroma at the chosen lightness: a darker shade of one material is less
    # saturated in proportion (the body's a*, b* at the darker half's L* fall outside sRGB
    # and turn black hair dark red)
    scale = float(np.clip(light / max(float(np.median(body[:, 0])), 1e-3), 0, 1))
    a, b = a * scale, b * scale
    chroma, hue = float(np.hypot(a, b)), float(np.degrees(np.arctan2(b, a)))
    rise = float(np.clip((light - 30) / 40, 0, 1))
    hue_max = HAIR_HUE_DEG[1] + (HAIR_HUE_DEG[2] - HAIR_HUE_DEG[1]) * rise
    if chroma < HAIR_NATURAL_CHROMA and not HAIR_HUE_DEG[0] <= hue <= hue_max:
        # nearest end of the range, going round the circle
        ends = np.array([HAIR_HUE_DEG[0], hue_max])
        hue = float(ends[np.argmin(np.abs((hue - ends + 180.0) % 360.0 - 180.0))])
        a, b = chroma * np.cos(np.radians(hue)), chroma * np.sin(np.radians(hue))
    if light < HAIR_MIN_L:  # lifted to the darkest albedo, its hue kept
        a, b = a * HAIR_MIN_L / max(light, 1.0), b * HAIR_MIN_L / max(light, 1.0)
        a, b = float(np.clip(a, -8, 8)), float(np.clip(b, -8, 8))
        light = HAIR_MIN_L
    med = np.array([light, a, b], np.float32)
    rgb = cv2.cvtColor(med[None, None], cv2.COLOR_Lab2RGB)[0, 0]
    return np.clip(rgb, 0, 1).astype(np.float32)


# skin_shine: lit skin among the hair's pixels is SHINE_L L* or more above the median of their
# darker half, under SHINE_CHROMA and as smooth as the face skin (fine detail under
# LONG_HAIR_FINE times its median); light hair, blond or white, carries strands
SHINE_L = 25.0
SHINE_CHROMA = 12.0


def skin_shine(lab: np.ndarray, hair: np.ndarray, fine: np.ndarray, fine_ref: float
               ) -> np.ndarray:
    """bool ``[H, W]``: the pixels of ``hair`` that are lit skin, not hair: bright, nearly
    colourless and smooth (the forehead's top above the landmark face, where the skin weights
    are 0, let through as hair: fd04's short black hair read mid grey). Nothing when more
    than half of ``hair`` would go (a head of light, fine hair is not skin).

    Args:
        lab: ``float32 [H, W, 3]`` the crop in CIELAB (OpenCV's, of sRGB in [0, 1]);
        hair: bool ``[H, W]`` the pixels :func:`hair_colour` is to take;
        fine: ``[H, W]`` :func:`strand_energy`; fine_ref: the face skin's median of it.
    """
    light = lab[..., 0]
    px = light[hair]
    if not len(px):
        return np.zeros(hair.shape, bool)
    mid = np.median(px)
    dark = float(np.median(px[px <= mid]))
    shine = (hair & (light > dark + SHINE_L) & (np.hypot(lab[..., 1], lab[..., 2]) < SHINE_CHROMA)
             & (fine < LONG_HAIR_FINE * fine_ref))
    if shine.sum() > 0.5 * hair.sum():
        return np.zeros(hair.shape, bool)
    return shine


# long hair: the share of the strips beside the cheeks (both sides summed) that is hair of the
# head's colour with strand texture; a smooth background of the hair's colour is not hair
LONG_HAIR_SHARE = 0.4
LONG_HAIR_DE = 20.0  # CIELAB distance to the hair colour
LONG_HAIR_FINE = 1.5  # strand texture, times the face skin's fine detail
# or: hair beside the neck down to the crop's last row, at least this far below the chin (face
# heights; hair_extent)
LONG_HAIR_BELOW = 0.1


def cheek_strips(parse: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """bool ``[H, W]``: the background-labelled pixels 0.15 to 0.55 inter-ocular distances (eye
    centre to eye centre) outside the face outline, beside the ears' line, from eye height down
    to the jaw (landmarks 4 / 12): where long hair hangs beside the cheeks (short hair leaves
    them to the ears, neck and background).

    Args:
        parse: ``[H, W]`` ParseLabel map; lm: ``[68, 2]`` landmarks in its pixels.
    """
    h, w = parse.shape
    iod = float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))
    hull = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(lm[:27].astype(np.int32)), 1)
    dist = cv2.distanceTransform(1 - hull, cv2.DIST_L2, 5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x_mid = float(lm[27:31, 0].mean())
    beside = np.abs(xx - x_mid) > float(np.abs(lm[[0, 16], 0] - x_mid).mean())
    return ((dist > 0.15 * iod) & (dist < 0.55 * iod) & beside & (parse == PARSE_BG)
            & (yy > float(lm[36:48, 1].mean())) & (yy < float(lm[[4, 12], 1].mean())))


def long_hair_share(lab: np.ndarray, strip: np.ndarray, fine: np.ndarray, fine_ref: float,
                    lm: np.ndarray, hair_rgb: np.ndarray) -> float:
    """How much hair hangs beside the cheeks: of each side's :func:`cheek_strips`, the share
    that is within :data:`LONG_HAIR_DE` of ``hair_rgb`` with strand texture (``fine`` above
    :data:`LONG_HAIR_FINE` times ``fine_ref``), summed over both sides (0 to 2).

    Args:
        lab: ``float32 [H, W, 3]`` the crop in CIELAB (OpenCV's, of sRGB in [0, 1]); strip:
            bool ``[H, W]`` its :func:`cheek_strips`; fine: ``[H, W]`` :func:`strand_energy`;
            fine_ref: the face skin's median of it; lm: ``[68, 2]``;
        hair_rgb: ``[3]`` :func:`hair_colour`.
    """
    w = strip.shape[1]
    xx = np.arange(w, dtype=np.float32)[None, :]
    x_mid = float(lm[27:31, 0].mean())
    ref = cv2.cvtColor(np.asarray(hair_rgb, np.float32)[None, None], cv2.COLOR_RGB2Lab)[0, 0]
    hairy = (np.linalg.norm(lab - ref, axis=-1) < LONG_HAIR_DE) & (fine > LONG_HAIR_FINE * fine_ref)
    return float(sum((hairy & strip & side).sum() / max(int((strip & side).sum()), 1)
                     for side in (xx < x_mid, xx >= x_mid)))


# long hair's lengths beside the cheeks: pixels of the cheek strips with strand texture, not
# skin-like, of a hair hue (or nearly grey) and between LENGTHS_L[0] and [1] L* of the band's
# colour; when they are LENGTHS_SHARE of the strips, lighter than the band's colour and
# coloured (median chroma LENGTHS_CHROMA at least: brown, auburn, blond; black hair's sheen
# is grey and lifts nothing), the hair colour moves LENGTHS_WEIGHT of the way to theirs: the
# band over the forehead is often the shaded roots of hair whose lit lengths show its colour
# (a brunette's crown read black)
LENGTHS_SHARE = 0.15
LENGTHS_CHROMA = 6.0
LENGTHS_L = (-5.0, 35.0)
LENGTHS_WEIGHT = 0.75
LENGTHS_GREY = 8.0  # chroma below which any hue passes


def lengths_colour(lab: np.ndarray, strips: np.ndarray, hairlike: np.ndarray,
                   hair_rgb: np.ndarray) -> np.ndarray:
    """The hair colour of long hair, lifted by its lit lengths beside the cheeks.

    Args:
        lab: ``float32 [H, W, 3]`` the crop in CIELAB (OpenCV's, of sRGB in [0, 1]); strips:
            bool ``[H, W]`` its :func:`cheek_strips`;
        hairlike: bool ``[H, W]`` pixels with strand texture that are not skin-like.
        hair_rgb: ``[3]`` :func:`hair_colour` of the band over the forehead.
    Returns:
        sRGB ``float32 [3]`` in [0, 1]: ``hair_rgb`` itself unless at least
        :data:`LENGTHS_SHARE` of ``strips`` is hair of a natural hue (:data:`HAIR_HUE_DEG`
        widened to the lightest end, or chroma under :data:`LENGTHS_GREY`) within
        :data:`LENGTHS_L` of its lightness and their median is lighter and of chroma
        :data:`LENGTHS_CHROMA` at least: then L* moves
        :data:`LENGTHS_WEIGHT` of the way to their median, a* b* to their median's scaled to
        that lightness.
    """
    ref = cv2.cvtColor(np.asarray(hair_rgb, np.float32)[None, None], cv2.COLOR_RGB2Lab)[0, 0]
    px = lab[strips & hairlike]
    n = max(int(strips.sum()), 1)
    chroma = np.hypot(px[:, 1], px[:, 2])
    hue = np.degrees(np.arctan2(px[:, 2], px[:, 1]))
    ok = (((hue >= HAIR_HUE_DEG[0] - 5) & (hue <= HAIR_HUE_DEG[2] + 5)) | (chroma < LENGTHS_GREY))
    ok &= (px[:, 0] > ref[0] + LENGTHS_L[0]) & (px[:, 0] < ref[0] + LENGTHS_L[1])
    px = px[ok]
    if len(px) < LENGTHS_SHARE * n:
        return np.asarray(hair_rgb, np.float32)
    med = np.median(px, 0)
    if med[0] <= ref[0] or np.median(np.hypot(px[:, 1], px[:, 2])) < LENGTHS_CHROMA:
        return np.asarray(hair_rgb, np.float32)
    light = float(ref[0] + LENGTHS_WEIGHT * (med[0] - ref[0]))
    ab = med[1:] * min(light / max(float(med[0]), 1e-3), 1.0)
    out = np.array([light, ab[0], ab[1]], np.float32)
    rgb = cv2.cvtColor(out[None, None], cv2.COLOR_Lab2RGB)[0, 0]
    return np.clip(rgb, 0, 1).astype(np.float32)


# hair_extent: the strips where hanging hair is looked for, beside the neck, in inter-ocular
# distances (outer eye corners) from the face's middle; a row counts when HANG_ROW of a strip's
# pixels are hair; HAIR_VOLUME_MAX caps the hair's height over the head (face heights)
HANG_STRIP = (0.6, 1.1)
HANG_ROW = 0.3
HAIR_VOLUME_MAX = 0.35


def hair_extent(fg: np.ndarray, inside: np.ndarray, hair: np.ndarray, lm: np.ndarray) -> dict:
    """How far the hair stands off the head and hangs down, for the hair mesh
    (:mod:`services.fitter.hair_mesh`), in face heights (landmark 27, the top of the nose
    bridge, to 8, the chin, in the photo).

    ``hair_volume``: how far the head (``fg`` and ``hair`` next to the fitted head) stands out
    beyond the fitted head's silhouette (``inside``) at the temples, both sides' mean, the
    median over the rows from the brows up half a face height (the crops cut the top of the
    head), at most :data:`HAIR_VOLUME_MAX` (a dark backdrop behind dark hair passes for hair:
    the cap keeps such a head from a mushroom of hair).
    ``hair_below``: how far below the chin the hair hangs beside the neck (strips
    :data:`HANG_STRIP` from the middle): the lowest row, from the jaw down, up to which at
    least half the rows have :data:`HANG_ROW` of a strip's pixels hair (negative: it ends
    above the chin); ``hair_cut``: that row is the crop's last (the hair is longer than the
    photo shows).

    Args:
        fg: bool ``[H, W]`` GrabCut's head; inside: bool ``[H, W]`` the fitted head's
            silhouette; hair: bool ``[H, W]`` hair pixels (the head's and hair-like ones around
            it); lm: ``[68, 2]`` landmarks in the crop's pixels.
    """
    h, w = fg.shape
    hf = max(float(lm[8, 1] - lm[27, 1]), 1.0)
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    x_mid = float(lm[27:31, 0].mean())
    # the crops cut the top of the head: the hair's volume is read at its sides, over the
    # temples (rows from the brows up half a face height), head or hair beyond the fitted
    # silhouette, on both sides
    # GrabCut's head, and the hair next to the fitted head (GrabCut often keeps to the
    # silhouette it was seeded with)
    head = fg | (hair & (cv2.dilate(inside.astype(np.uint8),
                                    _disc(max(1, int(HAIR_VOLUME_MAX * hf)))) > 0))
    y_brow = float(lm[17:27, 1].mean())
    rise = []
    for y in range(max(0, int(y_brow - 0.5 * hf)), min(h, int(y_brow) + 1)):
        xs_in, xs_head = np.nonzero(inside[y])[0], np.nonzero(head[y])[0]
        if len(xs_in) and len(xs_head):
            rise.append(0.5 * ((xs_in[0] - xs_head[0]) + (xs_head[-1] - xs_in[-1])))
    vol = float(np.clip(np.median(rise) / hf, 0.0, HAIR_VOLUME_MAX)) if rise else 0.0
    xx = np.abs(np.arange(w, dtype=np.float32) - x_mid)
    strip = (xx >= HANG_STRIP[0] * iod) & (xx <= HANG_STRIP[1] * iod)
    left = strip & (np.arange(w) < x_mid)
    right = strip & (np.arange(w) >= x_mid)
    y0 = int(np.clip(round(float(lm[[4, 12], 1].mean())), 0, h - 1))
    rows = hair[y0:]
    frac = np.maximum(rows[:, left].mean(1) if left.any() else 0,
                      rows[:, right].mean(1) if right.any() else 0)
    ok = frac >= HANG_ROW
    low = y0
    if ok.any():
        run = np.cumsum(ok) / np.arange(1, len(ok) + 1)
        good = np.nonzero(ok & (run >= 0.5))[0]
        if len(good):
            low = y0 + int(good[-1])
    return {"hair_volume": round(vol, 4),
            "hair_below": round(float(low - lm[8, 1]) / hf, 4),
            "hair_cut": bool(low >= h - 2)}


# a head of hair: at least this share of hair (of hair and skin) in the upper third of the
# band above the forehead (crown_hair_share). On 24 real photos, both with FFHQ-UV's
# detection and with the quick look: bald and shaved heads 0.10-0.23, heads of hair
# 0.68-1.00 (receding white hair 0.73-0.83); the whole band's share (the test before) put them
# at 0.39-0.54 and 0.58-1.00, so a landmark moved by dlib's own jitter could turn white hair
# bald (BENCHMARKS.md, nineteenth session)
HAS_HAIR_SHARE = 0.45
# the band's rows, from its top, whose hair share decides
CROWN_ROWS = 1 / 3


def crown_hair_share(band: np.ndarray, hair: np.ndarray, skin: np.ndarray) -> float:
    """Hair / (hair + skin) pixels in the upper :data:`CROWN_ROWS` of ``band``'s rows.

    Args:
        band: bool ``[H, W]`` the band above the forehead; hair, skin: bool ``[H, W]`` its
            hair and skin pixels.
    Returns:
        The share in [0, 1] (0 when neither is there).
    """
    rows = np.nonzero(band.any(1))[0]
    if not len(rows):
        return 0.0
    end = int(np.ceil(rows.min() + CROWN_ROWS * (rows.max() - rows.min() + 1)))
    n_h, n_s = float(hair[:end].sum()), float(skin[:end].sum())
    return n_h / (n_h + n_s) if n_h + n_s > 0 else 0.0


# GrabCut's iterations for the head: the first does most of the work. 2 and 4 gave the same
# heads on 13 photos (fourteenth session), 1 and 2 on 24 (twentieth session: at most 0.6 % of
# a contact sheet's pixels moved, no head visibly; 26-106 instead of 40-159 ms a photo on
# cpu2, one thread; BENCHMARKS.md)
GRABCUT_ITERS = 1


def _disc(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


class SkinColour(NamedTuple):
    """:func:`skin_colour_weight` of one photo, ``float32 [H, W]`` each: ``plain`` (the hair
    decisions) and ``shine`` (``highlights=True``: what goes into the texture)."""

    plain: np.ndarray
    shine: np.ndarray


def _head_masks_one(photo: np.ndarray, parse: np.ndarray, sk: np.ndarray,
                    colour: SkinColour, lm: np.ndarray, head: np.ndarray, fine: np.ndarray,
                    marks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`head_masks` of one photo (numpy ``[H, W]`` maps, ``uint8 [H, W, 3]`` photo,
    ``marks``: :func:`dark_marks` at 448 or None)."""
    h, w = parse.shape
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    face = np.isin(parse, TEXTURE_LABELS)
    cw = colour.plain
    skin_w = np.clip((sk - 0.5) / 0.3, 0, 1) * cw
    skin_t = np.clip((sk - 0.5) / 0.3, 0, 1) * colour.shine
    yy = np.arange(h, dtype=np.float32)[:, None].repeat(w, 1)
    # head vs background
    inside = head > 0.5
    near = cv2.dilate(inside.astype(np.uint8), _disc(max(1, int(0.3 * iod)))) > 0
    gc = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    gc[inside] = cv2.GC_PR_FGD
    gc[~near] = cv2.GC_BGD
    gc[face] = cv2.GC_FGD
    fg = inside.copy()
    if (gc == cv2.GC_BGD).sum() > 50:
        bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(np.ascontiguousarray(photo[..., ::-1]), gc, None, bgd, fgd,
                        GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
            fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        except cv2.error:  # degenerate colour models: keep the silhouette
            pass
    # skin-like: the colour model and the skin probability; highlights on skin are brighter
    # and less saturated than the skin, with its hue
    skinlike = np.clip((sk - 0.6) / 0.2, 0, 1) * np.clip((cw - 0.3) / 0.4, 0, 1)
    lum = photo.astype(np.float32) @ LUMA / 255
    ref = (parse == PARSE_SKIN) & (skin_w > 0.5)
    if ref.sum() > 50:
        bright = lum > np.percentile(lum[ref], 60)
        skinlike = np.maximum(skinlike, (bright & (cw > 0.05)).astype(np.float32))
        # strand texture: well above the face skin's fine detail is hair, whatever its colour
        fine_ref = max(float(np.median(fine[ref])), 1e-4)
        streaky = fine > 2.5 * fine_ref
        skinlike = skinlike * ~streaky
        # strong streaks: candidates for strands over the forehead (a textured forehead
        # reaches 2.5x its cheeks' detail, rarely 4x; blond strands reach 5-7x)
        stranded = fine > STREAK_RATIO * fine_ref
    else:
        streaky = stranded = fine_ref = None
    # above the brows, hair much darker than the face skin of its own column (a side light
    # darkens both) is hair whatever the skin probability and the parse say (dark hair
    # labelled skin, hair whose colour the skin model of a side-lit face tolerates)
    y_brow = float(lm[17:27, 1].mean())
    col_luma = _column_skin_luma(lum, ref, lm)
    darkrel = lum / col_luma[None, :]
    # ... and so is hair as dark as the skin of its column but without the skin's colour
    # (in a side light's shadow: its luma is the shadow's, not the hair's colour to take)
    shaded = np.zeros((h, w), bool)
    if ref.sum() > 50:
        level = float(np.median(lum[ref]))
        columns = _shadowed(col_luma, level)
        if columns.any():
            shaded = _neutral(photo, lum, ref, level) & ~(darkrel < DARK_HAIR) & columns
    dark_hair = fg & ((darkrel < DARK_HAIR) | shaded) & (yy < y_brow - 0.1 * iod) \
        & (parse != PARSE_BROWS)
    dark_hair = cv2.morphologyEx(dark_hair.astype(np.uint8), cv2.MORPH_OPEN,
                                 np.ones((2, 2), np.uint8)) > 0
    skinlike = skinlike * ~dark_hair
    hair = fg & (skinlike < 0.5) & ((parse == PARSE_BG) | (dark_hair & (parse == PARSE_SKIN)))
    hair = cv2.morphologyEx(hair.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    # texture: face labels, colour-tested above the nose only (beards stay)
    y_nose = float(lm[33, 1]) - 0.05 * iod
    soft = np.where((parse == PARSE_SKIN) & (yy <= y_nose), skin_t, 1.0)
    tex = face * soft
    # strands over the forehead and their edges (anti-aliased, shadowed skin next to them)
    # stay out: what is not skin there, the thin dark marks and the streaks near hair, dilated
    strands = _forehead_strands(parse, skin_t, hair | dark_hair, marks, lm,
                                yy < y_brow + 0.15 * iod,
                                None if stranded is None else
                                stranded & (yy < y_brow - 0.1 * iod))
    tex = tex * (1 - strands)
    # the eyes' rims and the brows as the photo shows them (the colour test takes them out;
    # added after the outline's erosion, whose purpose is the silhouette), not where
    # eyeglass frames run beside them
    frames, rim_on_brows, glasses = (
        eyeglass_frames(marks, lm, parse) if marks is not None
        else Frames.none((h, w), {"has_glasses": False}))
    feat = features(lm, (h, w)) & face
    if glasses["has_glasses"]:
        feat &= cv2.dilate((frames > 0).astype(np.uint8), _disc(max(1, round(FRAME_CLEAR_IOD
                                                                              * iod)))) == 0
    # facial hair below the jaw line
    jaw = lm[2:15].astype(np.float32)
    band = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(band, cv2.convexHull(
        np.concatenate([jaw, jaw + [0, 0.35 * iod]]).astype(np.int32)), 1)
    # ... where the head shows something darker than the face skin of its column (a beard,
    # stubble, the neck's shadow) or strand texture (a white beard): a light collar or scarf
    # that GrabCut kept is neither, and stays out of the neck
    beardlike = darkrel < BEARD_DARK
    if streaky is not None:
        beardlike = beardlike | streaky
    beard = (band > 0) & (yy > y_nose) & hair & beardlike
    tex = np.maximum(tex, beard.astype(np.float32))
    # the person's skin outside the face: ears, neck, forehead top, a bald scalp
    ext = fg & (parse == PARSE_BG) & ~hair & ~beard
    tex = np.maximum(tex, ext * skin_t)
    # erode along the outline (silhouette colours mix the background), not the eyes / mouth
    region = cv2.erode((tex > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    holes = cv2.dilate(np.isin(parse, (PARSE_EYES, PARSE_MOUTH)).astype(np.uint8),
                       np.ones((3, 3), np.uint8))
    tex = np.maximum(tex * region, feat) * (1 - holes)
    # eyeglass frames: out of the texture, completion fills skin there (not over the brows,
    # whose hair a frame's dilated edge would take out with it, but for a top rim found on
    # them)
    tex = tex * (1 - frames * ((parse != PARSE_BROWS) | rim_on_brows))
    hair_m = hair & (cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    # presence and colour of a head of hair: hair vs skin pixels in the band above the
    # forehead, inside the fitted head, over the middle of the head (where a head of hair or a
    # bald crown is, never the background; a bald head's shaded sides are left out)
    xx = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    x_mid = float(lm[27:31, 0].mean())
    core = cv2.erode(inside.astype(np.uint8), _disc(max(1, int(0.1 * iod)))) > 0
    top = (core & ((parse == PARSE_BG) | (hair & (parse == PARSE_SKIN)))
           & (np.abs(xx - x_mid) < 0.8 * iod)
           & (yy < y_brow - 0.3 * iod) & (yy > y_brow - 1.6 * iod))
    # GrabCut's head, unless it lost most of the band (hair as dark as a dark background)
    if (top & fg).sum() > 0.5 * top.sum():
        top = top & fg
    hair_top = (skinlike < 0.5) & top
    skin_top = (skinlike > 0.5) & top
    n_h = float(hair_top.sum())
    n_s = float(skin_top.sum())
    # a head of hair, told by the band's upper third (toward the crown): a receding hairline
    # leaves forehead skin low in the band, a bald crown is skin up there too
    share = crown_hair_share(top, hair_top, skin_top)
    stats: dict = {"hair_px": n_h, "skin_px": n_s, "dark_px": float((dark_hair & top).sum()),
                   "crown_hair_share": round(share, 4),
                   "has_hair": bool(n_h > 0.002 * h * w and share >= HAS_HAIR_SHARE),
                   "glasses": glasses}
    if n_h > 20:
        px = photo[hair_top].astype(np.float32) / 255
        luma = px @ LUMA
        # the colour also from the streaked hair beside the band (blond hair passes the skin
        # colour test, so the band alone keeps only its darker roots and parting)
        colour_px = hair_top if streaky is None else hair_top | (
            streaky & fg & (parse == PARSE_BG) & (yy < y_brow) & (np.abs(xx - x_mid) < 1.4 * iod))
        if (colour_px & ~shaded).sum() > 20:
            colour_px = colour_px & ~shaded
        # the crop in CIELAB, for the tests against the hair's colour (with strand texture)
        lab = (None if fine_ref is None
               else cv2.cvtColor(photo.astype(np.float32) / 255, cv2.COLOR_RGB2Lab))
        if lab is not None:
            colour_px = colour_px & ~skin_shine(lab, colour_px, fine, fine_ref)
        stats["hair_rgb"] = hair_colour(photo, colour_px, lab)
        if lab is not None:
            strips = cheek_strips(parse, lm)
            share = long_hair_share(lab, strips, fine, fine_ref, lm, stats["hair_rgb"])
            stats["long_hair_share"] = share
            stats["long_hair"] = share >= LONG_HAIR_SHARE
            if stats["long_hair"]:  # its lit lengths beside the cheeks
                stats["hair_rgb"] = lengths_colour(
                    lab, strips, (fine > LONG_HAIR_FINE * fine_ref) & (skinlike < 0.5),
                    stats["hair_rgb"])
        spread = np.log(np.clip(luma / max(float(np.median(luma)), 1e-3), 0.05, 20))
        stats["hair_amp"] = float(np.clip(np.std(spread), 0.1, 0.22))
        # hair pixels far from the hair's colour are background or skin GrabCut let through
        dist = np.linalg.norm(photo.astype(np.float32) / 255 - stats["hair_rgb"], axis=-1)
        hair_m = hair_m & (dist < 0.3)
        # the hair the photo shows, for hair_swatch's patches: the head's (GrabCut's), and
        # when that is too little, also what around the head has the hair's colour and strand
        # texture (a wall of that colour would come in too: second choice)
        stats["hair_seen"] = [hair & (dist < 0.3)]
        if lab is not None:
            ref_lab = cv2.cvtColor(np.asarray(stats["hair_rgb"], np.float32)[None, None],
                                   cv2.COLOR_RGB2Lab)[0, 0]
            hairy = ((np.linalg.norm(lab - ref_lab, axis=-1) < LONG_HAIR_DE)
                     & (fine > LONG_HAIR_FINE * fine_ref) & (parse == PARSE_BG))
            stats["hair_seen"].append((hair | hairy) & (dist < 0.3))
            stats.update(hair_extent(fg, inside, hair | hairy, lm))
        else:
            stats.update(hair_extent(fg, inside, hair, lm))
        # hair that hangs beside the neck past the photo's frame is long hair too, whatever
        # hangs beside the cheeks (pulled behind the ears, on one side)
        if stats["hair_cut"] and stats["hair_below"] > LONG_HAIR_BELOW:
            stats["long_hair"] = True
    else:
        stats["has_hair"] = False
    return tex.astype(np.float32), hair_m.astype(np.float32), stats
