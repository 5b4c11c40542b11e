"""Quality of the reconstruction, measured independently of the fitter's own losses.

    python bench/quality.py DIR_OR_FILES... [--astronaut] [--preset standard]
                            [--device cpu] [--threads 2] [--json out.json] [--plots DIR]
                            [--views DIR]

For every photo the pipeline runs in process, through the service cores in the order of
:class:`gateway.orchestrator.Orchestrator` (detect with a 1024 hi-res crop -> fit -> eyeballs
with the hi-res landmarks; export is left out, it does not change the geometry or the texture),
and these numbers are computed here from the fitted coefficients, the face model, the camera
and the texture (never from the fitter's loss terms):

* ``lmk_err_iod``: mean distance between the 68 dlib landmarks detected on the input and the
  fitted model's landmarks projected with the fitting camera, in the 224 crop, as a fraction of
  the inter-ocular distance (outer eye corners 36-45). ``lmk_err_inner_iod``: the same without
  the jaw contour (points 17-67), ``lmk_err_max_iod``: the worst point. The fitter minimises
  a loss on these same detected landmarks, so this measures how tightly the model follows
  them; ``lmk_composite_iod`` is the independent check: dlib's landmarks detected again on
  the composite (below) vs those of the input.
* ``psnr`` / ``ssim``: the render (re-rendered here from the coefficients and the 8-bit
  texture) composited on the input, compared with the input inside the face region (render
  coverage x detector parse labels skin / brows / nose / lips; the head render has no
  eyeballs or mouth interior, so the eyes / mouth labels are left out), 224 crop;
  ``skimage.metrics``; SSIM is the mean of the SSIM map inside the region.
* ``id_composite``: dlib face-recognition descriptor distance (``dlib_face_recognition_resnet_
  model_v1``; < 0.6 = same person by dlib's convention) between the input crop and the
  composite crop (both upsampled x2, each detected independently).
  ``id_front`` / ``id_yaw_p30`` / ``id_yaw_m30``: distance between the input photo and renders
  of the textured neutral head with its eyeballs (preview light, mid-grey background) facing
  the camera and turned 30 degrees (positive yaw turns the face toward the image right).
  ``id_crop_baseline``: input photo vs its own 224 crop (the resolution noise floor).
* ``uv_coverage``: fraction of the face UV region (the model's face triangles) seen in the
  photo: the fitted mesh rendered at 448 px, pixels inside the render and the same face
  labels splatted into a 256 UV grid (3x3 closing).
  ``fit_coverage``: the fitter's own ``texture_coverage`` (unwrap weight > 0.1), for comparison.
* ``sym_err_pct``: mean ``|L - L[mirror]|`` of the texture's luminance over the face region,
  using the model's left/right mirror map, in % of full scale (255).
* ``seam_step``: mean absolute RGB step (in 1/255) between texels on the two sides of the
  atlas's seams (``services.fitter.texture.seam_step``): a colour step there shows on the
  head as a drawn line. For scale, neighbouring texels inside an island differ by about 1-3.

Prints a per-photo table and a mean / median / worst summary (header: date, machine, load
average, exact command); ``--json`` writes every number, ``--plots`` the distributions
(matplotlib, from the ``dev`` extra), ``--views`` the composites and turned renders as PNG.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, loadavg, table, write_json  # noqa: E402

# ParseLabel skin, brows, nose, lips: the face labels the head mesh can reproduce (the
# fitted head renders no eyeballs and no mouth interior, so eyes / mouth labels are left out)
FACE_LABELS = (1, 2, 4, 5)
ID_THRESHOLD = 0.6
YAWS = {"id_front": 0.0, "id_yaw_p30": 30.0, "id_yaw_m30": -30.0}
BACKGROUND = (0.5, 0.5, 0.5)
FACE_REC_FILE = "dlib_face_recognition_resnet_model_v1.dat"

#: metric -> True when larger is better (for "worst" in the summary)
HIGHER_IS_BETTER = {
    "lmk_err_iod": False, "lmk_err_inner_iod": False, "lmk_err_max_iod": False,
    "lmk_composite_iod": False,
    "psnr": True, "ssim": True, "id_composite": False, "id_front": False,
    "id_yaw_p30": False, "id_yaw_m30": False, "id_crop_baseline": False,
    "uv_coverage": True, "fit_coverage": True, "sym_err_pct": False, "seam_step": False,
}


# ----------------------------------------------------------------------------- metric functions
def project_landmarks(model, coeffs: dict[str, np.ndarray], camera) -> np.ndarray:
    """The fitted model's 68 landmarks in crop pixels.

    Args:
        model: :class:`services.fitter.facemodel.FaceModel`.
        coeffs: ``id [K_id]``, ``exp [K_exp]``, ``angles [3]`` (radians), ``trans [3]``.
        camera: :class:`services.fitter.camera.Camera` (224 fitting raster).
    Returns:
        ``float64 [68, 2]`` pixels (x right, y down, pixel centres at integers).
    """
    import torch

    from services.fitter.camera import project, rigid_transform

    dev = model.device
    c = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=dev)[None]
         for k, v in coeffs.items()}
    with torch.no_grad():
        world = rigid_transform(model.shape(c["id"], c["exp"]), c["angles"], c["trans"])
        return project(model.landmarks(world), camera)[0].cpu().double().numpy()


def landmark_error(detected: np.ndarray, fitted: np.ndarray) -> dict[str, float]:
    """Landmark error as a fraction of the inter-ocular distance.

    Args:
        detected: ``[68, 2]`` dlib landmarks (crop pixels); the reference.
        fitted: ``[68, 2]`` projected model landmarks (crop pixels).
    Returns:
        ``lmk_err_iod`` (mean over 68), ``lmk_err_inner_iod`` (points 17-67, no jaw),
        ``lmk_err_max_iod`` (worst point), ``lmk_err_px`` (mean, pixels), ``iod_px``.
    """
    det = np.asarray(detected, np.float64)
    err = np.linalg.norm(np.asarray(fitted, np.float64) - det, axis=1)
    iod = float(np.linalg.norm(det[36] - det[45]))
    return {"lmk_err_iod": float(err.mean() / iod), "lmk_err_inner_iod": float(err[17:].mean()
                                                                               / iod),
            "lmk_err_max_iod": float(err.max() / iod), "lmk_err_px": float(err.mean()),
            "iod_px": iod}


def render_fit(model, coeffs: dict[str, np.ndarray], texture: np.ndarray, camera, backend,
               size: int | None = None):
    """Re-render the fitted face from its coefficients.

    Args:
        model: the face model; coeffs: as :func:`project_landmarks` plus ``gamma [27]``.
        texture: ``uint8 [S, S, 3]`` UV texture (row 0 = v = 1).
        camera: fitting camera; size: raster side (default ``camera.size``).
        backend: rasteriser backend (:func:`services.fitter.renderer.get_backend`).
    Returns:
        :class:`services.fitter.render.RenderOutput` for a batch of one (``image [1, H, W, 3]``
        black background, ``mask [1, H, W, 1]`` antialiased coverage, ``uv`` texture-memory
        coordinates ``(u, 1 - v)``).
    """
    import torch

    from services.fitter.camera import rigid_transform, rotate_normals
    from services.fitter.render import MeshRenderer

    dev = model.device
    c = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=dev)[None]
         for k, v in coeffs.items()}
    tex = torch.as_tensor(texture, device=dev).float()[None] / 255.0
    with torch.no_grad():
        v = model.shape(c["id"], c["exp"])
        world = rigid_transform(v, c["angles"], c["trans"])
        nrm = rotate_normals(model.vertex_normals(v), c["angles"])
        return MeshRenderer(camera, backend, device=dev).render(
            world, model.tri, normals=nrm, uv=model.uv, uv_tri=model.uv_tri, texture=tex,
            gamma=c["gamma"], size=size, antialias=True)


def face_region(parse_mask: np.ndarray, render_mask: np.ndarray,
                labels: tuple[int, ...] = FACE_LABELS) -> np.ndarray:
    """``bool [H, W]``: render coverage > 0.5 and a parse label in ``labels``.

    Args:
        parse_mask: ``uint8 [H, W]`` detector ParseLabel map.
        render_mask: ``float [H, W]`` render coverage in [0, 1].
    """
    return (np.asarray(render_mask) > 0.5) & np.isin(parse_mask, labels)


def composite(photo: np.ndarray, render: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]``: ``render`` inside ``region`` (bool ``[H, W]``), ``photo`` elsewhere."""
    return np.where(region[..., None], render, photo).astype(np.uint8)


def masked_psnr_ssim(photo: np.ndarray, comp: np.ndarray, region: np.ndarray
                     ) -> dict[str, float]:
    """PSNR and SSIM of a composite vs the photo, inside a region.

    Args:
        photo, comp: ``uint8 [H, W, 3]``; region: ``bool [H, W]``.
    Returns:
        ``psnr`` (dB, over the region's pixels and channels, capped at 99), ``ssim`` (mean of the
        ``skimage.metrics.structural_similarity`` map, 7x7 windows, inside the region),
        ``region_px``. NaN for an empty region.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    n = int(region.sum())
    if n == 0:
        return {"psnr": float("nan"), "ssim": float("nan"), "region_px": 0}
    a, b = photo[region], comp[region]
    psnr = 99.0 if np.array_equal(a, b) else peak_signal_noise_ratio(a, b, data_range=255)
    _, smap = structural_similarity(photo, comp, channel_axis=2, data_range=255, full=True)
    return {"psnr": float(min(psnr, 99.0)), "ssim": float(smap.mean(-1)[region].mean()),
            "region_px": n}


def uv_coverage(out_uv: np.ndarray, visible: np.ndarray, face_uv: np.ndarray) -> float:
    """Fraction of the face UV region seen in the photo.

    Args:
        out_uv: ``float [H, W, 2]`` texture-memory coordinates ``(u, 1 - v)`` per pixel.
        visible: ``bool [H, W]`` pixels that show the face in the photo.
        face_uv: ``bool [S, S]`` the model's face region in UV (row 0 = v = 1).
    Returns:
        observed face texels / face texels, in [0, 1].
    """
    import cv2

    s = face_uv.shape[0]
    uv = out_uv[visible]
    col = np.clip((uv[:, 0] * s).astype(int), 0, s - 1)
    row = np.clip((uv[:, 1] * s).astype(int), 0, s - 1)
    seen = np.zeros((s, s), np.uint8)
    seen[row, col] = 1
    seen = cv2.morphologyEx(seen, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0
    total = int(face_uv.sum())
    return float((seen & face_uv).sum() / total) if total else 0.0


def symmetry_error(texture: np.ndarray, face_uv: np.ndarray, mirror: np.ndarray,
                   has_mirror: np.ndarray) -> float:
    """Brightness symmetry error of a UV texture, in % of full scale.

    Args:
        texture: ``uint8 [S, S, 3]`` (row 0 = v = 1).
        face_uv: ``bool [S, S]`` face region; mirror: ``int [S * S]`` flat index of each
            texel's left/right mirror; has_mirror: ``bool [S, S]``.
    Returns:
        ``100 * mean |L - L[mirror]| / 255`` over face texels with a mirror, L = Rec.601 luma.
    """
    lum = texture.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    flat = lum.reshape(-1)
    sel = (face_uv & has_mirror).reshape(-1)
    if not sel.any():
        return float("nan")
    return float(100.0 * np.abs(flat[sel] - flat[mirror[sel]]).mean() / 255.0)


def head_with_eyes(head, texture: np.ndarray, eyes) -> tuple:
    """One mesh + one texture atlas for the textured head and its two eyeballs.

    Args:
        head: :class:`ffhquv.mesh.MeshData` (model space, UVs into ``texture``).
        texture: ``uint8 [S, S, 3]`` head texture.
        eyes: :class:`services.eyeball.core.EyeballResult`.
    Returns:
        ``(vertices [N, 3], faces [T, 3], uvs [M, 2], uv_faces [T, 3], atlas uint8 [S, 2S, 3])``
        numpy arrays; the head's UVs map into the left half of the atlas, the eyes' into the
        right half (u' = u / 2 and 1/2 + u / 2).
    """
    import cv2

    s = texture.shape[0]
    eye_tex = cv2.resize(eyes.texture, (s, s), interpolation=cv2.INTER_AREA)
    atlas = np.concatenate([texture, eye_tex], axis=1)
    verts, faces, uvs, uv_faces = [], [], [], []
    nv = nuv = 0
    for mesh, off in ((head, 0.0), (eyes.left, 0.5), (eyes.right, 0.5)):
        uv = np.asarray(mesh.uvs, np.float64).copy()
        uv[:, 0] = off + 0.5 * uv[:, 0]
        verts.append(np.asarray(mesh.vertices, np.float64))
        faces.append(np.asarray(mesh.faces) + nv)
        uvs.append(uv)
        uv_faces.append(np.asarray(mesh.uv_faces) + nuv)
        nv += len(mesh.vertices)
        nuv += len(uv)
    return (np.concatenate(verts), np.concatenate(faces), np.concatenate(uvs),
            np.concatenate(uv_faces), atlas)


def turned_view(head, texture: np.ndarray, eyes, yaw_deg: float, size: int = 512,
                backend=None) -> np.ndarray:
    """``uint8 [size, size, 3]``: the textured head with eyeballs turned by ``yaw_deg`` on a
    mid-grey background (:func:`services.fitter.render.render_preview`, preview light)."""
    import torch

    from services.fitter.render import render_preview

    v, f, uv, uvf, atlas = head_with_eyes(head, texture, eyes)
    return render_preview(torch.tensor(v, dtype=torch.float32), torch.tensor(f),
                          uv=torch.tensor(uv, dtype=torch.float32), uv_tri=torch.tensor(uvf),
                          texture=atlas, yaw_deg=yaw_deg, size=size, background=BACKGROUND,
                          backend=backend)


class FaceIdentity:
    """dlib's face-recognition descriptor (ResNet, 128-D) on detected faces.

    Args:
        detector: a :class:`services.detector.core.Detector` (HOG faces + 68 landmarks; its
            models folder must hold ``dlib_face_recognition_resnet_model_v1.dat``).
    """

    def __init__(self, detector):
        import dlib

        path = Path(detector.models_dir) / FACE_REC_FILE
        if not path.is_file():
            from ffhquv.errors import PreconditionFailed

            raise PreconditionFailed(f"dlib face-recognition model missing: {path}")
        self.detector = detector
        self.net = dlib.face_recognition_model_v1(str(path))

    def descriptor(self, rgb: np.ndarray, landmarks: np.ndarray | None = None,
                   box: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        """128-D descriptor of the largest face of ``rgb`` (``uint8 [H, W, 3]``).

        With ``landmarks`` (``[68, 2]`` pixels) and ``box`` (l, t, r, b) the face is not
        detected again. Returns None when no face is found.
        """
        got = self.describe(rgb, landmarks, box)
        return None if got is None else got[0]

    def describe(self, rgb: np.ndarray, landmarks: np.ndarray | None = None,
                 box: tuple[float, float, float, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(descriptor float64 [128], landmarks float32 [68, 2])`` of the largest face of
        ``rgb`` (landmarks in ``rgb`` pixels), or None when no face is found."""
        import dlib

        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if landmarks is None:
            faces = self.detector.find_faces(rgb, "hog")[0]
            if not faces:
                return None
            box = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[0]
            landmarks = self.detector.landmarks(rgb, box)
        rect = dlib.rectangle(*(int(round(x)) for x in box))
        pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
        shape = dlib.full_object_detection(rect, pts)
        desc = np.asarray(self.net.compute_face_descriptor(rgb, shape), np.float64)
        return desc, np.asarray(landmarks, np.float32)

    @staticmethod
    def distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
        """Euclidean distance of two descriptors; NaN when either face was not found."""
        if a is None or b is None:
            return float("nan")
        return float(np.linalg.norm(a - b))


def upsample2(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)


# ----------------------------------------------------------------------------------- evaluator
@dataclass
class PhotoResult:
    """Metrics (``metrics``) and the images they were computed on (for ``--views``)."""

    name: str
    metrics: dict
    images: dict[str, np.ndarray]


class QualityEvaluator:
    """Runs detect -> fit -> eyeballs on photos and measures the result.

    Args:
        preset: fitter preset ("fast" | "standard" | "best").
        device: fitter device ("cpu" | "cuda" | "auto").
        face_model: "default" (cached default face model) or "hifi3dpp".
        threads: torch CPU threads during fits.
        texture_size: UV texture side.
    """

    def __init__(self, preset: str = "standard", device: str = "cpu",
                 face_model: str = "default", threads: int | None = 2,
                 texture_size: int = 1024):
        from services.detector.core import Detector
        from services.fitter.core import FitterCore

        self.preset = preset
        self.texture_size = texture_size
        self.detector = Detector()
        self.identity = FaceIdentity(self.detector)
        self.fitter = FitterCore(face_model, device=device, threads=threads)

    def evaluate(self, name: str, data: bytes) -> PhotoResult:
        """Evaluate one photo (JPEG / PNG bytes). Raises the detector's / fitter's typed errors
        (e.g. :class:`ffhquv.errors.NoFace`)."""
        import torch

        from services.eyeball.core import place_eyeballs
        from services.fitter.texture import seam_step, uv_maps

        t0 = time.perf_counter()
        det = self.detector.detect(data, unwrap_size=1024)
        a = det.aligned
        fit = self.fitter.fit(a, preset=self.preset, texture_size=self.texture_size,
                              want_intermediates=False)
        k = a.crop_hires.shape[0] / 224.0
        eyes = place_eyeballs(fit.mesh_neutral, fit.eye_ring_left, fit.eye_ring_right,
                              photo=a.crop_hires,
                              photo_landmarks=(a.crop_landmarks + 0.5) * k - 0.5)
        t_pipe = time.perf_counter() - t0

        model, cam, be = self.fitter.model, self.fitter.camera, self.fitter.backend
        m: dict = {"photo": name, "preset": self.preset, "pipeline_s": t_pipe,
                   "parse_source": a.parse_source}
        # landmarks
        lm_fit = project_landmarks(model, fit.coefficients, cam)
        m.update(landmark_error(a.crop_landmarks, lm_fit))
        # photometric
        r = render_fit(model, fit.coefficients, fit.uv_texture, cam, be)
        render = (r.image[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        region = face_region(a.parse_mask, r.mask[0, ..., 0].cpu().numpy())
        comp = composite(a.crop, render, region)
        m.update(masked_psnr_ssim(a.crop, comp, region))
        # identity
        ident = self.identity
        d_photo = ident.descriptor(det.image, det.faces[det.selected_index].landmarks,
                                   det.faces[det.selected_index].box)
        d_crop = ident.descriptor(upsample2(a.crop))
        got = ident.describe(upsample2(comp))
        d_comp = None if got is None else got[0]
        # dlib's landmarks re-detected on the composite (x2 grid back to 224 pixel centres):
        # do the rendered features sit where the photo's are?
        m["lmk_composite_iod"] = float("nan") if got is None else landmark_error(
            a.crop_landmarks, (got[1] + 0.5) / 2 - 0.5)["lmk_err_iod"]
        m["id_crop_baseline"] = ident.distance(d_photo, d_crop)
        m["id_composite"] = ident.distance(d_crop, d_comp)
        images = {"composite": np.concatenate([a.crop, comp, render], 1)}
        for key, yaw in YAWS.items():
            view = turned_view(fit.mesh_neutral, fit.uv_texture, eyes, yaw, backend=be)
            m[key] = ident.distance(d_photo, ident.descriptor(view))
            images[key] = view
        m["id_same_person_all"] = all(
            m[k] < ID_THRESHOLD for k in ("id_composite", *YAWS) if math.isfinite(m[k]))
        m["id_faces_missed"] = sum(not math.isfinite(m[k])
                                   for k in ("id_composite", "id_crop_baseline", *YAWS))
        # UV coverage and symmetry
        r448 = render_fit(model, fit.coefficients, fit.uv_texture, cam, be, size=448)
        parse448 = np.repeat(np.repeat(a.parse_mask, 2, 0), 2, 1)
        vis = face_region(parse448, r448.mask[0, ..., 0].cpu().numpy(), FACE_LABELS)
        with torch.no_grad():
            maps256 = uv_maps(model, 256, be)
            maps_tex = uv_maps(model, fit.uv_texture.shape[0], be)
        m["uv_coverage"] = uv_coverage(r448.uv[0].cpu().numpy(), vis,
                                       maps256.face.cpu().numpy() > 0.5)
        m["fit_coverage"] = float(fit.metrics.get("texture_coverage", float("nan")))
        m["sym_err_pct"] = symmetry_error(fit.uv_texture, maps_tex.face.cpu().numpy() > 0.5,
                                          maps_tex.mirror.cpu().numpy(),
                                          maps_tex.has_mirror.cpu().numpy())
        m["seam_step"] = seam_step(fit.uv_texture, maps_tex)
        m["fit_landmark_error_iod"] = float(fit.metrics.get("landmark_error_iod", float("nan")))
        m["fit_psnr_masked"] = float(fit.metrics.get("psnr_masked", float("nan")))
        m["fit_seconds"] = float(fit.report["timings_s"]["total"])
        m["eval_s"] = time.perf_counter() - t0 - t_pipe
        return PhotoResult(name=name, metrics=m, images=images)


# ------------------------------------------------------------------------------------- summary
def summarize(rows: list[dict]) -> list[dict]:
    """Mean / median / worst of each metric in :data:`HIGHER_IS_BETTER` over ``rows``
    (NaN values, i.e. faces dlib did not find, are left out and counted in ``missing``)."""
    out = []
    for key, higher in HIGHER_IS_BETTER.items():
        vals = [float(r[key]) for r in rows if key in r and math.isfinite(float(r[key]))]
        if not vals:
            continue
        worst = min(vals) if higher else max(vals)
        worst_photo = next(r["photo"] for r in rows if key in r and float(r[key]) == worst)
        out.append({"metric": key, "n": len(vals), "missing": len(rows) - len(vals),
                    "mean": statistics.fmean(vals), "median": statistics.median(vals),
                    "worst": worst, "worst_photo": worst_photo})
    return out


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per metric group: the per-photo values as a strip plot. Returns the files, or
    an empty list (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# --plots skipped: matplotlib is not installed (pip install -e '.[dev]')")
        return []
    groups = {
        "landmarks": ["lmk_err_iod", "lmk_err_inner_iod", "lmk_err_max_iod",
                      "lmk_composite_iod"],
        "photometric": ["psnr", "ssim"],
        "identity": ["id_crop_baseline", "id_composite", "id_front", "id_yaw_p30",
                     "id_yaw_m30"],
        "texture": ["uv_coverage", "fit_coverage", "sym_err_pct", "seam_step"],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for gname, keys in groups.items():
        fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            vals = [(r["photo"], float(r[key])) for r in rows
                    if key in r and math.isfinite(float(r[key]))]
            ys = [v for _, v in vals]
            xs = np.random.default_rng(0).uniform(-0.15, 0.15, len(ys))
            ax.scatter(xs, ys, s=18)
            if ys:
                ax.boxplot(ys, positions=[0], widths=0.5, showfliers=False)
            if key.startswith("id_"):
                ax.axhline(ID_THRESHOLD, color="r", lw=0.8, ls="--")
                ax.set_ylim(0, max([0.8, *ys]) * 1.05)
            ax.set_title(key, fontsize=9)
            ax.set_xticks([])
        fig.suptitle(f"{gname} ({len(rows)} photos)", fontsize=10)
        fig.tight_layout()
        p = out_dir / f"quality_{gname}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        files.append(p)
    print(f"# plots: {', '.join(str(f) for f in files)}")
    return files


def collect(inputs: list[str], astronaut: bool) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the photos in files / folders (non-recursive), plus skimage's
    astronaut as ``astronaut.png`` when asked."""
    from ffhquv.commands import IMAGE_SUFFIXES

    items: list[tuple[str, bytes]] = []
    for s in inputs:
        p = Path(s)
        files = (sorted(q for q in p.iterdir() if q.is_file()
                        and q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p])
        for q in files:
            if not q.is_file():
                raise SystemExit(f"bench/quality.py: no such file or folder: {s}")
            items.append((q.name, q.read_bytes()))
    if astronaut:
        from PIL import Image
        from skimage import data

        buf = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buf, "PNG")
        items.append(("astronaut.png", buf.getvalue()))
    if not items:
        raise SystemExit("bench/quality.py: no photos (give files / folders or --astronaut)")
    return items


PHOTO_COLS = ["photo", "lmk_err_iod", "lmk_err_inner_iod", "lmk_composite_iod", "psnr", "ssim",
              "id_crop_baseline",
              "id_composite", "id_front", "id_yaw_p30", "id_yaw_m30", "uv_coverage",
              "fit_coverage", "sym_err_pct", "seam_step", "fit_seconds"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", help="photos or folders of photos")
    ap.add_argument("--astronaut", action="store_true", help="add skimage.data.astronaut()")
    ap.add_argument("--preset", default="standard", choices=["fast", "standard", "best"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--face-model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write per-photo metrics and the summary")
    ap.add_argument("--plots", default=None, help="folder for distribution plots (PNG)")
    ap.add_argument("--views", default=None, help="folder for composite / turned-view PNGs")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    items = collect(args.inputs, args.astronaut)
    meta = header(f"quality: {len(items)} photo(s), preset {args.preset}, "
                  f"face model {args.face_model}")
    ev = QualityEvaluator(args.preset, args.device, args.face_model, args.threads)
    rows, failed = [], []
    for name, data in items:
        try:
            res = ev.evaluate(name, data)
        except Exception as e:  # noqa: BLE001 - reported per photo, the others go on
            print(f"# {name}: FAILED {type(e).__name__}: {e}")
            failed.append({"photo": name, "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append(res.metrics)
        print(f"# {name}: fit {res.metrics['fit_seconds']:.1f} s, "
              f"eval {res.metrics['eval_s']:.1f} s", flush=True)
        if args.views:
            from ffhquv.imaging import png_bytes

            vd = Path(args.views)
            vd.mkdir(parents=True, exist_ok=True)
            stem = Path(name).stem
            (vd / f"{stem}_composite.png").write_bytes(png_bytes(res.images["composite"]))
            turned = np.concatenate([res.images[k] for k in ("id_yaw_m30", "id_front",
                                                             "id_yaw_p30")], 1)
            (vd / f"{stem}_turned.png").write_bytes(png_bytes(turned))
    if rows:
        table(rows, PHOTO_COLS)
        print()
        summary = summarize(rows)
        table(summary, ["metric", "n", "missing", "mean", "median", "worst", "worst_photo"])
        print(f"# identity: distances < {ID_THRESHOLD} = same person (dlib convention); "
              f"all views recognised for {sum(r['id_same_person_all'] for r in rows)}"
              f"/{len(rows)} photos")
    else:
        summary = []
    if args.plots and rows:
        plot(rows, Path(args.plots))
    meta["loadavg_end"] = loadavg()
    print(f"# load average at the end: {', '.join(map(str, meta['loadavg_end']))}")
    write_json(args.json, meta, rows, summary=summary, failed=failed, preset=args.preset,
               face_model=args.face_model, threads=args.threads)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
