"""Preview renders of the textured head with its eyeballs (front, 3/4, profile, turntable GIF).

Rendering uses the project's renderer (:func:`ffhquv.render.renderer.render_preview`) with the
shared camera of :mod:`ffhquv.render.camera` (at distance 10 looking down -z), its focal length
chosen so the whole head fills ~85 % of the frame. Head and eyeballs are rasterised together
in one mesh (one depth test) with their two textures packed side by side in one atlas: the
head texture on the left half, the eyeball texture (resized) on the right half; each part's
``u`` is squeezed into its half.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ffhquv.mesh import MeshData
from ffhquv.render.camera import Camera
from ffhquv.render.renderer import PreviewOptions, Surface, render_preview

VIEWS_DEG = (0.0, 35.0, 90.0)  # front, 3/4, profile; positive turns the face to the image right


def combine(parts: list[tuple[MeshData, np.ndarray]], max_side: int | None = None
            ) -> tuple[MeshData, np.ndarray]:
    """Concatenate textured meshes into one mesh with one texture atlas.

    Args:
        parts: ``(mesh, texture uint8 [H, W, 3])`` pairs; every mesh has UVs.
        max_side: optional cap on each texture's side in the atlas.
    Returns:
        ``(mesh, atlas)``: the atlas is the textures, each resized to the first one's height
        (capped by ``max_side``) as a square, side by side in equal-width columns ``k / K``;
        UVs are remapped to ``u' = (k + u) / K`` with ``u`` clamped to [0, 1] (``v`` unchanged,
        so row 0 is still ``v = 1``).
    """
    h = parts[0][1].shape[0]
    if max_side is not None:
        h = min(h, int(max_side))
    k = len(parts)
    cols, vs, fs, uvs, ufs = [], [], [], [], []
    nv = nu = 0
    for i, (m, tex) in enumerate(parts):
        t = tex if tex.shape[:2] == (h, h) else np.asarray(
            Image.fromarray(tex).resize((h, h), Image.BILINEAR))
        cols.append(t)
        vs.append(m.vertices)
        fs.append(m.faces + nv)
        uv = np.clip(m.uvs, 0.0, 1.0).copy()
        # keep bilinear lookups off the neighbouring column
        uv[:, 0] = (i + 0.5 / h + uv[:, 0] * (1 - 1.0 / h)) / k
        uvs.append(uv)
        ufs.append(m.uv_faces + nu)
        nv += len(m.vertices)
        nu += len(m.uvs)
    mesh = MeshData(np.concatenate(vs), np.concatenate(fs), np.concatenate(uvs),
                    np.concatenate(ufs))
    return mesh, np.concatenate(cols, axis=1)


def merge(a: MeshData, b: MeshData) -> MeshData:
    """One mesh of two that share a texture (vertices, faces, UVs concatenated; no morphs)."""
    return MeshData(np.concatenate([a.vertices, b.vertices]),
                    np.concatenate([a.faces, b.faces + len(a.vertices)]),
                    np.concatenate([a.uvs, b.uvs]),
                    np.concatenate([a.uv_faces, b.uv_faces + len(a.uvs)]))


def _framing(vertices: np.ndarray, size: int) -> tuple[np.ndarray, Camera]:
    """Centre the model on the bounding box centre of the head and a camera framing it."""
    lo, hi = vertices.min(0), vertices.max(0)
    centre = (lo + hi) / 2
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]))
    base = Camera()
    depth = base.distance - extent / 2  # nearest possible point after any yaw
    focal = 0.85 * (size / 2) * depth / max(extent / 2, 1e-6)
    cam = Camera(focal=focal, center=size / 2, distance=base.distance, size=size,
                 znear=max(0.1, base.distance - extent * 1.2), zfar=base.distance + extent * 1.2)
    return centre, cam


def render_views(head: MeshData, head_texture: np.ndarray, left_eye: MeshData,
                 right_eye: MeshData, eye_texture: np.ndarray, *, size: int = 512,
                 yaws_deg: tuple[float, ...] = VIEWS_DEG,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 device: str | torch.device = "cpu", hair: MeshData | None = None
                 ) -> list[np.ndarray]:
    """Render the head with its eyeballs from several yaw angles.

    Args:
        head: head mesh in model space (y up, face toward +z) with UVs.
        head_texture: ``uint8 [S, S, 3]``.
        left_eye / right_eye: eyeball meshes with UVs into ``eye_texture``.
        eye_texture: ``uint8 [E, E, 3]``.
        size: output side in pixels.
        yaws_deg: turns about the vertical axis through the head's box centre, degrees.
        background: RGB in [0, 1].
        device: where to render ("cuda": the GPU rasteriser; the same pictures to the
            rasterisers' agreement, ``bench/render_parity.py``).
        hair: the hair mesh posed as ``head`` (UVs into ``head_texture``) or None.
    Returns:
        One ``uint8 [size, size, 3]`` RGB image per yaw (row 0 at the top).
    """
    # a preview cannot show more texels than it has pixels; small textures render much faster
    n_head = len(head.faces)  # the head's triangles come first: its inside is a hollow
    if hair is not None:  # the same texture: one part with the head
        head = merge(head, hair)
    mesh, atlas = combine([(head, head_texture), (left_eye, eye_texture),
                           (right_eye, eye_texture)], max_side=max(256, 2 * size))
    centre, cam = _framing(head.vertices, size)
    # render_preview turns about the vertex centroid, near the box centre for a head
    v = mesh.vertices.astype(np.float32) - centre
    dev = torch.device(device)
    verts = torch.from_numpy(v).to(dev)
    tri = torch.from_numpy(mesh.faces).to(dev)
    uv = torch.from_numpy(mesh.uvs).to(dev)
    uvt = torch.from_numpy(mesh.uv_faces).to(dev)
    # to float once for all the views (render_preview would convert it for each)
    tex = torch.from_numpy(atlas).to(dev).float().div_(255.0)[None]
    surface = Surface(uv=uv, uv_tri=uvt, texture=tex)
    out = []
    with torch.no_grad():
        for yaw in yaws_deg:
            out.append(render_preview(verts, tri, surface, PreviewOptions(
                yaw_deg=float(yaw), size=size, camera=cam, background=background,
                interior_faces=n_head)))
    return out


def turntable_gif(head: MeshData, head_texture: np.ndarray, left_eye: MeshData,
                  right_eye: MeshData, eye_texture: np.ndarray, *, size: int = 256,
                  frames: int = 24, frame_ms: int = 80, device: str | torch.device = "cpu",
                  hair: MeshData | None = None) -> bytes:
    """An animated GIF turning the head once around the vertical axis (``frames`` steps)."""
    yaws = tuple(360.0 * i / frames for i in range(frames))
    imgs = render_views(head, head_texture, left_eye, right_eye, eye_texture, size=size,
                        yaws_deg=yaws, device=device, hair=hair)
    pil = [Image.fromarray(i).convert("P", palette=Image.ADAPTIVE, colors=255) for i in imgs]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=frame_ms,
                loop=0, optimize=False, disposal=2)
    return buf.getvalue()
