"""Stage 3: joint optimisation of identity, expression, pose, SH lighting and texture.

The texture is the stage-2 texture (downsampled to the preset's ``tex_opt_size``) plus a
Laplacian pyramid of texel offsets (e.g. 32, 64, 128, 256 texels per side) that are upsampled
and summed: coarse levels move large regions cheaply, fine levels add detail, and the
smoothness regulariser acts per level. Losses:

* landmarks: the weighted landmark loss of stage 1 (pixels^2, scaled);
* photometric: mean absolute colour error inside render mask x parse-face mask x skin mask,
  rendered through :class:`ffhquv.render.renderer.MeshRenderer` at the preset's raster size
  (antialiased);
* regularisers: ``||id||^2``, ``||exp||^2``; gamma toward white low-order light (RGB spread of
  the coefficients, band-2 energy, distance to the stage-1 lighting); texel offsets: L2,
  total variation per level, left/right symmetry through the mirror lookup.

The final full-size texture is the stage-2 texture plus the optimised offsets upsampled to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.render.camera import project, rigid_transform, rotate_normals
from ffhquv.render.renderer import MeshRenderer, RasterOptions, RenderOutput, Surface
from services.fitter.graphs import StepRunner, graphs_enabled, make_adam, set_lr
from services.fitter.landmark_bases import LandmarkBases, landmark_weights
from services.fitter.pipeline import FitContext, PhotoBatch

Progress = Callable[[str, float, str], None]

# px^2 on the stage-3 raster: pixels of smaller (edge-on) triangles give no barycentric
# gradient (see ffhquv.render.renderer.sliver_pixels)
SLIVER_AREA = 0.5


@dataclass
class Stage3Weights:
    """Loss weights of stage 3 (photometric loss in [0, 1] colour units)."""

    landmark: float = 2e-3  # per px^2
    photo: float = 1.0
    id: float = 2e-4
    exp: float = 4e-4
    gamma_rgb: float = 1.0
    gamma_band2: float = 0.1
    gamma_init: float = 0.05
    tex_l2: float = 0.5
    tex_tv: float = 2.0
    tex_sym: float = 2.0


class TexturePyramid(torch.nn.Module):
    """Texel offsets as a sum of upsampled levels.

    Args:
        batch: B.
        levels: level sides, ascending, the last one is the output side.
    Forward returns ``[B, S, S, 3]`` (row 0 = v = 1) offsets.
    """

    def __init__(self, batch: int, levels: tuple[int, ...], device: torch.device):
        super().__init__()
        self.size = levels[-1]
        self.levels = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(batch, 3, s, s, device=device)) for s in levels])

    def forward(self) -> Tensor:
        out = None
        for p in self.levels:
            up = p if p.shape[-1] == self.size else F.interpolate(
                p, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out = up if out is None else out + up
        return out.permute(0, 2, 3, 1)

    def tv(self) -> Tensor:
        """``[B]`` total variation (mean squared differences) summed over levels."""
        t = 0
        for p in self.levels:
            t = t + ((p[..., 1:, :] - p[..., :-1, :]) ** 2).mean((1, 2, 3)) + (
                (p[..., :, 1:] - p[..., :, :-1]) ** 2).mean((1, 2, 3))
        return t

    def upsampled(self, size: int) -> Tensor:
        """``[B, size, size, 3]`` offsets at another resolution (bilinear)."""
        off = self().permute(0, 3, 1, 2)
        return F.interpolate(off, size=(size, size), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)


@dataclass
class Stage3Result:
    coeffs: dict[str, Tensor]  # detached [B, ...]
    offsets: TexturePyramid
    losses: dict[str, list[float]]  # final per-photo values of each loss term
    render: Tensor  # [B, H, W, 3] final render at the raster size
    render_mask: Tensor  # [B, H, W, 1]
    graph_steps: int = 0  # steps that ran as CUDA-graph replays


def fit_joint(ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, Tensor], base_tex: Tensor,
              mirror: Tensor | None = None, gate: Tensor | None = None,
              weights: Stage3Weights | None = None,
              extra_terms: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None,
              ) -> Stage3Result:
    """Jointly refine shape, expression, pose, lighting and texels against the photo.

    Args:
        ctx: the fit's model, 224 camera, backend, preset (steps, learning rates, raster size,
            pyramid levels), progress and cancel (:class:`services.fitter.pipeline.FitContext`).
        photos: ``lm [B, 68, 2]`` crop landmarks (224 pixels), ``photo [B, 224, 224, 3]``
            aligned crop in [0, 1], ``mask [B, 224, 224, 1]`` parse-face x skin mask in [0, 1].
        coeffs: stage-1 coefficients ``id, exp, angles, trans, gamma`` ``[B, ...]``.
        base_tex: ``[B, S, S, 3]`` stage-2 albedo at ``preset.tex_opt_size`` (row 0 = v = 1).
        mirror: optional ``[S * S]`` flat mirror-texel lookup at ``tex_opt_size``.
        gate: optional ``[B, S, S, 1]`` in [0, 1] multiplying the texel offsets (the stage-2
            own-view confidence): texels the photo did not show, or showed as hair / shadow,
            keep their stage-2 value instead of drifting under the coarse pyramid levels.
        extra_terms: optional ``(image [B, H, W, 3], render_mask [B, H, W, 1]) -> {name: [B]}``
            weighted loss terms added to the objective (paper mode's ArcFace identity and VGG
            perceptual losses, :func:`services.fitter.paper_mode.default_path_terms`).
    Returns:
        :class:`Stage3Result`.
    Raises:
        Cancelled: when ``cancel`` is set (checked every step).
    """
    model, cam, backend, preset = ctx.model, ctx.cam, ctx.backend, ctx.preset
    progress, cancel = ctx.progress, ctx.cancel
    lm2d, photo, photo_mask = photos.lm, photos.photo, photos.mask
    wt = weights or Stage3Weights()
    dev = model.device
    b = lm2d.shape[0]
    params = {k: v.detach().clone().requires_grad_() for k, v in coeffs.items()}
    gamma0 = coeffs["gamma"].detach()
    pyr = TexturePyramid(b, tuple(preset.tex_levels), dev)
    # CUDA graphs need every op of the step capturable; paper mode's networks are not vetted
    graph = graphs_enabled(dev, backend) and extra_terms is None
    groups = [
        {"params": [params["id"], params["exp"]], "lr": preset.stage3_lr},
        {"params": [params["angles"], params["trans"]], "lr": preset.stage3_pose_lr},
        {"params": [params["gamma"]], "lr": preset.stage3_gamma_lr},
        {"params": list(pyr.parameters()), "lr": preset.stage3_tex_lr},
    ]
    base_lrs = [g["lr"] for g in groups]
    opt = make_adam(groups, graph=graph)
    lmb = LandmarkBases.of(model)
    wl = landmark_weights(dev)
    wl = wl / wl.sum()
    rcam = cam.scaled(preset.raster_size) if preset.raster_size != cam.size else cam
    renderer = MeshRenderer(rcam, backend)
    if preset.raster_size != photo.shape[1]:
        photo_r = F.interpolate(photo.permute(0, 3, 1, 2), size=preset.raster_size,
                                mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        pmask_r = F.interpolate(photo_mask.permute(0, 3, 1, 2), size=preset.raster_size,
                                mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    else:
        photo_r, pmask_r = photo, photo_mask
    # skin vertices only, for the photometric mask (no eyes / mouth interior of the model)
    skin_attr = model.skin_mask.float()[None, :, None].expand(b, -1, -1).contiguous()
    band2 = torch.zeros(9, device=dev)
    band2[4:] = 1.0
    steps = preset.stage3_steps
    last: dict[str, Tensor] = {}
    tri32 = model.tri.to(torch.int32).contiguous()
    # graph mode: rasterised eagerly before each replay, differentiated inside the graph
    static_rast = (torch.zeros(b, preset.raster_size, preset.raster_size, 4, device=dev)
                   if graph else None)

    def geometry() -> tuple[Tensor, Tensor]:
        verts = model.shape(params["id"], params["exp"])
        return verts, rigid_transform(verts, params["angles"], params["trans"])

    def evaluate(rast: Tensor | None = None) -> tuple[dict[str, Tensor], RenderOutput]:
        verts, world = geometry()
        nrm = rotate_normals(model.vertex_normals(verts), params["angles"])
        off = pyr() if gate is None else pyr() * gate
        tex = (base_tex + off).clamp(0, 1)
        out = renderer.render(world, model.tri,
                              Surface(normals=nrm, uv=model.uv, uv_tri=model.uv_tri, texture=tex),
                              gamma=params["gamma"], rast=rast,
                              options=RasterOptions(antialias=True, min_grad_area=SLIVER_AREA))
        # region of the model's skin triangles inside the face area
        skin_px = backend.interpolate(skin_attr, out.rast, tri32)
        face_cov = _face_coverage(out.rast, model.face_tri_mask)
        m = out.mask * (pmask_r > 0.5).float() * (skin_px > 0.5).float() * face_cov
        if gate is not None and out.uv is not None:
            # only pixels whose texels stage 2 saw (not shadow / hair excluded, not mirrored)
            g_px = F.grid_sample(gate.permute(0, 3, 1, 2), out.uv.detach() * 2 - 1,
                                 mode="bilinear", padding_mode="border", align_corners=False)
            m = m * (g_px.permute(0, 2, 3, 1) > 0.7).float()
        msum = m.sum((1, 2, 3)).clamp(min=1.0)
        photo_l = ((out.image - photo_r).abs() * m).sum((1, 2, 3)) / (3 * msum)
        pts = lmb.landmarks(params["id"], params["exp"])
        pix = project(rigid_transform(pts, params["angles"], params["trans"]), cam)
        lmk = (((pix - lm2d) ** 2).sum(-1) * wl).sum(-1)
        g = params["gamma"].view(b, 3, 9)
        g_rgb = ((g - g.mean(1, keepdim=True)) ** 2).mean((1, 2))
        g_b2 = ((g**2) * band2).sum((1, 2))
        g_init = ((params["gamma"] - gamma0) ** 2).sum(-1)
        t_l2 = (off**2).mean((1, 2, 3))
        t_tv = pyr.tv()
        if mirror is not None:
            flat = off.reshape(b, -1, 3)
            t_sym = ((flat - flat[:, mirror]) ** 2).mean((1, 2))
        else:
            t_sym = torch.zeros(b, device=dev)
        terms = {
            "landmark": wt.landmark * lmk, "photo": wt.photo * photo_l,
            "id": wt.id * (params["id"] ** 2).sum(-1), "exp": wt.exp * (params["exp"] ** 2).sum(-1),
            "gamma": wt.gamma_rgb * g_rgb + wt.gamma_band2 * g_b2 + wt.gamma_init * g_init,
            "tex": wt.tex_l2 * t_l2 + wt.tex_tv * t_tv + wt.tex_sym * t_sym,
        }
        if extra_terms is not None:
            terms.update(extra_terms(out.image, out.mask))
        return terms, out

    def prepare(step: int) -> None:
        frac = step / max(steps - 1, 1)
        ramp = 1.0 if frac < 0.6 else 0.5 * (1 + math.cos(math.pi * (frac - 0.6) / 0.4))
        for i, lr0 in enumerate(base_lrs):
            set_lr(opt, i, lr0 * max(ramp, 0.05))
        if static_rast is not None:
            with torch.no_grad():
                static_rast.copy_(renderer.rasterize(geometry()[1], model.tri))

    def body() -> dict[str, Tensor]:
        # nothing of this step's autograd graph may outlive it: a graph kept alive across the
        # warm-up / capture boundary ties gradient accumulation to the wrong CUDA stream
        terms, _ = evaluate(static_rast)
        sum(terms.values()).sum().backward()
        opt.step()
        return {k: v.detach() for k, v in terms.items()}

    def on_step(step: int, terms: dict[str, Tensor]) -> None:
        nonlocal last
        last = terms
        # float() synchronises a GPU: report losses every 10 steps only, so the host can queue
        # the next steps while the device works
        if progress is not None and (step % 10 == 9 or step == steps - 1):
            progress("stage3", (step + 1) / steps,
                     f"joint step {step + 1}/{steps} photo {float(last['photo'].mean()):.4f} "
                     f"lmk {float(last['landmark'].mean()):.4f}")

    replays = StepRunner(opt, body, prepare, graph=graph).run(steps, on_step=on_step,
                                                              cancel=cancel)
    with torch.no_grad():
        terms, out = evaluate()
        last = {k: v.detach() for k, v in terms.items()}
    return Stage3Result(
        coeffs={k: v.detach() for k, v in params.items()}, offsets=pyr,
        losses={k: v.cpu().tolist() for k, v in last.items()},
        render=out.image.detach(), render_mask=out.mask.detach(), graph_steps=replays)


def _face_coverage(rast: Tensor, face_tri_mask: Tensor) -> Tensor:
    """``[B, H, W, 1]`` 1 where the visible triangle belongs to the face region."""
    tid = rast[..., 3].long() - 1
    # a gather, not boolean indexing: no host synchronisation (CUDA-graph safe)
    ok = face_tri_mask[tid.clamp(min=0)] & (tid >= 0)
    return ok.float()[..., None]
