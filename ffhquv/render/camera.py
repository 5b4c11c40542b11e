"""The shared perspective camera of ffhq-uv (Deep3D / FFHQ-UV convention). One place only.

Coordinate frames (all tensors float, batched):

* **model**: right-handed, y up, the face looking toward +z, face-model units.
* **world**: ``R @ p + t`` of a model point; ``R = Rz @ Ry @ Rx`` from Euler angles (x, y, z)
  in radians, ``t`` the translation (same units).
* **camera**: the camera sits at ``z = distance`` on the world z axis and looks down -z.
  Camera coordinates are ``(x, y, d)`` with ``d = distance - z_world > 0`` the depth in front.
* **pixels**: x to the right, y down, pixel *centres* at integer coordinates (as OpenCV and
  dlib report landmarks), for a square raster of ``size`` pixels:
  ``px = focal * x / d + center``, ``py = center - focal * y / d``. The raster covers
  ``[-0.5, size - 0.5]`` in these coordinates, so the same view on an ``S`` raster
  (:meth:`Camera.scaled`, ``k = S / size``) puts a point at ``k * (px + 0.5) - 0.5``: the
  mapping of the detector's hi-res crop (:func:`ffhquv.aligned.crop_to_hires`), of
  ``cv2.resize`` and of ``F.interpolate(..., align_corners=False)``.
* **clip** (for rasterisers, nvdiffrast layout): ``(xn * d, yn * d, zn * d, d)`` where
  ``xn = (px + 0.5) / size * 2 - 1`` and ``yn = (py + 0.5) / size * 2 - 1``, so row 0 of a
  rendered image is the top of the picture, like the photo. ``zn`` is OpenGL-style depth in
  [-1, 1] between ``znear`` and ``zfar``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ffhquv.render.matmul import apply_matrices


@dataclass(frozen=True)
class Camera:
    """Intrinsics of the fitting camera. Defaults are the paper's 224 x 224 fitting raster."""

    focal: float = 1015.0
    center: float = 112.0
    distance: float = 10.0
    size: int = 224
    znear: float = 5.0
    zfar: float = 15.0

    def scaled(self, size: int) -> Camera:
        """The same view on a ``size`` x ``size`` raster, pixel-centre consistent: the focal
        scales by ``k = size / self.size`` and the centre maps like any pixel position,
        ``k * (center + 0.5) - 0.5`` (so clip coordinates do not depend on the raster size)."""
        k = size / self.size
        return replace(self, focal=self.focal * k, center=(self.center + 0.5) * k - 0.5,
                       size=size)


def euler_to_rotation(angles: Tensor) -> Tensor:
    """Rotation matrices from Euler angles.

    Args:
        angles: ``[B, 3]`` rotations about x, y, z in radians.
    Returns:
        ``[B, 3, 3]`` matrices ``R = Rz @ Ry @ Rx`` acting on column vectors.
    """
    x, y, z = angles[:, 0], angles[:, 1], angles[:, 2]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def rigid_transform(points: Tensor, angles: Tensor, trans: Tensor) -> Tensor:
    """Model to world: ``R @ p + t``.

    Args:
        points: ``[B, N, 3]`` model-space points.
        angles: ``[B, 3]`` Euler angles (radians).
        trans: ``[B, 3]`` translation.
    Returns:
        ``[B, N, 3]`` world-space points.
    """
    rot = euler_to_rotation(angles)
    return apply_matrices(points, rot) + trans[:, None, :]


def rotate_normals(normals: Tensor, angles: Tensor) -> Tensor:
    """``[B, N, 3]`` model-space normals to world space (rotation only)."""
    return apply_matrices(normals, euler_to_rotation(angles))


def to_camera(world: Tensor, cam: Camera) -> Tensor:
    """``[B, N, 3]`` world points to camera coordinates ``(x, y, d)`` with depth ``d > 0``."""
    return torch.stack([world[..., 0], world[..., 1], cam.distance - world[..., 2]], -1)


def project(world: Tensor, cam: Camera) -> Tensor:
    """Perspective projection.

    Args:
        world: ``[B, N, 3]`` world-space points.
        cam: the camera (its ``size`` sets the pixel grid).
    Returns:
        ``[B, N, 2]`` pixel coordinates (x right, y down, pixel centres at integers).
    """
    c = to_camera(world, cam)
    d = c[..., 2].clamp(min=1e-6)
    px = cam.focal * c[..., 0] / d + cam.center
    py = cam.center - cam.focal * c[..., 1] / d
    return torch.stack([px, py], -1)


def to_clip(world: Tensor, cam: Camera) -> Tensor:
    """World points to homogeneous clip coordinates for a rasteriser.

    Args:
        world: ``[B, N, 3]`` world-space points.
        cam: the camera; the raster is ``cam.size`` x ``cam.size``.
    Returns:
        ``[B, N, 4]`` clip coordinates ``(xn*d, yn*d, zn*d, d)`` (see the module docstring).
    """
    c = to_camera(world, cam)
    d = c[..., 2]
    pix = project(world, cam)
    xn = (pix[..., 0] + 0.5) / cam.size * 2 - 1
    yn = (pix[..., 1] + 0.5) / cam.size * 2 - 1
    n, f = cam.znear, cam.zfar
    zc = (d * (f + n) - 2 * f * n) / (f - n)
    return torch.stack([xn * d, yn * d, zc, d], -1)
