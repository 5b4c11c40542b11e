"""Paper mode: the FFHQ-UV fitting with the paper's networks, used when their files are present.

What runs depends on the checkpoints found (:mod:`ffhquv.checkpoints`) and on the face model:

* ``texgan`` (StyleGAN2 UV generator), used when present **and** the face model is
  ``hifi3dpp``: stage-2 latent search and stage-3 joint fit; final texture = GAN synthesis.
* ``deep3d`` (ResNet-50 regressor), present **and** ``hifi3dpp``: stage-1 initialisation (the
  landmark stage then refines it; kept per photo only when it fits the landmarks better than
  the PnP start).
* ``arcface`` (iresnet50), present: identity loss (paper stages; a small weight in the default
  path's stage 3).
* ``vgg`` (TorchScript VGG16 LPIPS), present: perceptual loss (idem).

The texture GAN is trained on the HiFi3D++ UV layout and Deep3D regresses HiFi3D++ coefficients
(id 532 | exp 45 | ... on HiFi3D++ bases): with the ``default`` face model neither means
anything, so they are reported as unused and the default path runs (texture from the photo
unwrap, stage 1 from landmarks). ArcFace and VGG act on rendered images and work with any face
model.

Stages (reference schedule, see ``hifi3dpp-facts.md``):

* stage 2 (:func:`search_latents`, shape fixed): Adam lr 0.1, cosine ramp-down over the last
  25 %; the first half searches a single W (``[B, 1, 512]``, repeated to every layer), the second
  half W+ (``[B, num_ws, 512]``) started from it. Losses: colour 10, identity 10, VGG 100,
  latent regulariser 0.05.
* stage 3 (:func:`fit_joint_paper`): identity / expression / pose / SH / W+ latent jointly,
  Adam lr 0.01 (latent and SH x 0.05, pose x 0.05), ramp-down over the last 40 %. Losses:
  identity 0.2, colour 1.6, ``||id||^2`` 2e-4, ``||exp||^2`` 1.6e-3, SH-gamma 10, latent 0.05,
  landmarks 2e-3.

Latents are FFHQ-UV's normalised ``z`` (``w = z * w_std + w_avg``, :class:`TexGAN`), started
from :meth:`TexGAN.init_z_latents`; the latent regulariser is ``mean(z^2)``. The colour loss is
the mean per-pixel Euclidean RGB distance inside render mask x parse face mask x the model's
skin region (Deep3D's photometric loss); the identity loss ``1 - cos`` of ArcFace embeddings of
the photo and of the render composited over the photo, both aligned to 112 by the 5 points of
the crop landmarks; the VGG loss the squared LPIPS-feature distance of the same two images.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv import vocab
from ffhquv.aligned import CROP_SIZE
from ffhquv.checkpoints import REGISTRY, expected_path, missing_message
from ffhquv.errors import Cancelled
from ffhquv.render.camera import Camera, project, rigid_transform, rotate_normals
from ffhquv.render.renderer import MeshRenderer, RasterOptions, Surface
from services.fitter.facemodel.base import FaceModel
from services.fitter.landmark_bases import LandmarkBases, landmark_weights
from services.fitter.pipeline import FitContext, PhotoBatch, Stage2Result, StagesResult

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]
PAPER_NETWORKS = ("texgan", "deep3d", "arcface", "vgg")
# the UV layout / coefficient layout the paper's networks know
GAN_FACE_MODEL = vocab.FACE_MODEL_HIFI3DPP


@dataclass(frozen=True)
class PaperOptions:
    """How :class:`services.fitter.core.FitterCore` loads the paper's networks.

    Attributes:
        w_stats_samples: z samples for the texture GAN's W statistics when its side file is
            absent (None: FFHQ-UV's 100000).
    """

    w_stats_samples: int | None = None


@dataclass(frozen=True)
class Stage2Config:
    """Reference stage-2 schedule and weights (``hifi3dpp-facts.md``)."""

    steps: int = 100
    lr: float = 0.1
    rampdown: float = 0.25
    w_plus_from: float = 0.5  # fraction of the steps spent in W before W+
    w_color: float = 10.0
    w_id: float = 10.0
    w_vgg: float = 100.0
    w_latent: float = 0.05


@dataclass(frozen=True)
class Stage3Config:
    """Reference stage-3 schedule and weights (``hifi3dpp-facts.md``)."""

    steps: int = 200
    lr: float = 0.01
    latent_lr_mult: float = 0.05
    sh_lr_mult: float = 0.05
    pose_lr_mult: float = 0.05
    rampdown: float = 0.4
    w_id: float = 0.2
    w_color: float = 1.6
    w_id_coeff: float = 2e-4
    w_exp_coeff: float = 1.6e-3
    w_gamma: float = 10.0
    w_latent: float = 0.05
    w_landmark: float = 2e-3


@dataclass(frozen=True)
class DefaultPathWeights:
    """Small identity / perceptual weights added to the default path's stage 3 (photometric
    loss there is an L1 of weight 1)."""

    w_id: float = 0.05
    w_vgg: float = 0.5


def lr_ramp(frac: float, rampdown: float) -> float:
    """Cosine ramp-down of the learning rate over the last ``rampdown`` of the steps:
    1 before, ``0.5 (1 + cos(pi t))`` with ``t`` in [0, 1] across it (StyleGAN2 projector)."""
    start = 1.0 - rampdown
    if rampdown <= 0 or frac < start:
        return 1.0
    t = min((frac - start) / rampdown, 1.0)
    return 0.5 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- networks

@dataclass
class PaperMode:
    """The loaded paper networks and which of them this face model can use.

    Attributes:
        nets: :class:`services.fitter.paper.PaperNetworks` (None entries: missing / broken).
        face_model: face-model name of the fitter.
        status: network -> one line for ``report.json`` (``"used: ..."``, ``"missing: ..."``,
            ``"unused: ..."``).
        notes: the same lines for missing / unused networks (also logged once at load).
    """

    nets: object
    face_model: str
    status: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def use_texgan(self) -> bool:
        return self.nets.texgan is not None and self.face_model == GAN_FACE_MODEL

    @property
    def use_deep3d(self) -> bool:
        return self.nets.deep3d is not None and self.face_model == GAN_FACE_MODEL

    @property
    def arcface(self):
        return self.nets.arcface

    @property
    def vgg(self):
        return self.nets.vgg

    @classmethod
    def load(cls, checkpoints_dir: str | Path, face_model: str, device: torch.device | str,
             w_stats_samples: int | None = None) -> PaperMode:
        """Load every paper network present under ``checkpoints_dir`` onto ``device``.

        Missing or unusable files are logged once each (WARNING, naming the expected path and
        the default used instead) by :func:`ffhquv.checkpoints.load_optional`.
        """
        from services.fitter.paper import load_paper_networks

        nets = load_paper_networks(checkpoints_dir, str(device), w_stats_samples)
        pm = cls(nets=nets, face_model=face_model)
        for name in PAPER_NETWORKS:
            c = REGISTRY[name]
            net = getattr(nets, name)
            if net is None:
                p = expected_path(name, checkpoints_dir)
                if p is not None and p.is_file():
                    msg = f"unusable: {c.filename} at {p} could not be loaded: {c.default}"
                else:
                    msg = f"missing: {missing_message(name, checkpoints_dir)}"
                pm.status[name] = msg
                pm.notes.append(msg)
            elif name in ("texgan", "deep3d") and face_model != GAN_FACE_MODEL:
                what = ("the GAN's textures are laid out on the HiFi3D++ UVs"
                        if name == "texgan" else "it regresses HiFi3D++ coefficients")
                msg = (f"unused: {c.filename} found but face model {face_model!r} is not "
                       f"{GAN_FACE_MODEL!r} ({what}); {c.default} (use --face-model hifi3dpp)")
                pm.status[name] = msg
                pm.notes.append(msg)
                log.warning(msg)
            else:
                pm.status[name] = f"used: {c.network}"
        return pm


def no_checkpoints_status() -> dict[str, str]:
    """``paper_networks`` of ``report.json`` when no checkpoints directory is configured."""
    return {n: f"missing: no checkpoints directory set: {REGISTRY[n].default}"
            for n in PAPER_NETWORKS}


# ----------------------------------------------------------------------------- stage 1

def deep3d_coefficients(deep3d, photo: Tensor, model: FaceModel) -> dict[str, Tensor]:
    """Stage-1 coefficients regressed from the 224 crops (HiFi3D++ layout).

    Args:
        deep3d: :class:`services.fitter.paper.deep3d.Deep3D`.
        photo: ``[B, 224, 224, 3]`` aligned crops in [0, 1] (row 0 at the top).
        model: the face model; its ``id_dim`` / ``exp_dim`` leading coefficients are kept
            (zero padded when the model has more).
    Returns:
        ``id [B, K_id]``, ``exp [B, K_exp]``, ``angles [B, 3]`` (radians), ``trans [B, 3]``,
        ``gamma [B, 27]`` on the model's device. The camera of Deep3D (focal 1015, centre 112,
        distance 10) is :class:`ffhquv.render.camera.Camera`'s, so no conversion is needed.
    """
    with torch.no_grad():
        out = deep3d(photo.permute(0, 3, 1, 2).contiguous())
    dev = model.device

    def fit(x: Tensor, k: int) -> Tensor:
        x = x.to(dev, torch.float32)
        if x.shape[1] >= k:
            return x[:, :k].contiguous()
        return F.pad(x, (0, k - x.shape[1]))

    return {"id": fit(out["id"], model.id_dim), "exp": fit(out["exp"], model.exp_dim),
            "angles": out["angle"].to(dev, torch.float32),
            "trans": out["trans"].to(dev, torch.float32),
            "gamma": out["gamma"].to(dev, torch.float32)}


# ----------------------------------------------------------------------------- losses

class ImageLosses:
    """Identity (ArcFace) and perceptual (VGG) losses of renders against the photos.

    Args:
        arcface / vgg: the loaded networks or None (the term is then absent).
        photo: ``[B, H, W, 3]`` photos in [0, 1] on the raster the renders will have.
        lm2d: ``[B, 68, 2]`` landmarks in 224-crop pixels (scaled to the raster here).
    """

    def __init__(self, arcface, vgg, photo: Tensor, lm2d: Tensor):
        self.arcface, self.vgg = arcface, vgg
        self.photo = photo.permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]
        if arcface is not None:
            from services.fitter.paper.arcface import lm68_to_lm5

            # 224-crop landmarks onto this raster (pixel centres at integers, as
            # F.interpolate(align_corners=False) resized the photo): k (x + 0.5) - 0.5
            k = photo.shape[1] / CROP_SIZE
            self.lm5 = (lm68_to_lm5(lm2d.float()) + 0.5) * k - 0.5
            with torch.no_grad():
                self.emb_photo = arcface(self.photo, self.lm5)
        if vgg is not None:
            with torch.no_grad():
                self.feat_photo = vgg.features(self.photo)

    @property
    def active(self) -> bool:
        return self.arcface is not None or self.vgg is not None

    def __call__(self, image: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Per-photo terms of a render.

        Args:
            image: ``[B, H, W, 3]`` render; mask: ``[B, H, W, 1]`` render coverage.
        Returns:
            ``{"identity": [B] 1 - cos, "vgg": [B] squared LPIPS distance}`` (present networks).
        """
        comp = (image * mask + self.photo.permute(0, 2, 3, 1) * (1 - mask)).permute(0, 3, 1, 2)
        out: dict[str, Tensor] = {}
        if self.arcface is not None:
            emb = self.arcface(comp, self.lm5)
            out["identity"] = 1 - F.cosine_similarity(emb, self.emb_photo, dim=-1)
        if self.vgg is not None:
            out["vgg"] = (self.vgg.features(comp) - self.feat_photo).square().sum(-1)
        return out


def default_path_terms(losses: ImageLosses, w: DefaultPathWeights | None = None
                       ) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    """The extra stage-3 terms of the default path: ``image [B,H,W,3], mask [B,H,W,1] ->
    {"identity": [B], "vgg": [B]}`` weighted by :class:`DefaultPathWeights`."""
    w = w or DefaultPathWeights()

    def terms(image: Tensor, mask: Tensor) -> dict[str, Tensor]:
        t = losses(image, mask)
        out = {}
        if "identity" in t:
            out["identity"] = w.w_id * t["identity"]
        if "vgg" in t:
            out["vgg"] = w.w_vgg * t["vgg"]
        return out

    return terms


def _face_coverage(rast: Tensor, face_tri_mask: Tensor) -> Tensor:
    """``[B, H, W, 1]`` 1 where the visible triangle belongs to the face region."""
    tid = rast[..., 3].long() - 1
    ok = torch.zeros_like(tid, dtype=torch.float32)
    valid = tid >= 0
    ok[valid] = face_tri_mask[tid[valid]].float()
    return ok[..., None]


class _Scene:
    """Renders the face model with a UV texture and gives the colour-loss mask."""

    def __init__(self, model: FaceModel, cam: Camera, backend, photo: Tensor, photo_mask: Tensor):
        self.model, self.cam, self.backend = model, cam, backend
        self.renderer = MeshRenderer(cam, backend)
        self.photo = photo
        self.pmask = (photo_mask > 0.5).float()
        self.skin_attr = model.skin_mask.float()[None, :, None]
        self.tri32 = model.tri.to(torch.int32).contiguous()

    def geometry(self, c: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``world [B, N, 3]``, ``normals [B, N, 3]`` of coefficients ``c``."""
        m = self.model
        verts = m.shape(c["id"], c["exp"])
        world = rigid_transform(verts, c["angles"], c["trans"])
        return world, rotate_normals(m.vertex_normals(verts), c["angles"])

    def render(self, world: Tensor, nrm: Tensor, tex: Tensor, gamma: Tensor):
        """Render with ``tex [B, S, S, 3]`` (row 0 = v = 1); returns the render output and the
        colour mask ``[B, H, W, 1]`` (render x parse face x model skin x face triangles)."""
        m = self.model
        out = self.renderer.render(world, m.tri,
                                   Surface(normals=nrm, uv=m.uv, uv_tri=m.uv_tri, texture=tex),
                                   gamma=gamma, options=RasterOptions(antialias=True))
        b = world.shape[0]
        skin_px = self.backend.interpolate(self.skin_attr.expand(b, -1, -1).contiguous(),
                                           out.rast, self.tri32)
        cmask = (out.mask * self.pmask * (skin_px > 0.5).float()
                 * _face_coverage(out.rast, m.face_tri_mask))
        return out, cmask

    def color_loss(self, image: Tensor, cmask: Tensor) -> Tensor:
        """``[B]`` mean per-pixel Euclidean RGB distance inside ``cmask``."""
        d = ((image - self.photo).square().sum(-1, keepdim=True) + 1e-8).sqrt()
        return (d * cmask).sum((1, 2, 3)) / cmask.sum((1, 2, 3)).clamp(min=1.0)


def gan_texture(texgan, z: Tensor) -> Tensor:
    """``z [B, L, Z]`` normalised latents -> ``[B, R, R, 3]`` texture (row 0 = v = 1), [0, 1]."""
    return texgan.synthesis(texgan.map_z_to_w(z)).clamp(0, 1).permute(0, 2, 3, 1)


def resize_texture(tex: Tensor, size: int) -> Tensor:
    """``[B, R, R, 3]`` -> ``[B, size, size, 3]`` (area down, bicubic up, clamped to [0, 1])."""
    if tex.shape[1] == size:
        return tex
    x = tex.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="area") if size < tex.shape[1] else \
        F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("fit cancelled")


# ----------------------------------------------------------------------------- stage 2

@dataclass
class LatentSearchResult:
    z: Tensor  # [B, num_ws, z_dim] detached normalised W+ latents
    losses: dict[str, list[float]]  # final per-photo weighted terms


def search_latents(texgan, ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, Tensor],
                   losses: ImageLosses | None, cfg: Stage2Config | None = None
                   ) -> LatentSearchResult:
    """Stage 2: the GAN latent whose texture, rendered on the fixed stage-1 geometry, best
    matches the photo (W for the first ``w_plus_from`` of the steps, then W+).

    Args:
        texgan: :class:`services.fitter.paper.stylegan2.TexGAN` (HiFi3D++ UV layout).
        ctx: the fit's (hifi3dpp) face model, 224 camera, backend, progress and cancel.
        photos: ``photo [B, 224, 224, 3]`` crops in [0, 1], ``mask [B, 224, 224, 1]``.
        coeffs: ``id, exp, angles, trans, gamma`` ``[B, ...]`` (held fixed).
        losses: identity / VGG terms (None or inactive: colour + latent only).
    Returns:
        :class:`LatentSearchResult`.
    """
    model, cam, backend = ctx.model, ctx.cam, ctx.backend
    progress, cancel = ctx.progress, ctx.cancel
    photo, photo_mask = photos.photo, photos.mask
    cfg = cfg or Stage2Config()
    b = photo.shape[0]
    scene = _Scene(model, cam, backend, photo, photo_mask)
    with torch.no_grad():
        world, nrm = scene.geometry(coeffs)
    gamma = coeffs["gamma"].detach()
    z0 = texgan.init_z_latents(b)  # [B, L, Z]
    steps = max(int(cfg.steps), 0)
    n_w = int(round(steps * cfg.w_plus_from))
    z = z0[:, :1].clone().requires_grad_()
    opt = torch.optim.Adam([z], lr=cfg.lr, betas=(0.9, 0.999))
    last: dict[str, Tensor] = {}

    def evaluate(zz: Tensor) -> dict[str, Tensor]:
        tex = gan_texture(texgan, zz)
        out, cm = scene.render(world, nrm, tex, gamma)
        t = {"color": cfg.w_color * scene.color_loss(out.image, cm),
             "latent": cfg.w_latent * zz.square().mean((1, 2))}
        if losses is not None and losses.active:
            extra = losses(out.image, out.mask)
            if "identity" in extra:
                t["identity"] = cfg.w_id * extra["identity"]
            if "vgg" in extra:
                t["vgg"] = cfg.w_vgg * extra["vgg"]
        return t

    for step in range(steps):
        _check(cancel)
        if step == n_w:  # W -> W+: one latent per layer, started from the W found so far
            z = z.detach().repeat(1, texgan.num_ws, 1).requires_grad_()
            opt = torch.optim.Adam([z], lr=cfg.lr, betas=(0.9, 0.999))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_ramp(step / max(steps - 1, 1), cfg.rampdown)
        opt.zero_grad(set_to_none=True)
        terms = evaluate(z)
        sum(terms.values()).sum().backward()
        opt.step()
        last = {k: v.detach() for k, v in terms.items()}
        if progress is not None:
            space = "W" if step < n_w else "W+"
            progress("stage2", (step + 1) / max(steps, 1),
                     f"latent search ({space}) step {step + 1}/{steps} colour "
                     f"{float(last['color'].mean()):.4f}")
    zf = z.detach()
    if zf.shape[1] == 1:
        zf = zf.repeat(1, texgan.num_ws, 1)
    if not last:
        with torch.no_grad():
            last = {k: v.detach() for k, v in evaluate(zf).items()}
    return LatentSearchResult(z=zf, losses={k: v.cpu().tolist() for k, v in last.items()})


# ----------------------------------------------------------------------------- stage 3

@dataclass
class JointResult:
    coeffs: dict[str, Tensor]  # detached [B, ...]
    z: Tensor  # [B, num_ws, z_dim]
    losses: dict[str, list[float]]


def fit_joint_paper(texgan, ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, Tensor],
                    z: Tensor, losses: ImageLosses | None, cfg: Stage3Config | None = None,
                    ) -> JointResult:
    """Stage 3: identity, expression, pose, SH lighting and the W+ latent jointly.

    Args:
        texgan: the texture GAN; z: ``[B, num_ws, z_dim]`` stage-2 latents.
        ctx: the fit's face model, 224 camera, backend, progress and cancel.
        photos: ``lm [B, 68, 2]`` crop landmarks (224 pixels), ``photo`` / ``mask``
            ``[B, 224, 224, 3]`` / ``[B, 224, 224, 1]``.
        coeffs: ``id, exp, angles, trans, gamma`` ``[B, ...]``.
    Returns:
        :class:`JointResult`.
    """
    model, cam, backend = ctx.model, ctx.cam, ctx.backend
    progress, cancel = ctx.progress, ctx.cancel
    lm2d, photo, photo_mask = photos.lm, photos.photo, photos.mask
    cfg = cfg or Stage3Config()
    b = photo.shape[0]
    dev = photo.device
    scene = _Scene(model, cam, backend, photo, photo_mask)
    p = {k: v.detach().clone().requires_grad_() for k, v in coeffs.items()}
    zz = z.detach().clone().requires_grad_()
    opt = torch.optim.Adam([
        {"params": [p["id"], p["exp"]], "lr": cfg.lr},
        {"params": [p["angles"], p["trans"]], "lr": cfg.lr * cfg.pose_lr_mult},
        {"params": [p["gamma"]], "lr": cfg.lr * cfg.sh_lr_mult},
        {"params": [zz], "lr": cfg.lr * cfg.latent_lr_mult},
    ])
    base = [g["lr"] for g in opt.param_groups]
    lmb = LandmarkBases.of(model)
    wl = landmark_weights(dev)
    wl = wl / wl.sum()
    steps = max(int(cfg.steps), 0)
    last: dict[str, Tensor] = {}

    def evaluate() -> dict[str, Tensor]:
        world, nrm = scene.geometry(p)
        tex = gan_texture(texgan, zz)
        out, cm = scene.render(world, nrm, tex, p["gamma"])
        pix = project(rigid_transform(lmb.landmarks(p["id"], p["exp"]), p["angles"],
                                      p["trans"]), cam)
        g = p["gamma"].view(b, 3, 9)
        t = {"color": cfg.w_color * scene.color_loss(out.image, cm),
             "landmark": cfg.w_landmark * (((pix - lm2d) ** 2).sum(-1) * wl).sum(-1),
             "id": cfg.w_id_coeff * p["id"].square().sum(-1),
             "exp": cfg.w_exp_coeff * p["exp"].square().sum(-1),
             "gamma": cfg.w_gamma * (g - g.mean(1, keepdim=True)).square().mean((1, 2)),
             "latent": cfg.w_latent * zz.square().mean((1, 2))}
        if losses is not None and losses.active:
            extra = losses(out.image, out.mask)
            if "identity" in extra:
                t["identity"] = cfg.w_id * extra["identity"]
        return t

    for step in range(steps):
        _check(cancel)
        r = lr_ramp(step / max(steps - 1, 1), cfg.rampdown)
        for g, lr0 in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr0 * r
        opt.zero_grad(set_to_none=True)
        terms = evaluate()
        sum(terms.values()).sum().backward()
        opt.step()
        last = {k: v.detach() for k, v in terms.items()}
        if progress is not None:
            progress("stage3", (step + 1) / max(steps, 1),
                     f"joint step {step + 1}/{steps} colour {float(last['color'].mean()):.4f} "
                     f"lmk {float(last['landmark'].mean()):.4f}")
    if not last:
        with torch.no_grad():
            last = {k: v.detach() for k, v in evaluate().items()}
    return JointResult(coeffs={k: v.detach() for k, v in p.items()}, z=zz.detach(),
                       losses={k: v.cpu().tolist() for k, v in last.items()})


class PaperStages:
    """Stages 2 and 3 of paper mode (:class:`services.fitter.pipeline.StagePlan`), as
    :class:`services.fitter.core.FitterCore` runs them: StyleGAN2 latent search on the fixed
    stage-1 geometry, then the joint fit of geometry, light and the W+ latent.

    Args:
        pm: the paper networks (``pm.use_texgan`` must be True).

    Stage 2's textures are :class:`services.fitter.texture.CompletedTexture` (the GAN texture
    at ``ctx.tex_size``; ``observed`` / ``combined`` = the UV atlas mask: the GAN fills every
    texel); stage 3 returns ``latents`` ``{"z": [B, L, Z], "w_plus": [B, L, W]}`` numpy
    float32 and the stage-3 losses with the stage-2 ones as ``stage2_<name>``. The step counts
    are the preset's ``paper_stage2_steps`` / ``paper_stage3_steps``.
    """

    def __init__(self, pm: PaperMode):
        self.pm = pm
        self.texgan = pm.nets.texgan
        self._image_losses: tuple[PhotoBatch, ImageLosses | None] | None = None

    def _losses(self, photos: PhotoBatch) -> ImageLosses | None:
        """The identity / VGG terms of these photos (their embeddings computed once)."""
        pm = self.pm
        if self._image_losses is None or self._image_losses[0] is not photos:
            losses = ImageLosses(pm.arcface, pm.vgg, photos.photo, photos.lm) if (
                pm.arcface is not None or pm.vgg is not None) else None
            self._image_losses = (photos, losses)
        return self._image_losses[1]

    def stage2(self, ctx: FitContext, photos: PhotoBatch,
               coeffs: dict[str, Tensor]) -> Stage2Result:
        from services.fitter.texture import CompletedTexture, host_array, uv_maps

        texgan, tex_size = self.texgan, ctx.tex_size
        b = photos.photo.shape[0]
        ctx.progress("stage2", 0.0, "StyleGAN2 latent search")
        s2 = search_latents(texgan, ctx, photos, coeffs, self._losses(photos),
                            Stage2Config(steps=ctx.preset.paper_stage2_steps))
        with torch.no_grad():
            tex2 = resize_texture(gan_texture(texgan, s2.z), tex_size)
            maps = uv_maps(ctx.model, tex_size, ctx.backend)
        atlas = host_array(maps, "mask").astype(np.float32)
        tex2_np = tex2.cpu().numpy()
        textures = [CompletedTexture(
            texture=np.clip(tex2_np[i], 1.0 / 255, 1.0).astype(np.float32),
            observed=atlas.copy(), combined=atlas.copy(),
            skin_color=np.median(tex2_np[i][atlas > 0.5], axis=0)
            if (atlas > 0.5).any() else np.full(3, 0.5, np.float32))
            for i in range(b)]
        ctx.progress("stage2", 1.0, "latent search done")
        return Stage2Result(textures=textures, losses=dict(s2.losses), latent=s2.z)

    def stage3(self, ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, Tensor],
               s2: Stage2Result) -> StagesResult:
        texgan = self.texgan
        s3 = fit_joint_paper(texgan, ctx, photos, coeffs, s2.latent, self._losses(photos),
                             Stage3Config(steps=ctx.preset.paper_stage3_steps))
        with torch.no_grad():
            final = resize_texture(gan_texture(texgan, s3.z), ctx.tex_size).clamp(1.0 / 255,
                                                                                 1.0)
            w = texgan.map_z_to_w(s3.z)
        latents = {"z": s3.z.cpu().numpy().astype(np.float32),
                   "w_plus": w.cpu().numpy().astype(np.float32)}
        ctx.progress("stage3", 1.0, "done")
        losses3 = dict(s3.losses)
        for k, v in s2.losses.items():
            losses3[f"stage2_{k}"] = v
        return StagesResult(textures=s2.textures, final=final.contiguous(), coeffs=s3.coeffs,
                            losses=losses3, latents=latents)
