"""The landmark loss's shared pieces: the landmark rows of a face model's bases and the
per-landmark weights (used by stage 1, stage 3 and paper mode's joint fit)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from services.fitter.facemodel.base import FaceModel

# dlib / iBUG groups
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
EYES = slice(36, 48)
MOUTH = slice(48, 68)


def landmark_weights(device: torch.device | str = "cpu") -> Tensor:
    """``[68]`` per-landmark weights: eyes, nose and mouth 3, brows 1.5, jaw contour 0.4
    (the contour of a turned face slides along the silhouette, so it is trusted least)."""
    w = torch.ones(68)
    w[JAW] = 0.4
    w[BROWS] = 1.5
    w[NOSE] = 3.0
    w[EYES] = 3.0
    w[MOUTH] = 3.0
    w[[36, 39, 42, 45, 48, 54]] = 4.0  # eye and mouth corners
    return w.to(device)


@dataclass
class LandmarkBases:
    """The landmark rows of a face model's bases: ``mean [68,3]``, ``id [68,3,K_id]``,
    ``exp [68,3,K_exp]`` (barycentric combinations of the landmark triangles)."""

    mean: Tensor
    id: Tensor
    exp: Tensor

    @classmethod
    def of(cls, model: FaceModel) -> LandmarkBases:
        bary = model.lmk_bary[:, :, None, None]  # [68, 3, 1, 1]
        tv = model.lmk_tri_vertices
        mean = (model.mean_shape[tv] * bary[..., 0]).sum(1)
        idb = (model.id_base[tv] * bary).sum(1)
        expb = (model.exp_base[tv] * bary).sum(1)
        return cls(mean, idb, expb)

    def landmarks(self, id_coeff: Tensor, exp_coeff: Tensor) -> Tensor:
        """``[B, 68, 3]`` model-space landmarks for ``id [B,K_id]`` and ``exp [B,K_exp]``."""
        return (self.mean[None] + torch.einsum("nck,bk->bnc", self.id, id_coeff)
                + torch.einsum("nck,bk->bnc", self.exp, exp_coeff))
