"""Unwrap: the high-resolution crop sampled into UV through the fitted geometry.

Every texel of the ``S x S`` atlas gets its 3D world position and normal from the
fitted mesh (:func:`ffhquv.render.renderer.uv_space_interpolate`), is projected into the
high-resolution aligned crop (``camera.scaled(S_hires)``) and sampled bilinearly. A texel is
trusted by

    weight = view-angle ramp (cosine between normal and direction to the camera, 0 below 0.3)
           x visibility (its camera depth is not behind the rendered depth)
           x photo face mask (parse skin / brows / nose / lips x skin probability, eroded)

The fitted SH shading is divided out to get albedo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.render.camera import Camera, project, rigid_transform, rotate_normals
from ffhquv.render.sh import irradiance
from services.fitter.facemodel.base import FaceModel
from services.fitter.sampling import sample_image
from services.fitter.texture.atlas import UVMaps

COS_MIN = 0.3


@dataclass
class UnwrapResult:
    """Per-photo unwrap (batched).

    Attributes:
        albedo: ``[B, S, S, 3]`` photo colour / shading (0 where unseen).
        weight: ``[B, S, S]`` confidence in [0, 1] (0 = unseen).
        color: ``[B, S, S, 3]`` raw sampled photo colour (shaded).
        weights: ``[B, S, S, C]`` the confidence for each of the C channels of the photo mask
            (``weight`` is channel 0), e.g. skin / face texture and hair.
    """

    albedo: Tensor
    weight: Tensor
    color: Tensor
    weights: Tensor | None = None


def unwrap(model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor, face_mask: Tensor,
           maps: UVMaps, backend, cam: Camera, depth_size: int = 512) -> UnwrapResult:
    """Sample the high-resolution crop into UV through the fitted geometry.

    Args:
        model: the face model.
        coeffs: ``id, exp, angles, trans, gamma`` ``[B, ...]``.
        crop_hires: ``[B, Sh, Sh, 3]`` float in [0, 1], same alignment as the 224 crop.
        face_mask: ``[B, 224, 224, C]`` photo masks on ``cam``'s raster, channel 0 the
            texture mask (:func:`photo_face_mask` or :func:`head_masks`), further channels
            e.g. hair; each gives one channel of ``UnwrapResult.weights``.
        maps: UV maps of the target size.
        backend: rasteriser backend.
        cam: the 224 fitting camera.
        depth_size: raster side of the visibility depth render.
    Returns:
        :class:`UnwrapResult` at ``maps.size``.
    """
    from ffhquv.render.renderer import MeshRenderer, RasterOptions, uv_space_interpolate

    verts = model.shape(coeffs["id"], coeffs["exp"])
    world = rigid_transform(verts, coeffs["angles"], coeffs["trans"])
    nrm = rotate_normals(model.vertex_normals(verts), coeffs["angles"])
    attr = torch.cat([world, nrm], -1)
    vals, _ = uv_space_interpolate(attr, model.tri, model.uv, model.uv_tri, maps.size, backend)
    b, s = vals.shape[0], maps.size
    pos = vals[..., :3].reshape(b, -1, 3)
    n = F.normalize(vals[..., 3:].reshape(b, -1, 3), dim=-1)
    # view-angle weight
    view = F.normalize(torch.tensor([0.0, 0.0, cam.distance], device=pos.device) - pos, dim=-1)
    cos = (n * view).sum(-1)
    w = ((cos - COS_MIN) / (1 - COS_MIN)).clamp(0, 1)
    # visibility from a depth render
    dcam = cam.scaled(depth_size)
    out = MeshRenderer(dcam, backend).render(
        world, model.tri, options=RasterOptions(size=depth_size, antialias=False))
    depth = _depth_of(out, world, model.tri, dcam, backend)
    d_here = cam.distance - pos[..., 2]
    d_map = sample_image(depth, project(pos, dcam), mode="bilinear")[..., 0]
    d_min = -F.max_pool2d(-torch.where(depth > 0, depth, torch.full_like(depth, 1e3)).permute(
        0, 3, 1, 2), 3, stride=1, padding=1).permute(0, 2, 3, 1)
    d_map = torch.minimum(d_map, sample_image(d_min, project(pos, dcam), mode="nearest")[..., 0])
    tol = 0.01 * cam.distance
    w = w * ((d_map > 0) & (d_here <= d_map + tol)).float()
    # photo mask and colours
    pm = sample_image(face_mask, project(pos, cam), mode="bilinear")  # [B, P, C]
    hcam = cam.scaled(crop_hires.shape[1])
    hp = project(pos, hcam)
    inside = ((hp >= 0) & (hp <= crop_hires.shape[1] - 1)).all(-1).float()
    w_all = (w * inside * maps.mask.reshape(1, -1).float())[..., None] * pm
    w = w_all[..., 0]
    color = sample_image(crop_hires, hp)
    shading = irradiance(n, coeffs["gamma"]).clamp(min=0.1)
    albedo = (color / shading).clamp(0, 1)
    w = w.reshape(b, s, s)
    albedo = albedo.reshape(b, s, s, 3) * (w[..., None] > 0)
    return UnwrapResult(albedo=albedo, weight=w, color=color.reshape(b, s, s, 3),
                        weights=w_all.reshape(b, s, s, -1))


def _depth_of(out, world: Tensor, tri: Tensor, cam: Camera, backend) -> Tensor:
    """``[B, H, W, 1]`` camera depth ``d`` (0 where empty) of a render output."""
    d = getattr(out, "depth", None)
    if d is not None:
        return d if d.dim() == 4 else d[..., None]
    from ffhquv.render.camera import to_camera

    dcam = to_camera(world, cam)[..., 2:3]
    return backend.interpolate(dcam, out.rast, tri)
