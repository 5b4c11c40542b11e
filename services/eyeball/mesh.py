"""The canonical eyeball mesh: a UV sphere with a corneal bulge, gazing along +z.

Anatomy (adult averages, in units of the eyeball radius ``R`` = 12 mm):

* limbus (corneal border) at polar angle ``LIMBUS_ANGLE = asin(5.75 / 12)`` from the gaze axis;
* the cornea is a sphere cap of radius ``CORNEA_RADIUS = 7.8 / 12`` meeting the eyeball
  sphere at the limbus; its apex lies ``CORNEA_APEX`` (~1.09 R) in front of the centre.

Texture coordinates: a Lambert azimuthal equal-area projection of the gaze direction, centred on
the texture (OBJ convention, v up): for a direction with polar angle ``theta`` from +z and
azimuth ``phi`` (from +x toward +y), ``r = 0.5 * sin(theta / 2)``, ``u = 0.5 + r cos(phi)``,
``v = 0.5 + r sin(phi)``. The texture therefore looks like the eye seen from the front (iris at
the centre, +x to the image right, +y up) and the back pole maps to the inscribed circle.
"""

from __future__ import annotations

import math

import numpy as np

from ffhquv.mesh import MeshData

LIMBUS_ANGLE = math.asin(5.75 / 12.0)
CORNEA_RADIUS = 7.8 / 12.0
_CORNEA_CENTRE_Z = math.cos(LIMBUS_ANGLE) - math.sqrt(CORNEA_RADIUS**2
                                                      - math.sin(LIMBUS_ANGLE) ** 2)
CORNEA_APEX = _CORNEA_CENTRE_Z + CORNEA_RADIUS
PUPIL_FRACTION = 0.33  # pupil radius / iris radius (lateral)


def direction_uv(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """``[..., 2]`` OBJ texture coordinates of gaze-frame directions (see module docstring)."""
    r = 0.5 * np.sin(np.asarray(theta) / 2.0)
    return np.stack([0.5 + r * np.cos(phi), 0.5 + r * np.sin(phi)], -1)


def surface_radius(theta: np.ndarray) -> np.ndarray:
    """Distance from the eyeball centre to the surface (units of R) along polar angle ``theta``
    (sphere of radius 1, cornea cap in front of the limbus)."""
    theta = np.asarray(theta, dtype=np.float64)
    ct = np.cos(theta)
    # ray t * d against the cornea sphere |p - (0, 0, zc)| = rc
    b = ct * _CORNEA_CENTRE_Z
    disc = np.maximum(b * b - _CORNEA_CENTRE_Z**2 + CORNEA_RADIUS**2, 0.0)
    t_cornea = b + np.sqrt(disc)
    return np.where(theta < LIMBUS_ANGLE, np.maximum(t_cornea, 1.0), 1.0)


def eyeball_mesh(radius: float = 1.0, n_rings: int = 30, n_segments: int = 48) -> MeshData:
    """The eyeball at the origin, gaze +z, up +y.

    Args:
        radius: eyeball radius ``R`` (the cornea bulges to ``CORNEA_APEX * R``).
        n_rings: latitude rings between the poles (8 of them on the cornea).
        n_segments: vertices per ring.
    Returns:
        A closed :class:`MeshData` (faces counter-clockwise seen from outside, vertex
        normals, UVs as in the module docstring; the back pole has one UV per segment).
    """
    n_cornea = 8
    thetas = np.concatenate([
        np.linspace(0.0, LIMBUS_ANGLE, n_cornea + 1)[1:],
        np.linspace(LIMBUS_ANGLE, math.pi, n_rings - n_cornea + 2)[1:-1],
    ])
    phis = np.arange(n_segments) * (2 * math.pi / n_segments)
    th, ph = np.meshgrid(thetas, phis, indexing="ij")  # [K, S]
    dirs = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    rad = surface_radius(th)[..., None]
    ring_v = (dirs * rad).reshape(-1, 3)
    front = np.array([[0.0, 0.0, CORNEA_APEX]])
    back = np.array([[0.0, 0.0, -1.0]])
    vertices = np.concatenate([front, ring_v, back]) * radius
    k, s = len(thetas), n_segments
    back_id = 1 + k * s

    def rid(i, j):
        return 1 + i * s + (j % s)

    faces = []
    j = np.arange(s)
    faces.append(np.stack([np.zeros(s, int), rid(0, j), rid(0, j + 1)], -1))
    for i in range(k - 1):
        a, b, c, d = rid(i, j), rid(i + 1, j), rid(i + 1, j + 1), rid(i, j + 1)
        faces.append(np.stack([a, b, c], -1))
        faces.append(np.stack([a, c, d], -1))
    faces.append(np.stack([rid(k - 1, j), np.full(s, back_id), rid(k - 1, j + 1)], -1))
    faces = np.concatenate(faces)

    uv_ring = direction_uv(th, ph).reshape(-1, 2)
    uv_back = direction_uv(np.full(s, math.pi), phis + math.pi / s)
    uvs = np.concatenate([[[0.5, 0.5]], uv_ring, uv_back])
    uv_faces = faces.copy()
    uv_faces[-s:, 1] = 1 + k * s + j  # per-segment UVs of the back pole

    # Normals of the analytic surface: the sphere's radial direction, the cornea's own normal.
    n = vertices / radius
    corn = np.zeros_like(n)
    corn[:, 2] = _CORNEA_CENTRE_Z
    on_cornea = np.concatenate([[True], (th < LIMBUS_ANGLE - 1e-9).reshape(-1), [False]])
    n = np.where(on_cornea[:, None], n - corn, n)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return MeshData(vertices=vertices, faces=faces, uvs=uvs, uv_faces=uv_faces, normals=n)


def rim_cuff(rim: np.ndarray, centre: np.ndarray, radius: float,
             outer_angle: float = math.radians(115)) -> MeshData:
    """A band of conjunctiva joining the rim of an eye hole to the eyeball behind it.

    Where the head has a hole for the eye (no socket surface), a sphere cannot touch the whole
    eyelid rim, and oblique views would look through the gap into the head. The band runs
    from each rim point (moved 3 % of ``radius`` toward the centre, i.e. just inside the lid
    edge) along the ray to the eyeball centre down to just under the eyeball surface.

    Args:
        rim: ``[K, 3]`` rim points (any order; sorted by angle about the centre here).
        centre: ``[3]`` eyeball centre (gaze +z).
        radius: eyeball radius.
        outer_angle: polar angle whose texture colour (the pink conjunctiva of the eyeball
            texture's periphery) is used at the rim; the inner edge uses the eyeball texel
            behind it, so the band blends into the sclera.
    Returns:
        :class:`MeshData` with ``2K`` vertices, ``2K`` triangles facing the gaze axis, UVs into
        the eyeball texture and vertex normals.
    """
    rim = np.asarray(rim, np.float64)
    c = np.asarray(centre, np.float64)
    rel = rim - c
    order = np.argsort(np.arctan2(rel[:, 1], rel[:, 0]))
    rel = rel[order]
    dist = np.linalg.norm(rel, axis=1, keepdims=True)
    d = rel / np.maximum(dist, 1e-12)
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    outer = c + rel - 0.03 * radius * d
    inner = c + d * (surface_radius(theta) * 0.985 * radius)[:, None]
    k = len(rim)
    i = np.arange(k)
    j = (i + 1) % k
    faces = np.concatenate([np.stack([i, j, k + j], -1), np.stack([i, k + j, k + i], -1)])
    vertices = np.concatenate([outer, inner])
    # face the gaze axis (the viewer looks into the band through the opening)
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    to_axis = (c + np.array([0.0, 0.0, 3 * radius])) - tri.mean(1)
    if (np.einsum("ij,ij->i", n, to_axis) < 0).sum() > len(faces) / 2:
        faces = faces[:, ::-1]
    uvs = np.concatenate([direction_uv(np.full(k, max(outer_angle, 0.0)), phi),
                          direction_uv(theta, phi)])
    mesh = MeshData(vertices=vertices, faces=faces, uvs=uvs, uv_faces=faces)
    from ffhquv.objfile import vertex_normals

    mesh.normals = vertex_normals(mesh)
    return mesh


def concat_meshes(meshes: list[MeshData]) -> MeshData:
    """One :class:`MeshData` from several (all with UVs and normals)."""
    nv = np.cumsum([0] + [len(m.vertices) for m in meshes])
    nu = np.cumsum([0] + [len(m.uvs) for m in meshes])
    return MeshData(
        vertices=np.concatenate([m.vertices for m in meshes]),
        faces=np.concatenate([m.faces + o for m, o in zip(meshes, nv, strict=False)]),
        uvs=np.concatenate([m.uvs for m in meshes]),
        uv_faces=np.concatenate([m.uv_faces + o for m, o in zip(meshes, nu, strict=False)]),
        normals=np.concatenate([m.normals for m in meshes]))
