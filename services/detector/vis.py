"""Visualisation panel like the reference pipeline's ``processed_vis``:
``input crop | skin mask | parse mask over the crop | landmarks``, four 224 x 224 tiles.
"""

from __future__ import annotations

import numpy as np

from services.detector.masks import ParseLabel

# Overlay colours (RGB) and opacity per label; eyes stay uncovered as in the reference.
LABEL_COLOURS: dict[int, tuple[tuple[int, int, int], float]] = {
    ParseLabel.SKIN: ((60, 220, 40), 0.6),
    ParseLabel.NOSE: ((60, 220, 40), 0.6),
    ParseLabel.BROWS: ((30, 110, 20), 0.6),
    ParseLabel.EYES: ((0, 0, 0), 0.0),
    ParseLabel.LIPS: ((230, 60, 160), 0.55),
    ParseLabel.MOUTH: ((200, 20, 20), 0.6),
}
LANDMARK_COLOUR = (20, 20, 230)


def parse_overlay(crop: np.ndarray, parse: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]`` crop blended with the colours of the ``uint8 [H, W]`` labels."""
    out = crop.astype(np.float32)
    for label, (colour, alpha) in LABEL_COLOURS.items():
        sel = parse == label
        if alpha > 0 and sel.any():
            out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(colour, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_landmarks(img: np.ndarray, lm: np.ndarray, radius: int = 1) -> np.ndarray:
    """Copy of ``uint8 [H, W, 3]`` with ``[N, 2]`` points drawn as small squares."""
    out = img.copy()
    h, w = out.shape[:2]
    for x, y in np.rint(np.asarray(lm)).astype(int):
        x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
        y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
        if x0 < x1 and y0 < y1:
            out[y0:y1, x0:x1] = LANDMARK_COLOUR
    return out


def visualization(crop: np.ndarray, skin: np.ndarray, parse: np.ndarray,
                  lm: np.ndarray) -> np.ndarray:
    """The four-tile panel.

    Args:
        crop: ``uint8 [S, S, 3]`` aligned crop; skin, parse: ``uint8 [S, S]``;
        lm: ``[68, 2]`` crop landmarks.
    Returns:
        ``uint8 [S, 4 S, 3]`` RGB.
    """
    skin_rgb = np.repeat(skin[..., None], 3, axis=2)
    return np.concatenate([crop, skin_rgb, parse_overlay(crop, parse),
                           draw_landmarks(crop, lm)], axis=1)
