"""Rasteriser backends behind one interface (:class:`RasterBackend`, nvdiffrast.torch semantics).

``get_backend("cpu")`` is the pure-torch rasteriser; ``get_backend("cuda")`` is nvdiffrast when
``nvdiffrast.torch`` (package ``diffrp-nvdiffrast``) imports and its CUDA plugin builds, else the
torch rasteriser on CUDA tensors with a logged warning saying why.
"""

from __future__ import annotations

import logging

import torch

from ffhquv.errors import InvalidInput, PreconditionFailed
from ffhquv.render.raster.base import RasterBackend
from ffhquv.render.raster.torch_backend import TorchRasterizer

log = logging.getLogger(__name__)

__all__ = ["RasterBackend", "TorchRasterizer", "get_backend"]

_CACHE: dict[tuple[str, str], RasterBackend] = {}


def get_backend(device: str | torch.device = "cpu", prefer: str = "auto") -> RasterBackend:
    """The rasteriser for ``device``.

    Args:
        device: where the tensors live (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        prefer: ``"auto"`` (nvdiffrast on CUDA when available, else torch), ``"torch"``, or
            ``"nvdiffrast"`` (raises :class:`PreconditionFailed` when it cannot be used).
    Returns:
        A :class:`RasterBackend` (cached per device and preference).
    """
    dev = torch.device(device)
    if prefer not in ("auto", "torch", "nvdiffrast"):
        raise InvalidInput(f"prefer must be 'auto', 'torch' or 'nvdiffrast', got {prefer!r}")
    ck = (str(dev), prefer)
    if ck in _CACHE:
        return _CACHE[ck]
    backend: RasterBackend
    if prefer == "torch" or (prefer == "auto" and dev.type != "cuda"):
        backend = TorchRasterizer(dev)
    else:
        if dev.type != "cuda":
            raise PreconditionFailed(f"the nvdiffrast backend needs a CUDA device, got {dev}")
        try:
            from ffhquv.render.raster.nvdiffrast_backend import NvdiffrastBackend

            backend = NvdiffrastBackend(dev)
        except Exception as err:  # noqa: BLE001 - any import/build failure means fallback
            if prefer == "nvdiffrast":
                raise PreconditionFailed(f"nvdiffrast backend unavailable: {err}") from err
            log.warning("nvdiffrast unavailable on %s (%s: %s); using the torch rasteriser",
                        dev, type(err).__name__, err)
            backend = TorchRasterizer(dev)
    _CACHE[ck] = backend
    return backend
