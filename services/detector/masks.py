"""Skin probability and face-parsing masks of the aligned 224 crop, without learned weights.

* :func:`skin_probability`: a Gaussian skin-colour model in YCrCb fitted (robustly) to the
  pixels of this very face in landmark-defined cheek and nose regions; a crop pixel at
  Mahalanobis distance ``d`` gets ``exp(-(max(d - 2, 0))^2 / 2)``, so hair, glasses frames,
  background and shadows fall off softly. Eyes, brows, lips and the mouth are set to 0.
* :func:`parse_from_landmarks`: a label map (``ParseLabel`` of
  ``protos/ffhquv/detector/v1/detector.proto``) from polygons of the 68 points. The skin region
  is the jaw line closed by an elliptic forehead arc whose height above the brows is
  ``FOREHEAD_RATIO`` x the nose length (rule of facial thirds); above the brows a pixel is
  skin only where the colour model also says so (fringes and hair stay background).
* A learned parser (BiSeNet, ``parsing_model/79999_iter.pth``) plugs in through
  :class:`FaceParser` / :func:`compute_masks` ``parser=``; its name becomes ``parse_source``.

All inputs are in 224-crop pixels: x right, y down, pixel centres at integers; landmarks
``[68, 2]`` iBUG order.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

from ffhquv.vocab import PARSE_SOURCE_LANDMARKS, ParseLabel

__all__ = ["PARSE_SOURCE_LANDMARKS", "FaceParser", "ParseLabel"]  # and the functions below

FOREHEAD_RATIO = 1.4
FOREHEAD_SKIN_THRESHOLD = 128  # of 255: the skin probability needed above the brows
Y_WIDEN = 3.0  # luma tolerance relative to the fitted spread (shading, highlights)
COV_FLOOR = 6.0  # added to the covariance diagonal (YCrCb units^2): uniform-light faces
INLIER_SIGMAS = 2.0  # Mahalanobis distance with probability 1; Gaussian fall-off beyond
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly



class FaceParser(Protocol):
    """A learned face parser (e.g. BiSeNet) plugged into :func:`compute_masks`.

    ``name`` is reported as ``parse_source``; ``__call__`` maps a ``uint8 [224, 224, 3]`` RGB
    crop to a ``uint8 [224, 224]`` map of :class:`ParseLabel` values (a BiSeNet wrapper maps
    its CelebAMask-HQ classes with :func:`parse_from_celebamask`).
    """

    name: str

    def __call__(self, crop: np.ndarray) -> np.ndarray: ...


# CelebAMask-HQ classes of the paper's BiSeNet (0 background, 1 skin, 2/3 brows, 4/5 eyes,
# 6 eyeglasses, 7/8 ears, 9 earrings, 10 nose, 11 mouth interior, 12/13 lips, 14 neck,
# 15 necklace, 16 cloth, 17 hair, 18 hat) -> ParseLabel. Glasses, ears, neck, hair: background.
CELEBAMASK_TO_PARSE = np.array([0, 1, 2, 2, 3, 3, 0, 0, 0, 0, 4, 6, 5, 5, 0, 0, 0, 0, 0],
                               np.uint8)


def parse_from_celebamask(labels: np.ndarray) -> np.ndarray:
    """Map a BiSeNet / CelebAMask-HQ label map (``uint8 [H, W]``, 0..18) to ParseLabel values.

    For a :class:`FaceParser` wrapping the paper's ``parsing_model/79999_iter.pth``.
    """
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) >= len(CELEBAMASK_TO_PARSE):
        raise ValueError(f"CelebAMask-HQ labels are 0..18, got {int(labels.max())}")
    return CELEBAMASK_TO_PARSE[labels]


# ----------------------------------------------------------------------------- geometry

def _axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (right, up) of the face in image pixels (up = chin -> nasion)."""
    up = lm[27] - lm[8]
    up /= max(np.linalg.norm(up), 1e-6)
    right = lm[16] - lm[0]
    right = right - up * (right @ up)
    right /= max(np.linalg.norm(right), 1e-6)
    return right, up


def face_outline(lm: np.ndarray, forehead_ratio: float = FOREHEAD_RATIO) -> np.ndarray:
    """Closed outline of the face: jaw line 0..16, then an elliptic forehead arc back to 0.

    Args:
        lm: ``[68, 2]`` landmarks.
        forehead_ratio: forehead height above the highest brow point, in nose lengths
            (27 -> 33).
    Returns:
        ``float64 [17 + 31, 2]`` polygon.
    """
    lm = np.asarray(lm, np.float64)
    right, up = _axes(lm)
    c = (lm[0] + lm[16]) / 2
    a = np.linalg.norm(lm[16] - lm[0]) / 2
    brow_top = max(float(((lm[17:27] - c) @ up).max()), 0.0)
    nose_len = np.linalg.norm(lm[33] - lm[27])
    b = brow_top + forehead_ratio * nose_len
    theta = np.linspace(0.0, np.pi, 33)[1:-1]
    arc = c + np.cos(theta)[:, None] * a * right + np.sin(theta)[:, None] * b * up
    return np.concatenate([lm[0:17], arc], axis=0)


def _nose_polygon(lm: np.ndarray) -> np.ndarray:
    right, _ = _axes(lm)
    inner = np.linalg.norm(lm[42] - lm[39])
    w0, w1 = 0.16 * inner, 0.24 * inner
    flare = 0.15 * (lm[35] - lm[31])
    left_side = [lm[27] - w0 * right, lm[29] - w1 * right, lm[31] - flare]
    right_side = [lm[35] + flare, lm[29] + w1 * right, lm[27] + w0 * right]
    return np.array([*left_side, lm[32], lm[33], lm[34], *right_side])


def _brow_polygon(pts: np.ndarray, up: np.ndarray, thickness: float) -> np.ndarray:
    n = len(pts)
    taper = 0.6 + 0.4 * np.sin(np.linspace(0, np.pi, n))  # thinner at the ends
    top = pts + (0.35 * thickness * taper)[:, None] * up
    bottom = pts - (0.65 * thickness * taper)[:, None] * up
    return np.concatenate([top, bottom[::-1]], axis=0)


def _fill(mask: np.ndarray, poly: np.ndarray, value: int) -> None:
    p = np.round(np.asarray(poly, np.float64) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [p.reshape(-1, 1, 2)], int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def feature_polygons(lm: np.ndarray) -> dict[ParseLabel, list[np.ndarray]]:
    """Polygons (``float64 [N, 2]``) of brows, eyes, nose, lips and mouth interior."""
    lm = np.asarray(lm, np.float64)
    _, up = _axes(lm)
    inter = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    t = 0.15 * inter
    return {
        ParseLabel.NOSE: [_nose_polygon(lm)],
        ParseLabel.BROWS: [_brow_polygon(lm[17:22], up, t), _brow_polygon(lm[22:27], up, t)],
        ParseLabel.EYES: [lm[36:42], lm[42:48]],
        ParseLabel.LIPS: [lm[48:60]],
        ParseLabel.MOUTH: [lm[60:68]],
    }


# ----------------------------------------------------------------------------- skin colour

def _sample_mask(lm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Cheek and nose regions used to fit the skin colour (``bool [H, W]``)."""
    lm = np.asarray(lm, np.float64)
    regions = [
        lm[[1, 2, 3, 48, 31, 40, 41]],    # left cheek
        lm[[15, 14, 13, 54, 35, 47, 46]],  # right cheek
        lm[[28, 31, 33, 35]],             # nose
    ]
    m = np.zeros(shape, np.uint8)
    for r in regions:
        c = r.mean(0)
        _fill(m, c + 0.7 * (r - c), 1)  # shrink away from edges (jaw, eyes, nostrils)
    return m.astype(bool)


def skin_probability(crop: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Soft skin probability of each crop pixel from this face's own skin colour.

    Args:
        crop: ``uint8 [H, W, 3]`` RGB aligned crop (224 x 224).
        lm: ``[68, 2]`` landmarks in crop pixels.
    Returns:
        ``uint8 [H, W]`` probability scaled to 0..255; eyes, brows, lips, mouth are 0.
    """
    h, w = crop.shape[:2]
    # Light smoothing removes JPEG chroma blocking and single-pixel noise.
    smooth = cv2.GaussianBlur(np.ascontiguousarray(crop), (5, 5), 0)
    ycc = cv2.cvtColor(smooth, cv2.COLOR_RGB2YCrCb).astype(np.float64)
    sample = ycc[_sample_mask(lm, (h, w))]
    if len(sample) < 20:  # degenerate landmarks: fall back to the crop centre
        sample = ycc[h // 3:2 * h // 3, w // 3:2 * w // 3].reshape(-1, 3)
    # Brightness varies with shading and highlights much more than chroma: widen Y.
    widen = np.diag([1.0 / Y_WIDEN, 1.0, 1.0])
    feats = ycc.reshape(-1, 3) @ widen
    s = sample @ widen
    keep = np.ones(len(s), bool)
    for _ in range(2):  # fit, drop outliers (stubble, specular spots, nostrils), refit
        mu = s[keep].mean(0)
        cov = np.cov(s[keep].T) + np.diag([COV_FLOOR] * 3)
        icov = np.linalg.inv(cov)
        d2s = np.einsum("ni,ij,nj->n", s - mu, icov, s - mu)
        keep = d2s < 7.8  # chi-square 95% for 3 dof
        if keep.sum() < 10:
            keep = np.ones(len(s), bool)
    diff = feats - mu
    d = np.sqrt(np.einsum("ni,ij,nj->n", diff, icov, diff)).reshape(h, w)
    prob = np.exp(-0.5 * np.maximum(d - INLIER_SIGMAS, 0.0) ** 2)
    excl = np.zeros((h, w), np.uint8)
    for label, polys in feature_polygons(lm).items():
        if label in (ParseLabel.BROWS, ParseLabel.EYES, ParseLabel.LIPS, ParseLabel.MOUTH):
            for p in polys:
                _fill(excl, p, 1)
    excl = cv2.dilate(excl, np.ones((3, 3), np.uint8))
    prob[excl > 0] = 0.0
    prob = cv2.GaussianBlur(prob, (3, 3), 0)
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- parsing

def _gate_forehead(face: np.ndarray, lm: np.ndarray, skin_prob: np.ndarray) -> np.ndarray:
    """Drop face pixels above the brows whose (smoothed) colour is not skin, e.g. a fringe.

    Keeps the connected region that holds the nose tip and fills its holes (highlights).
    """
    size = face.shape[0]
    _, up = _axes(lm)
    yy, xx = np.mgrid[0:size, 0:size]
    above = (xx * up[0] + yy * up[1]) > (lm[17:27] @ up).mean()
    smooth = cv2.GaussianBlur(skin_prob, (9, 9), 0)
    region = (face > 0) & (~above | (smooth >= FOREHEAD_SKIN_THRESHOLD))
    region = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, cc = cv2.connectedComponents(region)
    nx, ny = np.clip(np.rint(lm[30]).astype(int), 0, size - 1)
    if n > 1 and cc[ny, nx] > 0:
        region = (cc == cc[ny, nx]).astype(np.uint8)
    # fill holes: flood the outside from a padded border, everything not reached is inside
    pad = np.pad(region, 1)
    flood = pad.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = (flood[1:-1, 1:-1] == 0)
    keep = (region > 0) | holes
    return np.where(keep, face, 0).astype(np.uint8)


def parse_from_landmarks(lm: np.ndarray, size: int = 224,
                         skin_prob: np.ndarray | None = None) -> np.ndarray:
    """Label map from landmark polygons.

    Args:
        lm: ``[68, 2]`` landmarks in crop pixels.
        size: crop side.
        skin_prob: optional ``uint8 [size, size]`` skin probability; above the brows, face
            pixels with ``skin_prob < FOREHEAD_SKIN_THRESHOLD`` become background (hair).
    Returns:
        ``uint8 [size, size]`` of :class:`ParseLabel` values.
    """
    lm = np.asarray(lm, np.float64)
    out = np.zeros((size, size), np.uint8)
    _fill(out, face_outline(lm), ParseLabel.SKIN)
    if skin_prob is not None:
        out = _gate_forehead(out, lm, skin_prob)
    polys = feature_polygons(lm)
    for label in (ParseLabel.NOSE, ParseLabel.BROWS, ParseLabel.EYES, ParseLabel.LIPS,
                  ParseLabel.MOUTH):
        for p in polys[label]:
            _fill(out, p, label)
    return out


def compute_masks(crop: np.ndarray, lm: np.ndarray, parser: FaceParser | None = None
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """Skin probability and parse mask of one aligned crop.

    Args:
        crop: ``uint8 [224, 224, 3]`` RGB crop.
        lm: ``[68, 2]`` crop landmarks.
        parser: optional learned parser (BiSeNet); None uses landmark polygons.
    Returns:
        ``(skin_mask uint8 [224, 224], parse_mask uint8 [224, 224], parse_source)``.
    """
    skin = skin_probability(crop, lm)
    if parser is not None:
        parse = np.asarray(parser(crop), np.uint8)
        if parse.shape != crop.shape[:2]:
            raise ValueError(f"parser returned {parse.shape}, expected {crop.shape[:2]}")
        return skin, parse, parser.name
    return skin, parse_from_landmarks(lm, crop.shape[0], skin), PARSE_SOURCE_LANDMARKS
