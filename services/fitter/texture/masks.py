"""Photo-space masks: which pixels of the aligned crop may go into the texture.

The detector's parse labels (skin / brows / nose / lips) times a ramp of the skin
probability, a colour-consistency test against the photo's own central-face skin
(:func:`skin_colour_weight`), eroded along the outline.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.vocab import ParseLabel

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
        hair_stats: per photo ``{"hair_px", "skin_px", "has_hair", "hair_rgb" [3],
            "hair_amp"}``: hair and skin pixel counts of the head above the brows, whether the
            person has a head of hair, the median hair colour (sRGB in [0, 1]) and the spread of
            its log-luma (strand contrast).
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
    are hair.

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
    cw = skin_colour_weight(photo, (lab == PARSE_SKIN) & (sk > 0.8), landmarks)
    tex, hair, stats = [], [], []
    fine = strand_energy(photo if hires is None else hires, photo.shape[1])
    for i in range(photo.shape[0]):
        t, h, st = _head_masks_one(
            (photo[i].detach().cpu().numpy() * 255 + 0.5).astype(np.uint8),
            parse[i].cpu().numpy(), sk[i].cpu().numpy(), cw[i].cpu().numpy(),
            landmarks[i].detach().cpu().numpy(), head[i].detach().cpu().numpy(), fine[i])
        tex.append(t)
        hair.append(h)
        stats.append(st)
    dev = photo.device
    skin_face = (lab == PARSE_SKIN).float() * ((sk - 0.5) / 0.3).clamp(0, 1) * cw
    return HeadMasks(texture=torch.tensor(np.stack(tex), device=dev)[..., None],
                     hair=torch.tensor(np.stack(hair), device=dev)[..., None], hair_stats=stats,
                     skin=skin_face[..., None])


def strand_energy(img: Tensor, size: int) -> np.ndarray:
    """Fine-detail energy (hair strands, not smooth skin) per pixel of a ``size`` raster.

    Args:
        img: ``float [B, S, S, 3]`` in [0, 1] (S >= size; 448 is enough for strands).
        size: output side.
    Returns:
        ``float32 [B, size, size]``: local mean of ``|luma - blur(luma, 1 px)|`` at up to 448
        pixels, blurred over 2 px and resampled to ``size``.
    """
    out = []
    for im in img.detach().cpu().numpy():
        side = min(im.shape[0], 448)
        if im.shape[0] != side:
            im = cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA)
        luma = im.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        hp = np.abs(luma - cv2.GaussianBlur(luma, (0, 0), 1.0))
        e = cv2.GaussianBlur(hp, (0, 0), 2.0)
        out.append(cv2.resize(e, (size, size), interpolation=cv2.INTER_AREA))
    return np.stack(out).astype(np.float32)


def _disc(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _head_masks_one(photo: np.ndarray, parse: np.ndarray, sk: np.ndarray, cw: np.ndarray,
                    lm: np.ndarray, head: np.ndarray, fine: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`head_masks` of one photo (numpy ``[H, W]`` maps, ``uint8 [H, W, 3]`` photo)."""
    h, w = parse.shape
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    face = np.isin(parse, TEXTURE_LABELS)
    skin_w = np.clip((sk - 0.5) / 0.3, 0, 1) * cw
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
            cv2.grabCut(np.ascontiguousarray(photo[..., ::-1]), gc, None, bgd, fgd, 4,
                        cv2.GC_INIT_WITH_MASK)
            fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        except cv2.error:  # degenerate colour models: keep the silhouette
            pass
    # skin-like: the colour model and the skin probability; highlights on skin are brighter
    # and less saturated than the skin, with its hue
    skinlike = np.clip((sk - 0.6) / 0.2, 0, 1) * np.clip((cw - 0.3) / 0.4, 0, 1)
    lum = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
    ref = (parse == PARSE_SKIN) & (skin_w > 0.5)
    if ref.sum() > 50:
        bright = lum > np.percentile(lum[ref], 60)
        skinlike = np.maximum(skinlike, (bright & (cw > 0.05)).astype(np.float32))
        # strand texture: well above the face skin's fine detail is hair, whatever its colour
        stranded = fine > 2.5 * max(float(np.median(fine[ref])), 1e-4)
        skinlike = skinlike * ~stranded
    hair = fg & (skinlike < 0.5) & (parse == PARSE_BG)
    hair = cv2.morphologyEx(hair.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    # texture: face labels, colour-tested above the nose only (beards stay)
    y_nose = float(lm[33, 1]) - 0.05 * iod
    soft = np.where((parse == PARSE_SKIN) & (yy <= y_nose), skin_w, 1.0)
    tex = face * soft
    # facial hair below the jaw line
    jaw = lm[2:15].astype(np.float32)
    band = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(band, cv2.convexHull(
        np.concatenate([jaw, jaw + [0, 0.35 * iod]]).astype(np.int32)), 1)
    beard = (band > 0) & (yy > y_nose) & hair
    tex = np.maximum(tex, beard.astype(np.float32))
    # the person's skin outside the face: ears, neck, forehead top, a bald scalp
    ext = fg & (parse == PARSE_BG) & ~hair & ~beard
    tex = np.maximum(tex, ext * skin_w)
    # erode along the outline (silhouette colours mix the background), not the eyes / mouth
    region = cv2.erode((tex > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    holes = cv2.dilate(np.isin(parse, (PARSE_EYES, PARSE_MOUTH)).astype(np.uint8),
                       np.ones((3, 3), np.uint8))
    tex = tex * region * (1 - holes)
    hair_m = hair & (cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    # presence and colour of a head of hair: hair vs skin pixels in the band above the
    # forehead, inside the fitted head, over the middle of the head (where a head of hair or a
    # bald crown is, never the background; a bald head's shaded sides are left out)
    xx = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    x_mid, y_brow = float(lm[27:31, 0].mean()), float(lm[17:27, 1].mean())
    core = cv2.erode(inside.astype(np.uint8), _disc(max(1, int(0.1 * iod)))) > 0
    top = (core & (parse == PARSE_BG) & (np.abs(xx - x_mid) < 0.8 * iod)
           & (yy < y_brow - 0.3 * iod) & (yy > y_brow - 1.6 * iod))
    # GrabCut's head, unless it lost most of the band (hair as dark as a dark background)
    if (top & fg).sum() > 0.5 * top.sum():
        top = top & fg
    hair_top = (skinlike < 0.5) & top
    n_h = float(hair_top.sum())
    n_s = float(((skinlike > 0.5) & top).sum())
    stats: dict = {"hair_px": n_h, "skin_px": n_s,
                   "has_hair": bool(n_h > 0.002 * h * w and n_h > 0.6 * (n_h + n_s))}
    if n_h > 20:
        px = photo[hair_top].astype(np.float32) / 255
        luma = px @ np.array([0.299, 0.587, 0.114], np.float32)
        # the colour of the hair itself, below its sheen: the median of the darker half
        body = luma <= np.percentile(luma, 50)
        stats["hair_rgb"] = np.median(px[body], 0)
        spread = np.log(np.clip(luma / max(float(np.median(luma)), 1e-3), 0.05, 20))
        stats["hair_amp"] = float(np.clip(np.std(spread), 0.1, 0.22))
        # hair pixels far from the hair's colour are background or skin GrabCut let through
        dist = np.linalg.norm(photo.astype(np.float32) / 255 - stats["hair_rgb"], axis=-1)
        hair_m = hair_m & (dist < 0.3)
    else:
        stats["has_hair"] = False
    return tex.astype(np.float32), hair_m.astype(np.float32), stats
