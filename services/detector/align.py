"""5-point alignment to the 224 x 224 fitting crop (Deep3D / FFHQ-UV convention).

The reference pipeline (Deep3D's ``align_img``) fits a *scale and a translation* -- no in-plane
rotation: the 3D pose absorbs roll -- from five image points to a fixed template, resizes the
photo by that scale and cuts a 224 x 224 window. We do the same with a least-squares
scale + translation fit onto a 2D template in crop pixels.

Five points (from the 68 iBUG landmarks, 0-based): left-eye centre (mean of 36..41),
right-eye centre (mean of 42..47), nose tip (30), mouth corners (48, 54). "Left" is image
left (the subject's right eye).

Template (crop pixels, x right, y down, pixel centres at integers), measured on the reference
crops of FFHQ-UV (``processed_vis/{000007,000055,015309}.png``, first tile): dlib landmarks on
the original photo and on the reference crop give, per photo, the reference scale+translation
(a similarity fit over all 68 points shows no rotation: 0.5, -0.2, 0.3 degrees; scales 0.828,
0.691, 0.224 image->crop; residual 0.4..0.5 px). The template is the mean over the three photos
of the five points mapped by their reference transform::

    left eye (70.34, 97.92)   right eye (136.03, 99.61)   nose tip (98.64, 134.79)
    mouth left (76.59, 163.79)   mouth right (125.56, 165.75)

(The reference crops put the nose about 12 px left of the crop centre; we keep that rather
than symmetrising, which doubled the disagreement.) With this template our crops reproduce the
reference transforms with scale ratios 0.999 / 0.986 / 0.960 and a mean landmark offset of
2.4 / 10.6 / 10.5 px in the 224 crop (000055 and 015309 differ in face proportions and roll from
the mean; Deep3D's 3D template fit reacts differently to those; a roll-invariant affine-based
scale did not do better). The reference fills outside-photo regions with black; we use grey.

The hi-res crop (S x S, S = 512 or 1024, for texture unwrapping) uses the same alignment
scaled by ``k = S / 224`` with pixel centres kept consistent (pixel ``i`` of the 224 crop covers
hi-res pixels ``k*i .. k*i + k - 1``): ``A_S = k * A_224 + (k - 1) / 2`` on the translation, i.e.
a 224 position ``x`` is ``k (x + 0.5) - 0.5`` in the hi-res crop
(:func:`ffhquv.aligned.crop_to_hires`; ``Camera.scaled`` maps its principal point the same
way, so renders at S line up with this crop without resampling). It is sampled from the
ORIGINAL photo, never by upscaling the 224 crop.

Regions of the crop outside the photo are filled with constant mid-grey (127, 127, 127).
"""

from __future__ import annotations

import cv2
import numpy as np

from ffhquv.aligned import CROP_SIZE, crop_to_hires

BORDER_VALUE = (127, 127, 127)

TEMPLATE_224 = np.array([
    [70.34, 97.92],    # left eye centre (image left)
    [136.03, 99.61],   # right eye centre
    [98.64, 134.79],   # nose tip (30)
    [76.59, 163.79],   # left mouth corner (48)
    [125.56, 165.75],  # right mouth corner (54)
], dtype=np.float64)


def five_points(lm68: np.ndarray) -> np.ndarray:
    """``[68, 2]`` iBUG landmarks -> ``float64 [5, 2]`` (eye centres, nose tip, mouth corners)."""
    lm = np.asarray(lm68, np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def fit_scale_translation(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares ``dst ~ s * src + t`` (no rotation).

    Args:
        src, dst: ``[N, 2]`` corresponding points.
    Returns:
        ``(s, t)`` with ``t`` ``float64 [2]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    var = ((src - ms) ** 2).sum()
    if var <= 1e-12:
        raise ValueError("degenerate landmarks: all five points coincide")
    s = float(((src - ms) * (dst - md)).sum() / var)
    return s, md - s * ms


def alignment_affine(lm68: np.ndarray) -> np.ndarray:
    """The ``float64 [2, 3]`` affine from original-image pixels to 224-crop pixels."""
    s, t = fit_scale_translation(five_points(lm68), TEMPLATE_224)
    return np.array([[s, 0.0, t[0]], [0.0, s, t[1]]], np.float64)


def scale_affine(a224: np.ndarray, size: int) -> np.ndarray:
    """The 224-crop affine for an ``size`` x ``size`` crop (pixel-centre consistent): the
    224 affine followed by :func:`ffhquv.aligned.crop_to_hires`."""
    k = size / CROP_SIZE
    out = np.asarray(a224, np.float64) * k
    out[:, 2] = crop_to_hires(np.asarray(a224, np.float64)[:, 2], size)
    return out


def transform_points(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a ``[2, 3]`` affine to ``[N, 2]`` points; returns ``float64 [N, 2]``."""
    pts = np.asarray(pts, np.float64)
    return pts @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine."""
    return cv2.invertAffineTransform(np.asarray(affine, np.float64))


def warp_crop(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Sample a ``size`` x ``size`` crop of ``image`` through ``affine`` (image -> crop pixels).

    When the crop shrinks the photo, the needed region is first area-averaged to about the
    crop's resolution (no aliasing on large photos), then sampled bilinearly.

    Args:
        image: ``uint8 [H, W, C]`` (or ``[H, W]``) original image.
        affine: ``[2, 3]`` map from image pixels to crop pixels.
        size: crop side.
    Returns:
        ``uint8 [size, size, C]``; outside the photo: constant mid-grey ``BORDER_VALUE``.
    """
    a = np.asarray(affine, np.float64)
    h, w = image.shape[:2]
    scale = float(np.sqrt(abs(np.linalg.det(a[:, :2]))))
    border = BORDER_VALUE if image.ndim == 3 else BORDER_VALUE[0]
    src, a_src = image, a
    if scale < 0.75:
        inv = invert_affine(a)
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64) - 0.5
        pre = transform_points(inv, corners)
        pad = 2.0 / scale + 2
        x0 = int(np.clip(np.floor(pre[:, 0].min() - pad), 0, w))
        x1 = int(np.clip(np.ceil(pre[:, 0].max() + pad), 0, w))
        y0 = int(np.clip(np.floor(pre[:, 1].min() - pad), 0, h))
        y1 = int(np.clip(np.ceil(pre[:, 1].max() + pad), 0, h))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            roi = image[y0:y1, x0:x1]
            nw = max(1, round((x1 - x0) * scale))
            nh = max(1, round((y1 - y0) * scale))
            src = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            fx, fy = (x1 - x0) / nw, (y1 - y0) / nh
            # resized pixel (xr, yr) sits at original (x0 + (xr + .5) fx - .5, ...)
            d = np.array([[fx, 0.0, x0 + 0.5 * fx - 0.5], [0.0, fy, y0 + 0.5 * fy - 0.5],
                          [0.0, 0.0, 1.0]])
            a_src = a @ d
    return cv2.warpAffine(np.ascontiguousarray(src), a_src, (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border)


def align_face(image: np.ndarray, lm68: np.ndarray, hires_size: int = 1024
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Align one face.

    Args:
        image: ``uint8 [H, W, 3]`` oriented original photo.
        lm68: ``[68, 2]`` landmarks in its pixels.
        hires_size: side S of the hi-res crop (512 or 1024).
    Returns:
        ``(crop, crop_landmarks, image_to_crop, crop_hires)``: ``uint8 [224, 224, 3]``,
        ``float32 [68, 2]`` in crop pixels, ``float64 [2, 3]``, ``uint8 [S, S, 3]``.
    """
    a = alignment_affine(lm68)
    crop = warp_crop(image, a, CROP_SIZE)
    hires = warp_crop(image, scale_affine(a, hires_size), hires_size)
    crop_lm = transform_points(a, lm68).astype(np.float32)
    return crop, crop_lm, a, hires
