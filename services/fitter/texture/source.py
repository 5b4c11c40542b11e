"""Where the stage-2 texture comes from, and the per-photo host work.

Paper mode (StyleGAN2 texture decoder, latent search in W / W+) plugs in through
:class:`TextureSource`: a source that decodes a latent instead of unwrapping; stage 3 only
needs ``base_texture`` and ``coverage``. The default source, :class:`UnwrapTextureSource`,
unwraps the photo (:mod:`.unwrap`) and completes it (:mod:`.completion`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from torch import Tensor

from services.fitter.camera import Camera
from services.fitter.facemodel.base import FaceModel
from services.fitter.texture.atlas import uv_maps
from services.fitter.texture.completion import CompletedTexture, complete_texture
from services.fitter.texture.unwrap import unwrap

T = TypeVar("T")


def per_photo(fn: Callable[[int], T], n: int) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, on a thread pool when ``n > 1``.

    The per-photo texture work is numpy / OpenCV on the host (they release the GIL): in a GPU
    batch it would otherwise run one photo after the other while the GPU waits.
    """
    if n <= 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(fn, range(n)))


class TextureSource(Protocol):
    """Where the stage-2 texture comes from (the hook for paper mode's StyleGAN2 decoder)."""

    name: str

    def texture(self, model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor,
                face_mask: Tensor, size: int) -> list[CompletedTexture]:
        """``B`` hole-free albedo textures ``[S, S, 3]`` for the fitted geometry."""
        ...


class UnwrapTextureSource:
    """The default, checkpoint-free texture: unwrap + mirror + skin template."""

    name = "unwrap"

    def __init__(self, backend, cam: Camera, depth_size: int = 512):
        self.backend = backend
        self.cam = cam
        self.depth_size = depth_size

    def texture(self, model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor,
                face_mask: Tensor, size: int) -> list[CompletedTexture]:
        maps = uv_maps(model, size, self.backend)
        un = unwrap(model, coeffs, crop_hires, face_mask, maps, self.backend, self.cam,
                    self.depth_size)
        alb = un.albedo.detach().cpu().numpy()
        wt = un.weight.detach().cpu().numpy()
        return per_photo(lambda i: complete_texture(alb[i], wt[i], maps), alb.shape[0])
