"""Spherical-harmonics (3 bands) Lambertian shading, Deep3D / FFHQ-UV convention. One place only.

``gamma`` holds 27 coefficients laid out channel-major (``[B, 3, 9]`` after reshaping: R's nine,
then G's, then B's); an ambient of ``ambient`` (0.8) is added to each channel's DC term, so
``gamma = 0`` is a uniform white light of irradiance 0.8 * pi / sqrt(4 pi) = 0.709, and
:func:`uniform_gamma` gives any other uniform irradiance (1: the neutral light of the albedo
convention, ``docs/conventions.md``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ffhquv.render.matmul import apply_matrices

AMBIENT = 0.8
_A0, _A1, _A2 = math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)
_C0 = 1 / math.sqrt(4 * math.pi)
_C1 = math.sqrt(3.0) / math.sqrt(4 * math.pi)
_C2 = 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi)


def sh_basis(normals: Tensor) -> Tensor:
    """SH irradiance basis of unit normals.

    Args:
        normals: ``[..., 3]`` unit normals in world space.
    Returns:
        ``[..., 9]`` basis values (convolved with the clamped-cosine lobe).
    """
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    return torch.stack(
        [
            torch.full_like(x, _A0 * _C0),
            -_A1 * _C1 * y,
            _A1 * _C1 * z,
            -_A1 * _C1 * x,
            _A2 * _C2 * x * y,
            -_A2 * _C2 * y * z,
            0.5 * _A2 * _C2 / math.sqrt(3.0) * (3 * z * z - 1),
            -_A2 * _C2 * x * z,
            0.5 * _A2 * _C2 * (x * x - y * y),
        ],
        -1,
    )


def uniform_gamma(level: float = 1.0, ambient: float = AMBIENT) -> Tensor:
    """``float32 [27]``: the SH coefficients of a uniform white light of irradiance ``level``
    (every normal, every channel), e.g. the neutral light under which an albedo shows the
    photo's skin (``level = 1``)."""
    g = torch.zeros(3, 9)
    g[:, 0] = level / (_A0 * _C0) - ambient
    return g.reshape(27)


def scale_light(gamma: Tensor, k: Tensor, ambient: float = AMBIENT) -> Tensor:
    """The SH coefficients of the same light ``k`` times as bright (its ambient included):
    ``irradiance(n, scale_light(gamma, k)) == k * irradiance(n, gamma)``.

    Args:
        gamma: ``[B, 27]``; k: ``[B]`` positive factors.
    Returns:
        ``[B, 27]``.
    """
    b = gamma.shape[0]
    g = gamma.reshape(b, 3, 9) * k.reshape(b, 1, 1)
    g[:, :, 0] = g[:, :, 0] + (k.reshape(b, 1) - 1) * ambient
    return g.reshape(b, 27)


def irradiance(normals: Tensor, gamma: Tensor, ambient: float = AMBIENT) -> Tensor:
    """Per-point RGB shading factor.

    Args:
        normals: ``[B, ..., 3]`` unit world-space normals.
        gamma: ``[B, 27]`` SH coefficients.
    Returns:
        ``[B, ..., 3]`` shading to multiply the albedo with.
    """
    b = gamma.shape[0]
    g = gamma.view(b, 3, 9).clone()
    g[:, :, 0] = g[:, :, 0] + ambient
    basis = sh_basis(normals)  # [B, ..., 9]
    flat = basis.reshape(b, -1, 9)
    light = apply_matrices(flat, g)  # [B, P, 3]
    return light.reshape(*normals.shape[:-1], 3)


def shade(albedo: Tensor, normals: Tensor, gamma: Tensor, ambient: float = AMBIENT) -> Tensor:
    """``albedo * irradiance``; albedo ``[B, ..., 3]`` in [0, 1] (linear), same shape out."""
    return albedo * irradiance(normals, gamma, ambient)
