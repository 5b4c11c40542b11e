"""Eyeball placement: one textured eyeball in each eye socket of a fitted head (numpy only).

Model space (``docs/conventions.md``): y up, the face looking toward +z, units of the face model
(about decimetres; a real eyeball is ~24 mm, i.e. ~0.24 units). Per eye:

1. The eye-socket ring (vertex ids around the eye opening) is projected on the xy plane; its
   convex hull is the *opening polygon*.
2. Radius ``R = RADIUS_PER_RING_WIDTH * ring width`` (the ring spans about one eyeball
   diameter horizontally, as in the FFHQ-UV reference), kept within
   ``RADIUS_PER_EYE_DISTANCE`` times the distance between the two rings' centres (adult
   anatomy); centre x, y = the ring's box centre.
3. Depth, for a closed socket (HiFi3D++: the opening is covered by a recessed socket surface):
   centre moved ``MEDIAL_SHIFT`` ring widths toward the midline, the cornea apex at the ring's
   front-most z (the eyelids wrap over the cornea), then pushed back along -z until every
   ring vertex lies outside the eyeball. For an open hole (the default model, whose own
   eyeballs were dropped): the eyeball must fill the hole from every view, so ``R`` grows until
   the whole rim lies inside its outline and the eyeball comes forward until the rim rests on it
   (every rim vertex just outside).
4. Either way, every eyeball vertex outside the opening polygon must lie behind the head
   surface seen along +z (the front-most head surface at that x, y), with a small margin:
   the eyeball is pushed back further where needed. The gaze stays +z.
5. For a hole, the remaining gap between the rim and the eyeball (a sphere cannot touch an
   irregular rim everywhere) is closed by a thin band of conjunctiva
   (:func:`services.eyeball.mesh.rim_cuff`), part of the eyeball mesh, textured from the
   eyeball texture, so no view looks into the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ffhquv import vocab
from ffhquv.errors import InvalidInput
from ffhquv.mesh import MeshData, unique_rows
from services.eyeball.iris import eye_colours
from services.eyeball.mesh import (
    CORNEA_APEX,
    concat_meshes,
    eyeball_mesh,
    rim_cuff,
    surface_radius,
)
from services.eyeball.texture import eyeball_texture

RADIUS_PER_RING_WIDTH = 0.49
# Eyeball radius over the distance between the two eye-opening centres: 12 mm over 54..74 mm
# interpupillary distance in adults (the FFHQ-UV reference: 0.19).
RADIUS_PER_EYE_DISTANCE = (0.16, 0.21)
MEDIAL_SHIFT = 0.035  # globe centre toward the nose, in ring widths (FFHQ-UV reference: ~0.035)
MARGIN = 0.01  # clearance behind skin and lid margin, in units of the eyeball radius


@dataclass
class EyeballResult:
    """What :func:`place_eyeballs` returns.

    Attributes:
        left / right: eyeball meshes of the subject's left / right eye (model space, UVs into
            ``texture``, vertex normals; for a head with eye holes each also holds the
            conjunctiva band of step 5).
        left_center / right_center: ``float64 [3]`` eyeball centres.
        radius: ``(left, right)`` eyeball radii (the cornea apex is ``CORNEA_APEX * R`` in
            front of the centre).
        texture: ``uint8 [S, S, 3]`` shared eyeball texture.
        iris_rgb: iris colour used (an albedo estimate, see :mod:`services.eyeball.iris`),
            sRGB 0..255.
        iris_source: ``"photo"`` or ``"default"``.
        level: the photo's exposure of the eyes that ``texture`` is at (``EyeColours.level``:
            the head texture keeps the photo's skin level, the eyes its sclera's).
    """

    left: MeshData
    right: MeshData
    left_center: np.ndarray
    right_center: np.ndarray
    radius: tuple[float, float]
    texture: np.ndarray
    iris_rgb: tuple[float, float, float]
    iris_source: str
    level: float = 1.0


def points_in_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd test. ``pts [Q, 2]``, ``poly [P, 2]`` (closed implicitly) -> ``bool [Q]``."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < xi)).sum(1) % 2 == 1


def front_surface_z(vertices: np.ndarray, faces: np.ndarray, xy: np.ndarray,
                    grid: int = 24) -> np.ndarray:
    """The front-most surface seen from +z: for each query ``(x, y)`` the largest ``z`` where
    the vertical line through it meets a triangle.

    Queries and triangles meet through a ``grid x grid`` bucketing of the queries' bounding
    box: each triangle is tested against the queries of the cells its box covers only.

    Args:
        vertices: ``[N, 3]`` mesh vertices.
        faces: ``[T, 3]`` triangles.
        xy: ``[Q, 2]`` query points.
    Returns:
        ``float64 [Q]``, NaN where the line misses the mesh.
    """
    v = np.asarray(vertices, np.float64)
    q = np.asarray(xy, np.float64)
    out = np.full(len(q), np.nan)
    if len(q) == 0:
        return out
    tri = v[faces]  # [T, 3, 3]
    lo, hi = q.min(0), q.max(0)
    tmin, tmax = tri[:, :, :2].min(1), tri[:, :, :2].max(1)
    e1, e2 = (tri[:, 1] - tri[:, 0])[:, :2], (tri[:, 2] - tri[:, 0])[:, :2]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    # triangles near the queries, not degenerate seen from +z
    ok = ((tmax >= lo - 1e-12) & (tmin <= hi + 1e-12)).all(1) & (np.abs(det) > 1e-14)
    tri, tmin, tmax, e1, e2, det = tri[ok], tmin[ok], tmax[ok], e1[ok], e2[ok], det[ok]
    if len(tri) == 0:
        return out
    # bucket the queries; each triangle lists the cells its box covers (clipped to the grid)
    cell = np.maximum(hi - lo, 1e-12) / grid
    qc = np.clip(((q - lo) / cell).astype(np.int64), 0, grid - 1)
    qcell = qc[:, 1] * grid + qc[:, 0]
    order = np.argsort(qcell, kind="stable")
    starts = np.searchsorted(qcell[order], np.arange(grid * grid + 1))
    c0 = np.clip(np.floor((tmin - 1e-12 - lo) / cell).astype(np.int64), 0, grid - 1)
    c1 = np.clip(np.floor((tmax + 1e-12 - lo) / cell).astype(np.int64), 0, grid - 1)
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    t_of = np.repeat(np.arange(len(tri)), nx * ny)  # one entry per (triangle, cell)
    k = np.arange(len(t_of)) - np.repeat(np.cumsum(nx * ny) - nx * ny, nx * ny)
    cid = (c0[t_of, 1] + k // nx[t_of]) * grid + c0[t_of, 0] + k % nx[t_of]
    n_q = starts[cid + 1] - starts[cid]  # queries in each of those cells
    ti = np.repeat(t_of, n_q)
    j = np.arange(len(ti)) - np.repeat(np.cumsum(n_q) - n_q, n_q)
    qi = order[np.repeat(starts[cid], n_q) + j]
    inbox = ((tmin[ti] <= q[qi] + 1e-12) & (tmax[ti] >= q[qi] - 1e-12)).all(1)
    qi, ti = qi[inbox], ti[inbox]
    if len(qi) == 0:
        return out
    a = tri[ti, 0]
    d = q[qi] - a[:, :2]
    w1 = (d[:, 0] * e2[ti, 1] - d[:, 1] * e2[ti, 0]) / det[ti]
    w2 = (e1[ti, 0] * d[:, 1] - e1[ti, 1] * d[:, 0]) / det[ti]
    w0 = 1 - w1 - w2
    inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    z = w0 * a[:, 2] + w1 * tri[ti, 1, 2] + w2 * tri[ti, 2, 2]
    zz = np.full(len(q), -np.inf)
    np.maximum.at(zz, qi[inside], z[inside])
    zz[np.isinf(zz)] = np.nan
    return zz


def opening_polygon(ring_points: np.ndarray) -> np.ndarray:
    """The eye opening seen from the front: the convex hull of the ring's xy.

    A ring may hold the eyelid margin together with points just outside it (as the HiFi3D++
    one does); the hull covers the whole opening, corners included.

    Args:
        ring_points: ``[P, 3]`` ring vertex positions (P >= 3, not collinear in xy).
    Returns:
        ``[H, 2]`` hull vertices, counter-clockwise.
    """
    from scipy.spatial import ConvexHull, QhullError

    xy = np.asarray(ring_points, np.float64)[:, :2]
    try:
        hull = ConvexHull(xy)
    except QhullError as e:
        raise InvalidInput(f"eye ring is degenerate (no area in x, y): {e}") from None
    return xy[hull.vertices]


def _ring(head: MeshData, ring: np.ndarray, side: str) -> np.ndarray:
    r = np.asarray(ring)
    if r.ndim != 1 or r.size == 0:
        raise InvalidInput(f"{side} eye ring must be a non-empty 1-D list of vertex ids")
    if not np.issubdtype(r.dtype, np.integer):
        raise InvalidInput(f"{side} eye ring must hold integer vertex ids, got {r.dtype}")
    n = len(head.vertices)
    if r.min() < 0 or r.max() >= n:
        raise InvalidInput(f"{side} eye ring has vertex ids out of range [0, {n}): "
                           f"min {int(r.min())}, max {int(r.max())}")
    r = np.unique(r)
    if len(r) < 4:
        raise InvalidInput(f"{side} eye ring needs at least 4 distinct vertices, got {len(r)}")
    p = head.vertices[r].astype(np.float64)
    ext = p[:, :2].max(0) - p[:, :2].min(0)
    head_ext = float(np.ptp(head.vertices[:, 0])) or 1.0
    poly = opening_polygon(p)
    area = 0.5 * abs(np.dot(poly[:, 0], np.roll(poly[:, 1], -1))
                     - np.dot(poly[:, 1], np.roll(poly[:, 0], -1)))
    if ext.min() < 1e-3 * head_ext or area < 1e-6 * head_ext**2:
        raise InvalidInput(f"{side} eye ring is degenerate: extent {ext[0]:.3g} x {ext[1]:.3g},"
                           f" area {area:.3g} (head width {head_ext:.3g})")
    if ext[0] > 0.5 * head_ext:
        raise InvalidInput(f"{side} eye ring is {ext[0]:.3g} wide, more than half the head "
                           f"({head_ext:.3g}): not an eye opening")
    return p


def ring_is_hole_boundary(head: MeshData, ring: np.ndarray) -> bool:
    """True when most ring vertices lie on boundary edges of ``head`` (the eye opening is a
    hole, as in the default model), False for a closed socket (as in HiFi3D++)."""
    e = np.sort(head.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    uniq, counts = unique_rows(e, return_counts=True)
    boundary = np.unique(uniq[counts == 1])
    return bool(np.isin(ring, boundary).mean() >= 0.8)


def ring_gaps(ring_points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """``[P]`` how far each ring point lies outside the eyeball surface (sphere + cornea),
    measured along the ray from the centre, in units of ``radius`` (negative = inside)."""
    rel = ring_points - centre
    dist = np.linalg.norm(rel, axis=1)
    theta = np.arccos(np.clip(rel[:, 2] / np.maximum(dist, 1e-12), -1, 1))
    return dist / radius - surface_radius(theta)


def _ring_clear(ring_points: np.ndarray, centre: np.ndarray, radius: float) -> bool:
    """Every ring point lies outside the eyeball by ``MARGIN * radius``."""
    return bool((ring_gaps(ring_points, centre, radius) >= MARGIN - 1e-9).all())


def _rest_rim(ring_points: np.ndarray, centre: np.ndarray, radius: float, max_radius: float
              ) -> tuple[np.ndarray, float]:
    """Move and scale the eyeball (radius in ``[radius, max_radius]``) so the rim of a hole rests
    on it as evenly as possible: minimise the mean squared gap (in model units) subject to
    every gap >= MARGIN (SLSQP). Returns ``(centre, radius)``."""
    from scipy.optimize import minimize

    def gaps(x):
        return ring_gaps(ring_points, x[:3], x[3]) * x[3]

    def obj(x):
        return float(np.mean((gaps(x) / radius) ** 2))

    x0 = np.concatenate([centre, [radius]])
    res = minimize(obj, x0, method="SLSQP",
                   bounds=[(None, None)] * 3 + [(radius, max_radius)],
                   constraints=[{"type": "ineq",
                                 "fun": lambda x: ring_gaps(ring_points, x[:3], x[3]) - MARGIN}],
                   options={"maxiter": 200, "ftol": 1e-12})
    x = np.asarray(res.x, np.float64)
    if (not np.isfinite(x).all() or not _ring_clear(ring_points, x[:3], float(x[3]))
            or obj(x) > obj(x0)):
        return centre, radius
    return x[:3], float(x[3])


def fit_eye(head: MeshData, ring_points: np.ndarray, medial_x: float, hole: bool = False,
            radius_range: tuple[float, float] = (0.0, np.inf), n_rings: int = 30,
            n_segments: int = 48) -> tuple[MeshData, np.ndarray, float]:
    """Place one eyeball (see the module docstring).

    Args:
        head: the head mesh (validated).
        ring_points: ``[P, 3]`` the eye ring's vertex positions.
        medial_x: x of the face's midline (the globe sits slightly medial to the opening).
        hole: the ring is the rim of a hole in the head (see :func:`ring_is_hole_boundary`):
            then the eyeball must fill the opening, so it is centred on it, wide enough
            for the whole rim to lie within its outline, and brought forward until the rim
            rests on it.
        radius_range: anatomical bounds of the radius (see :data:`RADIUS_PER_EYE_DISTANCE`).
    Returns:
        ``(mesh, centre [3], radius)``: the eyeball in model space.
    """
    lo, hi = ring_points.min(0), ring_points.max(0)
    width = float(hi[0] - lo[0])
    rmin, rmax = radius_range
    radius = float(np.clip(RADIUS_PER_RING_WIDTH * width, rmin, rmax))
    cx, cy = (lo[:2] + hi[:2]) / 2
    if hole:
        reach = float(np.linalg.norm(ring_points[:, :2] - [cx, cy], axis=1).max())
        radius = float(np.clip(1.03 * reach, radius, min(0.6 * width, rmax)))
        # the rim rests on the eyeball: the front-most centre that keeps the rim outside
        far, near = float(hi[2]) - 2 * radius, float(hi[2])
    else:
        cx += MEDIAL_SHIFT * width * np.sign(medial_x - cx)
        # cornea apex at the ring's front-most z, then back until the ring is outside
        near = float(hi[2]) - (CORNEA_APEX + MARGIN) * radius
        far = near - 2 * radius
    if _ring_clear(ring_points, np.array([cx, cy, near]), radius):
        cz = near
    else:
        for _ in range(40):  # bisection: clear at ``far``, not clear at ``near``
            mid = (far + near) / 2
            if _ring_clear(ring_points, np.array([cx, cy, mid]), radius):
                far = mid
            else:
                near = mid
        cz = far
    if hole:
        (cx, cy, cz), radius = _rest_rim(ring_points, np.array([cx, cy, cz]), radius,
                                         max(radius, min(1.2 * radius, rmax)))
    unit = eyeball_mesh(1.0, n_rings, n_segments)
    local = unit.vertices.astype(np.float64) * radius  # centre at the origin
    # eyeball vertices outside the opening polygon stay behind the front head surface
    world_xy = local[:, :2] + [cx, cy]
    poly = opening_polygon(ring_points)
    outside = ~points_in_polygon(world_xy, poly)
    if outside.any():
        zf = front_surface_z(head.vertices, head.faces, world_xy[outside])
        hit = np.isfinite(zf)
        if hit.any():
            bound = zf[hit] - MARGIN * radius - local[outside][hit, 2]
            cz = min(cz, float(bound.min()))
    centre = np.array([cx, cy, cz])
    mesh = MeshData(vertices=local + centre, faces=unit.faces, uvs=unit.uvs,
                    uv_faces=unit.uv_faces, normals=unit.normals)
    if hole:
        mesh = concat_meshes([mesh, rim_cuff(ring_points, centre, radius)])
    return mesh, centre, radius


def place_eyeballs(
    head: MeshData,
    left_ring: np.ndarray,
    right_ring: np.ndarray,
    photo: np.ndarray | None = None,
    photo_landmarks: np.ndarray | None = None,
    texture_size: int = vocab.TEXTURE_SIZE_DEFAULT,
) -> EyeballResult:
    """Fit both eyeballs into a head and make their shared texture.

    Args:
        head: the fitted head, neutral expression, model space (y up, face toward +z).
        left_ring / right_ring: ``int [P]`` vertex ids around the subject's left (+x) / right
            (-x) eye opening.
        photo: optional ``uint8 [H, W, 3]`` RGB photo (or crop) for the iris colour.
        photo_landmarks: ``[68, 2]`` dlib landmarks in ``photo`` pixels.
        texture_size: side of the eyeball texture (64..4096, any side: :mod:`ffhquv.vocab`).
    Returns:
        :class:`EyeballResult`.
    Raises:
        InvalidInput: malformed head (NaN vertices, bad faces), ring ids out of range, a
            degenerate ring, bad texture size or photo.
    """
    head.validate()
    if not vocab.TEXTURE_SIZE_MIN <= int(texture_size) <= vocab.TEXTURE_SIZE_MAX:
        raise InvalidInput(f"texture_size must be in [{vocab.TEXTURE_SIZE_MIN}, "
                           f"{vocab.TEXTURE_SIZE_MAX}], got {texture_size}")
    if photo is not None:
        photo = np.asarray(photo)
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise InvalidInput(f"photo must be uint8 [H, W, 3], got {photo.dtype} {photo.shape}")
    if photo_landmarks is not None:
        photo_landmarks = np.asarray(photo_landmarks, np.float64)
        if photo_landmarks.size and photo_landmarks.shape != (68, 2):
            raise InvalidInput(f"photo_landmarks must be [68, 2], got {photo_landmarks.shape}")
        if not photo_landmarks.size:
            photo_landmarks = None
    lp = _ring(head, left_ring, "left")
    rp = _ring(head, right_ring, "right")
    if lp[:, 0].mean() <= rp[:, 0].mean():
        raise InvalidInput("the left eye ring must lie at larger x than the right one "
                           "(subject's left is +x in model space)")
    mid = float(lp[:, 0].mean() + rp[:, 0].mean()) / 2
    eye_dist = float(np.linalg.norm((lp.min(0) + lp.max(0)) / 2 - (rp.min(0) + rp.max(0)) / 2))
    r_range = (RADIUS_PER_EYE_DISTANCE[0] * eye_dist, RADIUS_PER_EYE_DISTANCE[1] * eye_dist)
    left, lc, lr = fit_eye(head, lp, mid, ring_is_hole_boundary(head, np.unique(left_ring)),
                           r_range)
    right, rc, rr = fit_eye(head, rp, mid, ring_is_hole_boundary(head, np.unique(right_ring)),
                            r_range)
    colours = eye_colours(photo, photo_landmarks)
    tex = eyeball_texture(colours.iris_rgb, int(texture_size), level=colours.level)
    return EyeballResult(left=left, right=right, left_center=lc, right_center=rc,
                         radius=(lr, rr), texture=tex, iris_rgb=colours.iris_rgb,
                         iris_source=colours.source, level=colours.level)
