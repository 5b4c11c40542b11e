"""The UV atlas of one face model at one size: per-texel maps, built once and cached.

:func:`uv_maps` rasterises the model's UV layout at ``S x S`` and gives each texel its
mean-shape position, skin / face-region weights and its left/right mirror texel (a per-model,
per-size lookup built once by a KD-tree between texel positions on the mean shape and their
x-mirrors), the sparse texel <-> vertex matrices that the surface low-pass
(:mod:`.lowpass`) uses, the forehead / central-face zones, and the seam fade: within
``S / 64`` texels of a seam the photo detail fades into the seam-free low frequencies
(``UVMaps.seam_fade``). :func:`seam_texel_pairs` / :func:`seam_step` measure the colour step
left across the seams.

Texture arrays follow the project convention: ``[S, S, 3]`` with row 0 = ``v = 1``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph  # noqa: F401  (sp.csgraph)
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from ffhquv.config import cache_dir
from ffhquv.diskcache import load_arrays, save_arrays
from services.fitter.facemodel import topology
from services.fitter.facemodel.base import FaceModel
from services.fitter.facemodel.topology import edge_laplacian, uv_seams

log = logging.getLogger(__name__)


@dataclass
class UVMaps:
    """Per-(model, size) texel maps, built once and cached.

    Attributes:
        size: atlas side S.
        mask: ``[S, S]`` bool, texels covered by a UV triangle.
        pos_mean: ``[S, S, 3]`` model-space position of each texel on the mean shape.
        skin: ``[S, S]`` float, the model's skin-vertex mask interpolated into UV.
        face: ``[S, S]`` float, the model's face region (vertices of ``face_tri_mask``).
        mirror: ``[S * S]`` long flat index of each texel's left/right mirror texel (its own
            index where none is found, e.g. outside the atlas).
        has_mirror: ``[S, S]`` bool.

    Host-side (numpy / scipy) maps between texels and mesh vertices, for the low-frequency
    work that must not see the atlas's seams (:func:`mesh_lowpass`):

        to_texel: ``[S * S, N]`` sparse float32, each covered texel's barycentric weights on
            the three vertices of its triangle (``to_texel @ x`` interpolates per-vertex ``x``).
        to_vertex: ``[N, S * S]`` its transpose (gathers texels onto vertices).
        footprint: ``[N]`` row sums of ``to_vertex`` (0 for vertices that cover no texel).
        laplacian: ``[N, N]`` :func:`~services.fitter.facemodel.topology.edge_laplacian` of the
            mean shape.
        vertex_mirror: ``[N]`` the model's left/right vertex map.
        texel_len: model-space length of one texel in the face region (texel sigmas ->
            lengths on the surface).
        seam_fade: ``[S, S]`` float32, 0 on the UV seams, rising to 1 at ``S / 64`` texels
            from them: texel colours that differ from the seam-free low frequencies are faded
            out there, so the two sides of a seam carry the same colour.
        forehead: ``[S, S]`` bool, texels above the brows (mean-shape landmarks 17-26) and
            the temples (beside the outer eye corners, above the eyes), on the face side.
        central_face: ``[S, S]`` bool, texels between the outer eye corners and from the eyes
            down to the mouth corners (where hair rarely covers the skin).
        under_chin: ``[S, S]`` bool, covered texels below the chin's point (landmark 8): the
            jaw's underside and the neck, which a photo sees past the jaw's silhouette if at all.
        beard_zone: ``[S, S]`` float32 in [0, 1], where a full beard grows on the mean shape
            (:func:`beard_zone`); beard_part: ``[S, S]`` int8, its parts (:class:`BeardPart`).
        hair_zone: ``[S, S]`` float32 in [0, 1], where a head of hair grows on the mean shape
            (:func:`head_zones`): 1 on the scalp behind a typical hairline, 0 on the face,
            ears and neck, a soft band between.
        hair_zone_long: the same for long hair: also down behind the ears and over the back
            of the neck.
        head_centre: ``[3]`` float64 model-space centre of the skull (eye height, ear depth),
            the pole of the hair strands' directions.
        iod: the mean shape's inter-ocular distance (outer eye corners, landmarks 36 / 45) in
            model units: photo pixels measured in it map onto the head.
        derived: what the texture code derives from these maps once and keeps with them
            (the low-pass's device operators and mask weights, ``pad_outside``'s index, the
            hair's head angles and strand noise: :func:`derived_arrays`), keyed by its user.
        disk_key: the key of these maps in the disk cache (:func:`_disk_key`); ``""`` for
            maps made elsewhere (then :func:`derived_arrays` keeps its arrays in memory only).
    """

    size: int
    mask: Tensor
    pos_mean: Tensor
    skin: Tensor
    face: Tensor
    mirror: Tensor
    has_mirror: Tensor
    to_texel: sp.csr_matrix
    to_vertex: sp.csr_matrix
    footprint: np.ndarray
    laplacian: sp.csr_matrix
    vertex_mirror: np.ndarray
    texel_len: float
    seam_fade: np.ndarray
    forehead: np.ndarray
    central_face: np.ndarray
    under_chin: np.ndarray
    beard_zone: np.ndarray
    beard_part: np.ndarray
    hair_zone: np.ndarray
    hair_zone_long: np.ndarray
    head_centre: np.ndarray
    iod: float = 1.0
    derived: dict = field(default_factory=dict, repr=False, compare=False)
    disk_key: str = field(default="", repr=False, compare=False)


@dataclass
class AtlasTensors:
    """The per-texel maps of a :class:`UVMaps` that the texture completion reads, as tensors
    on one device (:func:`atlas_tensors`).

    Attributes:
        mask: ``float32 [S, S]``, 1 on covered texels; skin: ``float32 [S, S]``;
        seam_fade: ``float32 [S, S]``; forehead, central_face: ``bool [S, S]``;
        mirror: ``int64 [S * S]``; has_mirror: ``bool [S * S]``.
    """

    mask: Tensor
    skin: Tensor
    seam_fade: Tensor
    forehead: Tensor
    central_face: Tensor
    mirror: Tensor
    has_mirror: Tensor


_TENSORS_LOCK = threading.Lock()


def atlas_tensors(maps: UVMaps, device: torch.device | str) -> AtlasTensors:
    """The :class:`AtlasTensors` of ``maps`` on ``device``, made once (kept in
    ``maps.derived``)."""
    dev = torch.device(device)
    key = ("tensors", str(dev))
    with _TENSORS_LOCK:
        hit = maps.derived.get(key)
        if hit is None:
            def put(x, dtype):
                return torch.as_tensor(x, dtype=dtype).to(dev)

            hit = maps.derived[key] = AtlasTensors(
                mask=put(maps.mask, torch.float32), skin=put(maps.skin, torch.float32),
                seam_fade=put(maps.seam_fade, torch.float32),
                forehead=put(maps.forehead, torch.bool),
                central_face=put(maps.central_face, torch.bool),
                mirror=put(maps.mirror, torch.int64).reshape(-1),
                has_mirror=put(maps.has_mirror, torch.bool).reshape(-1))
    return hit


def host_array(maps: UVMaps, name: str) -> np.ndarray:
    """A read-only host (numpy) copy of the tensor field ``name`` of ``maps`` (``"mask"``,
    ``"face"``, ``"pos_mean"``, ...), made once and kept in ``maps.derived``: on a GPU each
    ``.cpu()`` of an atlas map was a fresh pageable copy of up to 12 MB a photo."""
    key = ("host", name)
    with _TENSORS_LOCK:
        hit = maps.derived.get(key)
        if hit is None:
            hit = np.array(getattr(maps, name).detach().cpu().numpy())
            hit.flags.writeable = False
            maps.derived[key] = hit
    return hit


# spare_rect: the free rectangle is looked for on a SPARE_GRID x SPARE_GRID grid of the atlas,
# SPARE_MARGIN of the side away from every island (bilinear and mip-mapped lookups at the
# islands' borders read past them), each of its sides at least SPARE_MIN of the atlas's
SPARE_GRID = 64
SPARE_MARGIN = 1 / 64
SPARE_MIN = 1 / 8


def spare_rect(maps: UVMaps) -> tuple[int, int, int, int] | None:
    """The largest rectangle of the atlas that no UV island covers: texels that the head's
    triangles never read, where the texture can hold what is not on the head (the long hair's
    curtain, :class:`~services.fitter.texture.hair.CurtainStrip`).

    Returns:
        ``(r0, r1, c0, c1)``: texel rows ``r0:r1`` and columns ``c0:c1`` of ``maps``'s atlas,
        at least ``SPARE_MARGIN * S`` texels from every covered texel, each side at least
        ``SPARE_MIN * S``; None when the atlas has no such room. Found once per atlas (kept
        in ``maps.derived``).
    """
    key = ("spare-rect",)
    if key in maps.derived:
        return maps.derived[key]
    s = maps.size
    mask = host_array(maps, "mask").astype(np.uint8)
    k = 2 * max(1, round(SPARE_MARGIN * s)) + 1
    near = cv2.dilate(mask, np.ones((k, k), np.uint8))
    g = SPARE_GRID
    cell = s / g
    # a grid cell is free when none of its texels is near an island
    edges = np.round(np.arange(g + 1) * cell).astype(np.int64)
    busy = np.add.reduceat(np.add.reduceat(near.astype(np.int64), edges[:-1], 0),
                           edges[:-1], 1) > 0
    free = ~busy
    least = max(1, math.ceil(SPARE_MIN * g))
    best, area = None, 0
    for r0 in range(g):
        cols = np.ones(g, bool)
        for r1 in range(r0 + 1, g + 1):
            cols &= free[r1 - 1]
            if not cols.any():
                break
            if r1 - r0 < least:
                continue
            # the longest run of columns free over rows r0:r1
            padded = np.concatenate([[0], cols.astype(np.int8), [0]])
            d = np.diff(padded)
            starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
            j = int(np.argmax(ends - starts))
            w = int(ends[j] - starts[j])
            if w >= least and w * (r1 - r0) > area:
                area = w * (r1 - r0)
                best = (r0, r1, int(starts[j]), int(ends[j]))
    rect = None if best is None else tuple(int(edges[x]) for x in best)
    maps.derived[key] = rect
    return rect


_UV_CACHE: dict[tuple, UVMaps] = {}
_UV_LOCK = threading.Lock()


def _model_key(model: FaceModel, size: int) -> tuple:
    return (model.name, model.n_vertices, int(model.tri.shape[0]), size, str(model.device),
            float(model.mean_shape.abs().sum()))


def uv_maps(model: FaceModel, size: int, backend) -> UVMaps:
    """The cached :class:`UVMaps` of ``model`` at ``size``: from this process's cache, else
    from the disk cache (``<FFHQUV_CACHE_DIR>/atlas/``, :func:`_disk_key`), else built (most
    of a second at 1024) and saved there."""
    key = _model_key(model, size)
    with _UV_LOCK:
        if key in _UV_CACHE:
            return _UV_CACHE[key]
    from ffhquv.render.raster import get_backend

    backend = backend or get_backend(model.device)
    disk_key = _disk_key(model, size, backend)
    path = cache_dir() / "atlas" / f"{disk_key}.npz"
    maps = _load_maps(path, model, size)
    if maps is None:
        maps = _build_maps(model, size, backend)
        save_arrays(path, _maps_arrays(maps), "atlas")
    maps.disk_key = disk_key
    with _UV_LOCK:
        _UV_CACHE[key] = maps
    return maps


# UVMaps fields kept on disk as arrays (the others are derived again on load)
_SAVED_TENSORS = ("mask", "pos_mean", "skin", "face", "mirror", "has_mirror")
_SAVED_ARRAYS = ("seam_fade", "forehead", "central_face", "under_chin", "beard_zone",
                 "beard_part", "hair_zone", "hair_zone_long", "head_centre")


def _disk_key(model: FaceModel, size: int, backend) -> str:
    """What the maps are built from: the source of this module, the topology module, the UV
    rasterisation and the rasteriser (backends may differ in the last bit), the model's
    geometry, UV layout, landmarks, masks and mirror map, and the size."""
    from ffhquv.render import renderer

    h = hashlib.sha256()
    for f in (__file__, topology.__file__, renderer.__file__,
              sys.modules[type(backend).__module__].__file__):
        h.update(Path(f).read_bytes())
    for t in (model.mean_shape, model.tri, model.uv, model.uv_tri, model.lmk_tri_vertices,
              model.lmk_bary, model.face_tri_mask, model.skin_mask, model.mirror):
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(f"{model.name}|{size}|{type(backend).__name__}".encode())
    return h.hexdigest()[:32]


def _maps_arrays(maps: UVMaps) -> dict[str, np.ndarray]:
    """What of ``maps`` is saved (the rest is derived again on load)."""
    arrays = {k: getattr(maps, k).detach().cpu().numpy() for k in _SAVED_TENSORS}
    arrays.update({k: np.asarray(getattr(maps, k)) for k in _SAVED_ARRAYS})
    t = maps.to_texel
    arrays.update(texel_data=t.data, texel_indices=t.indices, texel_indptr=t.indptr,
                  texel_shape=np.asarray(t.shape), texel_len=np.float64(maps.texel_len),
                  iod=np.float64(maps.iod))
    return arrays


def derived_arrays(maps: UVMaps, name: str, build, code: tuple[str, ...] = ()
                   ) -> tuple[np.ndarray, ...]:
    """``build()``'s arrays, made once per atlas (they depend on the model and the size, not on
    a photo): from ``maps.derived``, else from the disk cache beside the atlas (keyed by the
    atlas, ``name`` and the source files ``code`` that build them), else built and saved.

    Args:
        maps: the atlas; ``maps.disk_key == ""`` keeps the arrays in memory only.
        name: what they are (a file-name part, unique among the atlas's users).
        build: ``() -> tuple[np.ndarray, ...]``.
        code: paths of the modules whose source decides the arrays (e.g. ``__file__``).
    Returns:
        The arrays, read-only.
    """
    hit = maps.derived.get(("arrays", name))
    if hit is not None:
        return hit
    arrays = None
    path = None
    if maps.disk_key:
        h = hashlib.sha256()
        for f in code:
            h.update(Path(f).read_bytes())
        path = cache_dir() / "atlas" / f"{maps.disk_key}-{name}-{h.hexdigest()[:16]}.npz"
        z = load_arrays(path, "atlas")
        arrays = None if z is None else tuple(z[f"a{i}"] for i in range(len(z)))
    if arrays is None:
        arrays = tuple(np.asarray(a) for a in build())
        if path is not None:
            save_arrays(path, {f"a{i}": a for i, a in enumerate(arrays)}, "atlas")
    for a in arrays:
        a.flags.writeable = False
    maps.derived[("arrays", name)] = arrays
    return arrays


def _load_maps(path: Path, model: FaceModel, size: int) -> UVMaps | None:
    """The maps saved at ``path``, or None when there are none or they cannot be read (then
    they are built again and the file replaced)."""
    a = load_arrays(path, "atlas")
    if a is None:
        return None
    try:
        dev = model.device
        to_texel = sp.csr_matrix((a["texel_data"], a["texel_indices"], a["texel_indptr"]),
                                 shape=tuple(int(x) for x in a["texel_shape"]))
        if to_texel.shape != (size * size, model.n_vertices):
            raise ValueError(f"to_texel shape {to_texel.shape}")
        tensors = {k: torch.from_numpy(a[k]).to(dev) for k in _SAVED_TENSORS}
    except (ValueError, KeyError) as e:
        log.warning("atlas cache unreadable, building again",
                    extra={"path": str(path), "error": str(e)})
        return None
    return UVMaps(size=size, **tensors, **_vertex_maps(model, to_texel),
                  texel_len=float(a["texel_len"]), iod=float(a["iod"]),
                  **{k: a[k] for k in _SAVED_ARRAYS})


def _vertex_maps(model: FaceModel, to_texel: sp.csr_matrix) -> dict:
    """The :class:`UVMaps` fields derived from the texel matrix and the model (built and
    loaded maps alike): ``to_texel``, ``to_vertex``, ``footprint``, ``laplacian``,
    ``vertex_mirror``."""
    return {"to_texel": to_texel, "to_vertex": to_texel.T.tocsr(),
            "footprint": np.asarray(to_texel.sum(0), np.float32).ravel(),
            "laplacian": edge_laplacian(
                model.mean_shape.detach().cpu().numpy().astype(np.float64),
                model.tri.cpu().numpy()),
            "vertex_mirror": model.mirror.cpu().numpy().astype(np.int64)}


def _build_maps(model: FaceModel, size: int, backend) -> UVMaps:
    from ffhquv.render.renderer import uv_rasterize

    dev = model.device
    face_v = torch.zeros(model.n_vertices, device=dev)
    face_v[model.tri[model.face_tri_mask].reshape(-1)] = 1.0
    attr = torch.cat([model.mean_shape, model.skin_mask.float()[:, None], face_v[:, None]], -1)
    rast = uv_rasterize(model.uv, model.uv_tri, size, backend)
    vals = backend.interpolate(attr[None].contiguous(), rast,
                               model.tri.to(torch.int32).contiguous())[0]
    m = rast[0, ..., 3] > 0
    pos = vals[..., :3]
    to_texel = _texel_matrix(rast[0].detach().cpu().numpy(), model.tri.cpu().numpy(),
                             model.n_vertices)
    tri_np = model.tri.cpu().numpy()
    mean_np = model.mean_shape.detach().cpu().numpy().astype(np.float64)
    texel_len = _texel_length(mean_np, tri_np, model.uv.cpu().numpy().astype(np.float64),
                              model.uv_tri.cpu().numpy(), model.face_tri_mask.cpu().numpy(),
                              size)
    seam_fade = _seam_fade(model.uv.cpu().numpy(),
                           uv_seams(tri_np, model.uv_tri.cpu().numpy()), size)
    zones = head_zones(model)
    # mirror lookup on the mean shape: nearest covered texel to (-x, y, z)
    flat = pos.reshape(-1, 3).detach().cpu().numpy()
    covered = m.reshape(-1).cpu().numpy()
    idx = np.where(covered)[0]
    tree = cKDTree(flat[idx])
    q = flat[idx] * np.array([-1.0, 1.0, 1.0])
    extent = float(np.ptp(flat[idx], axis=0).max()) if len(idx) else 1.0
    dist, nn = tree.query(q, k=1, distance_upper_bound=0.02 * extent, workers=1)
    found = np.isfinite(dist)
    mirror = np.arange(size * size)
    mirror[idx[found]] = idx[nn[found]]
    has = np.zeros(size * size, bool)
    has[idx[found]] = True
    maps = UVMaps(size=size, mask=m, pos_mean=pos, skin=vals[..., 3] * m, face=vals[..., 4] * m,
                  mirror=torch.from_numpy(mirror).to(dev),
                  has_mirror=torch.from_numpy(has.reshape(size, size)).to(dev),
                  **_vertex_maps(model, to_texel), texel_len=texel_len, seam_fade=seam_fade,
                  hair_zone=np.asarray(to_texel @ zones["hair"], np.float32).reshape(size, size),
                  hair_zone_long=_long_hair_zone(flat, to_texel, vals[..., 3], zones),
                  head_centre=zones["centre"], iod=float(zones["iod"]),
                  **_face_zones(model, pos.detach().cpu().numpy(), m.cpu().numpy()),
                  **beard_zone(model, pos.detach().cpu().numpy(), m.cpu().numpy(),
                               (vals[..., 3] * m).cpu().numpy()))
    return maps


def _long_hair_zone(pos: np.ndarray, to_texel: sp.csr_matrix, skin: Tensor,
                    zones: dict[str, np.ndarray]) -> np.ndarray:
    """:func:`hairline_zone` of the long line at each texel's own mean-shape position (its
    edge runs across the neck's large triangles: per vertex it would zigzag), times the skin
    and not the ears. ``pos``: ``[S*S, 3]``; returns ``float32 [S, S]``."""
    size = skin.shape[-1]
    skin_np = skin.detach().cpu().numpy()
    p = pos.astype(np.float64)
    ear = np.asarray(to_texel @ zones["ear"]).reshape(size, size)
    z = hairline_zone(p, zones["frame"], long=True)
    # around the ears (their hollows are not in the ear zone) the short line holds: hair falls
    # behind the ear, not into it (only texels where the two lines differ are looked up)
    ears = zones["ear_points"]
    short = hairline_zone(p, zones["frame"])
    sel = np.flatnonzero((z - short > 1e-4) & (skin_np.reshape(-1) > 0))
    if len(ears) and len(sel):
        h = float(zones["frame"][1])
        d, _ = cKDTree(ears).query(p[sel], k=1, workers=1)
        w = np.clip((d - 0.1 * h) / (0.1 * h), 0, 1)
        z[sel] = w * z[sel] + (1 - w) * short[sel]
    return (z.reshape(size, size) * skin_np * (1 - ear)).astype(np.float32)


def _texel_matrix(rast: np.ndarray, tri: np.ndarray, n: int) -> sp.csr_matrix:
    """``[S * S, N]`` sparse barycentric weights from a UV rasterisation ``[S, S, 4]``."""
    flat = rast.reshape(-1, 4)
    pix = np.nonzero(flat[:, 3] > 0)[0]
    vid = tri[flat[pix, 3].astype(np.int64) - 1]  # [P, 3]
    b0, b1 = flat[pix, 0], flat[pix, 1]
    bary = np.stack([b0, b1, 1.0 - b0 - b1], 1)
    rows = np.repeat(pix, 3)
    return sp.csr_matrix((bary.reshape(-1).astype(np.float32), (rows, vid.reshape(-1))),
                         shape=(flat.shape[0], n))


# the forehead zone starts this fraction of the eye-to-brow height above the brows' landmarks
# (and the temples this fraction of the outer eye corners' half-width beside them)
BROW_MARGIN = 0.3


def _face_zones(model: FaceModel, pos: np.ndarray, covered: np.ndarray) -> dict[str, np.ndarray]:
    """``forehead``, ``central_face`` and ``under_chin`` texel masks from the mean shape's
    landmarks."""
    lm = model.landmarks(model.mean_shape[None])[0].detach().cpu().numpy()
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    front = z > float(lm[:, 2].min())  # the face side of the head, not the back of the skull
    outer = float(np.abs(lm[[36, 45], 0]).mean())  # outer eye corners
    brows, eyes, mouth = (float(lm[i, 1].mean()) for i in (slice(17, 27), slice(36, 48),
                                                             [48, 54]))
    # above the brows, and the temples (beside the outer eye corners, above the eyes); with a
    # margin over the brows' landmarks, which run along their middle: the upper half of a
    # bushy brow is brow, not hair over the forehead
    over = BROW_MARGIN * (brows - eyes)
    forehead = covered & front & ((y > brows + over)
                                  | ((np.abs(x) > (1 + BROW_MARGIN) * outer) & (y > eyes)))
    central = covered & front & (np.abs(x) < outer) & (y < eyes) & (y > mouth)
    return {"forehead": forehead, "central_face": central,
            "under_chin": covered & (y < float(lm[8, 1]))}


class BeardPart(IntEnum):
    """The parts of :func:`beard_zone` (``UVMaps.beard_part``)."""

    NONE = 0
    CHIN = 1  # between the mouth corners, from the lower lip to the chin's point
    SIDE_NEG = 2  # the jaw's side toward -x, up to the sideburn
    SIDE_POS = 3  # ... toward +x
    REST = 4  # the moustache, the cheeks beside the mouth and the chin's underside


# beard_zone: the upper edge (brow-to-chin heights h below the landmarks named), its softness,
# the neckline (a line in the profile: BEARD_UNDER below the chin's point at its depth, BEARD_JAW
# below the jaw's landmarks 4 and 12 at the ears' depth), how far behind the ears' depth and
# over what width it thins out before the ears' landmarks; the lips' margin
# (texels at 1024: their rims are not beard)
BEARD_TOP = 0.02
BEARD_SOFT = 0.06
BEARD_UNDER = 0.5
BEARD_JAW = 0.12
BEARD_BACK = 0.02
BEARD_EAR = 0.12
BEARD_LIPS = 12


def beard_zone(model: FaceModel, pos: np.ndarray, covered: np.ndarray, skin: np.ndarray
               ) -> dict[str, np.ndarray]:
    """Where a full beard grows on the mean shape, from its landmarks: ``beard_zone``
    (``float32 [S, S]`` in [0, 1]) and ``beard_part`` (``int8 [S, S]``, :class:`BeardPart`).

    Below a line from under the nose (landmark 33) across the mouth's width, rising over the
    cheeks (half-way to the jaw's landmark 2 at the outer eye corners) to the sideburn at the
    ear (landmark 1's height); down the chin and under it to a neckline that rises from
    :data:`BEARD_UNDER` brow-to-chin heights below the chin's point (at its depth) to
    :data:`BEARD_JAW` below the jaw's landmarks 4 and 12 (at the ears' depth); ahead of the
    ears' depth, thinning out before them (:data:`BEARD_EAR`); on the
    model's skin (``skin`` ``[S, S]``) at least :data:`BEARD_LIPS` texels (at 1024) from the
    lips. ``pos``: ``[S, S, 3]`` mean-shape
    positions of the texels (model frame: y up, face toward +z); ``covered``: ``[S, S]`` the
    texels inside the UV islands.
    """
    lm = model.landmarks(model.mean_shape[None])[0].detach().cpu().numpy().astype(np.float64)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    size = pos.shape[0]
    brow, chin = float(lm[17:27, 1].mean()), float(lm[8, 1])
    h = max(brow - chin, 1e-6)
    zc = float(lm[[0, 16], 2].mean())
    x_ear = float(np.abs(lm[[0, 16], 0]).mean())
    mouth = float(np.abs(lm[[48, 54], 0]).mean())
    outer = float(np.abs(lm[[36, 45], 0]).mean())
    nose = float(lm[33, 1]) - BEARD_TOP * h
    top = np.interp(np.abs(x), [0.0, mouth, outer, x_ear],
                    [nose, nose, 0.5 * (nose + float(lm[[2, 14], 1].mean())),
                     float(lm[[1, 15], 1].mean())])

    def step(t: np.ndarray) -> np.ndarray:
        t = np.clip(t, 0.0, 1.0)
        return t * t * (3 - 2 * t)

    # off the lips (and the islands' other holes), not off the islands' borders
    k = max(3, int(round(BEARD_LIPS * size / 1024)) * 2 + 1)
    holes = ((covered > 0.5) & (skin <= 0.5)).astype(np.uint8)
    on_skin = (skin > 0.5) & (cv2.dilate(holes, np.ones((k, k), np.uint8)) == 0)
    soft = BEARD_SOFT * h
    # the neckline rises from under the chin to below the jaw's angle (a level cut at the
    # chin's height took in the neck's sides under the ears: a square patch in profile)
    z_chin = float(lm[8, 2])
    y_under, y_jaw = chin - BEARD_UNDER * h, float(lm[[4, 12], 1].mean()) - BEARD_JAW * h
    slope = (y_jaw - y_under) / min(zc - z_chin, -1e-6)
    above_neck = (y - (y_under + slope * (z - z_chin))) / np.hypot(1.0, slope)
    # thinning out toward the ears (a painted beard cut off at the face's UV island read
    # as a patch)
    zone = (step((top - y) / soft) * step(above_neck / soft)
            * step((z - (zc - BEARD_BACK * h)) / soft)
            * step((x_ear - np.abs(x)) / (BEARD_EAR * h)) * on_skin).astype(np.float32)
    part = np.where(zone > 0.5, int(BeardPart.REST), int(BeardPart.NONE)).astype(np.int8)
    front = z > float(lm[8, 2]) - BEARD_SOFT * h  # the chin's face, not its underside
    part[(zone > 0.5) & (np.abs(x) < mouth) & (y < float(lm[57, 1])) & (y > chin) & front] = \
        BeardPart.CHIN
    sides = (zone > 0.5) & (np.abs(x) > 1.2 * mouth) & (y < float(lm[[48, 54], 1].mean()))
    part[sides & (x < 0)] = BeardPart.SIDE_NEG
    part[sides & (x > 0)] = BeardPart.SIDE_POS
    return {"beard_zone": zone, "beard_part": part}


def _texel_length(v: np.ndarray, tri: np.ndarray, uv: np.ndarray, uv_tri: np.ndarray,
                  face: np.ndarray, size: int) -> float:
    """Model-space length of one texel in the face region (the atlas gives the face more
    texels per unit area than the scalp; the texel sigmas of this module are face texels)."""
    area = 0.5 * np.linalg.norm(np.cross(v[tri[:, 1]] - v[tri[:, 0]],
                                         v[tri[:, 2]] - v[tri[:, 0]]), axis=1)
    e1, e2 = uv[uv_tri[:, 1]] - uv[uv_tri[:, 0]], uv[uv_tri[:, 2]] - uv[uv_tri[:, 0]]
    uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) * size * size
    sel = face if face.any() else np.ones_like(face)
    return float(np.sqrt(area[sel].sum() / max(uv_area[sel].sum(), 1e-12)))


def _seam_fade(uv: np.ndarray, seams: np.ndarray, size: int) -> np.ndarray:
    """``[S, S]`` float32: 0 on the seam edges drawn into the atlas, 1 from ``S / 64`` away."""
    lines = np.full((size, size), 255, np.uint8)
    px = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], 1)
    for a, b in seams.reshape(-1, 2):
        p0 = tuple(int(round(c)) for c in px[a])
        p1 = tuple(int(round(c)) for c in px[b])
        cv2.line(lines, p0, p1, 0, thickness=1)
    dist = cv2.distanceTransform(lines, cv2.DIST_L2, 5)
    ramp = np.clip(dist / max(size / 64.0, 1.0), 0, 1)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def seam_texel_pairs(maps: UVMaps) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of texels on the two sides of the atlas's seams.

    Covered texels within about ``S / 256`` of a seam that lie within 6 face texels of each
    other on the mean-shape head but at least ``S / 40`` texels apart in the atlas.

    Returns:
        ``(a [P], b [P])`` flat texel indices, read-only, found once per atlas
        (:func:`derived_arrays`).
    """
    def build() -> tuple[np.ndarray, np.ndarray]:
        s = maps.size
        near = host_array(maps, "mask") & (maps.seam_fade < 0.25)
        idx = np.flatnonzero(near.reshape(-1))
        pos = host_array(maps, "pos_mean").reshape(-1, 3)[idx]
        rows, cols = np.divmod(idx, s)
        pairs = cKDTree(pos).query_pairs(r=6 * maps.texel_len, output_type="ndarray")
        if len(pairs) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        apart = np.hypot(rows[pairs[:, 0]] - rows[pairs[:, 1]],
                         cols[pairs[:, 0]] - cols[pairs[:, 1]])
        pairs = pairs[apart >= max(s / 40, 3)]
        return idx[pairs[:, 0]], idx[pairs[:, 1]]

    return derived_arrays(maps, "seam-pairs", build, (__file__,))


def seam_step(texture: np.ndarray, maps: UVMaps) -> float:
    """Mean absolute colour step across the atlas's seams (:func:`seam_texel_pairs`), in the
    units of ``texture`` (``[S, S, 3]``; 1/255 steps for ``uint8``); NaN without seams."""
    a, b = seam_texel_pairs(maps)
    if len(a) == 0:
        return float("nan")
    flat = texture.reshape(-1, texture.shape[-1]).astype(np.float64)
    return float(np.abs(flat[a] - flat[b]).mean())


# hairline height above the brows, in brow-to-chin heights, by the angle around the vertical
# axis from the front (0) to the back (pi): forehead, temples, above the ears, behind the ears,
# the nape. A typical adult hairline; the photo decides where it is seen (texture.hair).
_HAIRLINE_ANGLE = (0.0, 0.6, 1.1, 1.5, 1.9, 2.4, math.pi)
_HAIRLINE_HEIGHT = (0.45, 0.42, 0.3, 0.05, -0.05, -0.45, -0.6)
# long hair (``hair_stats["long_hair"]``): the same line over the face and temples, then down
# behind the ears to below the jaw and over the whole back of the neck (hair that hangs there,
# on a head mesh without hair geometry)
_LONG_HAIRLINE_ANGLE = (0.0, 0.6, 1.1, 1.5, 1.8, 1.95, math.pi)
_LONG_HAIRLINE_HEIGHT = (0.45, 0.42, 0.3, 0.05, -0.05, -1.4, -1.4)


def _largest_per_side(sel: np.ndarray, tri: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sel`` (bool ``[N]``) reduced to its largest edge-connected piece on each side of
    ``x = 0``: a skull vertex beside the ear box's edge that passes the box test alone is not
    an ear (it would leave a skin-coloured speck in the hair)."""
    idx = np.nonzero(sel)[0]
    if len(idx) == 0:
        return sel
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    e = e[sel[e[:, 0]] & sel[e[:, 1]]]
    n = len(sel)
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, comp = sp.csgraph.connected_components(adj, directed=False)
    out = np.zeros_like(sel)
    for side in (x[idx] < 0, x[idx] >= 0):
        if side.any():
            c = comp[idx[side]]
            out[idx[side][c == np.bincount(c).argmax()]] = True
    return out


def hairline_zone(points: np.ndarray, frame: np.ndarray, long: bool = False) -> np.ndarray:
    """1 above the hairline, 0 below, a ``0.08 h`` smoothstep between.

    Args:
        points: ``float [N, 3]`` model-frame positions on the mean shape (vertices, texels).
        frame: ``[3]`` brow height, brow-to-chin height ``h`` and ear depth
            (``head_zones(...)["frame"]``).
        long: the long-hair line (:data:`_LONG_HAIRLINE_HEIGHT`) instead of the short one.
    Returns:
        ``float64 [N]`` in [0, 1].
    """
    brow, h, zc = (float(f) for f in frame)
    angle = np.abs(np.arctan2(points[:, 0], points[:, 2] - zc))
    table = (_LONG_HAIRLINE_ANGLE, _LONG_HAIRLINE_HEIGHT) if long else (_HAIRLINE_ANGLE,
                                                                       _HAIRLINE_HEIGHT)
    line = brow + h * np.interp(angle, *table)
    t = np.clip((points[:, 1] - line) / (0.08 * h) + 0.5, 0, 1)
    return t * t * (3 - 2 * t)


def head_zones(model: FaceModel) -> dict[str, np.ndarray]:
    """Per-vertex zones of the head on the mean shape, from its 68 landmarks.

    Works for any head topology in the model frame (y up, face toward +z): heights are
    measured in brow-to-chin heights ``h`` from the brows (landmarks 17-26), depths from the
    ears' landmarks 0 / 16.

    Returns:
        ``hair``: ``float32 [N]`` in [0, 1], skin vertices above the hairline
        (:data:`_HAIRLINE_HEIGHT` by angle around the vertical axis, a ``0.08 h`` soft band);
        ``frame``: ``float64 [3]`` brow height, ``h`` and ear depth (:func:`hairline_zone`);
        ``ear_points``: ``float64 [E, 3]`` the ear vertices;
        ``ear``: ``float32 [N]`` 0/1, beside the head between brow and nose-bottom heights;
        ``neck``: ``float32 [N]`` in [0, 1], below the chin in front and below the mouth at
        the back and sides; ``centre``: ``float64 [3]`` the skull centre (eye height, ear
        depth); ``iod``: the outer eye corners' distance.
    """
    v = model.mean_shape.detach().cpu().numpy().astype(np.float64)
    lm = model.landmarks(model.mean_shape[None])[0].detach().cpu().numpy().astype(np.float64)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    brow, chin = float(lm[17:27, 1].mean()), float(lm[8, 1])
    h = max(brow - chin, 1e-6)
    zc = float(lm[[0, 16], 2].mean())
    angle = np.abs(np.arctan2(x, z - zc))
    frame = np.array([brow, h, zc])
    x_ear = float(np.abs(lm[[0, 16], 0]).mean())
    ear = ((np.abs(x) > x_ear + 0.015 * h) & (y < brow + 0.1 * h)
           & (y > float(lm[33, 1]) - 0.25 * h) & (np.abs(z - zc) < 0.45 * h))
    ear = _largest_per_side(ear, model.tri.detach().cpu().numpy(), x)
    neck = np.clip((chin + 0.05 * h - y) / (0.1 * h), 0, 1) * (z < float(lm[8, 2]) - 0.05 * h)
    neck = np.maximum(neck, np.clip((float(lm[57, 1]) - y) / (0.1 * h), 0, 1) * (angle > 1.2))
    skin = model.skin_mask.detach().cpu().numpy().astype(np.float64)
    return {"hair": (hairline_zone(v, frame) * skin * ~ear).astype(np.float32), "frame": frame,
            "ear_points": v[ear],
            "ear": ear.astype(np.float32), "neck": (neck * ~ear).astype(np.float32),
            "centre": np.array([0.0, float(lm[36:48, 1].mean()), zc]),
            "iod": float(np.linalg.norm(lm[36] - lm[45]))}
