"""The fitter core: three-stage RGB fitting of one (or a batch of) aligned face(s).

Plain Python, called by the CLI, the servicer, tests and benchmarks::

    core = FitterCore("default", device="auto")
    out = core.fit(aligned_face, preset="standard", texture_size=1024)

Stages (see each module): :mod:`stage1` (landmarks -> pose / identity / expression, then SH
lighting by least squares), :mod:`texture` (unwrap + mirror + skin-template completion, shape
fixed; paper mode plugs in through :class:`texture.TextureSource`), :mod:`stage3` (joint
photometric optimisation with a Laplacian pyramid of texel offsets).

The stages exchange the named bundles of :mod:`services.fitter.pipeline` (a
:class:`~services.fitter.pipeline.FitContext`, a
:class:`~services.fitter.pipeline.PhotoBatch`, stage results); stages 2 and 3 run as a
:class:`~services.fitter.pipeline.StagePlan` (:class:`DefaultStages` here, paper mode's
:class:`~services.fitter.paper_mode.PaperStages`), and :meth:`FitterCore._fit` times every
stage with :func:`~services.fitter.pipeline.timed`.

Batching: :meth:`FitterCore.fit_batch` stacks the per-photo parameters on the batch axis of
every tensor, so one optimisation serves B photos (useful on GPU). Coordinates: crop pixels of
the 224 aligned crop; model / world / camera frames of :mod:`ffhquv.render.camera`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import ffhquv
from ffhquv import vocab
from ffhquv.aligned import AlignedFace
from ffhquv.cuda import configure_waits
from ffhquv.errors import Cancelled, InvalidInput, PreconditionFailed
from ffhquv.imaging import LUMA, png_bytes
from ffhquv.mesh import MeshData
from ffhquv.render.camera import Camera, project, rigid_transform, rotate_normals
from ffhquv.render.renderer import MeshRenderer, RasterOptions, Surface
from ffhquv.render.sh import irradiance, scale_light
from services.fitter.facemodel.base import FaceModel, host_once
from services.fitter.graphs import graphs_enabled
from services.fitter.hair_mesh import hair_mesh
from services.fitter.pipeline import (
    FitContext,
    PhotoBatch,
    Stage2Result,
    StagePlan,
    StagesResult,
    timed,
)
from services.fitter.presets import Preset, get_preset
from services.fitter.stage1 import Stage1Options, Stage1Result, fit_landmarks, initial_lighting
from services.fitter.stage3 import fit_joint
from services.fitter.texture import (
    LEVEL_MAX,
    PARSE_EYES,
    PARSE_MOUTH,
    Beside,
    CompletedTexture,
    HeadMasks,
    TextureSource,
    UnwrapTextureSource,
    coverage,
    fit_range,
    head_masks,
    host_array,
    per_photo,
    photo_face_mask,
    spread_offsets,
    symmetrize_lowfreq,
    to_host,
    uv_maps,
)
from services.fitter.texture.atlas import derived_arrays

if TYPE_CHECKING:
    from services.fitter.paper_mode import PaperOptions

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, str], None]
STAGES = ("stage1", "stage2", "stage3")
#: devices on which a fit encodes its stage-2 intermediate images while stage 3 runs (on a GPU
#: the host waits through stage 3; on the CPU stage 3's own threads need the cores)
EARLY_IMAGES_DEVICES = frozenset({"cuda"})

# One fit at a time per GPU in a process, whichever FitterCore runs it: the cores of one device
# share its nvdiffrast context (not thread-safe), and a CUDA-graph capture must not overlap
# another thread's cuBLAS work (it fails with CUBLAS_STATUS_EXECUTION_FAILED). Batches are how
# one GPU fits several photos at once (fit_batch).
_GPU_LOCKS: dict[str, threading.Lock] = {}
_GPU_LOCKS_GUARD = threading.Lock()


def _fit_lock(device: torch.device) -> threading.Lock:
    if device.type != "cuda":
        return threading.Lock()  # CPU fits of different cores may overlap
    key = str(device if device.index is not None else torch.device("cuda", 0))
    with _GPU_LOCKS_GUARD:
        return _GPU_LOCKS.setdefault(key, threading.Lock())


@dataclass
class FitGeometry:
    """A photo's fitted shape, as soon as it is final (:meth:`FitterCore.fit_batch`'s
    ``on_geometry``): what the eyeballs need, before the texture's and the outputs' host work.

    Attributes:
        mesh_neutral: the identity-only head in model space with the model's uv / uv_faces and
            normals, without morph targets (the same vertices as :attr:`FitOutput.mesh_neutral`).
        eye_ring_left / eye_ring_right: ``int64 [R]`` vertex ids of the eye-socket rings.
    """

    mesh_neutral: MeshData
    eye_ring_left: np.ndarray
    eye_ring_right: np.ndarray


GeometryFn = Callable[[int, FitGeometry], None]


@dataclass
class FitOutput:
    """The result of fitting one photo.

    Attributes:
        coefficients: ``id [K_id]``, ``exp [K_exp]``, ``angles [3]`` (radians, x y z),
            ``gamma [27]``, ``trans [3]`` as float32 arrays.
        mesh_neutral: identity-only head in model space with the model's uv / uv_faces.
        mesh_expression: the same with the fitted expression.
        uv_texture: ``uint8 [S, S, 3]`` albedo texture, row 0 = ``v = 1``.
        metrics: scalar metrics (see :func:`_metrics`).
        report: the ``report.json`` content.
        preview: ``uint8 [224, 224 * 4, 3]``: input | render | 50 % overlay | UV texture.
        intermediates: file name -> bytes (``stage1_*``, ``stage2_*``, ``stage3_coeffs.*``).
        eye_ring_left / eye_ring_right: ``int64 [R]`` vertex ids of the eye-socket rings.
        camera: the fitting camera.
        face_model: face-model name.
        render: ``uint8 [224, 224, 3]`` final render (black background).
        metres_per_unit: metres per model-space unit of the face model.
        hair: the hair as geometry (:func:`services.fitter.hair_mesh.hair_mesh`: a shell over
            the scalp, for long hair a curtain), UVs into ``uv_texture``, its morph targets
            those of ``mesh_neutral``'s that move it; None for a bald head.
        uv_texture_png: ``uv_texture`` as PNG bytes, encoded once where it was made (None:
            not encoded yet).
        preview_png: ``preview`` as PNG bytes, the same way.

    ``mesh_neutral.morphs`` holds the expression basis as named morph targets weighted by the
    fitted expression (neutral + weights . offsets = ``mesh_expression``).
    """

    coefficients: dict[str, np.ndarray]
    mesh_neutral: MeshData
    mesh_expression: MeshData
    uv_texture: np.ndarray
    metrics: dict[str, float]
    report: dict
    preview: np.ndarray
    intermediates: dict[str, bytes]
    eye_ring_left: np.ndarray
    eye_ring_right: np.ndarray
    camera: Camera
    face_model: str
    render: np.ndarray = field(repr=False, default=None)
    metres_per_unit: float = 0.1
    hair: MeshData | None = None
    uv_texture_png: bytes | None = field(repr=False, default=None)
    preview_png: bytes | None = field(repr=False, default=None)

    @property
    def report_json(self) -> str:
        return json.dumps(self.report, indent=2, sort_keys=True)


@dataclass
class _Stage1Render:
    """One photo's stage-1 render for its intermediates: ``image float32 [224, 224, 3]``,
    ``mask float32 [224, 224, 1]``, projected ``landmarks float32 [68, 2]``, the stage-1 mesh
    and its coefficients as lists."""

    image: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    mesh: MeshData
    coeffs: dict[str, list]


def resolve_device(device: str | None) -> torch.device:
    """``'cpu' | 'cuda' | 'auto'`` (or ``cuda:N``) to a torch device.

    Raises:
        InvalidInput: unknown name. PreconditionFailed: CUDA asked for but absent.
    """
    d = (device or "auto").lower()
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return torch.device("cpu")
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PreconditionFailed(
                "device 'cuda' was requested but CUDA is not available on this server "
                f"(torch {torch.__version__}); use device 'cpu' or 'auto'")
        configure_waits()  # before the context: waiting threads free their cores
        return torch.device(d)
    raise InvalidInput(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'auto'")


def _validate(face: AlignedFace, i: int) -> None:
    what = f"face {i}"
    if not isinstance(face, AlignedFace):
        raise InvalidInput(f"{what}: expected an AlignedFace, got {type(face).__name__}")
    if face.crop is None or face.crop.shape != (224, 224, 3) or face.crop.dtype != np.uint8:
        raise InvalidInput(f"{what}: crop must be uint8 224x224x3")
    lm = np.asarray(face.crop_landmarks)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise InvalidInput(f"{what}: crop_landmarks must be 68 finite (x, y) points, "
                           f"got shape {lm.shape}")
    h = face.crop_hires
    if h is None or h.ndim != 3 or h.shape[0] != h.shape[1] or h.shape[2] != 3 or h.shape[0] < 224:
        raise InvalidInput(f"{what}: crop_hires must be a square RGB image >= 224, "
                           f"got {None if h is None else h.shape}")
    for name in ("skin_mask", "parse_mask"):
        m = getattr(face, name)
        if m is None or m.shape != (224, 224):
            raise InvalidInput(f"{what}: {name} must be 224x224, got "
                               f"{None if m is None else m.shape}")
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    if iod < 10:
        raise InvalidInput(f"{what}: landmarks are degenerate (eye corners {iod:.1f} px apart)")


class FitterCore:
    """Fits one face model on one device; reuse it across calls (the model and the UV lookup
    tables are built once).

    Args:
        face_model: "default" or "hifi3dpp" (ignored when ``model`` is given).
        device: "cpu", "cuda" (PreconditionFailed without CUDA) or "auto".
        checkpoints_dir: the paper's checkpoints folder (optional; the default texture path
            needs none).
        topo_dir: the paper's ``topo_assets`` folder (for ``hifi3dpp``).
        model: an already built :class:`FaceModel` (tests, benchmarks).
        threads: torch CPU threads to use during fits (None leaves torch's setting).
        texture_source: the stage-2 texture source; None = :class:`UnwrapTextureSource`
            (checkpoint-free).
        paper: ``True`` (default) loads the paper's networks found under ``checkpoints_dir``
            (:mod:`services.fitter.paper_mode`: StyleGAN2 latent search and Deep3D with the
            ``hifi3dpp`` model, ArcFace / VGG losses with any model); ``False`` never does; a
            :class:`services.fitter.paper_mode.PaperOptions` loads them with its settings.
    """

    def __init__(self, face_model: str = vocab.DEFAULT_FACE_MODEL, device: str = "auto",
                 checkpoints_dir: str | Path | None = None, topo_dir: str | Path | None = None,
                 model: FaceModel | None = None, threads: int | None = None,
                 texture_source: TextureSource | None = None,
                 paper: bool | PaperOptions = True):
        self.device = resolve_device(device)
        self.checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else None
        self.threads = threads
        if model is None:
            from services.fitter import facemodel as fm

            loader = getattr(fm, "load_face_model", None)
            if loader is None:
                raise PreconditionFailed("face-model loader is not available in this build")
            model = loader(face_model, self.device, topo_dir)
        self.model = model.to(self.device)
        self.face_model = self.model.name
        from ffhquv.render.raster import get_backend

        self.backend = get_backend(self.device)
        self.camera = Camera()
        self._lock = _fit_lock(self.device)
        self.texture_source = texture_source
        self.notes: list[str] = []
        self.paper = None
        if self.checkpoints_dir is not None and paper:
            from services.fitter.paper_mode import PaperMode, PaperOptions

            opts = paper if isinstance(paper, PaperOptions) else PaperOptions()
            self.paper = PaperMode.load(self.checkpoints_dir, self.face_model, self.device,
                                        opts.w_stats_samples)
            self.notes.extend(self.paper.notes)

    # ------------------------------------------------------------------------------------------
    def fit(self, face: AlignedFace, *, preset: str | Preset = vocab.DEFAULT_PRESET,
            texture_size: int = vocab.TEXTURE_SIZE_DEFAULT, seed: int = 0,
            progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, want_intermediates: bool = True) -> FitOutput:
        """Fit one aligned face. See :meth:`fit_batch`."""
        return self.fit_batch([face], preset=preset, texture_size=texture_size, seed=seed,
                              progress=progress, cancel=cancel,
                              want_intermediates=want_intermediates)[0]

    def fit_batch(self, faces: list[AlignedFace], *, preset: str | Preset = vocab.DEFAULT_PRESET,
                  texture_size: int = vocab.TEXTURE_SIZE_DEFAULT, seed: int = 0,
                  progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None, want_intermediates: bool = True,
                  on_geometry: GeometryFn | None = None) -> list[FitOutput]:
        """Fit B aligned faces in one batched optimisation.

        Args:
            faces: aligned faces from the detector (crop 224, 68 crop landmarks, hi-res crop,
                skin and parse masks).
            preset: "fast" | "standard" | "best" or a :class:`Preset`.
            texture_size: side of the output UV texture (power of two, 64..4096).
            seed: random seed. The same seed, device and preset give the same result up to float
                rounding: CPU threads and GPU atomic sums add in varying order (two runs on
                cpu2: coefficients within 4e-4, texels within one 8-bit level).
            progress: ``progress(stage, fraction, message)`` with stage "stage1" / "stage2" /
                "stage3" and the fraction of that stage in [0, 1].
            cancel: set it to stop the fit; :class:`ffhquv.errors.Cancelled` is raised at the
                next step.
            want_intermediates: build the stage1_* / stage2_* / stage3_* files.
            on_geometry: ``on_geometry(i, FitGeometry)`` for each photo ``i`` once its shape is
                final, on the fit's thread, before the outputs' host work (a caller can place
                the eyeballs meanwhile). An exception it raises fails the fit.
        Returns:
            One :class:`FitOutput` per face, in order.
        Raises:
            InvalidInput: malformed faces or options. Cancelled: on ``cancel``.
        """
        if not faces:
            raise InvalidInput("no faces to fit")
        for i, f in enumerate(faces):
            _validate(f, i)
        p = get_preset(preset)
        texture_size = vocab.texture_size(texture_size)
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with self._lock:
                return self._fit(faces, p, texture_size, seed, progress, cancel,
                                 want_intermediates, on_geometry)
        finally:
            if self.threads:
                torch.set_num_threads(old_threads)

    def prepare(self, preset: str | Preset = vocab.DEFAULT_PRESET,
                texture_size: int = vocab.TEXTURE_SIZE_DEFAULT) -> float:
        """Build now what a first fit would build that needs no photo: the UV tables
        (:func:`uv_maps`) at ``texture_size`` and at the preset's optimisation size and, on
        CUDA, the context and cuBLAS (one small product). What it leaves to the first fit:
        loading the kernels it runs and capturing its CUDA graphs (a throw-away fit does
        those, :meth:`FitterServicer.warm`). Returns the seconds it took."""
        t0 = time.perf_counter()
        p = get_preset(preset)
        size = vocab.texture_size(texture_size)
        with self._lock, torch.no_grad():
            for s in dict.fromkeys((size, p.tex_opt_size)):
                uv_maps(self.model, s, self.backend)
            if self.device.type == "cuda":
                a = torch.ones(8, 8, device=self.device)
                float((a @ a).sum())
        return time.perf_counter() - t0

    def _model_on(self, device: torch.device) -> FaceModel:
        """The face model on another device (cached), e.g. the CPU copy for stage 1."""
        cache = self.__dict__.setdefault("_model_copies", {})
        key = str(device)
        if key not in cache:
            cache[key] = self.model.to(device)
        return cache[key]

    # ------------------------------------------------------------------------------------------
    def _fit(self, faces: list[AlignedFace], p: Preset, tex_size: int, seed: int,
             progress: ProgressFn | None, cancel: threading.Event | None,
             want_inter: bool, on_geometry: GeometryFn | None = None) -> list[FitOutput]:
        torch.manual_seed(seed)
        t_all = time.perf_counter()

        def prog(stage: str, frac: float, msg: str) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled("fit cancelled")
            if progress is not None:
                progress(stage, float(min(max(frac, 0.0), 1.0)), msg)

        ctx = FitContext(model=self.model, cam=self.camera, backend=self.backend,
                         renderer=MeshRenderer(self.camera, self.backend), preset=p,
                         tex_size=tex_size, progress=prog, cancel=cancel,
                         on_geometry=on_geometry)
        photos = _photo_batch(faces, self.device)
        with timed(ctx, "stage1"):
            s1, coeffs = self._stage1(ctx, photos)
        stage1_coeffs = {k: v.clone() for k, v in coeffs.items()}
        pm = self.paper
        if pm is not None and pm.use_texgan:
            from services.fitter.paper_mode import PaperStages

            plan: StagePlan = PaperStages(pm)
        else:
            plan = DefaultStages(self.texture_source, pm)
        with timed(ctx, "stage2"):
            s2 = plan.stage2(ctx, photos, coeffs)
        # the stage-2 texture is final: on a GPU its two intermediate images are encoded on
        # the host while it waits through stage 3 (elsewhere stage 3 needs the cores)
        early = (Beside(lambda i: self._intermediate_images(s2.textures[i]), len(faces))
                 if want_inter and self.device.type in EARLY_IMAGES_DEVICES else None)
        with early or contextlib.nullcontext():
            with timed(ctx, "stage3"):
                res = plan.stage3(ctx, photos, coeffs, s2)
            with timed(ctx, "outputs"):
                outputs = self._outputs(ctx, faces, photos, s1, stage1_coeffs, res, want_inter,
                                        None if early is None else early.result)
        total = time.perf_counter() - t_all
        b = len(faces)
        graph_steps = {"stage1": s1.graph_steps, "stage3": res.graph_steps}
        for i, o in enumerate(outputs):
            o.metrics["seconds_outputs"] = ctx.times["outputs"] / b
            o.metrics["seconds_total"] = total / b
            o.report = self._report(ctx, seed, total, b, o.metrics, faces[i].parse_source)
            o.report["stage1_init"] = (s1.init_source or ["pnp"] * b)[i]
            # optimisation steps replayed as CUDA graphs (services.fitter.graphs); 0 on CPU
            o.report["cuda_graph_steps"] = dict(graph_steps)
            # the head of hair painted on the scalp (texture.hair_layer), when looked for
            o.report["hair"] = res.textures[i].hair
            if o.hair is not None:  # and as geometry (hair_mesh): its size
                o.report["hair"] = dict(o.report["hair"] or {},
                                        mesh_vertices=len(o.hair.vertices),
                                        mesh_faces=len(o.hair.faces))
            # the one factor that put the final texture at the photo's skin level
            # (photo_level): how far stages 2 and 3 had moved the skin's brightness
            if res.level_scale is not None:
                o.report["texture_level_scale"] = round(float(res.level_scale[i]), 4)
            # ... and the one that shows a face lit from one side at its lit side's brightness
            if res.lit_scale is not None:
                o.report["texture_lit_scale"] = round(float(res.lit_scale[i]), 4)
            if res.latents is not None:
                o.report["texture_source"] = "texgan"
        return outputs

    def _stage1(self, ctx: FitContext, photos: PhotoBatch
                ) -> tuple[Stage1Result, dict[str, torch.Tensor]]:
        """Landmark fit, then SH lighting; returns the stage-1 result and its coefficients
        (with ``gamma``) on the fit device."""
        dev, m, cam, prog = self.device, ctx.model, ctx.cam, ctx.progress
        p = ctx.preset
        prog("stage1", 0.0, "initial pose")
        pm = self.paper
        init = None
        if pm is not None and pm.use_deep3d:
            from services.fitter.paper_mode import deep3d_coefficients

            init = deep3d_coefficients(pm.nets.deep3d, photos.photo, m)
        # Stage 1 moves 68 points: on a GPU its hundreds of tiny steps are bound by kernel
        # launches, so it runs as CUDA-graph replays there, or on the CPU when graphs are off.
        s1_dev = torch.device("cpu") if dev.type == "cuda" and not graphs_enabled(dev) else dev
        m1 = m if s1_dev == dev else self._model_on(s1_dev)
        init1 = None if init is None else {k: v.to(s1_dev) for k, v in init.items()}
        s1 = fit_landmarks(m1, photos.lm.to(s1_dev), cam,
                           Stage1Options(steps=p.stage1_steps, lr=p.stage1_lr),
                           progress=prog, cancel=ctx.cancel, init=init1)
        coeffs = {k: v.to(dev) for k, v in s1.coeffs.items()}
        with torch.no_grad():
            world1 = rigid_transform(m.shape(coeffs["id"], coeffs["exp"]), coeffs["angles"],
                                     coeffs["trans"])
            d1 = ctx.renderer.render(world1, m.tri, options=RasterOptions(
                size=cam.size, antialias=False)).depth
            gamma, _ = initial_lighting(m, coeffs, photos.photo, photos.skin, cam, d1)
        coeffs["gamma"] = gamma
        prog("stage1", 1.0, f"landmark error {float(s1.landmark_error_px.mean()):.2f} px")
        return s1, coeffs

    def _outputs(self, ctx: FitContext, faces: list[AlignedFace], photos: PhotoBatch,
                 s1: Stage1Result, stage1_coeffs: dict[str, torch.Tensor], res: StagesResult,
                 want_inter: bool,
                 images_of: Callable[[int], dict[str, bytes]] | None = None
                 ) -> list[FitOutput]:
        """Meshes, renders, metrics, previews and intermediates of a finished fit (the report
        is added by :meth:`_fit`); ``images_of(i)``: photo i's :meth:`_intermediate_images`
        when they were made already."""
        m, cam = self.model, self.camera
        coeffs, final, textures, latents = res.coeffs, res.final, res.textures, res.latents
        maps = uv_maps(m, ctx.tex_size, ctx.backend)
        b = len(faces)
        rings = (m.eye_ring_left.cpu().numpy().astype(np.int64),
                 m.eye_ring_right.cpu().numpy().astype(np.int64))
        with torch.no_grad():
            verts_neu = m.neutral(coeffs["id"])
            meshes_neu = [self._mesh(verts_neu[i]) for i in range(b)]
        if ctx.on_geometry is not None:  # the shapes are final: tell the caller first
            for i in range(b):
                ctx.on_geometry(i, FitGeometry(meshes_neu[i], *rings))
        with torch.no_grad():
            verts_exp = m.shape(coeffs["id"], coeffs["exp"])
            world = rigid_transform(verts_exp, coeffs["angles"], coeffs["trans"])
            nrm = rotate_normals(m.vertex_normals(verts_exp), coeffs["angles"])
            out = ctx.renderer.render(
                world, m.tri, Surface(normals=nrm, uv=m.uv, uv_tri=m.uv_tri, texture=final),
                gamma=coeffs["gamma"], options=RasterOptions(antialias=True))
            lm_fit = project(m.landmarks(world), cam)
            lm_neu = m.landmarks(verts_neu).cpu().numpy()
        # to 8 bits on the device (the same arithmetic as numpy's): a quarter of the bytes
        tex_u8 = to_host((final * 255 + 0.5).clamp(0, 255).to(torch.uint8))
        render_u8 = (to_host(out.image.clamp(0, 1)) * 255 + 0.5).astype(np.uint8)
        rmask = out.mask.cpu().numpy()[..., 0]
        lm_np = lm_fit.cpu().numpy()
        fmask_np = photos.mask[..., 0].cpu().numpy()
        losses = {k: np.asarray(v.detach().cpu() if torch.is_tensor(v) else v)
                  for k, v in (res.losses or {}).items()}
        lm_err = s1.landmark_error_px.detach().cpu().numpy()
        # the device work of each photo here, on this thread (the rasteriser's context is not
        # thread-safe) ...
        per = []
        for i in range(b):
            c_np = {k: v[i].detach().cpu().numpy().astype(np.float32) for k, v in coeffs.items()}
            s1r = self._stage1_render(i, stage1_coeffs) if want_inter else None
            # the geometry's mesh with the morph targets added (a shallow copy: the listener
            # keeps the one it was given)
            mesh_neu = replace(meshes_neu[i], morphs=m.morph_targets(c_np["exp"]))
            per.append((c_np, mesh_neu, self._mesh(verts_exp[i]), s1r))

        covered = host_array(maps, "mask")
        # ... then each photo's host work (metrics, preview, PNG encodes, OBJ text) on a thread
        # pool: in a batch it would otherwise run photo after photo while the GPU waits
        def finish(i: int) -> FitOutput:
            f = faces[i]
            c_np, mesh_neu, mesh_exp, s1r = per[i]
            metrics = _metrics(f, lm_np[i], render_u8[i], rmask[i], fmask_np[i], textures[i],
                               maps)
            metrics["texture_lr_asymmetry"] = lr_asymmetry(tex_u8[i], maps)
            metrics["stage1_landmark_error_px"] = float(lm_err[i])
            for k, v in losses.items():
                metrics[f"loss_{k}"] = float(v[i])
            for k, v in ctx.times.items():
                metrics[f"seconds_{k}"] = v / b
            hair = None
            if textures[i].hair_matte is not None:
                hair = hair_mesh(mesh_neu, textures[i].hair_matte, textures[i].hair or {},
                                 lm_neu[i], covered=covered,
                                 strip=textures[i].hair_curtain)
            preview = make_preview(f.crop, render_u8[i], rmask[i], tex_u8[i])
            return FitOutput(
                hair=hair,
                coefficients=c_np, mesh_neutral=mesh_neu, mesh_expression=mesh_exp,
                uv_texture=tex_u8[i], metrics=metrics, report={},
                preview=preview, preview_png=png_bytes(preview),
                intermediates={},
                eye_ring_left=rings[0], eye_ring_right=rings[1],
                camera=cam, face_model=self.face_model, render=render_u8[i],
                metres_per_unit=m.metres_per_unit)

        def intermediates(i: int) -> dict[str, bytes]:
            if not want_inter:
                return {}
            c_np, _, _, s1r = per[i]
            inter = self._intermediate_files(faces[i], s1r, c_np, textures[i])
            if latents is not None:
                buf = io.BytesIO()
                np.savez(buf, **{k: v[i] for k, v in latents.items()})
                inter["stage3_latents.npz"] = buf.getvalue()
            return inter

        def images(i: int) -> dict[str, bytes]:
            if not want_inter:
                return {}
            return images_of(i) if images_of is not None else self._intermediate_images(
                textures[i])

        def texture_png(i: int) -> bytes:  # the texture encoded once, here
            return png_bytes(tex_u8[i])

        # four independent parts a photo, each on a thread of its own even for one photo
        # (the PNG encodes let the GIL go): its outputs, its intermediate files, their two
        # texture images, its texture
        parts = (finish, intermediates, images, texture_png)
        n = len(parts)
        done = per_photo(lambda k: parts[k % n](k // n), n * b)
        outputs = done[0::n]
        for o, inter, imgs, png in zip(outputs, done[1::n], done[2::n], done[3::n], strict=True):
            o.intermediates, o.uv_texture_png = {**inter, **imgs}, png
        return outputs

    # ------------------------------------------------------------------------------------------
    def _mesh(self, verts: torch.Tensor) -> MeshData:
        m = self.model
        n = m.vertex_normals(verts[None])[0]
        # the topology: the model's read-only host arrays, the same for every photo
        return MeshData(vertices=verts.detach().cpu().numpy(),
                        faces=host_once(m.tri, "host", _on_host),
                        uvs=host_once(m.uv, "host", _on_host),
                        uv_faces=host_once(m.uv_tri, "host", _on_host),
                        normals=n.detach().cpu().numpy())

    def _stage1_render(self, i: int, c1: dict[str, torch.Tensor]) -> _Stage1Render:
        """Photo ``i``'s stage-1 head rendered over its crop (device work, caller's thread)."""
        m, cam = self.model, self.camera
        with torch.no_grad():
            ci = {k: v[i:i + 1] for k, v in c1.items()}
            v1 = m.shape(ci["id"], ci["exp"])
            world = rigid_transform(v1, ci["angles"], ci["trans"])
            nrm = rotate_normals(m.vertex_normals(v1), ci["angles"])
            r = MeshRenderer(cam, self.backend).render(world, m.tri, Surface(normals=nrm),
                                                       gamma=ci["gamma"],
                                                       options=RasterOptions(antialias=True))
            lm_fit = project(m.landmarks(world), cam)[0].cpu().numpy()
        return _Stage1Render(image=r.image[0].clamp(0, 1).cpu().numpy(),
                             mask=r.mask[0].cpu().numpy(), landmarks=lm_fit,
                             mesh=self._mesh(v1[0]),
                             coeffs={k: v[i].cpu().tolist() for k, v in c1.items()})

    def _intermediate_files(self, face: AlignedFace, s1r: _Stage1Render,
                            c3: dict[str, np.ndarray], tex: CompletedTexture
                            ) -> dict[str, bytes]:
        """The ``stage1_*`` / ``stage2_*`` / ``stage3_coeffs.npz`` files of one photo but its
        two texture images (:meth:`_intermediate_images`); host work only: safe on a worker
        thread."""
        from ffhquv.objfile import mtl_text, obj_text

        files: dict[str, bytes] = {}
        img, msk = s1r.image, s1r.mask
        over = (face.crop.astype(np.float32) / 255 * (1 - 0.6 * msk) + 0.6 * msk * img)
        over = (over * 255 + 0.5).clip(0, 255).astype(np.uint8)
        over = draw_landmarks(over, face.crop_landmarks, (0, 255, 0))
        over = draw_landmarks(over, s1r.landmarks, (255, 0, 0))
        files["stage1_render.png"] = png_bytes(over)
        files["stage1_mesh.obj"] = obj_text(s1r.mesh,
                                            header="ffhq-uv stage 1 (landmark fit) mesh").encode()
        files["stage1_coeffs.json"] = json.dumps(s1r.coeffs).encode()
        files["stage2_mesh.obj"] = obj_text(s1r.mesh, mtllib="stage2_mesh.mtl",
                                            material="stage2_texture").encode()
        files["stage2_mesh.mtl"] = mtl_text("stage2_texture", "stage2_uv.png").encode()
        buf = io.BytesIO()
        np.savez(buf, face_model=np.array(self.face_model), **c3)
        files["stage3_coeffs.npz"] = buf.getvalue()
        files["stage3_coeffs.json"] = json.dumps(self.model.named_coefficients(c3),
                                                 indent=1).encode()
        return files

    @staticmethod
    def _intermediate_images(tex: CompletedTexture) -> dict[str, bytes]:
        """``stage2_uv.png`` and ``stage2_uv_observed.png`` of one photo (its two largest
        intermediate files, apart from the others: a thread of their own)."""
        obs = (tex.observed[..., None] * tex.texture * 255 + 0.5).clip(0, 255).astype(np.uint8)
        return {"stage2_uv.png": png_bytes((tex.texture * 255 + 0.5).clip(0, 255)
                                           .astype(np.uint8)),
                "stage2_uv_observed.png": png_bytes(obs)}

    def _paper_status(self) -> dict[str, str]:
        from services.fitter.paper_mode import no_checkpoints_status

        return dict(self.paper.status) if self.paper is not None else no_checkpoints_status()

    def _report(self, ctx: FitContext, seed: int, total: float, batch: int,
                metrics: dict[str, float], parse_source: str) -> dict:
        p, tex_size, times = ctx.preset, ctx.tex_size, ctx.times
        m = self.model
        return {
            "face_model": {"name": m.name, "vertices": m.n_vertices,
                           "triangles": int(m.tri.shape[0]), "identity_dim": m.id_dim,
                           "expression_dim": m.exp_dim, "unit": m.unit, "meta": m.meta},
            "preset": p.as_dict(),
            "device": str(self.device),
            "backend": getattr(self.backend, "name", type(self.backend).__name__),
            "texture_size": tex_size,
            "texture_source": getattr(self.texture_source, "name", "unwrap"),
            "seed": seed,
            "batch_size": batch,
            "parse_source": parse_source,
            "timings_s": {**{k: round(v, 4) for k, v in times.items()},
                          "total": round(total, 4), "per_photo": round(total / batch, 4)},
            "metrics": {k: (round(v, 6) if math.isfinite(v) else None)
                        for k, v in metrics.items()},
            "camera": {"focal": self.camera.focal, "center": self.camera.center,
                       "distance": self.camera.distance, "size": self.camera.size,
                       "znear": self.camera.znear, "zfar": self.camera.zfar},
            "notes": list(self.notes),
            "paper_networks": self._paper_status(),
            "versions": {"ffhquv": ffhquv.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
        }



def _on_host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _photo_batch(faces: list[AlignedFace], dev: torch.device) -> PhotoBatch:
    """The faces' crops, landmarks and masks as tensors on ``dev`` (hi-res crops resized to
    the largest one)."""
    hires_size = max(f.crop_hires.shape[0] for f in faces)
    lm = torch.tensor(np.stack([f.crop_landmarks for f in faces]), dtype=torch.float32,
                      device=dev)
    photo = torch.tensor(np.stack([f.crop for f in faces]), device=dev).float() / 255
    hires = torch.tensor(np.stack([
        f.crop_hires if f.crop_hires.shape[0] == hires_size else cv2.resize(
            f.crop_hires, (hires_size, hires_size), interpolation=cv2.INTER_LINEAR)
        for f in faces]), device=dev).float() / 255
    parse = torch.tensor(np.stack([f.parse_mask for f in faces]), device=dev)
    skin = torch.tensor(np.stack([f.skin_mask for f in faces]), device=dev)
    fmask = photo_face_mask(parse, skin, photo, lm)  # [B, 224, 224, 1]
    return PhotoBatch(lm=lm, photo=photo, hires=hires, mask=fmask,
                      skin=fmask * (parse == 1)[..., None].float(), parse=parse, skin_prob=skin)


class DefaultStages:
    """Stages 2 and 3 of the default path (:class:`services.fitter.pipeline.StagePlan`).

    Stage 2: the texture source (default :class:`UnwrapTextureSource`). Stage 3:
    :func:`services.fitter.stage3.fit_joint` on a texel-offset pyramid, the offsets mirrored,
    spread past the own-view gate and the low frequencies made symmetric again.

    Args:
        texture_source: the stage-2 source; None = :class:`UnwrapTextureSource`.
        paper: the loaded paper networks (ArcFace / VGG add stage-3 terms) or None.
    """

    def __init__(self, texture_source: TextureSource | None = None, paper=None):
        self.texture_source = texture_source
        self.paper = paper

    def stage2(self, ctx: FitContext, photos: PhotoBatch,
               coeffs: dict[str, torch.Tensor]) -> Stage2Result:
        prog, be, m = ctx.progress, ctx.backend, ctx.model
        prog("stage2", 0.0, "unwrapping the photo into UV")
        src = self.texture_source or UnwrapTextureSource(
            be, ctx.cam, depth_size=ctx.preset.unwrap_depth_size)
        with torch.no_grad():
            uv_maps(m, ctx.tex_size, be)
            prog("stage2", 0.3, "uv maps ready")
            # the hi-res crop and ctx.cam.scaled(S) share the pixel grid (x_S = k (x + .5) - .5)
            masks = self._head_masks(ctx, photos, coeffs)
            textures: list[CompletedTexture] = src.texture(m, coeffs, photos.hires, masks,
                                                           ctx.tex_size)
        prog("stage2", 1.0, "texture completed")
        return Stage2Result(textures=textures)

    @staticmethod
    def _head_masks(ctx: FitContext, photos: PhotoBatch,
                    coeffs: dict[str, torch.Tensor]) -> HeadMasks | torch.Tensor:
        """The whole head's photo masks (skin texture, facial hair, hair) at the stage-1
        pose, or the face mask alone when the batch carries no parse / skin maps."""
        if photos.parse is None or photos.skin_prob is None:
            return photos.mask
        m = ctx.model
        world = rigid_transform(m.shape(coeffs["id"], coeffs["exp"]), coeffs["angles"],
                                coeffs["trans"])
        head = ctx.renderer.render(world, m.tri, options=RasterOptions(
            size=ctx.cam.size, antialias=False)).mask
        return head_masks(photos.photo, photos.parse, photos.skin_prob, photos.lm,
                          head[..., 0], photos.hires)

    def stage3(self, ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, torch.Tensor],
               s2: Stage2Result) -> StagesResult:
        p, be, m, tex_size = ctx.preset, ctx.backend, ctx.model, ctx.tex_size
        textures = s2.textures
        dev = photos.photo.device
        maps = uv_maps(m, tex_size, be)
        base_full = torch.tensor(np.stack([t.texture for t in textures]), device=dev)
        if p.stage3_steps <= 0:
            lv = photo_level(ctx, photos, coeffs, base_full)
            ctx.progress("stage3", 1.0, "done")
            return StagesResult(textures=textures, final=lv.texture,
                                coeffs={**coeffs, "gamma": lv.gamma}, level_scale=lv.scale,
                                lit_scale=lv.lit)
        opt_maps = uv_maps(m, p.tex_opt_size, be)
        base_opt = F.interpolate(base_full.permute(0, 3, 1, 2), size=p.tex_opt_size,
                                 mode="area").permute(0, 2, 3, 1).contiguous()
        own = torch.tensor(np.stack([t.observed for t in textures]), device=dev)[:, None]
        gate_opt = (F.interpolate(own, size=p.tex_opt_size, mode="area") * 2).clamp(max=1.0)
        # a soft gate: sharp gate borders would print as outlines in the texture
        gate_opt = F.avg_pool2d(gate_opt, 5, stride=1, padding=2,
                                count_include_pad=False).permute(0, 2, 3, 1).contiguous()
        extra = None
        if self.paper is not None and (self.paper.arcface is not None
                                       or self.paper.vgg is not None):
            from services.fitter.paper_mode import ImageLosses, default_path_terms

            ph = photos.photo
            if p.raster_size != ph.shape[1]:
                ph = F.interpolate(ph.permute(0, 3, 1, 2), size=p.raster_size,
                                   mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
            extra = default_path_terms(ImageLosses(self.paper.arcface, self.paper.vgg,
                                                   ph, photos.lm))
        s3 = fit_joint(ctx, photos, coeffs, base_opt, mirror=opt_maps.mirror, gate=gate_opt,
                       extra_terms=extra)
        with torch.no_grad():
            gate_up = F.interpolate(gate_opt.permute(0, 3, 1, 2), size=tex_size,
                                    mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
            off = mirror_offsets(s3.offsets.upsampled(tex_size) * gate_up, own[:, 0], maps)
            gate_eff = mirror_offsets(gate_up.expand(-1, -1, -1, 3).contiguous(), own[:, 0],
                                      maps)[..., 0]
        # the offsets' broad changes continue past the gate (no edge where it ends); then
        # stage 3 may have baked one-sided shading back into the texels: make the low
        # frequencies left/right symmetric again, as in stage 2 (on the fitter's device)
        def finish(i: int) -> torch.Tensor:
            with torch.no_grad():
                # above 1 kept: photo_level rescales, then fit_range rolls the highlights off
                t = (base_full[i] + spread_offsets(off[i], gate_eff[i], maps)).clamp(
                    min=1.0 / 255)
                return symmetrize_lowfreq(t, maps, sigma=tex_size / 16)

        final = torch.stack(per_photo(finish, off.shape[0])).to(dev).clamp(min=1.0 / 255)
        lv = photo_level(ctx, photos, s3.coeffs, final)
        ctx.progress("stage3", 1.0, "done")
        return StagesResult(textures=textures, final=lv.texture,
                            coeffs={**s3.coeffs, "gamma": lv.gamma}, losses=s3.losses,
                            graph_steps=s3.graph_steps, level_scale=lv.scale,
                            lit_scale=lv.lit)


#: the fitted light's irradiance over the seen skin, at its ``LIT_QUANTILE``, above which a
#: face counts as lit from one side: its albedo is then shown (under the neutral light) at its
#: lit side's brightness rather than its average (:func:`photo_level`). On 24 faces-dev / FFHQ
#: photos the 80th percentile is 1.02-1.22 for frontal and soft light, 1.40 for fd11 (side-lit,
#: its shadow side at 0.38): averaged with the shadow, its albedo came out grey and dark
LIT_QUANTILE = 0.8
LIT_REF = 1.1


class PhotoLevel(NamedTuple):
    """:func:`photo_level`'s result: ``texture`` ``float32 [B, S, S, 3]``; ``scale`` and
    ``lit`` the B factors of the skin's level and of its lit side; ``gamma`` ``[B, 27]``."""

    texture: torch.Tensor
    scale: list[float]
    lit: list[float]
    gamma: torch.Tensor


def photo_level(ctx: FitContext, photos: PhotoBatch, coeffs: dict[str, torch.Tensor],
                texture: torch.Tensor) -> PhotoLevel:
    """The textures rescaled so that the head at the fitted pose and light shows the photo's
    skin at its brightness (the neutral-light convention, ``docs/conventions.md``), and the
    light of a face lit from one side turned down by the factor its texture is turned up.

    Stage 2 lifts shadows and fills a shadowed side from its brighter mirror, and stage 3
    trades light for texel brightness (its light must also explain the skin its gate keeps
    fixed): the head rendered at the fitted light came out 2-6 L* brighter than the photo's
    skin (faces-dev). One factor per photo (within ``1 / LEVEL_MAX .. LEVEL_MAX``, the bound
    of stage 2's level correction), the ratio of the photo's to the render's median luma
    over the photo's skin (``photos.skin``) that the render covers; photos with under 200
    such pixels keep their texture.

    The light's scale is a convention (its mean irradiance over the seen skin is about 1);
    where its ``LIT_QUANTILE`` exceeds ``LIT_REF`` (one side lit, the other in shadow) the
    texture is brightened and the light dimmed by that ratio (at most ``LEVEL_MAX``): the
    render at the fitted light stays the same, and under the neutral light the skin shows
    the brightness of its lit side, as one sees the person's skin, not its average with the
    shadow.

    Args:
        ctx: the fit's context (renderer, model); photos: the batch; coeffs: the final
            coefficients; texture: ``float32 [B, S, S, 3]``, at least 1 / 255 (may exceed 1).
    Returns:
        :class:`PhotoLevel`: the textures in ``[1 / 255, 1]`` (highlights rolled off with
        their hue kept, :func:`~services.fitter.texture.completion.fit_range`), the level
        factors (the report's ``texture_level_scale``: how far stages 2 and 3 had moved the
        skin's brightness), the lit side's (``texture_lit_scale``, 1 for a face lit from the
        front) and the light (``coeffs["gamma"]`` dimmed by the lit side's factor).
    """
    m = ctx.model
    with torch.no_grad():
        v = m.shape(coeffs["id"], coeffs["exp"])
        verts = rigid_transform(v, coeffs["angles"], coeffs["trans"])
        normals = rotate_normals(m.vertex_normals(v), coeffs["angles"])
        b = texture.shape[0]
        out = ctx.renderer.render(
            verts, m.tri, Surface(normals=normals, uv=m.uv, uv_tri=m.uv_tri, texture=texture),
            gamma=coeffs["gamma"], options=RasterOptions(antialias=False))
        # the light's irradiance at each pixel (what the shading multiplied the albedo by)
        irr = irradiance(out.normal, coeffs["gamma"])
        luma = torch.tensor(LUMA, device=texture.device)
        sel = (photos.skin[..., 0] > 0.5) & (out.mask[..., 0] > 0.5)
        scale: list[float] = []
        lit: list[float] = []
        for i in range(b):
            if int(sel[i].sum()) < 200:
                scale.append(1.0)
                lit.append(1.0)
                continue
            want = float((photos.photo[i][sel[i]] @ luma).median())
            got = float((out.image[i][sel[i]] @ luma).median())
            level = min(max(want / max(got, 1e-3), 1 / LEVEL_MAX), LEVEL_MAX)
            q = float(torch.quantile(irr[i][sel[i]] @ luma, LIT_QUANTILE))
            lit.append(min(max(q / LIT_REF, 1.0), LEVEL_MAX))
            scale.append(level)
        k = torch.tensor([a * c for a, c in zip(scale, lit, strict=True)], device=texture.device,
                         dtype=texture.dtype)[:, None, None, None]
        gamma = scale_light(coeffs["gamma"], 1 / torch.tensor(lit, device=texture.device,
                                                               dtype=coeffs["gamma"].dtype))
        maps = uv_maps(ctx.model, texture.shape[-2], ctx.backend)
        return PhotoLevel(fit_range(texture * k, maps), scale, lit, gamma)


def mirror_offsets(off: torch.Tensor, own: torch.Tensor, maps) -> torch.Tensor:
    """Carry the stage-3 texel offsets to the unseen side, like stage 2's mirror fill.

    Args:
        off: ``[B, S, S, 3]`` offsets (already gated by the own-view confidence).
        own: ``[B, S, S]`` stage-2 own-view confidence in [0, 1].
        maps: :class:`services.fitter.texture.UVMaps` of size S.
    Returns:
        ``[B, S, S, 3]``: ``off + (1 - own) * own[mirror] * off[mirror]`` where a mirror exists.
    """
    b, s = off.shape[0], off.shape[1]
    flat = off.reshape(b, -1, 3)
    w = own.reshape(b, -1)
    mi = maps.mirror.to(off.device)
    has = maps.has_mirror.reshape(-1).to(off.device).float()
    add = ((1 - w) * w[:, mi] * has)[..., None] * flat[:, mi]
    return (flat + add).reshape(b, s, s, 3)


def _metrics(face: AlignedFace, lm_fit: np.ndarray, render: np.ndarray, rmask: np.ndarray,
             fmask: np.ndarray, tex: CompletedTexture, maps) -> dict[str, float]:
    """Landmark error (px and / inter-ocular distance of the outer eye corners 36-45), masked
    PSNR of the render vs the crop (render mask x photo face mask), texture coverage."""
    lm = np.asarray(face.crop_landmarks, np.float64)
    err = np.linalg.norm(lm_fit - lm, axis=1)
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    mk = (rmask > 0.5) & (fmask > 0.5)
    if mk.sum() > 0:
        diff = (render.astype(np.float64) - face.crop.astype(np.float64))[mk] / 255.0
        mse = float((diff**2).mean())
        psnr = 10 * math.log10(1.0 / max(mse, 1e-10))
    else:
        psnr = float("nan")
    return {
        "landmark_error_px": float(err.mean()),
        "landmark_error_iod": float(err.mean() / iod),
        "landmark_error_max_px": float(err.max()),
        "inter_ocular_px": iod,
        "psnr_masked": psnr,
        "psnr_mask_pixels": float(mk.sum()),
        "texture_coverage": coverage(tex.observed, maps),
        "texture_coverage_mirrored": coverage(tex.combined, maps),
        "eye_pixels_excluded": float((face.parse_mask == PARSE_EYES).sum()),
        "mouth_pixels_excluded": float((face.parse_mask == PARSE_MOUTH).sum()),
    }


def lr_asymmetry(texture: np.ndarray, maps) -> float:
    """Relative brightness difference of the face's left and right halves in a texture.

    Args:
        texture: ``uint8 [S, S, 3]``; maps: :class:`services.fitter.texture.UVMaps` of size S.
    Returns:
        ``|mean(left) - mean(right)| / mean(both)`` over the face-region texels, split by the
        sign of x on the mean shape (0 for a left/right symmetric brightness).
    """
    left_i, right_i = _face_halves(maps)
    if len(left_i) == 0 or len(right_i) == 0:
        return 0.0
    flat = texture.reshape(-1, texture.shape[-1])
    left = flat[left_i].astype(np.float64).mean()
    right = flat[right_i].astype(np.float64).mean()
    return float(abs(left - right) / max(0.5 * (left + right), 1e-6))


def _face_halves(maps) -> tuple[np.ndarray, ...]:
    """The flat texel indices of the face region's left (x < -0.05 on the mean shape) and
    right (x > 0.05) halves, made once per atlas (:func:`derived_arrays`)."""
    def build() -> tuple[np.ndarray, np.ndarray]:
        face = host_array(maps, "face") > 0.5
        x = host_array(maps, "pos_mean")[..., 0]
        return np.flatnonzero(face & (x < -0.05)), np.flatnonzero(face & (x > 0.05))

    return derived_arrays(maps, "lr-halves", build, (__file__,))


def draw_landmarks(img: np.ndarray, lm: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """``uint8 [H, W, 3]`` copy with ``[68, 2]`` landmarks drawn as dots."""
    out = np.ascontiguousarray(img.copy())
    for x, y in np.asarray(lm):
        if np.isfinite(x) and np.isfinite(y):
            cv2.circle(out, (int(round(x)), int(round(y))), 1, color, -1, lineType=cv2.LINE_AA)
    return out


def make_preview(crop: np.ndarray, render: np.ndarray, mask: np.ndarray,
                 texture: np.ndarray) -> np.ndarray:
    """``uint8 [224, 896, 3]``: input | render | 50 % overlay | UV texture (downscaled).

    Args:
        crop: ``uint8 [224, 224, 3]``; render: ``uint8 [224, 224, 3]`` (black background);
        mask: ``float [224, 224]`` render coverage; texture: ``uint8 [S, S, 3]``.
    """
    m = mask[..., None].astype(np.float32)
    rend_bg = (render.astype(np.float32) * m + crop.astype(np.float32) * (1 - m) * 0.0
               + 255 * (1 - m)).astype(np.uint8)
    over = (crop.astype(np.float32) * (1 - 0.5 * m) + render.astype(np.float32) * 0.5 * m)
    uv = cv2.resize(texture, (224, 224), interpolation=cv2.INTER_AREA)
    return np.concatenate([crop, rend_bg, over.clip(0, 255).astype(np.uint8), uv], 1)
