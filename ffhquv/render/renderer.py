"""Mesh rendering on top of a rasteriser backend: textured / vertex-colour, SH-lit, UV-space.

Frames and conventions: world space and the camera are those of :mod:`ffhquv.render.camera`
(rendered images have row 0 at the top, x to the right, like the photo); SH lighting is
:mod:`ffhquv.render.sh`. Images are ``float [B, H, W, C]``.

UV: meshes carry OBJ texture coordinates (u right, v up, in [0, 1]); a texture array's row 0 is
the top of the PNG, i.e. ``v = 1``. This module is the one place that converts between the two:
texture-memory coordinates are ``(u, 1 - v)`` (row = ``(1 - v) * Ht``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ffhquv.errors import InvalidInput
from ffhquv.render.camera import Camera, project, to_clip
from ffhquv.render.raster import RasterBackend, get_backend
from ffhquv.render.sh import shade

DEFAULT_ALBEDO = 0.7

# A soft frontal key light from above-front with a gentle fill, as 27 SH coefficients
# (channel-major R, G, B; ambient 0.8 is added by ffhquv.render.sh).
PREVIEW_GAMMA = torch.tensor([-0.25, 0.0, 0.35, 0.0, 0.0, 0.0, -0.05, 0.0, 0.0] * 3)


@dataclass
class RenderOutput:
    """What :meth:`MeshRenderer.render` returns (all ``float``, row 0 at the top).

    Attributes:
        image: ``[B, H, W, 3]`` shaded (or unlit albedo) colour, black background,
            antialiased when requested.
        mask: ``[B, H, W, 1]`` coverage in [0, 1] (antialiased when requested; then it carries
            silhouette gradients to the vertices).
        albedo: ``[B, H, W, 3]`` unlit surface colour (zero on the background, not antialiased).
        depth: ``[B, H, W, 1]`` camera depth ``d`` (distance along the view axis), 0 on the
            background.
        normal: ``[B, H, W, 3]`` unit world-space normal per pixel (0 on the background).
        uv: ``[B, H, W, 2]`` texture-memory coordinates per pixel (``(u, 1 - v)``), or None
            without texture coordinates.
        rast: ``[B, H, W, 4]`` raw rasteriser output ``(u, v, z/w, triangle_id + 1)``.
        clip: ``[B, N, 4]`` clip coordinates that were rasterised.
    """

    image: Tensor
    mask: Tensor
    albedo: Tensor
    depth: Tensor
    normal: Tensor
    uv: Tensor | None
    rast: Tensor
    clip: Tensor

    @property
    def triangle_id(self) -> Tensor:
        """``[B, H, W]`` long visible triangle per pixel, -1 on the background."""
        return self.rast[..., 3].detach().long() - 1


@dataclass(frozen=True, eq=False)
class Surface:
    """What covers a mesh besides its positions (:meth:`MeshRenderer.render`). Every field is
    optional; tensors live on the vertices' device (``uv`` and ``uv_tri`` are moved there).

    Attributes:
        normals: ``[B, N, 3]`` (or ``[N, 3]``) float world-space vertex normals; None computes
            area-weighted ones (:func:`vertex_normals`).
        uv: ``[M, 2]`` float OBJ texture coordinates (v up); needed with ``texture``.
        uv_tri: ``[T, 3]`` int per-corner indices into ``uv``, triangle ``k`` the same face as
            ``tri[k]`` (default: ``tri``).
        texture: ``[B|1, Ht, Wt, 3]`` float in [0, 1], row 0 = top of the PNG (v = 1).
            :func:`render_preview` also takes ``uint8`` ``[Ht, Wt, 3]``.
        vertex_albedo: ``[B|1, N, 3]`` float per-vertex albedo, used when there is no
            texture. Without either the surface is a uniform grey of :data:`DEFAULT_ALBEDO`.
    """

    normals: Tensor | None = None
    uv: Tensor | None = None
    uv_tri: Tensor | None = None
    texture: Tensor | None = None
    vertex_albedo: Tensor | None = None


@dataclass(frozen=True, eq=False)
class RasterOptions:
    """How :meth:`MeshRenderer.render` rasterises and composites.

    Attributes:
        size: raster size (square); None = ``camera.size``, else ``camera.scaled(size)``.
        antialias: run silhouette antialiasing on image and mask.
        background: optional colour composited behind the mesh (float scalar, ``[3]``, or
            ``[B, H, W, 3]``); None = black.
        min_grad_area: pixels of triangles smaller than this on screen (px^2) pass no gradient
            to the vertices through their barycentrics (see :func:`sliver_pixels`); 0 keeps
            every pixel. Silhouette (antialiasing) gradients are not affected.
        two_sided: light back faces as front faces (their normal turned toward the camera):
            the inside of the neck seen through its opening is lit, not black. Off for
            fitting (the photo never shows a back face).
        back_albedo: with ``two_sided``, the colour of back faces (float, ``[3]`` or a tuple)
            instead of the texture's: the inside of an open mesh in one plain tone, not the
            outside's texture seen from within (a beard under the chin showed through the
            neck's opening from behind). None: the texture.
        back_albedo_faces: bool ``[T]``, the triangles whose back faces take ``back_albedo``
            (an open head's, not its hair's, whose inner sheet is hair too); None: all.
    """

    size: int | None = None
    antialias: bool = True
    background: Tensor | float | None = None
    min_grad_area: float = 0.0
    two_sided: bool = False
    back_albedo: Tensor | tuple[float, float, float] | float | None = None
    back_albedo_faces: Tensor | None = None


def triangle_pixel_area(clip: Tensor, tri: Tensor, size: int) -> Tensor:
    """Screen-space area of each triangle.

    Args:
        clip: ``[B, V, 4]`` clip coordinates.
        tri: ``[T, 3]`` triangles.
        size: side of the square raster.
    Returns:
        ``[B, T]`` absolute area in square pixels.
    """
    xy = (clip[..., :2] / clip[..., 3:4] + 1) * (size / 2)
    p = xy[:, tri.long()]  # [B, T, 3, 2]
    e1, e2 = p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0]
    return 0.5 * (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).abs()


def sliver_pixels(clip: Tensor, tri: Tensor, rast: Tensor, min_area: float) -> Tensor:
    """``[B, H, W]`` bool: pixels whose visible triangle covers less than ``min_area`` px^2.

    Such slivers are triangles seen edge-on at the silhouette. Their barycentrics are
    ill-conditioned: the derivative by the vertices grows like ``1 / area`` and its sign is
    decided by rounding, so a handful of them can outweigh every other pixel's gradient.
    """
    area = triangle_pixel_area(clip.detach(), tri, rast.shape[2])
    tid = rast[..., 3].detach().long() - 1
    a = torch.gather(area, 1, tid.clamp(min=0).flatten(1)).view_as(tid)
    return (tid >= 0) & (a < min_area)


def obj_uv_to_texture(uv: Tensor) -> Tensor:
    """OBJ texture coordinates (v up) to texture-memory coordinates (row 0 = v = 1).

    Args:
        uv: ``[..., 2]`` OBJ ``(u, v)``.
    Returns:
        ``[..., 2]`` ``(u, 1 - v)``: nvdiffrast texture coordinates for an array whose row 0 is
        the top of the PNG.
    """
    return torch.stack([uv[..., 0], 1.0 - uv[..., 1]], -1)


def face_normals(vertices: Tensor, tri: Tensor) -> Tensor:
    """Unnormalised triangle normals by the winding (length = twice the area).

    Args:
        vertices: ``[B, N, 3]``.
        tri: ``[T, 3]`` long, counter-clockwise seen from the outside.
    Returns:
        ``[B, T, 3]``.
    """
    v0, v1, v2 = (take_rows(vertices, tri[:, i]) for i in range(3))
    return torch.cross(v1 - v0, v2 - v0, dim=-1)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[:, index]`` (``x [B, N, ...]``, ``index [M]`` long -> ``[B, M, ...]``) with the
    gradient that is cheaper where ``x`` is: on CUDA ``index_select`` (its gradient one
    ``index_add``; advanced indexing's sorts the indices first, eight radix-sort kernels in
    every stage-3 step on the H200), elsewhere advanced indexing (on the host
    ``index_select``'s gradient took twice as long: 2.1 against 1.1 ms for the face normals,
    6.2 against 3.4 ms for stage 3's mirror term, cpu2). The same values either way."""
    return x.index_select(1, index) if x.is_cuda else x[:, index]


def vertex_normals(vertices: Tensor, tri: Tensor) -> Tensor:
    """Area-weighted vertex normals.

    Args:
        vertices: ``[B, N, 3]``.
        tri: ``[T, 3]`` long, counter-clockwise seen from the outside.
    Returns:
        ``[B, N, 3]`` unit normals (zero-area vertices get +z).
    """
    fn = face_normals(vertices, tri)  # [B, T, 3], length = 2 * area
    n = torch.zeros_like(vertices)
    for i in range(3):
        n = n.index_add(1, tri[:, i], fn)
    norm = n.norm(dim=-1, keepdim=True)
    # built on the device (no host-to-device copy: this runs inside captured CUDA graphs)
    fallback = torch.zeros_like(n)
    fallback[..., 2] = 1.0
    return torch.where(norm > 1e-12, n / norm.clamp(min=1e-12), fallback)


def _as_batch(x: Tensor, b: int, name: str, last: int) -> Tensor:
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] != last or x.shape[0] not in (1, b):
        raise InvalidInput(f"{name} must be [B, N, {last}] (B = {b}), got {tuple(x.shape)}")
    return x


class MeshRenderer:
    """Renders triangle meshes through a :class:`RasterBackend` with the fitting camera.

    Args:
        camera: the camera (its ``size`` is the default raster size).
        backend: a rasteriser; default :func:`get_backend(device)`.
        device: where the renderer's own constants live (the inputs decide the rest).
    """

    def __init__(self, camera: Camera | None = None, backend: RasterBackend | None = None,
                 device: str | torch.device = "cpu"):
        self.camera = camera or Camera()
        self.device = torch.device(device)
        self.backend = backend or get_backend(self.device)
        self._i32: dict[int, tuple[Tensor, Tensor]] = {}

    def _int32(self, t: Tensor, device: torch.device) -> Tensor:
        """``t`` as a contiguous int32 tensor on ``device``, the same object for the same input
        (backends cache per-topology data by tensor identity; see NvdiffrastBackend)."""
        hit = self._i32.get(id(t))
        if hit is not None and hit[0] is t and hit[1].device == device:
            return hit[1]
        out = t.to(device=device, dtype=torch.int32).contiguous()
        if len(self._i32) >= 8:
            self._i32.clear()
        self._i32[id(t)] = (t, out)
        return out

    def rasterize(self, vertices: Tensor, tri: Tensor, size: int | None = None) -> Tensor:
        """The rasterisation :meth:`render` makes for these vertices, without autograd.

        Args:
            vertices: ``[B, N, 3]`` world-space positions.
            tri: ``[T, 3]`` triangles.
            size: raster size (default ``camera.size``).
        Returns:
            ``[B, S, S, 4]`` ``(u, v, z/w, triangle_id + 1)``; pass it back as ``render(...,
            rast=...)`` (e.g. in a CUDA-graph step, :mod:`services.fitter.graphs`).
        """
        cam = self.camera if size is None or size == self.camera.size else self.camera.scaled(size)
        with torch.no_grad():
            clip = to_clip(vertices.detach(), cam).contiguous()
            return self.backend.rasterize(clip, self._int32(tri, vertices.device),
                                          (cam.size, cam.size))

    def render(
        self,
        vertices: Tensor,
        tri: Tensor,
        surface: Surface | None = None,
        *,
        gamma: Tensor | None = None,
        rast: Tensor | None = None,
        options: RasterOptions | None = None,
    ) -> RenderOutput:
        """Render a batch of meshes.

        Args:
            vertices: ``[B, N, 3]`` float world-space positions (:mod:`ffhquv.render.camera`).
            tri: ``[T, 3]`` int vertex indices (counter-clockwise seen from outside).
            surface: normals, texture coordinates and colour (:class:`Surface`); None = the
                area-weighted normals and a uniform grey of :data:`DEFAULT_ALBEDO`.
            gamma: ``[B, 27]`` float SH lighting (:mod:`ffhquv.render.sh`); None = unlit albedo.
            rast: optional ``[B, S, S, 4]`` rasterisation of these same vertices made
                beforehand (:meth:`rasterize`, e.g. without autograd, before a CUDA-graph
                replay); it is used instead of rasterising again and gets its gradients
                through ``backend.attach_rast``.
            options: raster size, antialiasing, background, sliver gradient gate
                (:class:`RasterOptions`); None = the defaults.
        Returns:
            :class:`RenderOutput`.
        """
        sf = surface or Surface()
        opt = options or RasterOptions()
        normals, uv, uv_tri, texture = sf.normals, sf.uv, sf.uv_tri, sf.texture
        size, min_grad_area = opt.size, opt.min_grad_area
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise InvalidInput(f"vertices must be [B, N, 3], got {tuple(vertices.shape)}")
        if tri.dim() != 2 or tri.shape[-1] != 3:
            raise InvalidInput(f"tri must be [T, 3], got {tuple(tri.shape)}")
        b = vertices.shape[0]
        cam = self.camera if size is None or size == self.camera.size else self.camera.scaled(size)
        s = cam.size
        tri32 = self._int32(tri, vertices.device)
        be = self.backend

        clip = to_clip(vertices, cam).contiguous()
        if rast is None:
            rast = be.rasterize(clip, tri32, (s, s))
        else:
            if rast.shape != (b, s, s, 4):
                raise InvalidInput(f"rast must be [{b}, {s}, {s}, 4], got {tuple(rast.shape)}")
            rast = be.attach_rast(clip, tri32, rast)
        if min_grad_area > 0:
            sliver = sliver_pixels(clip, tri32, rast, min_grad_area)[..., None]
            rast = torch.where(sliver, rast.detach(), rast)
        cover = (rast[..., 3:4] > 0).to(vertices.dtype)

        depth = be.interpolate(clip[..., 3:4].contiguous(), rast, tri32)
        if normals is None:
            normals = vertex_normals(vertices, tri32.long())
        normals = _as_batch(normals, b, "normals", 3)
        nrm = be.interpolate(normals.contiguous(), rast, tri32)
        nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        back = _back_facing(vertices, tri32, rast, cam.distance) if opt.two_sided else None
        if back is not None:
            nrm = torch.where(back, -nrm, nrm)

        uv_img = None
        if uv is not None:
            if uv.dim() != 2 or uv.shape[-1] != 2:
                raise InvalidInput(f"uv must be [M, 2], got {tuple(uv.shape)}")
            ut = tri32 if uv_tri is None else self._int32(uv_tri, vertices.device)
            if ut.shape != tri32.shape:
                raise InvalidInput(f"uv_tri {tuple(ut.shape)} must match tri {tuple(tri32.shape)}")
            uv_mem = obj_uv_to_texture(uv.to(vertices.device, vertices.dtype)).contiguous()
            uv_img = be.interpolate(uv_mem, rast, ut)

        if texture is not None:
            if uv_img is None:
                raise InvalidInput("texture given without uv")
            if texture.dim() != 4 or texture.shape[-1] != 3 or texture.shape[0] not in (1, b):
                raise InvalidInput(f"texture must be [B, Ht, Wt, 3], got {tuple(texture.shape)}")
            albedo = be.texture(texture.contiguous(), uv_img.contiguous()) * cover
        elif sf.vertex_albedo is not None:
            va = _as_batch(sf.vertex_albedo, b, "vertex_albedo", 3)
            albedo = be.interpolate(va.contiguous(), rast, tri32)
        else:
            albedo = cover.expand(-1, -1, -1, 3) * DEFAULT_ALBEDO

        if back is not None and opt.back_albedo is not None:
            inside = torch.as_tensor(opt.back_albedo, dtype=albedo.dtype, device=albedo.device)
            if opt.back_albedo_faces is not None:
                tid = (rast[..., 3].long() - 1).clamp(min=0)
                back = back & opt.back_albedo_faces.to(rast.device)[tid][..., None]
            albedo = torch.where(back, inside * cover, albedo)

        if gamma is not None:
            if gamma.shape != (b, 27):
                raise InvalidInput(f"gamma must be [B, 27] (B = {b}), got {tuple(gamma.shape)}")
            image = shade(albedo, nrm, gamma) * cover
        else:
            image = albedo

        mask = cover
        if opt.antialias:
            both = be.antialias(torch.cat([image, cover], -1).contiguous(), rast, clip, tri32)
            image, mask = both[..., :3], both[..., 3:4]
        if opt.background is not None:
            bg = torch.as_tensor(opt.background, dtype=image.dtype, device=image.device)
            image = image + (1 - mask) * bg
        return RenderOutput(image=image, mask=mask, albedo=albedo, depth=depth, normal=nrm,
                            uv=uv_img, rast=rast, clip=clip)


def _back_facing(vertices: Tensor, tri: Tensor, rast: Tensor, distance: float) -> Tensor:
    """``bool [B, H, W, 1]``: pixels whose triangle turns its back to the camera (its winding
    normal points away from the camera at ``z = distance``), from the triangle ids of
    ``rast`` (``[B, H, W, 4]``, id + 1 in the last channel, 0 = empty)."""
    t = tri.long()
    n = face_normals(vertices, t)
    to_cam = -vertices[:, t].mean(2)
    to_cam[..., 2] += distance
    back = torch.cat([torch.zeros_like(n[:, :1, 0], dtype=torch.bool),
                      (n * to_cam).sum(-1) < 0], 1)  # [B, T + 1], index 0 = no triangle
    ids = rast[..., 3].round().long().clamp(0, t.shape[0])
    return torch.gather(back, 1, ids.flatten(1)).reshape(ids.shape)[..., None]


def _uv_clip(uv: Tensor) -> Tensor:
    """``[M, 2]`` OBJ uv -> ``[1, M, 4]`` clip coordinates of a UV-space raster whose row 0 is
    ``v = 1`` (like the texture memory): ndc ``x = 2u - 1``, ``y = 1 - 2v``."""
    if uv.dim() != 2 or uv.shape[-1] != 2:
        raise InvalidInput(f"uv must be [M, 2], got {tuple(uv.shape)}")
    uv = uv.float()
    one = torch.ones_like(uv[:, :1])
    return torch.cat([uv[:, :1] * 2 - 1, 1 - 2 * uv[:, 1:2], 0 * one, one], -1)[None]


def uv_space_interpolate(
    attr: Tensor,
    tri: Tensor,
    uv: Tensor,
    uv_tri: Tensor,
    size: int,
    backend: RasterBackend | None = None,
) -> tuple[Tensor, Tensor]:
    """Rasterise a mesh in UV space and interpolate per-vertex attributes per texel.

    Texel ``(row i, col j)`` has its centre at OBJ ``u = (j + 0.5) / S``,
    ``v = 1 - (i + 0.5) / S`` (row 0 = v = 1, like a texture PNG). Where UV triangles overlap,
    the lowest triangle id wins.

    Args:
        attr: ``[B, N, C]`` (or ``[N, C]``) per-vertex attributes (e.g. world positions,
            normals).
        tri: ``[T, 3]`` vertex indices into ``attr``.
        uv: ``[M, 2]`` OBJ texture coordinates.
        uv_tri: ``[T, 3]`` per-corner indices into ``uv``, aligned with ``tri``.
        size: ``S``, the UV raster is ``S x S``.
        backend: rasteriser; default :func:`get_backend` for ``attr``'s device.
    Returns:
        ``(values [B, S, S, C], mask [B, S, S, 1])``: interpolated attributes (0 outside the
        layout; differentiable in ``attr``) and texel coverage (float 0/1).
    """
    if attr.dim() == 2:
        attr = attr[None]
    if attr.dim() != 3:
        raise InvalidInput(f"attr must be [B, N, C] or [N, C], got {tuple(attr.shape)}")
    if tri.shape != uv_tri.shape:
        raise InvalidInput(f"uv_tri {tuple(uv_tri.shape)} must match tri {tuple(tri.shape)}")
    dev = attr.device
    be = backend or get_backend(dev)
    b = attr.shape[0]
    rast = uv_rasterize(uv.to(dev), uv_tri, size, be).expand(b, -1, -1, -1).contiguous()
    values = be.interpolate(attr.contiguous(), rast, tri.to(dev, torch.int32).contiguous())
    mask = (rast[..., 3:4] > 0).to(attr.dtype)
    return values, mask


def uv_triangle_ids(uv: Tensor, uv_tri: Tensor, size: int,
                    backend: RasterBackend | None = None) -> Tensor:
    """``[S, S]`` long: the UV triangle covering each texel centre (row 0 = v = 1), -1 if none."""
    return uv_rasterize(uv, uv_tri, size, backend)[0, ..., 3].long() - 1


def uv_rasterize(uv: Tensor, uv_tri: Tensor, size: int,
                 backend: RasterBackend | None = None) -> Tensor:
    """Rasterise the UV layout itself: ``[1, S, S, 4]`` ``(b0, b1, 0, triangle id + 1)``.

    Texel centres as in :func:`uv_space_interpolate` (row 0 = ``v = 1``); ``b0, b1`` weigh the
    first two corners of the covering triangle, ``1 - b0 - b1`` the third; id 0 = no triangle.
    """
    be = backend or get_backend(uv.device)
    return be.rasterize(_uv_clip(uv).contiguous(),
                        uv_tri.to(uv.device, torch.int32).contiguous(), (size, size))


def uv_overlap_count(uv: Tensor, uv_tri: Tensor, size: int) -> Tensor:
    """``[S, S]`` long: how many UV triangles cover each texel centre (row 0 = v = 1).

    Values above 1 are UV overlaps. Uses the torch rasteriser (no depth test needed)."""
    from ffhquv.render.raster.torch_backend import TorchRasterizer

    clip = _uv_clip(uv)
    return TorchRasterizer(uv.device).coverage_count(clip, uv_tri.to(uv.device).long(),
                                                     (size, size))[0]


@dataclass(frozen=True, eq=False)
class PreviewOptions:
    """How :func:`render_preview` turns, frames, lights and rasterises the mesh.

    Attributes:
        yaw_deg: turn about the vertical axis through the mesh's vertex centroid, degrees
            (positive turns the face toward the image right).
        size: output side in pixels.
        camera: default :class:`Camera`; rendered at ``camera.scaled(size)``.
        gamma: ``[27]`` or ``[1, 27]`` float SH light; None = :data:`PREVIEW_GAMMA`.
        background: RGB in [0, 1].
        frame: centre the (turned) mesh on the optical axis and zoom so that it fills 90% of
            the picture; False keeps the framing of ``camera``.
        backend: rasteriser; None = :func:`get_backend` for the vertices' device.
        interior: the albedo of back faces (:attr:`RasterOptions.back_albedo`), a dark warm
            tone: the inside of the neck seen through its opening as a plain hollow in shade,
            not the texture of the outside seen from within (a beard under the chin showed
            through it from behind); None: that texture.
        interior_faces: how many leading triangles (the head's, before its hair and eyes)
            take ``interior`` inside; None: all of them.
    """

    yaw_deg: float = 0.0
    size: int = 512
    camera: Camera | None = None
    gamma: Tensor | None = None
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    frame: bool = True
    backend: RasterBackend | None = None
    interior: tuple[float, float, float] | float | None = (0.32, 0.24, 0.21)
    interior_faces: int | None = None


def render_preview(vertices: Tensor, tri: Tensor, surface: Surface | None = None,
                   options: PreviewOptions | None = None) -> np.ndarray:
    """A pleasant lit preview of one world-space mesh, turned by ``options.yaw_deg`` about the
    vertical axis through its centroid (positive yaw turns the face toward the image right).

    Args:
        vertices: ``[N, 3]`` or ``[1, N, 3]`` float world-space vertices (as fitted: the camera
            of :mod:`ffhquv.render.camera` sees them).
        tri: ``[T, 3]`` int triangles.
        surface: as in :meth:`MeshRenderer.render` for one mesh (``vertex_albedo`` may be
            ``[N, 3]``); ``texture`` may also be ``uint8`` ``[Ht, Wt, 3]`` (row 0 = top of the
            PNG, divided by 255) or float ``[Ht, Wt, 3]``. ``normals`` are not used (the mesh
            is turned; normals are recomputed).
        options: :class:`PreviewOptions`; None = the defaults.
    Returns:
        ``uint8 [size, size, 3]`` RGB, row 0 at the top.
    """
    sf = surface or Surface()
    opt = options or PreviewOptions()
    size = opt.size
    with torch.no_grad():
        v = vertices if vertices.dim() == 3 else vertices[None]
        v = v.float()
        centre = v.mean(1, keepdim=True)
        a = math.radians(opt.yaw_deg)
        rot = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0],
                            [-math.sin(a), 0.0, math.cos(a)]], device=v.device)
        v = (v - centre) @ rot.T + centre
        cam = (opt.camera or Camera()).scaled(size)
        if opt.frame:
            lo, hi = v[0].amin(0), v[0].amax(0)
            mid = (lo + hi) / 2
            v = v - torch.stack([mid[0], mid[1], torch.zeros_like(mid[0])])
            px = project(v, cam)[0]
            extent = float((px - cam.center).abs().max()) * 2
            if extent > 0:
                cam = replace(cam, focal=cam.focal * 0.9 * size / extent)
        tex = sf.texture
        if tex is not None:
            if tex.dtype == torch.uint8:
                tex = tex.float() / 255.0
            tex = (tex if tex.dim() == 4 else tex[None]).float().to(v.device)
        g = PREVIEW_GAMMA if opt.gamma is None else opt.gamma
        g = g.reshape(1, 27).float().to(v.device)
        va = None if sf.vertex_albedo is None else sf.vertex_albedo.reshape(1, -1, 3).float()
        r = MeshRenderer(cam, backend=opt.backend, device=v.device)
        out = r.render(v, tri, Surface(uv=sf.uv, uv_tri=sf.uv_tri, texture=tex, vertex_albedo=va),
                       gamma=g, options=RasterOptions(
                           antialias=True, two_sided=True, back_albedo=opt.interior,
                           back_albedo_faces=None if opt.interior_faces is None else
                           torch.arange(len(tri), device=v.device) < opt.interior_faces,
                           background=torch.tensor(opt.background, device=v.device)))
        img = out.image[0].clamp(0, 1).cpu().numpy()
    return (img * 255 + 0.5).astype(np.uint8)
