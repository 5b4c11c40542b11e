"""A small synthetic :class:`FaceModel` (an ellipsoid head with a nose) for tests and benchmarks.

It follows the face-model contract exactly (model frame y up, face toward +z, about decimetres,
OBJ-convention UVs, 68 iBUG landmarks on the surface, a left/right vertex map, eye rings) so the
fitter can be exercised, with known ground truth, without the built ``default`` model.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from services.fitter.facemodel.base import FaceModel


def ibug_template() -> np.ndarray:
    """A plausible frontal 68-point iBUG layout in model units (x right = subject's left side
    seen in the image's right half, y up), centred on the nose.

    Returns:
        ``float64 [68, 2]``.
    """
    p = np.zeros((68, 2))
    t = np.linspace(-1.0, 1.0, 17)
    ang = t * math.radians(80)
    p[0:17, 0] = 0.66 * np.sin(ang)
    p[0:17, 1] = 0.2 - 0.85 * np.cos(ang) ** 1.5
    for s, sl in ((-1, slice(17, 22)), (1, slice(22, 27))):
        xs = np.linspace(0.58, 0.1, 5) if s < 0 else np.linspace(0.1, 0.58, 5)
        p[sl, 0] = s * xs
        p[sl, 1] = 0.42 + 0.06 * np.sin((xs - 0.1) / 0.48 * math.pi)
    p[27:31, 0] = 0.0
    p[27:31, 1] = np.linspace(0.28, -0.1, 4)
    p[31:36, 0] = np.linspace(-0.16, 0.16, 5)
    p[31:36, 1] = -0.18 + 0.03 * np.abs(np.linspace(-2, 2, 5)) / 2
    for s, sl in ((-1, slice(36, 42)), (1, slice(42, 48))):
        cx, w, h = s * 0.33, 0.15, 0.06
        a = np.array([180, 120, 60, 0, -60, -120]) * math.pi / 180
        p[sl, 0] = cx + w * np.cos(a)
        p[sl, 1] = 0.28 + h * np.sin(a)
    a = np.linspace(math.pi, -math.pi, 13)[:12]
    p[48:60, 0] = 0.27 * np.cos(a)
    p[48:60, 1] = -0.4 + 0.09 * np.sin(a)
    a = np.array([180, 120, 90, 60, 0, -60, -90, -120]) * math.pi / 180
    p[60:68, 0] = 0.2 * np.cos(a)
    p[60:68, 1] = -0.4 + 0.03 * np.sin(a)
    return p


def build_synthetic_model(device: str | torch.device = "cpu", n_theta: int = 64,
                          n_phi: int = 40, k_id: int = 10, k_exp: int = 6,
                          seed: int = 0) -> FaceModel:
    """An ellipsoid head (face toward +z) with a nose, lat-long UVs and smooth bases.

    Args:
        n_theta: vertices around (even, so the grid is left/right symmetric).
        n_phi: latitude rings (poles excluded, two pole vertices added).
        k_id / k_exp: sizes of the random smooth, left/right-symmetric bases.
    Returns:
        A FaceModel named "synthetic" on ``device``.
    """
    rng = np.random.default_rng(seed)
    theta = -math.pi + 2 * math.pi * np.arange(n_theta) / n_theta  # 0 = front
    phi = np.linspace(-math.pi / 2, math.pi / 2, n_phi + 2)[1:-1]
    a, b, c = 0.8, 1.1, 0.9
    th, ph = np.meshgrid(theta, phi)  # [n_phi, n_theta]
    x = a * np.cos(ph) * np.sin(th)
    y = b * np.sin(ph)
    z = c * np.cos(ph) * np.cos(th)
    verts = np.stack([x, y, z], -1).reshape(-1, 3)
    verts = np.concatenate([verts, [[0, -b, 0], [0, b, 0]]])
    bottom, top = len(verts) - 2, len(verts) - 1
    # nose bump on the front
    nose = 0.28 * np.exp(-((verts[:, 0] / 0.13) ** 2 + ((verts[:, 1] + 0.02) / 0.22) ** 2))
    verts[:, 2] += nose * (verts[:, 2] > 0)
    vid = np.arange(n_phi * n_theta).reshape(n_phi, n_theta)
    # UVs with a duplicated seam column (u = 0 and u = 1)
    uu = (np.concatenate([theta, [math.pi]]) + math.pi) / (2 * math.pi)
    vv = (phi + math.pi / 2) / math.pi
    uvg = np.stack(np.meshgrid(uu, vv), -1).reshape(-1, 2)
    uid = np.arange(n_phi * (n_theta + 1)).reshape(n_phi, n_theta + 1)
    pole_uv = [[(j + 0.5) / n_theta, 0.0] for j in range(n_theta)] + [
        [(j + 0.5) / n_theta, 1.0] for j in range(n_theta)]
    uv = np.concatenate([uvg, pole_uv])
    pole0 = len(uvg)
    tri, uvt = [], []
    for i in range(n_phi - 1):
        for j in range(n_theta):
            j1 = (j + 1) % n_theta
            a0, a1, b0, b1 = vid[i, j], vid[i, j1], vid[i + 1, j], vid[i + 1, j1]
            ua0, ua1, ub0, ub1 = uid[i, j], uid[i, j + 1], uid[i + 1, j], uid[i + 1, j + 1]
            tri += [[a0, a1, b1], [a0, b1, b0]]
            uvt += [[ua0, ua1, ub1], [ua0, ub1, ub0]]
    for j in range(n_theta):
        j1 = (j + 1) % n_theta
        tri.append([bottom, vid[0, j1], vid[0, j]])
        uvt.append([pole0 + j, uid[0, j + 1], uid[0, j]])
        tri.append([top, vid[-1, j], vid[-1, j1]])
        uvt.append([pole0 + n_theta + j, uid[-1, j], uid[-1, j + 1]])
    tri = np.array(tri)
    uvt = np.array(uvt)
    # orientation: make triangles CCW seen from outside
    v0, v1, v2 = verts[tri[:, 0]], verts[tri[:, 1]], verts[tri[:, 2]]
    fn = np.cross(v1 - v0, v2 - v0)
    flip = (fn * (v0 + v1 + v2)).sum(1) < 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    uvt[flip] = uvt[flip][:, [0, 2, 1]]
    # mirror map: theta -> -theta
    mj = (n_theta - np.arange(n_theta)) % n_theta
    mirror = np.concatenate([vid[:, mj].reshape(-1), [bottom, top]])

    # landmarks: put the template on the front surface (nearest triangle in x/y among front ones)
    lm2 = ibug_template() * np.array([1.0, 1.0]) + np.array([0.0, 0.05])
    front = verts[:, 2] > 0.2
    centres = verts[tri].mean(1)
    lmk_tri = np.zeros((68, 3), np.int64)
    lmk_bary = np.zeros((68, 3))
    ok_tri = front[tri].all(1)
    for k, (px, py) in enumerate(lm2):
        cand = np.where(ok_tri)[0]
        d = np.hypot(centres[cand, 0] - px, centres[cand, 1] - py)
        order = cand[np.argsort(d)[:12]]
        best = None
        for t in order:
            p0, p1, p2 = verts[tri[t], :2]
            m = np.array([[p0[0] - p2[0], p1[0] - p2[0]], [p0[1] - p2[1], p1[1] - p2[1]]])
            try:
                l01 = np.linalg.solve(m, np.array([px - p2[0], py - p2[1]]))
            except np.linalg.LinAlgError:
                continue
            bc = np.array([l01[0], l01[1], 1 - l01.sum()])
            score = -bc.min()
            if best is None or score < best[0]:
                best = (score, t, bc)
        _, t, bc = best
        bc = np.clip(bc, 0, None)
        lmk_tri[k] = tri[t]
        lmk_bary[k] = bc / bc.sum()

    # smooth symmetric bases (RBF bumps, mirrored in x)
    def bump(centre, sigma):
        cx, cy, cz = centre
        d1 = ((verts[:, 0] - cx) ** 2 + (verts[:, 1] - cy) ** 2 + (verts[:, 2] - cz) ** 2)
        d2 = ((verts[:, 0] + cx) ** 2 + (verts[:, 1] - cy) ** 2 + (verts[:, 2] - cz) ** 2)
        return np.exp(-d1 / (2 * sigma**2)) + np.exp(-d2 / (2 * sigma**2)) * (cx != 0)

    n = len(verts)
    id_base = np.zeros((n, 3, k_id))
    id_base[:, :, 0] = verts * 0.04  # global scale
    id_base[:, 0, 1] = verts[:, 0] * 0.05  # width
    id_base[:, 1, 2] = verts[:, 1] * 0.04  # height
    for k in range(3, k_id):
        ctr = rng.uniform([0, -0.6, 0.3], [0.5, 0.6, 0.9])
        w = bump(ctr, 0.25)
        d = rng.normal(size=3) * 0.03
        disp = w[:, None] * d[None]
        disp[:, 0] *= np.sign(verts[:, 0])  # symmetric in x
        id_base[:, :, k] = disp
    exp_base = np.zeros((n, 3, k_exp))
    mouth = np.exp(-((verts[:, 0] / 0.3) ** 2 + ((verts[:, 1] + 0.6) / 0.25) ** 2))
    mouth *= (verts[:, 2] > 0) * (verts[:, 1] < -0.42)
    exp_base[:, 1, 0] = -0.06 * mouth  # jaw / lower lip down (mouth open)
    corners = bump((0.27, -0.35, 0.75), 0.12)
    exp_base[:, 0, 1] = 0.03 * corners * np.sign(verts[:, 0])  # smile width
    exp_base[:, 1, 1] = 0.02 * corners
    brows = bump((0.33, 0.47, 0.7), 0.15)
    exp_base[:, 1, 2] = 0.03 * brows  # brows up
    for k in range(3, k_exp):
        ctr = rng.uniform([0, -0.5, 0.5], [0.4, 0.5, 0.9])
        w = bump(ctr, 0.15)
        d = rng.normal(size=3) * 0.02
        disp = w[:, None] * d[None]
        disp[:, 0] *= np.sign(verts[:, 0])
        exp_base[:, :, k] = disp

    # regions
    eye_l = lm2[36:42].mean(0)
    eye_r = lm2[42:48].mean(0)
    def near(pt, r):
        return np.hypot(verts[:, 0] - pt[0], verts[:, 1] - pt[1]) < r
    front_v = verts[:, 2] > 0.3
    skin = ~((near(eye_l, 0.1) | near(eye_r, 0.1)) & front_v)
    face_v = front_v & (verts[:, 1] < 0.75) & (verts[:, 1] > -1.0)
    face_tri = face_v[tri].all(1)
    ring_l = np.where(near(eye_l, 0.18) & ~near(eye_l, 0.1) & front_v)[0]
    ring_r = np.where(near(eye_r, 0.18) & ~near(eye_r, 0.1) & front_v)[0]
    t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt, device=device)  # noqa: E731
    return FaceModel(
        name="synthetic", unit="decimetre (synthetic)",
        mean_shape=t(verts), id_base=t(id_base), exp_base=t(exp_base),
        tri=t(tri, torch.long), uv=t(uv), uv_tri=t(uvt, torch.long),
        lmk_tri_vertices=t(lmk_tri, torch.long), lmk_bary=t(lmk_bary),
        face_tri_mask=t(face_tri, torch.bool), skin_mask=t(skin, torch.bool),
        mirror=t(mirror, torch.long), eye_ring_left=t(ring_l, torch.long),
        eye_ring_right=t(ring_r, torch.long),
        meta={"builder": "services.fitter.synthetic", "seed": seed})


def synthetic_texture(size: int = 256) -> np.ndarray:
    """A known albedo for ground-truth tests: skin tone, a smooth low-frequency variation and
    a fine vertical stripe pattern (checks alignment), all left/right symmetric.

    Returns:
        ``float32 [size, size, 3]`` in [0, 1], row 0 = ``v = 1``.
    """
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    base = np.array([0.78, 0.58, 0.48], np.float32)
    low = 1.0 + 0.12 * np.cos(2 * math.pi * (yy - 0.5))
    # symmetric about u = 0.5 like a face (the model's mirror maps u to 1 - u)
    stripes = 1.0 + 0.08 * np.sign(np.cos(2 * math.pi * (xx - 0.5) * 24))
    return np.clip(base[None, None] * (low * stripes)[..., None], 0, 1).astype(np.float32)


def synthetic_face(model: FaceModel, coeffs: dict, texture: np.ndarray, hires: int = 512,
                   background: tuple[float, float, float] = (0.15, 0.3, 0.2)):
    """Render ``model`` with known coefficients and texture into an :class:`AlignedFace`.

    Args:
        model: the face model.
        coeffs: ``id [1,K_id]``, ``exp [1,K_exp]``, ``angles [1,3]``, ``trans [1,3]``,
            ``gamma [1,27]`` tensors.
        texture: ``float32 [S, S, 3]`` albedo (row 0 = v = 1).
        hires: side of the hi-res crop.
    Returns:
        ``(AlignedFace, landmarks [68, 2])`` with crop landmarks equal to the projected model
        landmarks, skin mask = rendered skin, parse mask: 1 skin, 3 eyes, 5 lips, 0 background.
    """
    import cv2

    from ffhquv.aligned import AlignedFace
    from ffhquv.render.camera import Camera, project, rigid_transform, rotate_normals
    from ffhquv.render.renderer import MeshRenderer, RasterOptions, Surface

    cam = Camera()
    with torch.no_grad():
        v = model.shape(coeffs["id"], coeffs["exp"])
        world = rigid_transform(v, coeffs["angles"], coeffs["trans"])
        nrm = rotate_normals(model.vertex_normals(v), coeffs["angles"])
        tex = torch.from_numpy(texture)[None].to(model.device)
        bg = torch.tensor(background, device=model.device)
        imgs = {}
        for s in (224, hires):
            # cam.scaled(s) renders on the detector's hi-res pixel grid: x_S = k (x + 0.5) - 0.5
            out = MeshRenderer(cam, device=model.device).render(
                world, model.tri,
                Surface(normals=nrm, uv=model.uv, uv_tri=model.uv_tri, texture=tex),
                gamma=coeffs["gamma"], options=RasterOptions(size=s, antialias=True, background=bg))
            img = (out.image[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            imgs[s] = (img, out.mask[0, ..., 0].cpu().numpy())
        lm = project(model.landmarks(world), cam)[0].cpu().numpy().astype(np.float32)
    crop, mask = imgs[224]
    parse = (mask > 0.5).astype(np.uint8)
    for sl, lab in ((slice(36, 42), 3), (slice(42, 48), 3), (slice(48, 60), 5),
                    (slice(60, 68), 6)):
        cv2.fillPoly(parse, [np.round(lm[sl]).astype(np.int32)], lab)
    skin = ((parse == 1) * 255).astype(np.uint8)
    face = AlignedFace(crop=crop, crop_landmarks=lm, image_to_crop=np.eye(2, 3),
                       crop_hires=imgs[hires][0], skin_mask=skin, parse_mask=parse,
                       parse_source="synthetic")
    return face, lm
