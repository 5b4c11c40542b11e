"""Where the stage-2 texture comes from.

Paper mode (StyleGAN2 texture decoder, latent search in W / W+) plugs in through
:class:`TextureSource`: a source that decodes a latent instead of unwrapping; stage 3 only
needs ``base_texture`` and ``coverage``. The default source, :class:`UnwrapTextureSource`,
unwraps the photo (:mod:`.unwrap`) and completes it (:mod:`.completion`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from ffhquv.render.camera import Camera
from services.fitter.facemodel.base import FaceModel
from services.fitter.texture.atlas import uv_maps
from services.fitter.texture.beard import beard_layer
from services.fitter.texture.completion import CompletedTexture, complete_texture, pad_outside
from services.fitter.texture.hair import hair_info, hair_layer, paint_curtain
from services.fitter.texture.hostcopy import to_host
from services.fitter.texture.masks import HeadMasks
from services.fitter.texture.pool import per_photo
from services.fitter.texture.unwrap import unwrap


class TextureSource(Protocol):
    """Where the stage-2 texture comes from (the hook for paper mode's StyleGAN2 decoder)."""

    name: str

    def texture(self, model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor,
                face_mask: Tensor | HeadMasks, size: int) -> list[CompletedTexture]:
        """``B`` hole-free albedo textures ``[S, S, 3]`` for the fitted geometry.

        ``face_mask``: ``[B, 224, 224, 1]`` texture mask, or the whole head's
        :class:`~services.fitter.texture.masks.HeadMasks` (skin texture, hair).
        """
        ...


class UnwrapTextureSource:
    """The default, checkpoint-free texture: unwrap + mirror + skin template, and with
    :class:`HeadMasks` the head of hair on the scalp (:func:`hair_layer`)."""

    name = "unwrap"

    def __init__(self, backend, cam: Camera, depth_size: int = 512):
        self.backend = backend
        self.cam = cam
        self.depth_size = depth_size

    def texture(self, model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor,
                face_mask: Tensor | HeadMasks, size: int) -> list[CompletedTexture]:
        maps = uv_maps(model, size, self.backend)
        head = face_mask if isinstance(face_mask, HeadMasks) else None
        masks = face_mask if head is None else torch.cat(
            [head.texture, head.hair] + ([] if head.skin is None else [head.skin]), -1)
        un = unwrap(model, coeffs, crop_hires, masks, maps, self.backend, self.cam,
                    self.depth_size)
        # the completion runs where the atlas is (the fitter's device): it takes the unwrap
        # as it is; the hair layer is numpy on the host
        alb, wt = un.albedo.detach(), un.weight.detach()
        if head is None:
            return per_photo(lambda i: complete_texture(alb[i], wt[i], maps), alb.shape[0])
        wt_np = to_host(wt)
        col = to_host(un.color)
        w_hair = to_host(un.weights[..., 1])
        w_skin = None if head.skin is None else un.weights[..., 2].detach()

        def one(i: int) -> CompletedTexture:
            # the hair layer (numpy on the host) needs none of the completion (on the fitter's
            # device): on a thread of its own meanwhile, so one photo waits for the longer
            # of the two, not their sum
            with ThreadPoolExecutor(1, thread_name_prefix="hair-layer") as side:
                hair_job = side.submit(hair_layer, col[i], w_hair[i], wt_np[i], maps,
                                       head.hair_stats[i])
                done = complete_texture(alb[i], wt[i], maps,
                                        skin=None if w_skin is None else w_skin[i])
                beard = {}
                if done.skin_share is not None:  # a seen full beard continued round the jaw
                    done.texture, found = beard_layer(done.texture, done.observed,
                                                      done.skin_share, maps)
                    beard = found.as_dict()
                hair = hair_job.result()
            if hair is None:
                if beard.get("beard"):  # the painted beard into the islands' borders too
                    done.texture = pad_outside(done.texture, maps)
                done.hair = {**hair_info(head.hair_stats[i]), **beard}
                return done
            m = hair.matte[..., None]
            tex = (done.texture * (1 - m) + hair.color * m).astype(np.float32)
            # texels outside the islands again from their nearest covered texel (bilinear and
            # mip-mapped lookups at island borders read them: no skin-coloured seam lines)
            done.texture = paint_curtain(pad_outside(tex, maps), hair.curtain)
            done.hair = {**hair.info, **beard}
            done.hair_matte = hair.matte
            done.hair_curtain = hair.curtain
            return done

        return per_photo(one, alb.shape[0])
