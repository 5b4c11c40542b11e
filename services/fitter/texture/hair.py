"""Hair and skin in the texture: what of the unwrapped skin is really skin."""

from __future__ import annotations

import numpy as np

from services.fitter.texture.atlas import UVMaps

HAIR_RATIO = (0.7, 0.85)


def hair_weight(albedo: np.ndarray, weight: np.ndarray, maps: UVMaps) -> np.ndarray:
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
    lum = albedo @ np.array([0.299, 0.587, 0.114], np.float32)
    skin = maps.skin.cpu().numpy() > 0.5
    ref = skin & maps.central_face & (weight > 0.5)
    if ref.sum() < 50:
        return np.ones_like(weight)
    ratio = lum / max(float(np.median(lum[ref])), 1e-3)
    lo, hi = HAIR_RATIO
    w = np.clip((ratio - lo) / (hi - lo), 0, 1)
    return np.where(skin & maps.forehead, w, 1.0).astype(np.float32)
