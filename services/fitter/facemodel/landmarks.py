"""Embed the 68 iBUG landmarks on a head mesh by rendering it and running dlib on the render.

The head is rendered frontally with the shared camera (:mod:`ffhquv.render.camera`), lit, with
a skin-coloured per-vertex albedo and painted eyes closing the eye openings (dlib needs eyes);
a 68-point landmarker finds the landmarks on the render: the caller's (:data:`Landmarker`;
``ffhquv build-model`` passes the detector service's) or dlib's HOG detector and 68-point shape
predictor (``face_recognition_models``) directly; each one is back-projected through the
rasteriser's triangle id to a 3D surface point. Several renders (small yaws and scales) can
be averaged in 3D, then snapped to the surface; the default is the frontal render alone.
Landmarks dlib puts inside an eye opening (eye corners, lid points) are embedded in flat
triangles spanning the opening between ring vertices (:func:`ring_triangles`), so they follow
the lids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ffhquv.render.camera import Camera

#: A 68-point landmarker: ``uint8 [H, W, 3]`` RGB render -> the 68 iBUG landmarks of its
#: largest face, ``float [68, 2]`` pixels (dlib order, centres at integers), or None when it
#: finds no face. Injected by the caller (the CLI wires the detector service's); the builder
#: never imports another service.
Landmarker = Callable[[np.ndarray], "np.ndarray | None"]

#: albedo (linear-ish RGB in [0, 1]) of the render used for dlib.
SKIN = (0.80, 0.60, 0.50)
LIPS = (0.62, 0.33, 0.32)
BROWS = (0.28, 0.20, 0.16)
SCLERA = (0.92, 0.90, 0.88)
IRIS = (0.30, 0.20, 0.14)
PUPIL = (0.03, 0.03, 0.03)
SCLERA_SHADOW = (0.62, 0.52, 0.50)
EYE_RIM = (0.40, 0.26, 0.24)


@dataclass
class EyeCaps:
    """Painted discs closing the eye openings: ``vertices [C, 3]``, ``tri [K, 3]`` (indices into
    the caps' own vertices), ``albedo [C, 3]``."""

    vertices: np.ndarray
    tri: np.ndarray
    albedo: np.ndarray


def eye_caps(vertices: np.ndarray, rings: list[np.ndarray], depth: float = 0.15) -> EyeCaps:
    """Concentric discs (sclera, iris, pupil) filling each eye ring, bulging slightly inward.

    Args:
        vertices: ``[N, 3]`` model-space head vertices (y up, face toward +z).
        rings: ordered vertex loops of the eye openings.
        depth: how far behind the ring plane the disc centre sits, as a fraction of the ring
            width.
    Returns:
        :class:`EyeCaps` (triangles counter-clockwise seen from the front).
    """
    # level k sits at min(circle[k] * half width, outline[k] * ring radius) from the centre
    circle = np.array([0.0, 0.20, 0.32, 0.62, 0.70, 9.0, 9.0, 9.0])
    outline = np.array([0.0, 0.60, 0.70, 0.80, 0.85, 0.90, 0.95, 1.0])
    colours = [PUPIL, PUPIL, IRIS, IRIS, SCLERA, SCLERA, SCLERA_SHADOW, EYE_RIM]
    radii = outline
    vs, ts, cs = [], [], []
    off = 0
    for ring in rings:
        p = vertices[ring]
        c = p.mean(0)
        half = 0.5 * np.ptp(p[:, 0])
        d = p - c
        dist = np.linalg.norm(d[:, :2], axis=1).clip(1e-9)
        n = len(ring)
        for k in range(len(radii)):
            rad = np.minimum(circle[k] * half, outline[k] * dist)
            q = c + d * (rad / dist)[:, None]
            q[:, 2] = c[2] + (p[:, 2] - c[2]) * (rad / dist) - depth * 2 * half * (
                1 - (rad / dist) ** 2)
            vs.append(q)
            cs.append(np.tile(colours[k], (n, 1)))
        for k in range(len(radii) - 1):
            a = off + k * n
            b = off + (k + 1) * n
            for i in range(n):
                j = (i + 1) % n
                ts.append([a + i, b + i, b + j])
                ts.append([a + i, b + j, a + j])
        off += len(radii) * n
    v = np.concatenate(vs, 0)
    t = np.asarray(ts, np.int64)
    # orient triangles toward +z
    e = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    flip = e[:, 2] < 0
    t[flip] = t[flip][:, ::-1]
    return EyeCaps(v, t, np.concatenate(cs, 0))


def rotation_y(deg: float) -> np.ndarray:
    """``[3, 3]`` rotation about the model y axis; positive turns the face to the image right."""
    a = math.radians(deg)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0],
                     [-math.sin(a), 0.0, math.cos(a)]])


def ring_triangles(vertices: np.ndarray, rings: list[np.ndarray]) -> np.ndarray:
    """Flat "virtual" triangles spanning each eye opening (Delaunay of the ring seen from the
    front, triangles inside the ring only). dlib puts eye corners and lid points slightly inside
    the opening; landmarks there are embedded in these triangles of ring vertices, so they follow
    the lids. Returns ``[E, 3]`` vertex ids, counter-clockwise seen from +z."""
    from scipy.spatial import Delaunay

    out = []
    for ring in rings:
        p = vertices[ring, :2]
        d = Delaunay(p)
        cen = p[d.simplices].mean(1)
        inside = points_in_polygon(cen, p)
        t = ring[d.simplices[inside]]
        e = np.cross(np.c_[vertices[t[:, 1], :2] - vertices[t[:, 0], :2], np.zeros(len(t))],
                     np.c_[vertices[t[:, 2], :2] - vertices[t[:, 0], :2], np.zeros(len(t))])
        t[e[:, 2] < 0] = t[e[:, 2] < 0][:, ::-1]
        out.append(t)
    return np.concatenate(out, 0).astype(np.int64)


def points_in_polygon(q: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """``[K]`` bool: which of ``q [K, 2]`` lie inside the closed polygon ``poly [P, 2]``
    (even-odd ray casting)."""
    x, y = q[:, 0:1], q[:, 1:2]
    a, b = poly, np.roll(poly, -1, 0)
    cross = (a[:, 1] > y) != (b[:, 1] > y)
    xi = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / np.where(
        b[:, 1] == a[:, 1], 1e-30, b[:, 1] - a[:, 1])
    return ((cross & (x < xi)).sum(1) % 2) == 1


def _camera(scale: float, size: int) -> Camera:
    cam = Camera()
    return Camera(focal=cam.focal * scale, center=cam.center, distance=cam.distance,
                  size=cam.size, znear=cam.znear, zfar=cam.zfar).scaled(size)


def render_for_dlib(vertices: np.ndarray, tri: np.ndarray, albedo: np.ndarray, caps: EyeCaps,
                    yaw_deg: float = 0.0, scale: float = 1.0, size: int = 512,
                    id_tri: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render head + eye caps lit for dlib, and the surface under each pixel.

    Args:
        vertices: ``[N, 3]`` model-space head vertices (camera of :mod:`ffhquv.render.camera`,
            zero pose).
        tri: ``[T, 3]`` head triangles.
        albedo: ``[N, 3]`` per-vertex albedo in [0, 1].
        caps: the painted eyes.
        yaw_deg: turn about the vertical axis through the model origin.
        scale: zoom (focal length multiplier).
        size: raster size.
        id_tri: ``[T', 3]`` triangles of the id pass (default ``tri``), e.g. ``tri`` plus
            :func:`ring_triangles`.
    Returns:
        ``(image uint8 [S, S, 3], triangle id [S, S] int64 into id_tri (-1 background),
        points [S, S, 3] float64 (model frame, before the yaw))``.
    """
    from ffhquv.render.camera import to_clip
    from ffhquv.render.renderer import PREVIEW_GAMMA, MeshRenderer, RasterOptions, Surface

    n = len(vertices)
    v = np.concatenate([vertices, caps.vertices], 0)
    t = np.concatenate([tri, caps.tri + n], 0)
    a = np.concatenate([albedo, caps.albedo], 0)
    rot = rotation_y(yaw_deg)
    cam = _camera(scale, size)
    r = MeshRenderer(cam)
    with torch.no_grad():
        out = r.render(torch.tensor((v @ rot.T)[None], dtype=torch.float32), torch.tensor(t),
                       Surface(vertex_albedo=torch.tensor(a[None], dtype=torch.float32)),
                       gamma=PREVIEW_GAMMA.reshape(1, 27),
                       options=RasterOptions(size=size,
                                             background=torch.tensor([0.35, 0.38, 0.42])))
        it = torch.tensor(tri if id_tri is None else id_tri, dtype=torch.int32)
        clip = to_clip(torch.tensor((vertices @ rot.T)[None], dtype=torch.float32), cam)
        rast = r.backend.rasterize(clip.contiguous(), it, (size, size))
        tid = rast[0, ..., 3].long().numpy() - 1
        pts = r.backend.interpolate(torch.tensor(vertices[None], dtype=torch.float32), rast,
                                    it)[0].numpy()
    img = (out.image[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return img, tid, pts.astype(np.float64)


def dlib_landmarks(img: np.ndarray) -> np.ndarray | None:
    """68 iBUG landmarks ``float64 [68, 2]`` (pixels, centres at integers) of the largest face
    dlib's HOG detector finds in ``uint8 [H, W, 3]`` RGB, or None: the :data:`Landmarker` used
    when the caller passes none (dlib directly: the HOG detector with one upsampling and the
    68-point shape predictor of ``FFHQUV_LANDMARK_MODEL``, else ``face_recognition_models``)."""
    hog, pred = _dlib_models()
    rects = hog(img, 1)
    if len(rects) == 0:
        return None
    rect = max(rects, key=lambda r: r.width() * r.height())
    s = pred(img, rect)
    return np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64)


_DLIB: tuple | None = None


def _dlib_models():
    global _DLIB
    if _DLIB is None:
        import dlib

        from ffhquv.config import landmark_model

        path = landmark_model()
        if path is None:
            import face_recognition_models

            path = face_recognition_models.pose_predictor_model_location()
        _DLIB = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path)))
    return _DLIB


def backproject(lm: np.ndarray, tid: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """3D points under ``[68, 2]`` landmark pixels; background pixels take the nearest covered
    pixel (jaw-line points can fall just outside the silhouette). Returns ``[68, 3]``."""
    from scipy.ndimage import distance_transform_edt

    covered = tid >= 0
    _, (ri, ci) = distance_transform_edt(~covered, return_indices=True)
    out = np.zeros((len(lm), 3))
    h, w = tid.shape
    for k, (x, y) in enumerate(lm):
        c = int(np.clip(round(x), 0, w - 1))
        r = int(np.clip(round(y), 0, h - 1))
        r, c = ri[r, c], ci[r, c]
        out[k] = pts[r, c]
    return out


def snap_to_surface(points: np.ndarray, vertices: np.ndarray, tri: np.ndarray,
                    allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closest surface point of each ``[K, 3]`` point on the mesh.

    Args:
        allowed: optional ``[T]`` bool, triangles that may hold a landmark.
    Returns:
        ``(tri_vertices [K, 3] int64, bary [K, 3] float64)``.
    """
    ids = np.arange(len(tri)) if allowed is None else np.nonzero(allowed)[0]
    tris = vertices[tri[ids]]  # [K, 3, 3]
    out_t = np.zeros((len(points), 3), np.int64)
    out_b = np.zeros((len(points), 3))
    for k, p in enumerate(points):
        q, bary = closest_point_on_triangles(p, tris)
        best = int(np.argmin(np.linalg.norm(q - p, axis=1)))
        out_t[k] = tri[ids[best]]
        out_b[k] = bary[best]
    return out_t, out_b


def closest_point_on_triangles(p: np.ndarray, tris: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Closest point to ``p [3]`` on each triangle of ``tris [K, 3, 3]`` (Ericson, *Real-Time
    Collision Detection* 5.1.5), vectorised. Returns ``(points [K, 3], bary [K, 3])``."""
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    eps = 1e-30
    denom = va + vb + vc
    v = vb / np.where(np.abs(denom) < eps, eps, denom)
    w = vc / np.where(np.abs(denom) < eps, eps, denom)
    bary = np.stack([1 - v - w, v, w], 1)  # interior by default
    # edge regions
    m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t = d1 / np.where(np.abs(d1 - d3) < eps, eps, d1 - d3)
    bary[m] = np.stack([1 - t, t, 0 * t], 1)[m]
    m2 = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t = d2 / np.where(np.abs(d2 - d6) < eps, eps, d2 - d6)
    bary[m2] = np.stack([1 - t, 0 * t, t], 1)[m2]
    m3 = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    den = (d4 - d3) + (d5 - d6)
    t = (d4 - d3) / np.where(np.abs(den) < eps, eps, den)
    bary[m3] = np.stack([0 * t, 1 - t, t], 1)[m3]
    # vertex regions
    one = np.eye(3)
    bary[(d1 <= 0) & (d2 <= 0)] = one[0]
    bary[(d3 >= 0) & (d4 <= d3)] = one[1]
    bary[(d6 >= 0) & (d5 <= d6)] = one[2]
    q = bary[:, 0:1] * a + bary[:, 1:2] * b + bary[:, 2:3] * c
    return q, bary


def project_points(points: np.ndarray, yaw_deg: float = 0.0, scale: float = 1.0,
                   size: int = 512) -> np.ndarray:
    """``[K, 3]`` model points to ``[K, 2]`` pixels of :func:`render_for_dlib`'s view."""
    from ffhquv.render.camera import project

    cam = _camera(scale, size)
    w = points @ rotation_y(yaw_deg).T
    return project(torch.tensor(w[None], dtype=torch.float64), cam)[0].numpy()


def inter_ocular(lm: np.ndarray) -> float:
    """Distance between the eye centres (mean of points 36-41 and 42-47) of ``[68, 2|3]``."""
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


@dataclass(frozen=True)
class LandmarkViews:
    """The renders :func:`derive_landmarks` runs the landmarker on.

    Attributes:
        views: ``(yaw degrees, scale)`` of each render; the 3D points are averaged. The first
            view is the frontal reference of ``frontal_error``. Default: the frontal view only
            (averaging views in 3D moved inner-lip points of the closed mouth off the lips).
        size: raster size of each render (pixels).
    """

    views: tuple[tuple[float, float], ...] = ((0.0, 1.0),)
    size: int = 512


def derive_landmarks(vertices: np.ndarray, tri: np.ndarray, albedo: np.ndarray,
                     rings: list[np.ndarray], allowed: np.ndarray | None = None,
                     views: LandmarkViews | None = None, landmarker: Landmarker | None = None,
                     progress: bool = False) -> dict:
    """68 landmarks on the surface of a head from a 68-point landmarker on renders of it.

    Args:
        vertices: ``[N, 3]`` model-space mean head; tri ``[T, 3]``; albedo ``[N, 3]``.
        rings: ordered eye-opening loops (painted eyes close them in the render; landmarks
            inside an opening are embedded in flat triangles of ring vertices).
        allowed: ``[T]`` bool mesh triangles that may hold a landmark (default all).
        views: the renders (:class:`LandmarkViews`); None = the frontal view at 512 px.
        landmarker: finds the landmarks on each render (:data:`Landmarker`); None =
            :func:`dlib_landmarks` (dlib directly).
    Returns:
        dict with ``tri_vertices [68, 3]``, ``bary [68, 3]``, ``frontal_error`` (max landmark
        distance / IOD between the embedded landmarks projected in the first view and dlib's on
        that render), ``frontal_error_mean``, ``images`` (the renders), ``dlib`` (per view
        ``[68, 2]`` or None), ``projected`` ``[68, 2]``.
    """
    from tqdm import tqdm

    rv = views or LandmarkViews()
    find = landmarker or dlib_landmarks
    caps = eye_caps(vertices, rings)
    ring_t = ring_triangles(vertices, rings)
    id_tri = np.concatenate([tri, ring_t], 0)
    ok = np.ones(len(tri), bool) if allowed is None else allowed
    ok = np.concatenate([ok, np.ones(len(ring_t), bool)])
    pts3, dl, imgs = [], [], []
    for yaw, sc in tqdm(rv.views, desc="landmarks (dlib)", disable=not progress, leave=False):
        img, tid, pts = render_for_dlib(vertices, tri, albedo, caps, yaw, sc, rv.size, id_tri)
        lm = find(img)
        if lm is not None:
            lm = np.asarray(lm, np.float64).reshape(68, 2)
        imgs.append(img)
        dl.append(lm)
        if lm is not None:
            pts3.append(backproject(lm, tid, pts))
    if dl[0] is None:
        raise RuntimeError("the landmarker found no face on the frontal render of the mean head")
    mean3 = np.mean(pts3, 0)
    tv, bary = snap_to_surface(mean3, vertices, id_tri, ok)
    emb = (vertices[tv] * bary[..., None]).sum(1)
    proj = project_points(emb, rv.views[0][0], rv.views[0][1], rv.size)
    err = np.linalg.norm(proj - dl[0], axis=1) / inter_ocular(dl[0])
    return {"tri_vertices": tv, "bary": bary, "frontal_error": float(err.max()),
            "frontal_error_mean": float(err.mean()), "images": imgs, "dlib": dl,
            "projected": proj}
