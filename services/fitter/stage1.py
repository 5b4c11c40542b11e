"""Stage 1: pose, identity and expression from the 68 crop landmarks, then SH lighting.

1. A closed-form initial pose: PnP (OpenCV EPnP + Levenberg-Marquardt) between the mean
   shape's 3D landmarks and the crop landmarks, with the shared camera
   (:mod:`ffhquv.render.camera`).
2. A few hundred Adam steps on the weighted landmark loss (eyes, nose, mouth weigh more than
   the jaw contour, which follows the silhouette in a turned face) with N(0, I) priors on the
   identity and expression coefficients. Only the landmark rows of the bases are evaluated, so
   a step costs microseconds.
3. Lighting: the 27 SH coefficients by regularised least squares from the photo colours over
   visible skin vertices, given a flat skin-albedo guess (the mean skin colour of the photo
   under the ambient light).

All functions are batched: ``B`` photos share one optimisation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import astuple, dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from ffhquv.render.camera import Camera, euler_to_rotation, project, rigid_transform
from ffhquv.render.sh import AMBIENT, sh_basis
from services.fitter.facemodel.base import FaceModel
from services.fitter.graphs import (
    StepRunner,
    cached_program,
    compiled,
    graphs_enabled,
    make_adam,
    set_lr,
)
from services.fitter.landmark_bases import LandmarkBases, landmark_weights
from services.fitter.sampling import sample_image

Progress = Callable[[str, float, str], None]

_FLIP = np.diag([1.0, -1.0, -1.0])


def rotation_to_euler(rot: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ffhquv.render.camera.euler_to_rotation` for ``R = Rz @ Ry @ Rx``.

    Args:
        rot: ``[3, 3]`` rotation matrix.
    Returns:
        ``[3]`` Euler angles (x, y, z) in radians, ``y`` in [-pi/2, pi/2].
    """
    sy = -float(np.clip(rot[2, 0], -1.0, 1.0))
    y = math.asin(sy)
    x = math.atan2(rot[2, 1], rot[2, 2])
    z = math.atan2(rot[1, 0], rot[0, 0])
    return np.array([x, y, z])


def initial_pose(model_points: np.ndarray, lm2d: np.ndarray, cam: Camera,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form pose of a rigid landmark set: EPnP, refined by Levenberg-Marquardt.

    Args:
        model_points: ``[68, 3]`` model-space landmarks (e.g. of the mean shape).
        lm2d: ``[68, 2]`` target pixels on the ``cam.size`` raster.
        cam: the fitting camera.
        weights: optional ``[68]``; landmarks with weight < 1 (the jaw) are left out of the PnP
            when at least 30 others remain.
    Returns:
        ``angles [3]`` (radians, x y z) and ``trans [3]`` (model units) such that
        ``project(R @ p + t)`` matches ``lm2d``.
    """
    sel = np.arange(68)
    if weights is not None and (weights >= 1).sum() >= 30:
        sel = np.where(weights >= 1)[0]
    obj = model_points[sel].astype(np.float64)
    img = lm2d[sel].astype(np.float64)
    k = np.array([[cam.focal, 0, cam.center], [0, cam.focal, cam.center], [0, 0, 1.0]])
    ok, rvec, tvec = cv2.solvePnP(obj, img, k, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok2, rvec2, tvec2 = cv2.solvePnP(obj, img, k, None, rvec, tvec, True,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
        if ok2:
            rvec, tvec = rvec2, tvec2
    if not ok or not np.isfinite(tvec).all() or tvec[2, 0] <= 0:
        return np.zeros(3), np.zeros(3)
    r_cv, _ = cv2.Rodrigues(rvec)
    # OpenCV camera (x right, y down, z forward) = FLIP @ world + (0, 0, distance)
    rot = _FLIP @ r_cv
    trans = _FLIP @ (tvec[:, 0] - np.array([0.0, 0.0, cam.distance]))
    if rot[2, 2] < 0:  # facing away from the camera: PnP ambiguity, fall back to frontal
        return np.zeros(3), trans * np.array([1, 1, 0])
    return rotation_to_euler(rot), trans


@dataclass
class Stage1Result:
    """Stage-1 coefficients (all ``[B, ...]`` tensors, detached) and per-photo losses."""

    coeffs: dict[str, Tensor]
    landmark_loss: Tensor  # [B] weighted mean squared pixel error
    landmark_error_px: Tensor  # [B] mean Euclidean pixel error
    pose_init: dict[str, Tensor]
    init_source: list[str] | None = None  # per photo: "pnp" or "deep3d" (see fit_landmarks)
    graph_steps: int = 0  # steps that ran as CUDA-graph replays


@dataclass
class Stage1Options:
    """Settings of the landmark fit.

    Attributes:
        steps: Adam steps; the first quarter moves the pose only.
        lr: learning rate of the identity / expression coefficients (unit variance).
        w_id / w_exp: weights of the ``||id||^2`` / ``||exp||^2`` priors (per px^2 of loss).
    """

    steps: int = 300
    lr: float = 0.05
    w_id: float = 0.02
    w_exp: float = 0.02


class _LandmarkProgram:
    """Stage 1's step and every tensor it reads, for one batch size and setting (kept per
    face model on CUDA with graphs, as stage 3's, :class:`services.fitter.stage3._JointProgram`;
    a fit loads its start and target into the tensors and replays the recorded step).

    Args:
        model: the face model.
        cam: the fitting camera.
        b: photos.
        opts: the options (the prior weights are baked into the step).
        graph: record and replay the step (CUDA).
    """

    def __init__(self, model: FaceModel, cam: Camera, b: int, opts: Stage1Options,
                 graph: bool):
        dev = model.device
        lmb = LandmarkBases.of(model)
        w = landmark_weights(dev)
        self.wn = wn = w / w.sum()
        self.id_c = id_c = torch.zeros(b, model.id_dim, device=dev, requires_grad=True)
        self.exp_c = exp_c = torch.zeros(b, model.exp_dim, device=dev, requires_grad=True)
        self.angles = angles = torch.zeros(b, 3, device=dev, requires_grad=True)
        self.trans = trans = torch.zeros(b, 3, device=dev, requires_grad=True)
        self.target = target = torch.zeros(b, 68, 2, device=dev)
        # 0 during the rigid steps: the identity / expression gradients are zeroed, so Adam
        # keeps their moments (and the coefficients) at zero until the pose has settled
        self.free = free = torch.zeros((), device=dev)
        # learning rates of the coefficients, the angles and the translation (each step sets
        # them, scaled by the schedule: fit_landmarks' prepare)
        self.base_lrs = [opts.lr, 0.01, 0.01]
        self.opt = opt = make_adam([
            {"params": [id_c, exp_c], "lr": self.base_lrs[0]},
            {"params": [angles], "lr": self.base_lrs[1]},
            {"params": [trans], "lr": self.base_lrs[2]},
        ], graph=graph)
        w_id, w_exp = opts.w_id, opts.w_exp

        def loss_fn() -> tuple[Tensor, Tensor]:
            pts = lmb.landmarks(id_c, exp_c)
            pix = project(rigid_transform(pts, angles, trans), cam)
            sq = ((pix - target) ** 2).sum(-1)  # [B, 68]
            lmk = (sq * wn).sum(-1)
            prior = w_id * (id_c**2).sum(-1) + w_exp * (exp_c**2).sum(-1)
            return lmk, prior

        step_loss = compiled(loss_fn, dev)

        def body() -> dict[str, Tensor]:
            lmk, prior = step_loss()
            (lmk + prior).sum().backward()
            id_c.grad.mul_(free)
            exp_c.grad.mul_(free)
            opt.step()
            return {"landmark": lmk.detach()}

        self.loss_fn = loss_fn
        self.runner = StepRunner(opt, body, graph=graph)


def fit_landmarks(model: FaceModel, lm2d: Tensor, cam: Camera,
                  options: Stage1Options | None = None, *, progress: Progress | None = None,
                  cancel: threading.Event | None = None,
                  init: dict[str, Tensor] | None = None) -> Stage1Result:
    """Pose, identity and expression from landmarks.

    Args:
        model: the face model.
        lm2d: ``[B, 68, 2]`` crop landmarks in ``cam.size`` pixels (x right, y down).
        cam: the fitting camera (224 raster).
        options: steps, learning rate and prior weights (:class:`Stage1Options`).
        init: optional regressed start ``id [B, K_id], exp [B, K_exp], angles [B, 3],
            trans [B, 3]`` (paper mode's Deep3D); per photo it replaces the PnP start (with
            zero id / exp) when its weighted landmark loss is lower, and the optimisation then
            refines it.
    Returns:
        :class:`Stage1Result` with ``id, exp, angles, trans`` and ``gamma = 0``.
    Raises:
        Cancelled: when ``cancel`` is set (checked every step).
    """
    opts = options or Stage1Options()
    steps = opts.steps
    dev = model.device
    b = lm2d.shape[0]
    lmb = LandmarkBases.of(model)
    w = landmark_weights(dev)
    mean_np = lmb.mean.detach().cpu().numpy()
    lm_np = lm2d.detach().cpu().numpy()
    angles0, trans0 = [], []
    for i in range(b):
        a, t = initial_pose(mean_np, lm_np[i], cam, w.cpu().numpy())
        angles0.append(a)
        trans0.append(t)
    graph = graphs_enabled(dev)

    def build() -> _LandmarkProgram:
        return _LandmarkProgram(model, cam, b, opts, graph)

    prog = (cached_program(model, ("stage1", cam, b, astuple(opts)), build) if graph
            else build())
    id_c, exp_c, angles, trans = prog.id_c, prog.exp_c, prog.angles, prog.trans
    target, wn = prog.target, prog.wn
    with torch.no_grad():
        angles.copy_(torch.tensor(np.stack(angles0), dtype=torch.float32))
        trans.copy_(torch.tensor(np.stack(trans0), dtype=torch.float32))
        id_c.zero_()
        exp_c.zero_()
        target.copy_(lm2d.to(dev, torch.float32))
        prog.opt.reset()
    pose_init = {"angles": angles.detach().clone(), "trans": trans.detach().clone()}
    source = ["pnp"] * b
    if init is not None:
        with torch.no_grad():
            def lmk_of(i_c: Tensor, e_c: Tensor, a: Tensor, t: Tensor) -> Tensor:
                pix = project(rigid_transform(lmb.landmarks(i_c, e_c), a, t), cam)
                return (((pix - target) ** 2).sum(-1) * wn).sum(-1)

            ic, ec = init["id"].to(dev).float(), init["exp"].to(dev).float()
            ia, it = init["angles"].to(dev).float(), init["trans"].to(dev).float()
            l_init = lmk_of(ic, ec, ia, it)
            l_pnp = lmk_of(id_c, exp_c, angles, trans)
            use = torch.isfinite(l_init) & (l_init < l_pnp) & (it[:, 2] < cam.distance - 1)
            u = use[:, None]
            angles.copy_(torch.where(u, ia, angles))
            trans.copy_(torch.where(u, it, trans))
            id_c.copy_(torch.where(u, ic, id_c))
            exp_c.copy_(torch.where(u, ec, exp_c))
            source = ["deep3d" if bool(x) else "pnp" for x in use.cpu()]
    rigid_steps = 0 if all(x == "deep3d" for x in source) else steps // 4

    def prepare(step: int) -> None:
        frac = step / max(steps - 1, 1)
        scale = 0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1
        for i, lr0 in enumerate(prog.base_lrs):
            set_lr(prog.opt, i, lr0 * scale)
        prog.free.fill_(0.0 if step < rigid_steps else 1.0)

    def on_step(step: int, terms: dict[str, Tensor]) -> None:
        if progress is not None and (step % 25 == 0 or step == steps - 1):
            loss_px = float(terms["landmark"].mean())
            progress("stage1", 0.8 * (step + 1) / steps,
                     f"landmarks step {step + 1}/{steps} loss {loss_px:.3f} px^2")

    replays = prog.runner.run(steps, prepare=prepare, on_step=on_step, cancel=cancel)
    with torch.no_grad():
        lmk, _ = prog.loss_fn()
        pts = lmb.landmarks(id_c, exp_c)
        pix = project(rigid_transform(pts, angles, trans), cam)
        err = (pix - target).norm(dim=-1).mean(-1)
    coeffs = {"id": id_c.detach().clone(), "exp": exp_c.detach().clone(),
              "angles": angles.detach().clone(), "trans": trans.detach().clone(),
              "gamma": torch.zeros(b, 27, device=dev)}
    return Stage1Result(coeffs, lmk.detach(), err.detach(), pose_init, source, replays)


def skin_albedo_guess(colors: Tensor, weights: Tensor) -> Tensor:
    """Flat skin albedo ``[B, 3]``: the weighted mean photo skin colour.

    Albedo and light brightness are only known up to a common scale; taking the mean skin
    colour as the albedo keeps the texture at the photo's skin tone and brightness (the fitted
    light then has an average irradiance of about 1) instead of saturating bright photos.

    Args:
        colors: ``[B, P, 3]`` photo colours in [0, 1].
        weights: ``[B, P]`` non-negative.
    """
    mean = (colors * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-6)
    return mean.clamp(0.02, 1.0)


#: ridge weight of :func:`fit_lighting` (relative to the total sample weight): 0.05 held the
#: light near uniform, so a side-lit cheek or a key light's highlight stayed in the unwrapped
#: albedo as a lighter island (BENCHMARKS.md, eighth session: 0.01 lowered the face's colour
#: error and raised PSNR on every photo tried)
LIGHT_REG = 0.01


def fit_lighting(normals_world: Tensor, colors: Tensor, weights: Tensor, albedo: Tensor,
                 reg: float = LIGHT_REG) -> Tensor:
    """SH lighting by ridge-regularised weighted least squares, per colour channel.

    Solves ``min_g sum_p w_p (albedo_c * B(n_p) . (g_c + ambient e0) - I_pc)^2 + reg * |g_c|^2``
    (the DC term free, higher bands regularised more), i.e. toward a uniform light.

    Args:
        normals_world: ``[B, P, 3]`` unit normals of the sampled points.
        colors: ``[B, P, 3]`` photo colours in [0, 1].
        weights: ``[B, P]`` sample weights (0 = unused).
        albedo: ``[B, 3]`` flat albedo guess.
        reg: ridge weight relative to the total sample weight.
    Returns:
        ``[B, 27]`` gamma (channel-major, see :mod:`ffhquv.render.sh`).
    """
    b = colors.shape[0]
    basis = sh_basis(normals_world)  # [B, P, 9]
    band = torch.tensor([0.0, 1, 1, 1, 3, 3, 3, 3, 3], device=colors.device)
    out = torch.zeros(b, 3, 9, device=colors.device)
    for i in range(b):
        wi = weights[i]
        wsum = wi.sum().clamp(min=1e-6)
        for c in range(3):
            a = basis[i] * albedo[i, c]  # [P, 9]
            y = colors[i, :, c] - a[:, 0] * AMBIENT
            ata = (a * wi[:, None]).T @ a / wsum + reg * torch.diag(band)
            aty = (a * wi[:, None]).T @ y / wsum
            out[i, c] = torch.linalg.solve(ata, aty)
    return out.reshape(b, 27)


def visible_vertices(verts_world: Tensor, normals_world: Tensor, cam: Camera,
                     depth: Tensor | None, cos_min: float = 0.3) -> tuple[Tensor, Tensor]:
    """Visibility of vertices from the camera.

    Args:
        verts_world: ``[B, N, 3]`` world points.
        normals_world: ``[B, N, 3]`` world unit normals.
        cam: camera of ``depth`` (its size sets the pixel grid of the returned pixels).
        depth: ``[B, H, W, 1]`` rendered camera depth ``d`` (0 where empty) or None.
        cos_min: minimal cosine between the normal and the direction to the camera.
    Returns:
        ``pix [B, N, 2]`` pixel positions on ``cam``'s raster, ``vis [B, N]`` float in [0, 1]
        (view-angle weight times the depth test).
    """
    pix = project(verts_world, cam)
    view = torch.tensor([0.0, 0.0, cam.distance], device=verts_world.device) - verts_world
    view = view / view.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    cos = (normals_world * view).sum(-1)
    w = ((cos - cos_min) / (1 - cos_min)).clamp(0, 1)
    if depth is not None:
        d_here = cam.distance - verts_world[..., 2]
        d_map = sample_image(depth, pix, mode="nearest")[..., 0]
        tol = 0.02 * cam.distance
        w = w * ((d_map > 0) & (d_here <= d_map + tol)).float()
    inside = ((pix >= 0) & (pix <= cam.size - 1)).all(-1).float()
    return pix, w * inside


def initial_lighting(model: FaceModel, coeffs: dict[str, Tensor], photo: Tensor,
                     photo_skin: Tensor, cam: Camera, depth: Tensor | None = None,
                     ) -> tuple[Tensor, Tensor]:
    """SH lighting from the photo colours over visible skin vertices.

    Args:
        model: the face model.
        coeffs: stage-1 coefficients ``id, exp, angles, trans`` (``[B, ...]``).
        photo: ``[B, H, W, 3]`` the aligned crop in [0, 1] (``cam.size`` raster).
        photo_skin: ``[B, H, W, 1]`` skin weight in [0, 1] (skin mask x parse skin label).
        cam: the camera of ``photo``.
        depth: optional ``[B, H, W, 1]`` rendered depth for occlusion tests.
    Returns:
        ``gamma [B, 27]`` and the flat albedo guess ``[B, 3]``.
    """
    from ffhquv.render.camera import rotate_normals

    verts = model.shape(coeffs["id"], coeffs["exp"])
    normals = rotate_normals(model.vertex_normals(verts), coeffs["angles"])
    world = rigid_transform(verts, coeffs["angles"], coeffs["trans"])
    pix, vis = visible_vertices(world, normals, cam, depth)
    skin_v = model.skin_mask.float()[None]
    wts = vis * skin_v * sample_image(photo_skin, pix, mode="nearest")[..., 0]
    colors = sample_image(photo, pix)
    albedo = skin_albedo_guess(colors, wts)
    if float(wts.sum(1).min()) < 20:  # too little skin seen: ambient light
        return torch.zeros(photo.shape[0], 27, device=photo.device), albedo
    gamma = fit_lighting(normals, colors, wts, albedo)
    return gamma, albedo


def rotation_of(angles: Tensor) -> Tensor:
    """``[B, 3, 3]`` rotation of Euler angles (re-exported for callers of this stage)."""
    return euler_to_rotation(angles)
