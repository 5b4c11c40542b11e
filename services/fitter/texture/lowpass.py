"""Low frequencies of a texture, computed on the mesh surface instead of in the atlas.

Everything low-frequency (the skin template, the symmetrisation, the spread of the stage-3
offsets) is computed on the mesh, not in the atlas (:func:`mesh_lowpass`): the atlas cuts
the head into islands, and a blur in UV would print each cut as a colour step on the head.
The low frequencies are made left/right symmetric (:func:`symmetrize_lowfreq`), so one-sided
light that the SH model missed does not survive in the texture.

Where the atlas lives on a GPU (``maps.mask.is_cuda``: the fitter's device) the texel <->
vertex products, over every texel of the atlas, run there as torch sparse CSR products
(:class:`DeviceOps`), taking and returning numpy arrays as on the host, or tensors on that GPU
(the completion's, :mod:`~services.fitter.texture.completion`: they stay there; CPU tensors
take the host path without a copy); the surface solve,
on the mesh's few thousand vertices, stays on the host (scipy's ``splu``, a few milliseconds).
The symmetrisation's system depends on the atlas alone: factorised once for its two passes
(:func:`_mask_system`). Both paths agree to float32 rounding
(``tests/test_texture_seams.py``).
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from services.fitter.facemodel.topology import (
    ScreenedFactor,
    screened_factor,
    screened_smooth,
    screened_solve,
)
from services.fitter.texture.atlas import UVMaps, atlas_tensors, host_array
from services.fitter.texture.imageops import numpy_io


@dataclass
class DeviceOps:
    """One atlas's texel <-> vertex products on a torch device (built once per atlas and
    device, :func:`device_ops`).

    Attributes:
        to_texel: ``[S * S, N]`` sparse CSR float32; to_vertex: ``[N, S * S]`` its transpose.
        mask: ``[S * S]`` float32 (1 on covered texels).
    """

    to_texel: Tensor
    to_vertex: Tensor
    mask: Tensor


_LOCK = threading.Lock()


def _csr(m, device: torch.device) -> Tensor:
    m = m.tocsr()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": products are all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data.astype(np.float32)), size=m.shape,
            check_invariants=False).to(device)


def device_ops(maps: UVMaps, device: torch.device) -> DeviceOps:
    """The cached :class:`DeviceOps` of ``maps`` on ``device``."""
    key = ("lowpass_ops", str(device))
    with _LOCK:
        ops = maps.derived.get(key)
        if ops is None:
            ops = maps.derived[key] = DeviceOps(
                to_texel=_csr(maps.to_texel, device), to_vertex=_csr(maps.to_vertex, device),
                mask=atlas_tensors(maps, device).mask.reshape(-1))
    return ops


def ops_device(maps: UVMaps) -> torch.device | None:
    """Where this atlas's texel <-> vertex products run: its GPU, or None for the host."""
    return maps.mask.device if maps.mask.is_cuda else None


def _where(maps: UVMaps, x) -> torch.device | None:
    """Where the products on ``x`` run: a GPU tensor's device, else the atlas's
    (:func:`ops_device`; None: the host, numpy)."""
    if isinstance(x, Tensor) and x.is_cuda:
        return x.device
    return ops_device(maps)


def _length(maps: UVMaps, sigma: float) -> float:
    # 1 / (1 + l^2 k^2) and exp(-sigma^2 k^2 / 2) agree to second order for l = sigma / sqrt 2
    return sigma * maps.texel_len / math.sqrt(2.0)


def _mask_system(maps: UVMaps, sigma: float) -> tuple[np.ndarray, ScreenedFactor]:
    """``(den [N] float32, factor)`` of :func:`mesh_lowpass` weighted by the atlas's mask at
    ``sigma``: the texel weight gathered on each vertex (kept in ``maps.derived``) and the
    factorised surface system (made per call, for the two passes of
    :func:`symmetrize_lowfreq`: scipy's ``SuperLU`` kept from one call to the next left a
    process unable to flush stdout at exit, "TypeError: an integer is required", exit 120)."""
    key = ("lowpass_mask_weight", float(sigma))
    with _LOCK:
        den = maps.derived.get(key)
    if den is None:
        den = maps.to_vertex @ host_array(maps, "mask").astype(np.float32).reshape(-1)
        with _LOCK:
            maps.derived[key] = den
    return den, screened_factor(maps.laplacian, _vertex_weight(maps, den), _length(maps, sigma))


def _vertex_weight(maps: UVMaps, den: np.ndarray) -> np.ndarray:
    """``[N]`` mean texel weight around each vertex from the gathered weight ``den [N]`` (0
    for vertices that cover no texel)."""
    foot = maps.footprint
    return np.where(foot > 1e-9, den / np.maximum(foot, 1e-9), 0.0)


def _mean(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num [N, C] / den [N]``: the weighted mean of the gathered texels."""
    return num / np.maximum(den, 1e-9)[:, None]


def _up(a: np.ndarray | Tensor, dev: torch.device, s: int) -> Tensor:
    """``[S, S, ...]`` numpy or tensor -> ``[S * S, ...]`` float32 on ``dev``."""
    if isinstance(a, Tensor):
        return a.to(dev, torch.float32).reshape(s * s, *a.shape[2:])
    return torch.from_numpy(np.ascontiguousarray(a, np.float32).reshape(s * s, *a.shape[2:])
                            ).to(dev)


def _host(a):
    """A CPU tensor's numpy view (no copy); anything else as it is."""
    return a.detach().numpy() if isinstance(a, Tensor) else a


def to_vertices(maps: UVMaps, img: np.ndarray, weight: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Gather texels onto mesh vertices (the transpose of the barycentric interpolation).

    Args:
        maps: UV maps of size S.
        img: ``[S, S, C]``; weight: ``[S, S]`` >= 0.
    Returns:
        ``(values [N, C], vertex weight [N])``: the weighted mean of the texels around each
        vertex, and the mean texel weight there (0 for vertices that cover no texel).
    """
    s = maps.size
    w = np.asarray(weight, np.float32).reshape(s * s)
    num = maps.to_vertex @ (np.asarray(img, np.float32).reshape(s * s, -1) * w[:, None])
    den = maps.to_vertex @ w
    return _mean(num, den), _vertex_weight(maps, den)


def to_texels(maps: UVMaps, values: np.ndarray) -> np.ndarray:
    """``[N, C]`` per-vertex values -> ``float32 [S, S, C]`` (0 outside the atlas)."""
    s = maps.size
    return (maps.to_texel @ np.asarray(values, np.float32).reshape(values.shape[0], -1)
            ).reshape(s, s, -1)


def mesh_lowpass(maps: UVMaps, img: np.ndarray, weight: np.ndarray, sigma: float,
                 prior: np.ndarray | None = None, reach: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Low frequencies of a texture, computed on the surface instead of in the atlas.

    A Gaussian blur in UV mixes islands that touch in the atlas but not on the head, and
    stops at seams that are one surface on the head: its result jumps at every seam. This
    gathers the texels onto the vertices, smooths there (:func:`screened_smooth`) and
    interpolates back, so the result is continuous across seams.

    Args:
        maps: UV maps of size S.
        img: ``[S, S, C]``; weight: ``[S, S]`` confidence (0 = no data); numpy arrays, or
            tensors (on the atlas's GPU: computed there; CPU tensors: as numpy).
        sigma: smoothing scale in texels of this atlas (converted with ``maps.texel_len``).
        prior: ``[C]`` value far from any data; reach: how far (texels) data carries.
    Returns:
        ``(texels float32 [S, S, C], vertex values [N, C])``; the texels a tensor on
        ``img``'s device when ``img`` is a tensor.
    """
    dev = _where(maps, img)
    if dev is None and isinstance(img, Tensor):
        t, x = mesh_lowpass(maps, _host(img), _host(weight), sigma, prior=_host(prior),
                            reach=reach)
        return torch.from_numpy(t), x
    if isinstance(prior, Tensor):
        prior = prior.detach().cpu().numpy()
    if dev is not None:
        s, ops = maps.size, device_ops(maps, dev)
        w_t = _up(weight, dev, s)
        num = ops.to_vertex @ (_up(img, dev, s).reshape(s * s, -1) * w_t[:, None])
        den = (ops.to_vertex @ w_t[:, None])[:, 0].cpu().numpy()
        vals, wv = _mean(num.cpu().numpy(), den), _vertex_weight(maps, den)
    else:
        vals, wv = to_vertices(maps, img, weight)
    x = screened_smooth(maps.laplacian, vals, wv, _length(maps, sigma), prior=prior,
                        reach=None if reach is None else reach * maps.texel_len)
    if dev is not None:
        t = (ops.to_texel @ torch.from_numpy(x.astype(np.float32)).to(dev)).reshape(s, s, -1)
        return (t.to(img.device) if isinstance(img, Tensor) else t.cpu().numpy()), x
    return to_texels(maps, x), x


def symmetrize_lowfreq(tex: np.ndarray, maps: UVMaps, sigma: float) -> np.ndarray:
    """Replace the low frequencies of ``tex`` by the mean of theirs and their mirror's.

    Args:
        tex: ``float32 [S, S, 3]``, numpy or a tensor (as :func:`mesh_lowpass`).
        maps: UV maps of size S.
        sigma: scale (texels of this atlas, smoothed on the surface: :func:`mesh_lowpass`)
            separating low from high frequencies.
    Returns:
        ``float32 [S, S, 3]`` with left/right-symmetric shading-scale brightness, continuous
        across the atlas's seams (of ``tex``'s type and device).
    """
    dev = _where(maps, tex)
    if dev is None and isinstance(tex, Tensor):
        return torch.from_numpy(np.ascontiguousarray(
            symmetrize_lowfreq(_host(tex), maps, sigma), np.float32))
    # on the vertices (seam-free, see mesh_lowpass): add half the mirror's difference; a
    # second pass removes what the first left (the low-pass of a per-vertex correction read
    # back from the texels is not exactly that correction). The weight is the atlas's mask:
    # its system is the atlas's (_mask_system), only the data changes
    s, n = maps.size, maps.laplacian.shape[0]
    den, system = _mask_system(maps, sigma)
    if dev is not None:
        ops = device_ops(maps, dev)
        t = _up(tex, dev, s)
        for _ in range(2):
            num = (ops.to_vertex @ (t * ops.mask[:, None])).cpu().numpy()
            low_v = screened_solve(system, _mean(num, den))
            corr = 0.5 * (low_v[maps.vertex_mirror] - low_v)
            t = t + (ops.to_texel @ torch.from_numpy(corr.astype(np.float32)).to(dev)
                     ) * ops.mask[:, None]
        t = t.reshape(tex.shape)
        return t.to(tex.device) if isinstance(tex, Tensor) else t.cpu().numpy()
    mask = host_array(maps, "mask").astype(np.float32)
    for _ in range(2):
        num = maps.to_vertex @ (np.asarray(tex, np.float32).reshape(s * s, -1)
                                * mask.reshape(-1)[:, None])
        low_v = screened_solve(system, _mean(num, den)).reshape(n, -1)
        corr = 0.5 * (low_v[maps.vertex_mirror] - low_v)
        tex = tex + to_texels(maps, corr) * mask[..., None]
    return tex


@numpy_io
def spread_offsets(offsets: Tensor, gate: Tensor, maps: UVMaps) -> Tensor:
    """Stage-3 texel offsets, with their low frequencies carried smoothly past the gate.

    Stage 3 changes the texels the photo showed (``offsets`` already multiplied by the
    own-view ``gate``). A broad change there (a brightened forehead, say) would end in a
    visible edge where the gate ends; its low frequencies are therefore continued over the
    surface beyond the gate, relaxing to 0 over ``S / 8`` texels (:func:`mesh_lowpass`), and
    only the detail stops at the gate. At the seams only the seam-free low part is kept.

    Args:
        offsets: ``float32 [S, S, 3]`` gated offsets; gate: ``float32 [S, S]`` in [0, 1]
            (tensors, on the atlas's GPU or the host, or numpy).
        maps: UV maps of size S.
    Returns:
        ``float32 [S, S, 3]`` offsets to add to the stage-2 texture (of ``offsets``'s type
        and device).
    """
    s = maps.size
    at = atlas_tensors(maps, offsets.device)
    g = gate.clamp(0, 1).to(torch.float32)
    raw = offsets / g.clamp(min=1e-3)[..., None]
    low, _ = mesh_lowpass(maps, raw, g, sigma=s / 24, prior=np.zeros(offsets.shape[-1]),
                          reach=s / 8)
    fade = at.seam_fade[..., None]
    out = fade * offsets + (1 - fade * g[..., None]) * low
    return (out * at.mask[..., None]).to(torch.float32)
