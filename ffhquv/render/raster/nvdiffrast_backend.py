"""The nvdiffrast backend (CUDA only): a thin wrapper over ``nvdiffrast.torch``.

Package: ``diffrp-nvdiffrast`` (extra ``gpu`` of this project), module ``nvdiffrast.torch``. Its
CUDA plugin is JIT-compiled by ``torch.utils.cpp_extension`` on first use (needs nvcc and
ninja; about a minute or two, cached in the torch extensions folder afterwards). Recent torch no
longer leaves the built module importable by name, so the build directory is put on
``sys.path`` before nvdiffrast imports it. The first-use build is logged with its duration.

Semantics are those of :mod:`ffhquv.render.raster.base`; results are converted back to the
input dtype.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import torch
from torch import Tensor

from ffhquv.errors import InvalidInput, PreconditionFailed

log = logging.getLogger(__name__)

_PLUGIN = "nvdiffrast_plugin"


def plugin_name(gl: bool = False) -> str:
    """The JIT module name nvdiffrast builds, e.g. ``nvdiffrast_plugin_0_3_3_1_torch2_11_0_cu130``
    (diffrp-nvdiffrast versions it by package and torch release; older builds use the bare
    ``nvdiffrast_plugin``). Its build directory must be on ``sys.path`` for the import to work."""
    import re

    try:
        import nvdiffrast

        version = getattr(nvdiffrast, "__version__", None)
    except ImportError:  # pragma: no cover
        version = None
    if not version:
        return _PLUGIN + ("_gl" if gl else "")
    name = f"{_PLUGIN}_{version}_torch{torch.__version__}" + ("_gl" if gl else "")
    return re.sub(r"\W|^(?=\d)", "_", name)
_LOCK = threading.Lock()
_READY = False


def load_nvdiffrast():
    """Import ``nvdiffrast.torch`` and make sure its CUDA plugin is built and loaded.

    Returns:
        The ``nvdiffrast.torch`` module.
    Raises:
        PreconditionFailed: without CUDA, or when the package is missing or fails to build.
    """
    global _READY
    if not torch.cuda.is_available():
        raise PreconditionFailed("nvdiffrast needs CUDA, but torch.cuda.is_available() is False")
    try:
        import nvdiffrast.torch as dr
    except ImportError as err:
        raise PreconditionFailed(
            "nvdiffrast is not installed (pip install 'ffhquv[gpu]', package diffrp-nvdiffrast)"
        ) from err
    with _LOCK:
        if _READY:
            return dr
        import torch.utils.cpp_extension as ext

        plugin = plugin_name()
        build_dir = ext._get_build_directory(plugin, False)
        if build_dir not in sys.path:
            sys.path.insert(0, build_dir)
        try:
            from nvdiffrast.torch import ops
        except ImportError:  # pragma: no cover - layout of other nvdiffrast releases
            ops = None
        built = os.path.exists(os.path.join(build_dir, plugin + ".so"))
        # a first build takes minutes: say so at warning level so it is visible by default
        say = log.info if built else log.warning
        say("%s the nvdiffrast CUDA plugin in %s", "loading" if built else
            "compiling (first use, takes a few minutes)", build_dir)
        t0 = time.perf_counter()
        try:
            if ops is not None and hasattr(ops, "_get_plugin"):
                ops._get_plugin(gl=False)
            else:  # pragma: no cover
                dr.RasterizeCudaContext()
        except Exception as err:  # noqa: BLE001 - compiler / loader errors of any type
            raise PreconditionFailed(f"building/loading the nvdiffrast plugin failed: {err}"
                                     ) from err
        say("nvdiffrast CUDA plugin %s in %.1f s", "loaded" if built else "compiled",
            time.perf_counter() - t0)
        _READY = True
    return dr


class _AttachRast(torch.autograd.Function):
    """Identity on ``rast`` whose backward is nvdiffrast's rasterisation gradient to ``pos``."""

    @staticmethod
    def forward(ctx, pos: Tensor, tri: Tensor, rast: Tensor, plugin) -> Tensor:
        ctx.save_for_backward(pos, tri, rast)
        ctx.plugin = plugin
        return rast.clone()

    @staticmethod
    def backward(ctx, dy: Tensor):
        pos, tri, rast = ctx.saved_tensors
        g_pos = ctx.plugin.rasterize_grad(pos, tri, rast, dy.contiguous())
        return g_pos, None, None, None


class NvdiffrastBackend:
    """:class:`~ffhquv.render.raster.base.RasterBackend` over ``nvdiffrast.torch``.

    Args:
        device: a CUDA device.
    """

    name = "nvdiffrast"
    capturable = True

    def __init__(self, device: str | torch.device = "cuda"):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise PreconditionFailed(f"nvdiffrast needs a CUDA device, got {self.device}")
        self.dr = load_nvdiffrast()
        self.ctx = self.dr.RasterizeCudaContext(device=self.device)
        self._topo: tuple[Tensor, Tensor] | None = None
        from nvdiffrast.torch import ops

        self._plugin = ops._get_plugin(gl=False)

    @staticmethod
    def _f32(x: Tensor) -> Tensor:
        return x.float().contiguous()

    def rasterize(self, pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
        if pos.dim() != 3 or pos.shape[-1] != 4:
            raise InvalidInput(f"pos must be [B, V, 4] clip coordinates, got {tuple(pos.shape)}")
        if tri.dim() != 2 or tri.shape[-1] != 3:
            raise InvalidInput(f"tri must be [T, 3], got {tuple(tri.shape)}")
        res = (int(resolution[0]), int(resolution[1]))
        if not torch.cuda.is_current_stream_capturing():
            # nvdiffrast reads its work counters back with a stream synchronisation made
            # holding the GIL (py-spy --gil, BENCHMARKS.md sixteenth session): wait for the
            # queued work here first, where torch lets the GIL go, so that the process's other
            # threads (gRPC, per-photo pools) run meanwhile; nvdiffrast's own wait is then
            # only for its rasterisation
            torch.cuda.current_stream(pos.device).synchronize()
        rast, _ = self.dr.rasterize(self.ctx, self._f32(pos), tri.int().contiguous(), res,
                                    grad_db=False)
        return rast.to(pos.dtype)

    def attach_rast(self, pos: Tensor, tri: Tensor, rast: Tensor) -> Tensor:
        if pos.dim() != 3 or pos.shape[-1] != 4 or rast.dim() != 4 or rast.shape[-1] != 4:
            raise InvalidInput(f"pos must be [B, V, 4] and rast [B, H, W, 4], got "
                               f"{tuple(pos.shape)} and {tuple(rast.shape)}")
        return _AttachRast.apply(self._f32(pos), tri.int().contiguous(), self._f32(rast),
                                 self._plugin).to(pos.dtype)

    def interpolate(self, attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
        if attr.dim() == 2:
            attr = attr[None]
        out, _ = self.dr.interpolate(self._f32(attr), self._f32(rast), tri.int().contiguous())
        return out.to(torch.promote_types(attr.dtype, rast.dtype))

    def texture(self, tex: Tensor, uv: Tensor) -> Tensor:
        if tex.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
            raise InvalidInput(f"tex must be [B, Ht, Wt, C] and uv [B, H, W, 2], got "
                               f"{tuple(tex.shape)} and {tuple(uv.shape)}")
        if tex.shape[0] not in (1, uv.shape[0]):
            raise InvalidInput(f"tex batch {tex.shape[0]} does not match uv batch {uv.shape[0]}")
        out = self.dr.texture(self._f32(tex), self._f32(uv), filter_mode="linear",
                              boundary_mode="clamp")
        return out.to(tex.dtype)

    def antialias(self, color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor) -> Tensor:
        tri32 = tri.int().contiguous()
        cached = self._topo
        # The topology hash is cached by tensor identity: comparing contents synchronises with
        # the host, which must not happen inside a CUDA-graph capture. A different object with
        # equal contents takes over the cache, so that its next call needs no comparison.
        if cached is None or cached[0] is not tri32:
            if (cached is None or cached[0].shape != tri32.shape
                    or not torch.equal(cached[0], tri32)):
                cached = (tri32, self.dr.antialias_construct_topology_hash(tri32))
            else:
                cached = (tri32, cached[1])
            self._topo = cached
        out = self.dr.antialias(self._f32(color), self._f32(rast), self._f32(pos), tri32,
                                topology_hash=cached[1])
        return out.to(color.dtype)
