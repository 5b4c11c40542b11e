"""The rasteriser backend interface (nvdiffrast.torch semantics, one tensor per call).

Every backend (:mod:`.torch_backend` on any device, :mod:`.nvdiffrast_backend` on CUDA) follows
``nvdiffrast.torch`` so they can be swapped:

* **clip space**: ``pos [B, V, 4]`` homogeneous ``(x, y, z, w)``; ndc = ``xyz / w``.
* **pixels**: pixel (row ``i``, column ``j``) of an ``H x W`` raster has its centre at ndc
  ``((j + 0.5) / W * 2 - 1, (i + 0.5) / H * 2 - 1)``: row 0 is ndc ``y = -1``. The fitting camera
  (:mod:`ffhquv.render.camera`) maps the top of the photo to ndc ``y = -1`` so rendered images
  have row 0 at the top like the photo.
* **rast** ``[B, H, W, 4]``: ``(u, v, z / w, triangle_id + 1)`` per pixel, all zero where no
  triangle covers the pixel centre. ``u, v`` are perspective-correct barycentrics: the surface
  point is ``u * p0 + v * p1 + (1 - u - v) * p2`` for the triangle's corners ``p0, p1, p2``.
  The nearest ``z / w`` wins; only fragments with ``-1 <= z / w <= 1`` are drawn.
* **texture coordinates** (``texture``): nvdiffrast's, ``(0, 0)`` is the outer corner of the first
  texel in memory, ``u`` runs along the width and ``v`` along the height (rows), texel centres at
  ``((j + 0.5) / Wt, (i + 0.5) / Ht)``. Converting OBJ uv (v up) happens only in
  :mod:`ffhquv.render.renderer`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class RasterBackend(Protocol):
    """A differentiable rasteriser. All methods take and return tensors on ``self.device``."""

    name: str
    #: True when interpolate / texture / antialias / attach_rast launch only device work of
    #: static shapes (no host synchronisation), so that a step using them can be recorded into
    #: a CUDA graph (:mod:`services.fitter.graphs`). ``rasterize`` itself never is.
    capturable: bool

    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        """Rasterise triangles.

        Args:
            pos: ``[B, V, 4]`` float clip coordinates.
            tri: ``[T, 3]`` int32 (or int64) vertex indices, shared by the batch.
            resolution: ``(H, W)``.
        Returns:
            ``[B, H, W, 4]`` float ``(u, v, z/w, triangle_id + 1)``, zeros where empty.
            Differentiable with respect to ``pos`` through ``u, v, z/w``.
        """
        ...

    def attach_rast(self, pos: Tensor, tri: Tensor, rast: Tensor) -> Tensor:
        """Give an existing rasterisation the gradients :meth:`rasterize` would have given it.

        For step loops that rasterise without autograd outside a captured CUDA graph and
        differentiate inside it (:mod:`services.fitter.graphs`): the returned tensor has the
        values of ``rast`` and back-propagates ``d rast[..., :2]`` (the barycentrics) into
        ``pos`` exactly as :meth:`rasterize` does. Must not synchronise with the host on CUDA.

        Args:
            pos: ``[B, V, 4]`` the clip coordinates ``rast`` was made from.
            tri: ``[T, 3]`` int32 triangles.
            rast: ``[B, H, W, 4]`` output of :meth:`rasterize` for ``pos`` / ``tri``.
        Returns:
            ``[B, H, W, 4]`` equal to ``rast``, differentiable with respect to ``pos``.
        """
        ...

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        """Interpolate per-vertex attributes with the barycentrics of ``rast``.

        Args:
            attr: ``[B, V, C]`` or ``[V, C]`` (or ``[1, V, C]``, broadcast over the batch).
            rast: ``[B, H, W, 4]`` from :meth:`rasterize`.
            tri: ``[T, 3]`` the triangles indexing ``attr`` (may differ from the rasterised
                ones as long as triangle ``k`` is the same face, e.g. UV-seam triangles).
        Returns:
            ``[B, H, W, C]``, zero where the pixel is empty. Differentiable in ``attr`` and
            ``rast``.
        """
        ...

    def texture(self, tex: Tensor, uv: Tensor) -> Tensor:
        """Bilinear texture lookup with clamp-to-edge boundary.

        Args:
            tex: ``[B, Ht, Wt, C]`` (or ``[1, Ht, Wt, C]``, broadcast).
            uv: ``[B, H, W, 2]`` nvdiffrast texture coordinates (see the module docstring).
        Returns:
            ``[B, H, W, C]``. Differentiable in ``tex`` and ``uv``.
        """
        ...

    def antialias(self, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor) -> Tensor:
        """Silhouette-edge antialiasing (gives gradients to ``pos`` at silhouettes).

        Args:
            color: ``[B, H, W, C]`` shaded image.
            rast: ``[B, H, W, 4]`` from :meth:`rasterize` with the same ``pos`` / ``tri``.
            pos: ``[B, V, 4]`` clip coordinates.
            tri: ``[T, 3]`` triangles.
        Returns:
            ``[B, H, W, C]`` antialiased colour.
        """
        ...
