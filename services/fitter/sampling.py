"""Sampling images at pixel positions (stage-1 lighting and visibility, the texture unwrap)."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_image(img: Tensor, pix: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample an image at pixel positions.

    Args:
        img: ``[B, H, W, C]`` float.
        pix: ``[B, P, 2]`` pixel coordinates (x right, y down, centres at integers) in that
            image's pixels.
        mode: "bilinear" or "nearest".
    Returns:
        ``[B, P, C]`` (border values outside).
    """
    h, w = img.shape[1:3]
    gx = (pix[..., 0] + 0.5) / w * 2 - 1
    gy = (pix[..., 1] + 0.5) / h * 2 - 1
    grid = torch.stack([gx, gy], -1)[:, None]  # [B, 1, P, 2]
    out = torch.nn.functional.grid_sample(img.permute(0, 3, 1, 2), grid, mode=mode,
                                          padding_mode="border", align_corners=False)
    return out[:, :, 0].permute(0, 2, 1)
