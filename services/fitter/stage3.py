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
from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ffhquv.render.camera import project, rigid_transform, rotate_normals, to_clip
from ffhquv.render.renderer import (
    MeshRenderer,
    RasterOptions,
    RenderOutput,
    Surface,
    take_rows,
)
from services.fitter.graphs import (
    StepRunner,
    cached_program,
    compiled,
    graphs_enabled,
    make_adam,
    set_lr,
)
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

    @torch.no_grad()
    def copy(self) -> TexturePyramid:
        """A pyramid with copies of these offsets (no gradients)."""
        sizes = tuple(p.shape[-1] for p in self.levels)
        out = TexturePyramid(self.levels[0].shape[0], sizes, self.levels[0].device)
        for dst, src in zip(out.levels, self.levels, strict=True):
            dst.copy_(src)
        return out

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


class _JointProgram:
    """Stage 3's step and every tensor it reads, for one batch size and setting.

    On CUDA with graphs (:func:`services.fitter.graphs.graphs_enabled`) it is kept per face
    model (:func:`services.fitter.graphs.cached_program`, keyed by :func:`_program_key`):
    the first fit records the step, later fits :meth:`load` their inputs into the same
    tensors and replay it. Elsewhere a fit builds its own and runs it eagerly.

    Args:
        ctx: the fit's model, camera, backend and preset (its per-fit parts are not kept).
        shapes: the stage-1 coefficients (their shapes), ``b`` photos.
        mirror_size: texels of the flat mirror lookup (None: no symmetry term).
        has_gate: whether the offsets are gated (``gate`` given to :meth:`load`).
        wt: the loss weights.
        graph: record and replay the step (CUDA).
        extra_terms: paper mode's extra loss terms (never with ``graph``).
    """

    def __init__(self, ctx: FitContext, shapes: dict[str, Tensor], mirror_size: int | None,
                 has_gate: bool, wt: Stage3Weights, graph: bool,
                 extra_terms: Callable[[Tensor, Tensor], dict[str, Tensor]] | None):
        model, cam, backend, preset = ctx.model, ctx.cam, ctx.backend, ctx.preset
        dev = model.device
        b = shapes["id"].shape[0]
        r, s = preset.raster_size, preset.tex_opt_size
        self.params = params = {k: torch.zeros_like(v, device=dev).requires_grad_()
                                for k, v in shapes.items()}
        self.gamma0 = gamma0 = torch.zeros_like(params["gamma"], requires_grad=False)
        self.pyr = pyr = TexturePyramid(b, tuple(preset.tex_levels), dev)
        self.lm2d = lm2d = torch.zeros(b, 68, 2, device=dev)
        self.photo_r = photo_r = torch.zeros(b, r, r, 3, device=dev)
        self.pmask_r = pmask_r = torch.zeros(b, r, r, 1, device=dev)
        self.base_tex = base_tex = torch.zeros(b, s, s, 3, device=dev)
        self.gate = gate = torch.zeros(b, s, s, 1, device=dev) if has_gate else None
        self.mirror = mirror = (torch.zeros(mirror_size, dtype=torch.long, device=dev)
                                if mirror_size is not None else None)
        groups = [
            {"params": [params["id"], params["exp"]], "lr": preset.stage3_lr},
            {"params": [params["angles"], params["trans"]], "lr": preset.stage3_pose_lr},
            {"params": [params["gamma"]], "lr": preset.stage3_gamma_lr},
            {"params": list(pyr.parameters()), "lr": preset.stage3_tex_lr},
        ]
        self.base_lrs = [g["lr"] for g in groups]
        self.opt = opt = make_adam(groups, graph=graph)
        lmb = LandmarkBases.of(model)
        wl = landmark_weights(dev)
        wl = wl / wl.sum()
        rcam = cam.scaled(r) if r != cam.size else cam
        self.renderer = renderer = MeshRenderer(rcam, backend)
        # skin vertices only, for the photometric mask (no eyes / mouth interior of the model)
        skin_attr = model.skin_mask.float()[None, :, None].expand(b, -1, -1).contiguous()
        band2 = torch.zeros(9, device=dev)
        band2[4:] = 1.0
        tri32 = model.tri.to(torch.int32).contiguous()
        # graph mode: rasterised eagerly before each replay, differentiated inside the graph;
        # the clip-space vertices it rasterises are computed at the end of the previous step
        # inside the graph (by load() for the first), so a step's eager part is the
        # rasterisation alone
        self.static_rast = static_rast = (torch.zeros(b, r, r, 4, device=dev) if graph else None)
        self.static_clip = static_clip = (
            torch.zeros(b, model.mean_shape.shape[0], 4, device=dev) if graph else None)
        self.tri32 = tri32

        def geometry() -> tuple[Tensor, Tensor]:
            verts = model.shape(params["id"], params["exp"])
            return verts, rigid_transform(verts, params["angles"], params["trans"])

        def surface() -> tuple[Tensor, Tensor, Tensor, Tensor]:
            """The current head: world vertices, their normals, the texture and its offsets
            (tensor arithmetic alone, no rasteriser call: one compiled region)."""
            verts, world = geometry()
            nrm = rotate_normals(model.vertex_normals(verts), params["angles"])
            off = pyr() if gate is None else pyr() * gate
            return world, nrm, (base_tex + off).clamp(0, 1), off

        def losses(image: Tensor, mask: Tensor, uv: Tensor | None, rast: Tensor,
                   skin_px: Tensor, off: Tensor) -> dict[str, Tensor]:
            """The weighted loss terms ``{name: [B]}`` of a render (tensor arithmetic alone)."""
            # region of the model's skin triangles inside the face area
            face_cov = _face_coverage(rast, model.face_tri_mask)
            m = mask * (pmask_r > 0.5).float() * (skin_px > 0.5).float() * face_cov
            if gate is not None and uv is not None:
                # only pixels whose texels stage 2 saw (not shadow / hair excluded, not mirrored)
                g_px = F.grid_sample(gate.permute(0, 3, 1, 2), uv.detach() * 2 - 1,
                                     mode="bilinear", padding_mode="border",
                                     align_corners=False)
                m = m * (g_px.permute(0, 2, 3, 1) > 0.7).float()
            msum = m.sum((1, 2, 3)).clamp(min=1.0)
            photo_l = ((image - photo_r).abs() * m).sum((1, 2, 3)) / (3 * msum)
            pts = lmb.landmarks(params["id"], params["exp"])
            pix = project(rigid_transform(pts, params["angles"], params["trans"]), cam)
            lmk = (((pix - lm2d) ** 2).sum(-1) * wl).sum(-1)
            g = params["gamma"].view(-1, 3, 9)
            g_rgb = ((g - g.mean(1, keepdim=True)) ** 2).mean((1, 2))
            g_b2 = ((g**2) * band2).sum((1, 2))
            g_init = ((params["gamma"] - gamma0) ** 2).sum(-1)
            t_l2 = (off**2).mean((1, 2, 3))
            t_tv = pyr.tv()
            if mirror is not None:
                flat = off.flatten(1, 2)
                t_sym = ((flat - take_rows(flat, mirror)) ** 2).mean((1, 2))
            else:
                t_sym = off.new_zeros(off.shape[0])
            return {
                "landmark": wt.landmark * lmk, "photo": wt.photo * photo_l,
                "id": wt.id * (params["id"] ** 2).sum(-1),
                "exp": wt.exp * (params["exp"] ** 2).sum(-1),
                "gamma": wt.gamma_rgb * g_rgb + wt.gamma_band2 * g_b2 + wt.gamma_init * g_init,
                "tex": wt.tex_l2 * t_l2 + wt.tex_tv * t_tv + wt.tex_sym * t_sym,
            }

        # the recorded step's arithmetic on either side of the rasteriser's calls, fused by
        # torch.compile on CUDA when FFHQUV_COMPILE is on (graphs.compiled)
        step_surface = compiled(surface, dev)
        step_losses = compiled(losses, dev)

        def evaluate(rast: Tensor | None = None, *, fused: bool = False
                     ) -> tuple[dict[str, Tensor], RenderOutput]:
            """The loss terms and the render; ``fused``: through the step's compiled parts."""
            surf, loss = (step_surface, step_losses) if fused else (surface, losses)
            world, nrm, tex, off = surf()
            out = renderer.render(world, model.tri,
                                  Surface(normals=nrm, uv=model.uv, uv_tri=model.uv_tri,
                                          texture=tex),
                                  gamma=params["gamma"], rast=rast,
                                  options=RasterOptions(antialias=True,
                                                        min_grad_area=SLIVER_AREA))
            skin_px = backend.interpolate(skin_attr, out.rast, tri32)
            terms = loss(out.image, out.mask, out.uv, out.rast, skin_px, off)
            if extra_terms is not None:
                terms.update(extra_terms(out.image, out.mask))
            return terms, out

        def body() -> dict[str, Tensor]:
            # nothing of this step's autograd graph may outlive it: a graph kept alive across
            # the warm-up / capture boundary ties gradient accumulation to the wrong CUDA stream
            terms, _ = evaluate(static_rast, fused=True)
            sum(terms.values()).sum().backward()
            opt.step()
            if static_clip is not None:
                clip_now()
            return {k: v.detach() for k, v in terms.items()}

        def clip_now() -> None:
            """The current vertices in clip space into ``static_clip`` (graph mode)."""
            with torch.no_grad():
                static_clip.copy_(to_clip(geometry()[1], rcam))

        self.clip_now = clip_now
        self.geometry, self.evaluate = geometry, evaluate
        self.runner = StepRunner(opt, body, graph=graph)

    @torch.no_grad()
    def load(self, photos: PhotoBatch, coeffs: dict[str, Tensor], base_tex: Tensor,
             mirror: Tensor | None, gate: Tensor | None) -> None:
        """Put a fit's inputs into the program's tensors and start from a zero pyramid and a
        new optimiser (arguments as :func:`fit_joint`'s)."""
        for k, v in coeffs.items():
            self.params[k].copy_(v)
        self.gamma0.copy_(coeffs["gamma"])
        for p in self.pyr.levels:
            p.zero_()
        self.opt.reset()
        r = self.photo_r.shape[1]
        photo, photo_mask = photos.photo, photos.mask
        if r != photo.shape[1]:
            photo = F.interpolate(photo.permute(0, 3, 1, 2), size=r, mode="bilinear",
                                  align_corners=False).permute(0, 2, 3, 1)
            photo_mask = F.interpolate(photo_mask.permute(0, 3, 1, 2), size=r,
                                       mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        self.lm2d.copy_(photos.lm)
        self.photo_r.copy_(photo)
        self.pmask_r.copy_(photo_mask)
        self.base_tex.copy_(base_tex)
        if self.gate is not None:
            self.gate.copy_(gate)
        if self.mirror is not None:
            self.mirror.copy_(mirror)
        if self.static_clip is not None:
            self.clip_now()

    @torch.no_grad()
    def rasterize(self) -> None:
        """Graph mode, before a step: rasterise the current vertices into the step's input."""
        r = self.static_rast.shape[1]
        self.static_rast.copy_(self.renderer.backend.rasterize(self.static_clip, self.tri32,
                                                               (r, r)))


def _program_key(ctx: FitContext, shapes: dict[str, Tensor], mirror: Tensor | None,
                 gate: Tensor | None, wt: Stage3Weights) -> tuple:
    """Everything a recorded stage-3 step bakes in (see :class:`_JointProgram`)."""
    return ("stage3", ctx.cam, ctx.backend, ctx.preset, astuple(wt),
            tuple((k, tuple(v.shape)) for k, v in shapes.items()),
            None if mirror is None else mirror.numel(), gate is not None)


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
        :class:`Stage3Result` (its tensors are the fit's own, not the kept program's).
    Raises:
        Cancelled: when ``cancel`` is set (checked every step).
    """
    model, preset, progress = ctx.model, ctx.preset, ctx.progress
    wt = weights or Stage3Weights()
    start = {k: v.detach() for k, v in coeffs.items()}
    # CUDA graphs need every op of the step capturable; paper mode's networks are not vetted
    graph = graphs_enabled(model.device, ctx.backend) and extra_terms is None

    def build() -> _JointProgram:
        return _JointProgram(ctx, start, None if mirror is None else mirror.numel(),
                             gate is not None, wt, graph, extra_terms)

    prog = (cached_program(model, _program_key(ctx, start, mirror, gate, wt), build)
            if graph else build())
    prog.load(photos, start, base_tex, mirror, gate)
    steps = preset.stage3_steps
    last: dict[str, Tensor] = {}

    def prepare(step: int) -> None:
        frac = step / max(steps - 1, 1)
        ramp = 1.0 if frac < 0.6 else 0.5 * (1 + math.cos(math.pi * (frac - 0.6) / 0.4))
        for i, lr0 in enumerate(prog.base_lrs):
            set_lr(prog.opt, i, lr0 * max(ramp, 0.05))
        if prog.static_rast is not None:
            prog.rasterize()

    def on_step(step: int, terms: dict[str, Tensor]) -> None:
        nonlocal last
        last = terms
        # float() synchronises a GPU: report losses every 10 steps only, so the host can queue
        # the next steps while the device works
        if progress is not None and (step % 10 == 9 or step == steps - 1):
            progress("stage3", (step + 1) / steps,
                     f"joint step {step + 1}/{steps} photo {float(last['photo'].mean()):.4f} "
                     f"lmk {float(last['landmark'].mean()):.4f}")

    replays = prog.runner.run(steps, prepare=prepare, on_step=on_step, cancel=ctx.cancel)
    with torch.no_grad():
        terms, out = prog.evaluate()
        last = {k: v.detach() for k, v in terms.items()}
    return Stage3Result(
        coeffs={k: v.detach().clone() for k, v in prog.params.items()},
        offsets=prog.pyr.copy(), losses={k: v.cpu().tolist() for k, v in last.items()},
        render=out.image.detach(), render_mask=out.mask.detach(), graph_steps=replays)


def _face_coverage(rast: Tensor, face_tri_mask: Tensor) -> Tensor:
    """``[B, H, W, 1]`` 1 where the visible triangle belongs to the face region."""
    tid = rast[..., 3].long() - 1
    # a gather, not boolean indexing: no host synchronisation (CUDA-graph safe)
    ok = face_tri_mask[tid.clamp(min=0)] & (tid >= 0)
    return ok.float()[..., None]
