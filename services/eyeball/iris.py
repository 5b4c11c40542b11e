"""The iris colour of a photo, sampled from the iris itself (numpy + OpenCV).

Per open eye (dlib landmarks 36-41 / 42-47, in the photo's pixels):

1. The eye contour polygon, eroded by a few per cent of the eye width (off the lid margin).
2. The iris disc: the circle (radius :data:`IRIS_RADIUS_PER_EYE_WIDTH` times the eye width,
   a few sizes tried) whose inside is the most darker than its surround within the contour
   (Lab L*, box-normalised by the contour's coverage: the lids hide the top and bottom of the
   disc, the sclera left and right of it is the bright surround). A disc that is not clearly
   darker than its surround, or only weakly darker than a coloured (skin, not sclera)
   surround, rejects the eye (closed or squinting eyes).
3. The sample: the annulus between the pupil and the limbus, without the top of the eye opening
   (lashes and lid shadow), without the darkest pixels (pupil, lashes), the brightest ones
   (specular highlights) and bright low-chroma ones (sclera); its colour is the median in
   CIE Lab.
4. Exposure: the iris in a photo is shadowed by the lids and the photo's exposure is arbitrary,
   while the eyeball texture is an albedo (sRGB, :func:`services.eyeball.texture.eyeball_texture`
   multiplies it by colour-free shading layers). The sampled colour is brightened in linear
   RGB by the ratio of the texture's sclera luminance to the photo's lit sclera luminance
   (both lie under the same lids and light), bounded to :data:`EXPOSURE_GAIN`; hue and chroma
   direction are kept, after a partial white balance that takes the lit sclera as white. The
   hue of a near-black sample (photo L* below :data:`HUE_TRUST_L`) leans toward the default
   brown.

The two eyes' colours are averaged in Lab, weighted by their sample sizes.

5. Level: the head texture keeps the photo's skin level, so the eyeball texture is put at the
   photo's exposure too: times the photo's lit sclera over the texture's sclera (``1 / gain``
   of the less shaded eye), in linear RGB (:class:`EyeColours`). At the texture's own level a
   dim photo's eyes glowed white out of a dark face.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_IRIS_RGB = (104.0, 86.0, 70.0)  # brown-grey, sRGB 0..255
SCLERA_RGB = np.array([236.0, 228.0, 218.0])  # the texture's sclera, sRGB 0..255

# dlib 68-point indices of the eyes: the subject's right eye (image left) and left eye.
RIGHT_EYE = list(range(36, 42))
LEFT_EYE = list(range(42, 48))
MIN_EYE_ASPECT = 0.16  # below this the eye counts as closed
MIN_EYE_WIDTH_PX = 12.0

# iris radius over the corner-to-corner eye width (11.7 mm iris over a ~28 mm fissure; dlib's
# corners sit a little inside the canthi), the sizes tried
IRIS_RADIUS_PER_EYE_WIDTH = (0.16, 0.19, 0.22, 0.25)
MIN_IRIS_CONTRAST = 6.0  # L* by which the disc must be darker than its surround
# a disc darker by less than CLEAR_IRIS_CONTRAST needs a sclera-like (low-chroma) surround
CLEAR_IRIS_CONTRAST = 20.0
MAX_SCLERA_CHROMA = 12.0
PUPIL_PER_IRIS = 0.38  # inner radius of the sampled annulus, in iris radii
LIMBUS_PER_IRIS = 0.85  # outer radius of the sampled annulus (off the dark limbal ring)
LID_SHADOW_FRACTION = 0.3  # top part of the eye opening left out (lashes, lid shadow)
EXPOSURE_GAIN = (1.0, 3.0)  # bounds of the linear brightening factor
DEFAULT_GAIN = 1.6  # when no lit sclera is seen
WHITE_BALANCE = (0.8, 1.25)  # bounds of the per-channel white-balance factors
WB_STRENGTH = 0.6  # partial: a photo's sclera also carries lid and vessel tints
HUE_TRUST_L = 12.0  # photo L* of the iris from which its hue is fully trusted
IRIS_L_RANGE = (12.0, 78.0)  # L* of the returned colour


@dataclass
class EyeSample:
    """One eye's iris sample (image pixels).

    Attributes:
        lab: ``float64 [3]`` the iris albedo estimate, CIE Lab (D65; L* 0..100).
        raw_lab: ``float64 [3]`` the photo's median iris colour before the exposure gain.
        n: number of pixels sampled.
        centre: ``float64 [2]`` iris centre ``(x, y)`` in photo pixels.
        radius: iris radius in photo pixels.
        contrast: L* by which the iris disc is darker than its surround.
        gain: the linear brightening applied.
    """

    lab: np.ndarray
    raw_lab: np.ndarray
    n: int
    centre: np.ndarray
    radius: float
    contrast: float
    gain: float
    sclera_lab: np.ndarray


def eye_aspect_ratio(eye: np.ndarray) -> float:
    """Eye aspect ratio of 6 eye landmarks ``[6, 2]`` (dlib order): eyelid opening height over
    the corner-to-corner width (about 0.3 open, below 0.16 closed)."""
    p = np.asarray(eye, np.float64)
    w = np.linalg.norm(p[0] - p[3])
    if w <= 1e-6:
        return 0.0
    return float((np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / (2 * w))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB 0..255 ``[..., 3]`` -> CIE Lab (D65) ``float64 [..., 3]``, L* 0..100."""
    x = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    lab = cv2.cvtColor(x, cv2.COLOR_RGB2Lab).astype(np.float64)
    return lab.reshape(np.shape(rgb))


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab ``[..., 3]`` -> sRGB 0..255 ``float64 [..., 3]`` (clipped)."""
    x = np.asarray(lab, np.float32).reshape(-1, 1, 3)
    rgb = cv2.cvtColor(x, cv2.COLOR_Lab2RGB).astype(np.float64) * 255.0
    return np.clip(rgb, 0, 255).reshape(np.shape(lab))


def _lin(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float64), 0, 1)
    return 255.0 * np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def _luminance(rgb255: np.ndarray) -> float:
    return float(_lin(rgb255) @ np.array([0.2126, 0.7152, 0.0722]))


def _y_of_l(lstar: float) -> float:
    """Relative luminance of a CIE L* value."""
    f = (lstar + 16) / 116
    return f ** 3 if f > 6 / 29 else 3 * (6 / 29) ** 2 * (f - 4 / 29)


def iris_word(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """A coarse name of an iris colour (sRGB 0..255): ``blue``, ``grey``, ``green``, ``hazel``,
    ``light brown``, ``brown`` or ``dark brown`` (for logs and reports)."""
    lab = srgb_to_lab(np.asarray(rgb, np.float64))
    lightness, a, b = (float(v) for v in lab)
    chroma = math.hypot(a, b)
    hue = math.degrees(math.atan2(b, a)) % 360
    if lightness < 30 and b >= -2:
        return "dark brown"
    if b < -2 and (hue > 180 or chroma < 10):
        return "blue" if chroma >= 8 else "grey-blue"
    if chroma < 6:
        return "grey"
    if 100 <= hue < 200:
        return "green"
    if 75 <= hue < 100 and lightness > 30:
        return "hazel"
    if lightness >= 45:
        return "light brown"
    return "brown" if lightness >= 25 else "dark brown"


def _disc_kernels(r: float) -> tuple[np.ndarray, np.ndarray]:
    """Disc (radius ``r``) and surrounding ring (``1.15 r .. 1.8 r``) kernels, float32."""
    rr = int(math.ceil(1.8 * r)) + 1
    yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    d = np.hypot(xx, yy)
    return (d <= r).astype(np.float32), ((d >= 1.15 * r) & (d <= 1.8 * r)).astype(np.float32)


def _lid_lines(eye: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper (points 0-1-2-3) and lower (3-4-5-0) lid polylines, each sorted by x."""
    up = eye[[0, 1, 2, 3]]
    lo = eye[[3, 4, 5, 0]]
    return up[np.argsort(up[:, 0])], lo[np.argsort(lo[:, 0])]


def pupil_radius(lum: np.ndarray, mask: np.ndarray, d: np.ndarray, r: float) -> float:
    """The pupil's radius from the radial L* profile of the iris disc: where the profile
    (medians of rings ``0.05 r`` wide) first rises halfway from the dark core (inside
    ``0.3 r``) to the iris (its brightest ring out to ``0.85 r``); 0 when the core is not clearly
    darker than the iris (a dark iris: the pupil is then left to the dark-tail trimming).

    Args:
        lum: ``[h, w]`` L*; mask: ``bool [h, w]`` usable pixels; d: ``[h, w]`` distance to the
            iris centre in pixels; r: iris radius in pixels.
    """
    edges = np.arange(0.0, 0.85 + 1e-9, 0.05) * r
    prof = np.full(len(edges) - 1, np.nan)
    for i in range(len(prof)):
        ring = mask & (d >= edges[i]) & (d < edges[i + 1])
        if ring.sum() >= 3:
            prof[i] = np.median(lum[ring])
    centres = (edges[:-1] + edges[1:]) / 2
    core = prof[centres < 0.3 * r]
    if not np.isfinite(core).any() or not np.isfinite(prof).any():
        return 0.0
    lo, hi = float(np.nanmin(core)), float(np.nanmax(prof))
    if hi - lo < 6.0:
        return 0.0
    above = np.nonzero(np.isfinite(prof) & (prof >= (lo + hi) / 2)
                       & (centres > centres[int(np.nanargmin(np.where(
                           centres < 0.3 * r, prof, np.inf)))]))[0]
    return float(edges[above[0]]) if len(above) else 0.0


def sample_eye(photo: np.ndarray, eye: np.ndarray) -> EyeSample | None:
    """The iris colour of one eye (see the module docstring).

    Args:
        photo: ``uint8 [H, W, 3]`` RGB.
        eye: ``float [6, 2]`` the eye's dlib landmarks in ``photo`` pixels.
    Returns:
        :class:`EyeSample`, or None when no iris is found (closed, too small, off the image,
        no disc darker than its surround, too few pixels left).
    """
    eye = np.asarray(eye, np.float64)
    w = float(np.linalg.norm(eye[0] - eye[3]))
    if w < MIN_EYE_WIDTH_PX or eye_aspect_ratio(eye) < MIN_EYE_ASPECT:
        return None
    h_img, w_img = photo.shape[:2]
    pad = int(math.ceil(0.1 * w)) + 2
    x0, y0 = (np.floor(eye.min(0)).astype(int) - pad).clip(0)
    x1 = min(int(math.ceil(eye[:, 0].max())) + pad, w_img)
    y1 = min(int(math.ceil(eye[:, 1].max())) + pad, h_img)
    if x1 - x0 < 8 or y1 - y0 < 4:
        return None
    patch = photo[y0:y1, x0:x1]
    local = eye - [x0, y0]
    mask = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(local * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    k = max(1, int(round(0.03 * w)))
    mask = cv2.erode(mask, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    m = mask.astype(bool)
    if m.sum() < 20:
        return None
    lab = cv2.cvtColor(patch.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).astype(np.float64)
    lum = lab[..., 0]
    # highlights would lift the disc's mean: cap L* at the contour's 90th percentile
    lum_c = np.minimum(lum, np.percentile(lum[m], 90)).astype(np.float32)
    mf = mask.astype(np.float32)
    ml = mf * lum_c

    # --- 2. the iris disc
    best = None
    for f in IRIS_RADIUS_PER_EYE_WIDTH:
        r = f * w
        disc, ring = _disc_kernels(r)
        n_d = cv2.filter2D(mf, -1, disc, borderType=cv2.BORDER_CONSTANT)
        n_r = cv2.filter2D(mf, -1, ring, borderType=cv2.BORDER_CONSTANT)
        s_d = cv2.filter2D(ml, -1, disc, borderType=cv2.BORDER_CONSTANT)
        s_r = cv2.filter2D(ml, -1, ring, borderType=cv2.BORDER_CONSTANT)
        ok = m & (n_d >= 0.35 * disc.sum()) & (n_r >= 0.08 * ring.sum())
        if not ok.any():
            continue
        score = np.where(ok, s_r / np.maximum(n_r, 1e-6) - s_d / np.maximum(n_d, 1e-6), -np.inf)
        i = int(np.argmax(score))
        if best is None or score.flat[i] > best[0]:
            best = (float(score.flat[i]), np.unravel_index(i, score.shape), r)
    if best is None or best[0] < MIN_IRIS_CONTRAST:
        return None
    contrast, (cy, cx), r = best

    # --- 3. the annulus between pupil and limbus, below the lid shadow
    yy, xx = np.mgrid[0:patch.shape[0], 0:patch.shape[1]]
    d = np.hypot(xx - cx, yy - cy)
    up, lo = _lid_lines(local)
    top = np.interp(xx, up[:, 0], up[:, 1])
    bottom = np.interp(xx, lo[:, 0], lo[:, 1])
    below_lid = yy >= top + LID_SHADOW_FRACTION * np.maximum(bottom - top, 0)
    inner = pupil_radius(lum, m, d, r) + 0.08 * r
    inner = float(np.clip(inner, PUPIL_PER_IRIS * r, 0.65 * r))
    sel = m & (d >= inner) & (d <= LIMBUS_PER_IRIS * r) & below_lid
    if sel.sum() < 12:  # a narrow opening: keep the lid band rather than nothing
        sel = m & (d >= inner) & (d <= LIMBUS_PER_IRIS * r)
    px = lab[sel]
    if len(px) < 12:
        return None
    # sclera level: the lit (bright) part of the contour outside the disc
    out = m & (d > 1.15 * r)
    sclera_l = float(np.percentile(lum[out], 85)) if out.sum() >= 10 else float("nan")
    sclera_lab = (np.median(lab[out & (lum >= np.percentile(lum[out], 70))], axis=0)
                  if out.sum() >= 10 else np.full(3, np.nan))
    # a weak disc in a coloured surround is a lid fold or skin (squinting eye), not an iris
    # beside the sclera
    if (contrast < CLEAR_IRIS_CONTRAST and np.isfinite(sclera_lab).all()
            and math.hypot(sclera_lab[1], sclera_lab[2]) > MAX_SCLERA_CHROMA):
        return None
    chroma = np.hypot(px[:, 1], px[:, 2])
    lo_l, hi_l = np.percentile(px[:, 0], [20, 85])
    keep = (px[:, 0] >= lo_l) & (px[:, 0] <= hi_l)
    if np.isfinite(sclera_l):  # bright, low-chroma: sclera seen through the disc's edge
        keep &= ~((px[:, 0] > sclera_l - 5) & (chroma < 6))
    px = px[keep]
    if len(px) < 8:
        return None
    raw = np.median(px, axis=0)

    # --- 4. exposure against the sclera, in linear RGB
    y_tex = _luminance(SCLERA_RGB)
    if np.isfinite(sclera_l) and sclera_l > raw[0] + 3:
        gain = float(np.clip(y_tex / max(_y_of_l(sclera_l), 1e-4), *EXPOSURE_GAIN))
    else:
        gain = DEFAULT_GAIN
    rgb_lin = _lin(lab_to_srgb(raw)) * gain
    if np.isfinite(sclera_lab).all() and sclera_l > raw[0] + 3:
        # white balance: the lit sclera is taken as neutral white (von Kries, bounded)
        s_lin = np.maximum(_lin(lab_to_srgb(sclera_lab)), 1e-4)
        wb = np.clip(_luminance(lab_to_srgb(sclera_lab)) / s_lin, *WHITE_BALANCE)
        rgb_lin = rgb_lin * wb ** WB_STRENGTH
    peak = float(rgb_lin.max())
    if peak > 1.0:  # keep the hue when a channel would clip
        rgb_lin = rgb_lin / peak
    out_lab = srgb_to_lab(_srgb(rgb_lin))
    out_lab[0] = float(np.clip(out_lab[0], *IRIS_L_RANGE))
    # a near-black sample carries no usable hue (noise, JPEG chroma subsampling): its a*, b*
    # lean toward the default brown, the usual colour of an iris that dark
    trust = float(np.clip((raw[0] - 2.0) / (HUE_TRUST_L - 2.0), 0.0, 1.0))
    out_lab[1:] = trust * out_lab[1:] + (1 - trust) * srgb_to_lab(np.array(DEFAULT_IRIS_RGB))[1:]
    return EyeSample(lab=out_lab, raw_lab=raw, n=len(px),
                     centre=np.array([cx + x0, cy + y0], np.float64), radius=float(r),
                     contrast=contrast, gain=gain, sclera_lab=sclera_lab)


class EyeColours(NamedTuple):
    """What a photo says of the eyes' colours (:func:`eye_colours`).

    Attributes:
        iris_rgb: the iris albedo estimate, sRGB 0..255 (at the texture's exposure: its lit
            sclera is :data:`SCLERA_RGB`).
        source: ``"photo"`` or ``"default"``.
        level: the photo's exposure of the eyes, a linear factor for the whole eyeball
            texture (:func:`services.eyeball.texture.eyeball_texture`): the photo's lit sclera
            over the texture's, in luminance, of the less shaded eye (``1 / gain``, so in
            ``[1 / EXPOSURE_GAIN[1], 1]``); ``1 / DEFAULT_GAIN`` when no eye was sampled.
            The head texture keeps the photo's skin level, so the eyes do too: a dim photo's
            eyes under its white sclera would glow out of a dark face.
    """

    iris_rgb: tuple[float, float, float]
    source: str
    level: float


def iris_colour(photo: np.ndarray | None, landmarks: np.ndarray | None
                ) -> tuple[tuple[float, float, float], str]:
    """Iris albedo colour sampled from a photo: :func:`eye_colours`' ``(iris_rgb, source)``."""
    got = eye_colours(photo, landmarks)
    return got.iris_rgb, got.source


def eye_colours(photo: np.ndarray | None, landmarks: np.ndarray | None) -> EyeColours:
    """The iris colour and the eyes' exposure, sampled from a photo.

    Args:
        photo: ``uint8 [H, W, 3]`` RGB, or None.
        landmarks: ``[68, 2]`` dlib landmarks in ``photo`` pixels, or None.
    Returns:
        :class:`EyeColours`: from the photo, or :data:`DEFAULT_IRIS_RGB`, ``"default"`` and the
        default level when there is no photo, the eyes are closed (eye aspect ratio below
        :data:`MIN_EYE_ASPECT`), too small (narrower than :data:`MIN_EYE_WIDTH_PX`) or no iris
        is found in either eye.
    """
    default = EyeColours(DEFAULT_IRIS_RGB, "default", 1.0 / DEFAULT_GAIN)
    if photo is None or landmarks is None:
        return default
    lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        return default
    samples = [s for idx in (RIGHT_EYE, LEFT_EYE) if (s := sample_eye(photo, lm[idx]))]
    if not samples:
        log.info("iris colour: no iris found, default", extra={"iris_source": "default"})
        return default
    wts = np.array([s.n for s in samples], np.float64)
    lab = (np.stack([s.lab for s in samples]) * wts[:, None]).sum(0) / wts.sum()
    rgb = lab_to_srgb(lab)
    log.info("iris colour from the photo", extra={
        "iris_source": "photo", "iris_rgb": [round(float(v)) for v in rgb],
        "iris_word": iris_word(rgb), "eyes": len(samples),
        "contrast": [round(s.contrast, 1) for s in samples],
        "gain": [round(s.gain, 2) for s in samples]})
    return EyeColours((float(rgb[0]), float(rgb[1]), float(rgb[2])), "photo",
                      1.0 / min(s.gain for s in samples))
