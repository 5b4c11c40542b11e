"""Photo-space masks: which pixels of the aligned crop may go into the texture.

The detector's parse labels (skin / brows / nose / lips) times a ramp of the skin
probability, a colour-consistency test against the photo's own central-face skin
(:func:`skin_colour_weight`), eroded along the outline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ParseLabel values of the detector's parse mask
PARSE_BG, PARSE_SKIN, PARSE_BROWS, PARSE_EYES, PARSE_NOSE, PARSE_LIPS, PARSE_MOUTH = range(7)
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


def skin_colour_weight(photo: Tensor, skin: Tensor, landmarks: Tensor) -> Tensor:
    """Per-pixel consistency with the photo's own skin colour.

    A robust colour model (median and MAD in Y Cb Cr) is taken from the skin pixels of the
    central face (between the outer eye corners, from the eyes down to the mouth corners,
    which hair rarely covers); pixels whose chroma is far from it, or that are much darker, get
    weight 0. Luma above the median is tolerated (highlights are explained by the shading).

    Args:
        photo: ``[B, H, W, 3]`` in [0, 1].
        skin: ``[B, H, W]`` bool, confident skin pixels.
        landmarks: ``[B, 68, 2]`` pixels.
    Returns:
        ``[B, H, W]`` float in [0, 1].
    """
    b, h, w, _ = photo.shape
    ycc = _ycbcr(photo)
    yy, xx = torch.meshgrid(torch.arange(h, device=photo.device),
                            torch.arange(w, device=photo.device), indexing="ij")
    out = torch.ones(b, h, w, device=photo.device)
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
    return out
