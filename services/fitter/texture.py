"""Stage 2: the UV texture with the shape fixed (default path, no checkpoints).

Unwrap: every texel of the ``S x S`` atlas gets its 3D world position and normal from the
fitted mesh (:func:`services.fitter.render.uv_space_interpolate`), is projected into the
high-resolution aligned crop (``camera.scaled(S_hires)``) and sampled bilinearly. A texel is
trusted by

    weight = view-angle ramp (cosine between normal and direction to the camera, 0 below 0.3)
           x visibility (its camera depth is not behind the rendered depth)
           x photo face mask (parse skin / brows / nose / lips x skin probability, eroded)

The fitted SH shading is divided out to get albedo. Unseen texels are completed by (a) the
left/right mirror texel (a per-model, per-size lookup built once by a KD-tree between texel
positions on the mean shape and their x-mirrors) and (b) a shading-free skin-tone template
(the low frequencies of the seen skin, continued over the head and relaxing to its median
colour), joined by Laplacian-pyramid blending. The low frequencies are then made left/right
symmetric, so one-sided light that the SH model missed does not survive in the texture.

Everything low-frequency (the template, the symmetrisation) is computed on the mesh, not in
the atlas (:func:`mesh_lowpass`): the atlas cuts the head into islands, and a blur in UV would
print each cut as a colour step on the head. Within ``S / 64`` texels of a seam the photo
detail fades into those seam-free low frequencies (``UVMaps.seam_fade``).

Texture arrays follow the project convention: ``[S, S, 3]`` with row 0 = ``v = 1``.

Paper mode (StyleGAN2 texture decoder, latent search in W / W+) plugs in through
:class:`TextureSource`: a later issue adds a source that decodes a latent instead of
unwrapping; stage 3 only needs ``base_texture`` and ``coverage``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import cv2
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from services.fitter.camera import Camera, project, rigid_transform, rotate_normals
from services.fitter.facemodel.base import FaceModel
from services.fitter.facemodel.topology import edge_laplacian, screened_smooth, uv_seams
from services.fitter.sh import irradiance
from services.fitter.stage1 import sample_image

T = TypeVar("T")

# ParseLabel values of the detector's parse mask
PARSE_BG, PARSE_SKIN, PARSE_BROWS, PARSE_EYES, PARSE_NOSE, PARSE_LIPS, PARSE_MOUTH = range(7)
TEXTURE_LABELS = (PARSE_SKIN, PARSE_BROWS, PARSE_NOSE, PARSE_LIPS)
COS_MIN = 0.3


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


_UV_CACHE: dict[tuple, UVMaps] = {}
_UV_LOCK = threading.Lock()


def _model_key(model: FaceModel, size: int) -> tuple:
    return (model.name, model.n_vertices, int(model.tri.shape[0]), size, str(model.device),
            float(model.mean_shape.abs().sum()))


def uv_maps(model: FaceModel, size: int, backend) -> UVMaps:
    """The cached :class:`UVMaps` of ``model`` at ``size`` (built on first use)."""
    key = _model_key(model, size)
    with _UV_LOCK:
        if key in _UV_CACHE:
            return _UV_CACHE[key]
    from services.fitter.render import uv_rasterize
    from services.fitter.renderer import get_backend

    dev = model.device
    backend = backend or get_backend(dev)
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
                  to_texel=to_texel, to_vertex=to_texel.T.tocsr(),
                  footprint=np.asarray(to_texel.sum(0), np.float32).ravel(),
                  laplacian=edge_laplacian(mean_np, tri_np),
                  vertex_mirror=model.mirror.cpu().numpy().astype(np.int64),
                  texel_len=texel_len, seam_fade=seam_fade,
                  **_face_zones(model, pos.detach().cpu().numpy(), m.cpu().numpy()))
    with _UV_LOCK:
        _UV_CACHE[key] = maps
    return maps


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


def _face_zones(model: FaceModel, pos: np.ndarray, covered: np.ndarray) -> dict[str, np.ndarray]:
    """``forehead`` and ``central_face`` texel masks from the mean shape's landmarks."""
    lm = model.landmarks(model.mean_shape[None])[0].detach().cpu().numpy()
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    front = z > float(lm[:, 2].min())  # the face side of the head, not the back of the skull
    outer = float(np.abs(lm[[36, 45], 0]).mean())  # outer eye corners
    brows, eyes, mouth = (float(lm[i, 1].mean()) for i in (slice(17, 27), slice(36, 48),
                                                             [48, 54]))
    # above the brows, and the temples (beside the outer eye corners, above the eyes)
    forehead = covered & front & ((y > brows) | ((np.abs(x) > outer) & (y > eyes)))
    central = covered & front & (np.abs(x) < outer) & (y < eyes) & (y > mouth)
    return {"forehead": forehead, "central_face": central}


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
    foot = maps.footprint
    vals = num / np.maximum(den, 1e-9)[:, None]
    return vals, np.where(foot > 1e-9, den / np.maximum(foot, 1e-9), 0.0)


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
        img: ``[S, S, C]``; weight: ``[S, S]`` confidence (0 = no data).
        sigma: smoothing scale in texels of this atlas (converted with ``maps.texel_len``).
        prior: ``[C]`` value far from any data; reach: how far (texels) data carries.
    Returns:
        ``(texels float32 [S, S, C], vertex values [N, C])``.
    """
    vals, wv = to_vertices(maps, img, weight)
    # 1 / (1 + l^2 k^2) and exp(-sigma^2 k^2 / 2) agree to second order for l = sigma / sqrt 2
    length = sigma * maps.texel_len / math.sqrt(2.0)
    x = screened_smooth(maps.laplacian, vals, wv, length, prior=prior,
                        reach=None if reach is None else reach * maps.texel_len)
    return to_texels(maps, x), x


def seam_texel_pairs(maps: UVMaps) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of texels on the two sides of the atlas's seams.

    Covered texels within about ``S / 256`` of a seam that lie within 6 face texels of each
    other on the mean-shape head but at least ``S / 40`` texels apart in the atlas.

    Returns:
        ``(a [P], b [P])`` flat texel indices.
    """
    s = maps.size
    near = maps.mask.cpu().numpy() & (maps.seam_fade < 0.25)
    idx = np.flatnonzero(near.reshape(-1))
    pos = maps.pos_mean.reshape(-1, 3).cpu().numpy()[idx]
    rows, cols = np.divmod(idx, s)
    pairs = cKDTree(pos).query_pairs(r=6 * maps.texel_len, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    apart = np.hypot(rows[pairs[:, 0]] - rows[pairs[:, 1]], cols[pairs[:, 0]] - cols[pairs[:, 1]])
    pairs = pairs[apart >= max(s / 40, 3)]
    return idx[pairs[:, 0]], idx[pairs[:, 1]]


def seam_step(texture: np.ndarray, maps: UVMaps) -> float:
    """Mean absolute colour step across the atlas's seams (:func:`seam_texel_pairs`), in the
    units of ``texture`` (``[S, S, 3]``; 1/255 steps for ``uint8``); NaN without seams."""
    a, b = seam_texel_pairs(maps)
    if len(a) == 0:
        return float("nan")
    flat = texture.reshape(-1, texture.shape[-1]).astype(np.float64)
    return float(np.abs(flat[a] - flat[b]).mean())


def photo_face_mask(parse: Tensor, skin: Tensor, photo: Tensor | None = None,
                    landmarks: Tensor | None = None, erode_px: int = 2) -> Tensor:
    """Soft mask of the photo pixels that may go into the texture.

    Args:
        parse: ``[B, H, W]`` uint8 ParseLabel map.
        skin: ``[B, H, W]`` uint8 skin probability 0..255.
        photo: optional ``[B, H, W, 3]`` crop in [0, 1]; with ``landmarks`` it enables the
            colour-consistency test of :func:`skin_colour_weight` (drops hair strands, beard
            stubble, glasses frames and deep shadows that the masks let through).
        landmarks: optional ``[B, 68, 2]`` crop landmarks (pixels).
        erode_px: pixels removed along the mask border (silhouette colours mix background).
    Returns:
        ``[B, H, W, 1]`` float in [0, 1]: labels skin / brows / nose / lips; for the skin label
        times a ramp of the skin probability (0 at 0.5, 1 at 0.8; hair scores about 0.5) and
        the colour-consistency weight (brows and lips are not skin-coloured); eroded.
    """
    lab = parse.long()
    ok = torch.zeros_like(lab, dtype=torch.float32)
    for v in TEXTURE_LABELS:
        ok = ok + (lab == v).float()
    sk = skin.float() / 255.0
    skin_w = ((sk - 0.5) / 0.3).clamp(0.0, 1.0)
    if photo is not None and landmarks is not None:
        skin_w = skin_w * skin_colour_weight(photo, (lab == PARSE_SKIN) & (sk > 0.8), landmarks)
    soft = torch.where(lab == PARSE_SKIN, skin_w, torch.ones_like(sk))
    # erode the face region at its outline (silhouette / hair line: colours mix there) and by
    # one pixel along the eyes and the mouth opening, but not along the inner label borders
    # (lips, brows and skin next to each other are all valid texture)
    region = ok[:, None]
    if erode_px > 0:
        region = -F.max_pool2d(-region, 2 * erode_px + 1, stride=1, padding=erode_px)
    holes = ((lab == PARSE_EYES) | (lab == PARSE_MOUTH)).float()[:, None]
    holes = F.max_pool2d(holes, 3, stride=1, padding=1)
    m = region * (1 - holes) * soft[:, None]
    return m.permute(0, 2, 3, 1).contiguous()


def _ycbcr(rgb: Tensor) -> Tensor:
    r, g, b = rgb.unbind(-1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.564 * (b - y), 0.713 * (r - y)], -1)


def skin_colour_weight(photo: Tensor, skin: Tensor, landmarks: Tensor) -> Tensor:
    """Per-pixel consistency with the photo's own skin colour.

    A robust colour model (median and MAD in Y Cb Cr) is taken from the skin pixels of the
    central face (between the outer eye corners, from the eyes down to the mouth corners,
    which hair rarely covers); pixels whose chroma is far from it, or that are much darker, get
    weight 0. Luma above the median is tolerated (highlights are explained by the shading).

    Args:
        photo: ``[B, H, W, 3]`` in [0, 1].
        skin: ``[B, H, W]`` bool, confident skin pixels.
        landmarks: ``[B, 68, 2]`` pixels.
    Returns:
        ``[B, H, W]`` float in [0, 1].
    """
    b, h, w, _ = photo.shape
    ycc = _ycbcr(photo)
    yy, xx = torch.meshgrid(torch.arange(h, device=photo.device),
                            torch.arange(w, device=photo.device), indexing="ij")
    out = torch.ones(b, h, w, device=photo.device)
    for i in range(b):
        lm = landmarks[i]
        x0, x1 = float(lm[36, 0]), float(lm[45, 0])
        y0 = float(lm[36:48, 1].mean())
        y1 = float(lm[[48, 54], 1].mean())
        ref = skin[i] & (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        if int(ref.sum()) < 50:
            continue
        v = ycc[i][ref]  # [P, 3]
        med = v.median(0).values
        mad = (v - med).abs().median(0).values * 1.4826 + torch.tensor(
            [0.02, 0.006, 0.006], device=photo.device)
        d = (ycc[i] - med) / mad
        dark = (-d[..., 0]).clamp(min=0) / 5.0  # shading darkens skin: tolerate ~5x more
        dist = torch.sqrt(d[..., 1] ** 2 + d[..., 2] ** 2 + dark**2)
        out[i] = ((3.0 - dist) / 1.0).clamp(0, 1)
    return out


@dataclass
class UnwrapResult:
    """Per-photo unwrap (batched).

    Attributes:
        albedo: ``[B, S, S, 3]`` photo colour / shading (0 where unseen).
        weight: ``[B, S, S]`` confidence in [0, 1] (0 = unseen).
        color: ``[B, S, S, 3]`` raw sampled photo colour (shaded).
    """

    albedo: Tensor
    weight: Tensor
    color: Tensor


def unwrap(model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor, face_mask: Tensor,
           maps: UVMaps, backend, cam: Camera, depth_size: int = 512) -> UnwrapResult:
    """Sample the high-resolution crop into UV through the fitted geometry.

    Args:
        model: the face model.
        coeffs: ``id, exp, angles, trans, gamma`` ``[B, ...]``.
        crop_hires: ``[B, Sh, Sh, 3]`` float in [0, 1], same alignment as the 224 crop.
        face_mask: ``[B, 224, 224, 1]`` from :func:`photo_face_mask` (on ``cam``'s raster).
        maps: UV maps of the target size.
        backend: rasteriser backend.
        cam: the 224 fitting camera.
        depth_size: raster side of the visibility depth render.
    Returns:
        :class:`UnwrapResult` at ``maps.size``.
    """
    from services.fitter.render import MeshRenderer, uv_space_interpolate

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
    out = MeshRenderer(dcam, backend).render(world, model.tri, size=depth_size, antialias=False)
    depth = _depth_of(out, world, model.tri, dcam, backend)
    d_here = cam.distance - pos[..., 2]
    d_map = sample_image(depth, project(pos, dcam), mode="bilinear")[..., 0]
    d_min = -F.max_pool2d(-torch.where(depth > 0, depth, torch.full_like(depth, 1e3)).permute(
        0, 3, 1, 2), 3, stride=1, padding=1).permute(0, 2, 3, 1)
    d_map = torch.minimum(d_map, sample_image(d_min, project(pos, dcam), mode="nearest")[..., 0])
    tol = 0.01 * cam.distance
    w = w * ((d_map > 0) & (d_here <= d_map + tol)).float()
    # photo mask and colours
    pm = sample_image(face_mask, project(pos, cam), mode="bilinear")[..., 0]
    hcam = cam.scaled(crop_hires.shape[1])
    hp = project(pos, hcam)
    inside = ((hp >= 0) & (hp <= crop_hires.shape[1] - 1)).all(-1).float()
    w = w * pm * inside * maps.mask.reshape(1, -1).float()
    color = sample_image(crop_hires, hp)
    shading = irradiance(n, coeffs["gamma"]).clamp(min=0.1)
    albedo = (color / shading).clamp(0, 1)
    w = w.reshape(b, s, s)
    albedo = albedo.reshape(b, s, s, 3) * (w[..., None] > 0)
    return UnwrapResult(albedo=albedo, weight=w, color=color.reshape(b, s, s, 3))


def _depth_of(out, world: Tensor, tri: Tensor, cam: Camera, backend) -> Tensor:
    """``[B, H, W, 1]`` camera depth ``d`` (0 where empty) of a render output."""
    d = getattr(out, "depth", None)
    if d is not None:
        return d if d.dim() == 4 else d[..., None]
    from services.fitter.camera import to_camera

    dcam = to_camera(world, cam)[..., 2:3]
    return backend.interpolate(dcam, out.rast, tri)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT)


def normalized_blur(img: np.ndarray, w: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Gaussian smoothing that ignores weight-0 texels.

    Args:
        img: ``float32 [S, S, C]``; w: ``float32 [S, S]``.
    Returns:
        smoothed ``[S, S, C]`` and the smoothed weight ``[S, S]``.
    """
    # downsample first: large sigmas on 1024 maps are slow
    s = img.shape[0]
    f = max(1, int(sigma // 4))
    if f > 1:
        small = cv2.resize(img * w[..., None], (s // f, s // f), interpolation=cv2.INTER_AREA)
        ws = cv2.resize(w, (s // f, s // f), interpolation=cv2.INTER_AREA)
        num = _blur(small, sigma / f)
        den = _blur(ws, sigma / f)
        num = cv2.resize(num, (s, s), interpolation=cv2.INTER_LINEAR)
        den = cv2.resize(den, (s, s), interpolation=cv2.INTER_LINEAR)
    else:
        num = _blur(img * w[..., None], sigma)
        den = _blur(w, sigma)
    if num.ndim == 2:
        num = num[..., None]
    return num / np.maximum(den, 1e-6)[..., None], den


def laplacian_blend(a: np.ndarray, b: np.ndarray, mask: np.ndarray, levels: int = 6) -> np.ndarray:
    """Laplacian-pyramid blend ``mask * a + (1 - mask) * b`` (Burt & Adelson).

    Args:
        a, b: ``float32 [S, S, C]``; mask: ``float32 [S, S]`` in [0, 1].
    Returns:
        ``float32 [S, S, C]``.
    """
    ga, gb, gm = [a], [b], [mask]
    for _ in range(levels):
        ga.append(cv2.pyrDown(ga[-1]))
        gb.append(cv2.pyrDown(gb[-1]))
        gm.append(cv2.pyrDown(gm[-1]))
    out = gm[-1][..., None] * ga[-1] + (1 - gm[-1][..., None]) * gb[-1]
    for lv in range(levels - 1, -1, -1):
        size = (ga[lv].shape[1], ga[lv].shape[0])
        la = ga[lv] - cv2.pyrUp(ga[lv + 1], dstsize=size)
        lb = gb[lv] - cv2.pyrUp(gb[lv + 1], dstsize=size)
        m = gm[lv][..., None]
        out = cv2.pyrUp(out, dstsize=size) + m * la + (1 - m) * lb
    return out


@dataclass
class CompletedTexture:
    """A hole-free albedo texture and what it was made from.

    Attributes:
        texture: ``float32 [S, S, 3]`` in [0, 1], row 0 = ``v = 1``.
        observed: ``float32 [S, S]`` own-view confidence.
        combined: ``float32 [S, S]`` confidence after mirroring.
        skin_color: ``[3]`` mean visible skin albedo.
    """

    texture: np.ndarray
    observed: np.ndarray
    combined: np.ndarray
    skin_color: np.ndarray


def complete_texture(albedo: np.ndarray, weight: np.ndarray, maps: UVMaps,
                     symmetric_lowfreq: bool = True) -> CompletedTexture:
    """Fill the unseen texels of one unwrap: mirror, then skin template, pyramid-blended.

    Args:
        albedo: ``float32 [S, S, 3]`` unwrapped albedo (anything where ``weight == 0``).
        weight: ``float32 [S, S]`` confidence in [0, 1].
        maps: the :class:`UVMaps` of size S.
        symmetric_lowfreq: average the low frequencies with the mirror texels.
    Returns:
        :class:`CompletedTexture` (no zero / untouched texel anywhere in the atlas).
    """
    s = maps.size
    mask = maps.mask.cpu().numpy()
    mirror = maps.mirror.cpu().numpy()
    has_m = maps.has_mirror.cpu().numpy().reshape(-1)
    skin_uv = maps.skin.cpu().numpy()
    w = (weight * mask).astype(np.float32)
    a = albedo.astype(np.float32)
    w = w * hair_weight(a, w, maps)
    # shadows only darken: where the mirror texel is seen and clearly brighter at low
    # frequency (a cast / attached shadow the SH light cannot explain), trust the mirror
    low, _ = normalized_blur(a, w, sigma=max(1.0, s / 128))
    lum = low.mean(-1).reshape(-1)
    wf0 = w.reshape(-1)
    ratio = lum / np.maximum(lum[mirror], 1e-3)
    shade_ok = np.clip((ratio - 0.65) / 0.25, 0, 1)
    use = has_m & (wf0[mirror] > 0.3) & (wf0 > 0)
    w = np.where(use, wf0 * shade_ok, wf0).reshape(s, s).astype(np.float32)
    # (a) mirror
    wf, af = w.reshape(-1), a.reshape(-1, 3)
    wm = np.where(has_m, wf[mirror], 0.0)
    am = af[mirror]
    w_tot = wf + (1 - wf) * wm
    comb = (wf[:, None] * af + ((1 - wf) * wm)[:, None] * am) / np.maximum(w_tot, 1e-6)[:, None]
    comb = comb.reshape(s, s, 3).astype(np.float32)
    w_tot = w_tot.reshape(s, s).astype(np.float32)
    # thin gaps (mask borders around brows, lips, eyes) from their neighbours, push-pull like
    for sigma in (s / 512, s / 128):
        local, den = normalized_blur(comb, w_tot, sigma=max(sigma, 1.0))
        sup = np.clip(den / 0.4, 0, 1) * mask
        comb = (w_tot[..., None] * comb + (1 - w_tot[..., None]) * sup[..., None] * local)
        comb = comb / np.maximum(w_tot + (1 - w_tot) * sup, 1e-6)[..., None]
        w_tot = np.maximum(w_tot, 0.9 * sup).astype(np.float32)
    # (b) skin template: mean visible skin albedo + its low-frequency variation
    sw = w_tot * (skin_uv > 0.5)
    if sw.sum() < 1:
        sw = w_tot
    good = sw > 0.5
    if good.sum() >= 20:
        skin_color = np.median(comb[good], axis=0)  # robust to brows, lips, stray hair
    elif sw.sum() >= 1:
        skin_color = (comb * sw[..., None]).sum((0, 1)) / sw.sum()
    else:
        skin_color = np.array([0.78, 0.6, 0.5], np.float32)
    # on the surface, so that it is continuous across the atlas's seams; it continues the
    # seen skin's colour smoothly over the head and relaxes to the median skin colour
    template, _ = mesh_lowpass(maps, comb, sw, sigma=s / 24, prior=skin_color, reach=s / 4)
    template = _pad_outside(template, mask)
    # texels near a seam take the template: the photo detail on one side of a seam has no
    # counterpart on the other
    fade = maps.seam_fade
    w_tot = (w_tot * fade).astype(np.float32)
    w = (w * fade).astype(np.float32)
    # where nothing (or only a thin band) was seen keep the template; soft, slightly eroded mask
    m = np.clip((w_tot - 0.05) / 0.45, 0, 1).astype(np.float32)
    m = cv2.erode(m, np.ones((3, 3), np.uint8))
    # the photo's detail fades in over S / 128 texels from where it ends (hair line, jaw,
    # silhouette), not at once: a detail edge there reads as a drawn outline
    inside = cv2.distanceTransform((m > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    m = np.minimum(m, np.clip(inside / max(s / 128, 1.0), 0, 1)).astype(np.float32)
    m = _blur(m, max(1.0, s / 512))
    filled = np.where(w_tot[..., None] > 1e-3, comb, template).astype(np.float32)
    levels = int(math.log2(s)) - 3
    tex = laplacian_blend(filled, template, m, levels=max(levels, 1))
    # the coarse pyramid bands reach across the gaps between islands: pin the seams
    tex = template + fade[..., None] * (tex - template)
    if symmetric_lowfreq:
        tex = symmetrize_lowfreq(tex, maps, sigma=s / 16)
    tex = np.clip(tex, 1.0 / 255, 1.0)
    return CompletedTexture(texture=tex.astype(np.float32), observed=w, combined=w_tot,
                            skin_color=np.asarray(skin_color, np.float32))


def _pad_outside(tex: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill the texels outside the atlas from their nearest covered texel (bilinear and
    mip-mapped lookups at island borders read them)."""
    if mask.all() or not mask.any():
        return tex
    _, lab = cv2.distanceTransformWithLabels((~mask).astype(np.uint8), cv2.DIST_L2, 5,
                                             labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(mask)
    src = np.zeros(int(lab.max()) + 1, np.int64)
    src[lab[ys, xs]] = ys * mask.shape[1] + xs
    flat = tex.reshape(-1, tex.shape[-1])
    return flat[src[lab.reshape(-1)]].reshape(tex.shape)


def spread_offsets(offsets: np.ndarray, gate: np.ndarray, maps: UVMaps) -> np.ndarray:
    """Stage-3 texel offsets, with their low frequencies carried smoothly past the gate.

    Stage 3 changes the texels the photo showed (``offsets`` already multiplied by the
    own-view ``gate``). A broad change there (a brightened forehead, say) would end in a
    visible edge where the gate ends; its low frequencies are therefore continued over the
    surface beyond the gate, relaxing to 0 over ``S / 8`` texels (:func:`mesh_lowpass`), and
    only the detail stops at the gate. At the seams only the seam-free low part is kept.

    Args:
        offsets: ``float32 [S, S, 3]`` gated offsets; gate: ``float32 [S, S]`` in [0, 1].
        maps: UV maps of size S.
    Returns:
        ``float32 [S, S, 3]`` offsets to add to the stage-2 texture.
    """
    s = maps.size
    g = np.clip(gate, 0, 1).astype(np.float32)
    raw = offsets / np.maximum(g, 1e-3)[..., None]
    low, _ = mesh_lowpass(maps, raw, g, sigma=s / 24, prior=np.zeros(offsets.shape[-1]),
                          reach=s / 8)
    fade = maps.seam_fade[..., None]
    out = fade * offsets + (1 - fade * g[..., None]) * low
    return (out * maps.mask.cpu().numpy()[..., None]).astype(np.float32)


HAIR_RATIO = (0.7, 0.85)


def hair_weight(albedo: np.ndarray, weight: np.ndarray, maps: UVMaps) -> np.ndarray:
    """Down-weight hair over the forehead and temples: skin texels there whose de-shaded
    luma is well below that of the central face's skin.

    The photo masks let through fringes and strands of hair whose colour is close to skin;
    once the fitted shading is divided out they are much darker than the skin albedo (0.3 to
    0.8 of it), while shading that the light model explains is gone. (Blond strands lighter
    than the skin are left to the photo-space colour test, :func:`skin_colour_weight`.)
    Brows (not skin in the model) and the lower face (stubble) are left alone.

    Args:
        albedo: ``float32 [S, S, 3]``; weight: ``float32 [S, S]`` own-view confidence.
        maps: UV maps of size S.
    Returns:
        ``float32 [S, S]`` in [0, 1]: 0 below ``HAIR_RATIO[0]`` of the skin luma, 1 above
        ``HAIR_RATIO[1]``, 1 outside the forehead.
    """
    lum = albedo @ np.array([0.299, 0.587, 0.114], np.float32)
    skin = maps.skin.cpu().numpy() > 0.5
    ref = skin & maps.central_face & (weight > 0.5)
    if ref.sum() < 50:
        return np.ones_like(weight)
    ratio = lum / max(float(np.median(lum[ref])), 1e-3)
    lo, hi = HAIR_RATIO
    w = np.clip((ratio - lo) / (hi - lo), 0, 1)
    return np.where(skin & maps.forehead, w, 1.0).astype(np.float32)


def per_photo(fn: Callable[[int], T], n: int) -> list[T]:
    """``[fn(0), ..., fn(n - 1)]``, on a thread pool when ``n > 1``.

    The per-photo texture work is numpy / OpenCV on the host (they release the GIL): in a GPU
    batch it would otherwise run one photo after the other while the GPU waits.
    """
    if n <= 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(fn, range(n)))


def symmetrize_lowfreq(tex: np.ndarray, maps: UVMaps, sigma: float) -> np.ndarray:
    """Replace the low frequencies of ``tex`` by the mean of theirs and their mirror's.

    Args:
        tex: ``float32 [S, S, 3]``.
        maps: UV maps of size S.
        sigma: scale (texels of this atlas, smoothed on the surface: :func:`mesh_lowpass`)
            separating low from high frequencies.
    Returns:
        ``float32 [S, S, 3]`` with left/right-symmetric shading-scale brightness, continuous
        across the atlas's seams.
    """
    mask = maps.mask.cpu().numpy().astype(np.float32)
    # on the vertices (seam-free, see mesh_lowpass): add half the mirror's difference; a
    # second pass removes what the first left (the low-pass of a per-vertex correction read
    # back from the texels is not exactly that correction)
    for _ in range(2):
        _, low_v = mesh_lowpass(maps, tex, mask, sigma)
        corr = 0.5 * (low_v[maps.vertex_mirror] - low_v)
        tex = tex + to_texels(maps, corr) * mask[..., None]
    return tex


def coverage(weight: np.ndarray, maps: UVMaps, threshold: float = 0.1) -> float:
    """Fraction of face-region texels seen in the photo (own view, not mirrored)."""
    face = maps.face.cpu().numpy() > 0.5
    if face.sum() == 0:
        return 0.0
    return float((weight[face] > threshold).mean())


class TextureSource(Protocol):
    """Where the stage-2 texture comes from (the hook for paper mode's StyleGAN2 decoder)."""

    name: str

    def texture(self, model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor,
                face_mask: Tensor, size: int) -> list[CompletedTexture]:
        """``B`` hole-free albedo textures ``[S, S, 3]`` for the fitted geometry."""
        ...


class UnwrapTextureSource:
    """The default, checkpoint-free texture: unwrap + mirror + skin template."""

    name = "unwrap"

    def __init__(self, backend, cam: Camera, depth_size: int = 512):
        self.backend = backend
        self.cam = cam
        self.depth_size = depth_size

    def texture(self, model: FaceModel, coeffs: dict[str, Tensor], crop_hires: Tensor,
                face_mask: Tensor, size: int) -> list[CompletedTexture]:
        maps = uv_maps(model, size, self.backend)
        un = unwrap(model, coeffs, crop_hires, face_mask, maps, self.backend, self.cam,
                    self.depth_size)
        alb = un.albedo.detach().cpu().numpy()
        wt = un.weight.detach().cpu().numpy()
        return per_photo(lambda i: complete_texture(alb[i], wt[i], maps), alb.shape[0])
