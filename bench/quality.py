"""Quality of the reconstruction, measured independently of the fitter's own losses.

    python bench/quality.py DIR_OR_FILES... [--astronaut] [--preset standard]
                            [--device cpu] [--threads 2] [--json out.json] [--plots DIR]
                            [--views DIR] [--sheets DIR]

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
  of the textured head as the GLB opens it (fitted expression) with its eyeballs (preview
  light, mid-grey background) facing the camera and turned 30 degrees (positive yaw turns the
  face toward the image right). ``id_front_neutral``: the same front view of the neutral head.
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
* ``dE_*``: whole-head colour, CIEDE2000 (``skimage.color.deltaE_ciede2000`` on
  ``rgb2lab`` of sRGB, D65) between the photo (hi-res crop resized to 448) and the head
  rendered at the fitted pose with the fitted SH light and the final texture (448, no
  eyeballs), over the same pixels. ``dE_<region>`` compares the region's median Lab colours
  (the overall tone); ``dEpx_face`` / ``dEpx_outside`` are the mean per-pixel differences.
  Regions: ``face`` = :func:`face_region` (parse labels skin / brows / nose / lips in the
  render); outside it, mesh zones of :func:`head_zones` (``forehead_top``, ``scalp``,
  ``ears``, ``jaw``, ``neck``) rendered per pixel (:func:`zone_image`). All keep render
  coverage > 0.5 eroded 2 px from the silhouette (zones also from their borders), leave out
  the alignment's padding beyond the photo's edge (:func:`photo_pixels`) and need
  150 pixels (else NaN, counted as missing). ``dE_outside``: mean of the outside zones
  present. A bald template scalp on a dark-haired person gives a large ``dE_scalp``.
  In the zones whose texture is skin by design (:data:`SKIN_ZONES`: forehead top, ears, neck)
  only photo pixels that show skin are compared (the detector's skin probability): a fringe,
  long hair over the ears or a collar is an occluder the texture must not copy (issue 21),
  so it is left out rather than counted against the skin under it. ``dE_outside_raw`` is the
  same mean with every pixel of every zone, occluders included. ``dE_face_neutral`` /
  ``dE_outside_neutral``: the same region medians with the head under the neutral light
  (uniform white, irradiance 1, :func:`ffhquv.render.sh.uniform_gamma`) instead of the fitted
  one: does the albedo alone show the photo's skin (issue 21, item 2)?
  For scale: dE ~ 1 is a just-noticeable difference, 2-10 is visible at a glance.

Prints a per-photo table and a mean / median / worst summary (header: date, machine, load
average, exact command); ``--json`` writes every number, ``--plots`` the distributions
(matplotlib, from the ``dev`` extra), ``--views`` the composites, turned renders and the
colour regions as PNG, ``--sheets`` one contact sheet per photo (photo | front | 3/4 | profile
| back, the textured head as the GLB opens it with its eyeballs, preview light). Folder inputs
skip UV textures (``*_texture.png``, :func:`is_texture`) and sub-folders; a photo whose face is
not found is reported and the others go on.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as ffhquv_cli/__init__.py sets it

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import header, loadavg, preset_label, preset_overrides, table, write_json  # noqa: E402

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
    "id_yaw_p30": False, "id_yaw_m30": False, "id_front_neutral": False,
    "id_crop_baseline": False,
    "uv_coverage": True, "fit_coverage": True, "sym_err_pct": False, "seam_step": False,
    "dE_face": False, "dE_forehead_top": False, "dE_scalp": False, "dE_ears": False,
    "dE_jaw": False, "dE_neck": False, "dE_outside": False, "dEpx_face": False,
    "dEpx_outside": False, "dE_outside_raw": False, "dE_face_neutral": False,
    "dE_outside_neutral": False,
}
#: the colour-difference columns (CIEDE2000), in table order
DE_COLS = ["dE_face", "dE_forehead_top", "dE_scalp", "dE_ears", "dE_jaw", "dE_neck",
           "dE_outside", "dE_outside_raw", "dEpx_face", "dEpx_outside", "dE_face_neutral",
           "dE_outside_neutral"]
#: yaw (degrees) of the contact sheet's renders, after the photo
SHEET_VIEWS = {"front": 0.0, "3/4": 45.0, "profile": 90.0, "back": 180.0}
SHEET_PX = 384


# ----------------------------------------------------------------------------- metric functions
def project_landmarks(model, coeffs: dict[str, np.ndarray], camera) -> np.ndarray:
    """The fitted model's 68 landmarks in crop pixels.

    Args:
        model: :class:`services.fitter.facemodel.FaceModel`.
        coeffs: ``id [K_id]``, ``exp [K_exp]``, ``angles [3]`` (radians), ``trans [3]``.
        camera: :class:`ffhquv.render.camera.Camera` (224 fitting raster).
    Returns:
        ``float64 [68, 2]`` pixels (x right, y down, pixel centres at integers).
    """
    import torch

    from ffhquv.render.camera import project, rigid_transform

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
        backend: rasteriser backend (:func:`ffhquv.render.raster.get_backend`).
    Returns:
        :class:`ffhquv.render.renderer.RenderOutput` for a batch of one (``image [1, H, W, 3]``
        black background, ``mask [1, H, W, 1]`` antialiased coverage, ``uv`` texture-memory
        coordinates ``(u, 1 - v)``).
    """
    import torch

    from ffhquv.render.camera import rigid_transform, rotate_normals
    from ffhquv.render.renderer import MeshRenderer, RasterOptions, Surface

    dev = model.device
    c = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=dev)[None]
         for k, v in coeffs.items()}
    tex = torch.as_tensor(texture, device=dev).float()[None] / 255.0
    with torch.no_grad():
        v = model.shape(c["id"], c["exp"])
        world = rigid_transform(v, c["angles"], c["trans"])
        nrm = rotate_normals(model.vertex_normals(v), c["angles"])
        return MeshRenderer(camera, backend, device=dev).render(
            world, model.tri, Surface(normals=nrm, uv=model.uv, uv_tri=model.uv_tri, texture=tex),
            gamma=c["gamma"], options=RasterOptions(size=size, antialias=True))


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


# --------------------------------------------------------------------- whole-head colour (Lab)
#: mesh zones of :func:`head_zones` (index = zone id; 0 = not measured)
ZONES = ("other", "face", "forehead_top", "scalp", "ears", "jaw", "neck")
#: the zones outside the face whose colour difference is reported (``dE_<zone>``)
OUTSIDE_ZONES = ("forehead_top", "scalp", "ears", "jaw", "neck")
#: raster side of the colour measure (the hi-res crop is resized to it)
COLOUR_SIZE = 448
#: fewest pixels a region needs at :data:`COLOUR_SIZE` (scaled by area at other sizes)
MIN_REGION_PX = 150
#: pixels dropped at the silhouette and at zone borders
ERODE_PX = 2
#: outside zones whose texture is skin by design (the texture keeps forehead skin under a
#: fringe, ears under long hair, neck above a collar): there the measure compares only photo
#: pixels that show skin (the detector's skin probability >= SKIN_PROB_MIN), not the hair,
#: clothes or hands that cover them in the photo. ``scalp`` (hair or bald skin) and ``jaw``
#: (beards must show) compare every pixel. ``dE_outside_raw`` keeps every pixel everywhere.
SKIN_ZONES = ("forehead_top", "ears", "neck")
#: skin probability (of 255, the detector's ``skin_mask``) a photo pixel needs in SKIN_ZONES;
#: the detector's own threshold for forehead skin (services.detector.masks)
SKIN_PROB_MIN = 128


def head_zones(model) -> np.ndarray:
    """Per-vertex zone ids (:data:`ZONES`) of a face model, from its mean shape.

    Heights and widths come from the mean shape's 68 embedded landmarks (model frame: y up,
    face toward +z): ``h`` = brows-to-chin height, ``top`` = the brows' height.

    * ``ears``: beside the head (``|x|`` beyond 1.03 x the jaw contour's top points 0 / 16),
      behind them, between 0.45 h below and 0.2 h above that height.
    * ``jaw``: within 0.15 h of the lower jaw contour (points 3-13), both sides of it (the rim
      of the face, where beards are), below the mouth corners.
    * ``forehead_top``: the front of the head between 0.25 h and 0.5 h above the brows,
      between the outer brow ends (the band where the face patch meets the scalp).
    * ``scalp``: above that band; the temples above 0.15 h over the brows, outside the brows;
      the back of the head (behind the ears) from the ears' bottom up.
    * ``neck``: below the chin outside the jaw band; the back of the head below the ears.
    * ``face``: the model's face triangles (``face_tri_mask``) not in the zones above.
    * ``other``: the rest (cheek sides between face and ears, eye sockets, mouth interior).

    Args:
        model: :class:`services.fitter.facemodel.base.FaceModel`.
    Returns:
        ``int64 [N]`` zone id per vertex.
    """
    import torch

    with torch.no_grad():
        lm = model.landmarks(model.mean_shape[None])[0].cpu().double().numpy()
    v = model.mean_shape.detach().cpu().double().numpy()
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    brow_y = float(lm[17:27, 1].mean())
    chin_y = float(lm[8, 1])
    h = brow_y - chin_y
    brow_x = float(np.abs(lm[[17, 26], 0]).mean())
    ear_x = 1.03 * float(np.abs(lm[[0, 16], 0]).mean())
    ear_y, ear_z = float(lm[[0, 16], 1].mean()), float(lm[[0, 16], 2].mean())
    mouth_y = float(lm[[48, 54], 1].mean())
    ear_lo, ear_hi = ear_y - 0.45 * h, ear_y + 0.2 * h

    zone = np.zeros(len(v), np.int64)
    face = np.zeros(len(v), bool)
    face[model.tri[model.face_tri_mask].unique().cpu().numpy()] = True
    zone[face] = ZONES.index("face")
    behind = z < ear_z
    zone[(y < chin_y) | (behind & (y < ear_lo))] = ZONES.index("neck")
    scalp = ((y > brow_y + 0.5 * h) | ((np.abs(x) > brow_x) & (y > brow_y + 0.15 * h))
             | ((z < ear_z - 0.3 * h) & (y >= ear_lo)))
    zone[scalp] = ZONES.index("scalp")
    front = z > float(lm[:, 2].min())
    zone[front & (np.abs(x) < brow_x) & (y > brow_y + 0.25 * h)
         & (y <= brow_y + 0.5 * h)] = ZONES.index("forehead_top")
    jaw_d = _polyline_distance(v, lm[3:14])
    zone[(jaw_d < 0.15 * h) & (y < mouth_y)] = ZONES.index("jaw")
    zone[(np.abs(x) > ear_x) & behind & (y > ear_lo) & (y < ear_hi)] = ZONES.index("ears")
    # eye sockets, brows, lips and mouth interior belong to no outside zone
    inner = ~model.skin_mask.cpu().numpy().astype(bool)
    zone[inner & (zone != ZONES.index("face"))] = ZONES.index("other")
    return zone


def _polyline_distance(p: np.ndarray, line: np.ndarray) -> np.ndarray:
    """``[N]`` distance of points ``[N, 3]`` to a polyline ``[K, 3]``."""
    best = np.full(len(p), np.inf)
    for a, b in zip(line[:-1], line[1:], strict=True):
        ab = b - a
        t = np.clip((p - a) @ ab / max(float(ab @ ab), 1e-12), 0, 1)
        best = np.minimum(best, np.linalg.norm(p - (a + t[:, None] * ab), axis=1))
    return best


def zone_image(model, coeffs: dict[str, np.ndarray], camera, backend, zones: np.ndarray,
               size: int | None = None) -> np.ndarray:
    """Render the zone id per pixel at the fitted pose.

    The zones are interpolated as one-hot vertex attributes and each pixel takes the zone of
    largest weight (the zone of the visible surface there, with borders half-way between
    vertices of different zones).

    Args:
        model, coeffs, camera, backend: as :func:`render_fit`.
        zones: ``int [N]`` per-vertex zone ids (:func:`head_zones`).
        size: raster side (default ``camera.size``).
    Returns:
        ``int64 [H, W]`` zone id per pixel, -1 on the background and where the visible
        triangle faces away from the camera (the inside of the head through the eye holes).
    """
    import torch

    from ffhquv.render.camera import rigid_transform, to_clip
    from ffhquv.render.renderer import MeshRenderer

    dev = model.device
    c = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=dev)[None]
         for k, v in coeffs.items()}
    nz = int(zones.max()) + 1
    onehot = torch.nn.functional.one_hot(torch.as_tensor(zones, device=dev), nz).float()
    with torch.no_grad():
        world = rigid_transform(model.shape(c["id"], c["exp"]), c["angles"], c["trans"])
        r = MeshRenderer(camera, backend, device=dev)
        rast = r.rasterize(world, model.tri, size)
        w = r.backend.interpolate(onehot[None], rast, model.tri.to(torch.int32).contiguous())
        out = w[0].argmax(-1).cpu().numpy()
        # back faces (the inside of the skull seen through the eye openings) are not surface
        clip = to_clip(world, camera)[0]
        p = (clip[:, :2] / clip[:, 3:4])[model.tri]
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        back = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] >= 0).cpu().numpy()
        tid = rast[0, ..., 3].long().cpu().numpy() - 1
        out[(tid < 0) | back[np.clip(tid, 0, None)]] = -1
    return out


def photo_pixels(crop: np.ndarray, size: int) -> np.ndarray:
    """``bool [size, size]``: pixels of an aligned crop (``uint8 [H, W, 3]``) resized to
    ``size`` that show the photo, not the constant border the alignment pads with where the
    crop reaches past the photo's edge (``services.detector.align.BORDER_VALUE``)."""
    import cv2

    from services.detector.align import BORDER_VALUE

    pad = np.all(crop == np.asarray(BORDER_VALUE, np.uint8), -1).astype(np.uint8)
    pad = cv2.morphologyEx(pad, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # not a lone pixel
    return cv2.resize(pad.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) == 0


def colour_regions(zone_img: np.ndarray, coverage: np.ndarray, parse_mask: np.ndarray,
                   erode_px: int = ERODE_PX, valid: np.ndarray | None = None,
                   skin: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pixel sets of the colour measure.

    ``face``: render coverage > 0.5 and the parse face labels (:data:`FACE_LABELS`), as
    :func:`face_region`, away from the silhouette by ``erode_px``. Each outside zone
    (:data:`OUTSIDE_ZONES`): its pixels of ``zone_img``, eroded by ``erode_px`` from the
    silhouette (coverage > 0.5) and from the other zones.

    Args:
        zone_img: ``int [H, W]`` from :func:`zone_image`; coverage: ``float [H, W]`` render
            coverage in [0, 1]; parse_mask: ``uint8 [H, W]`` detector ParseLabel map.
        valid: optional ``bool [H, W]`` pixels that may be used (:func:`photo_pixels`).
        skin: optional ``bool [H, W]`` photo pixels that show skin; given, the zones of
            :data:`SKIN_ZONES` keep only those (occluders left out).
    Returns:
        ``{"face" | zone: bool [H, W]}``.
    """
    import cv2

    k = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)

    def erode(m: np.ndarray) -> np.ndarray:
        return cv2.erode(m.astype(np.uint8), k, borderValue=0) > 0 if erode_px else m

    inside = erode(np.asarray(coverage) > 0.5)
    if valid is not None:
        inside &= valid
    out = {"face": inside & np.isin(parse_mask, FACE_LABELS)}
    for name in OUTSIDE_ZONES:
        out[name] = inside & erode(zone_img == ZONES.index(name))
        if skin is not None and name in SKIN_ZONES:
            out[name] &= skin
    return out


def delta_e(photo: np.ndarray, render: np.ndarray, region: np.ndarray,
            min_px: int = 1) -> tuple[float, float, int]:
    """CIE Lab colour difference of a render and a photo over a pixel set, by CIEDE2000.

    Both images are sRGB (D65) and converted with ``skimage.color.rgb2lab``; the difference is
    ``skimage.color.deltaE_ciede2000``.

    Args:
        photo, render: ``uint8 [H, W, 3]`` sRGB, or float in [0, 1].
        region: ``bool [H, W]`` the pixels compared (the same set in both).
        min_px: fewest pixels; a smaller region gives NaN.
    Returns:
        ``(dE of the region medians, mean per-pixel dE, pixel count)``: the first compares
        the per-channel median Lab of the photo's pixels with that of the render's pixels
        (the region's overall colour); the second is the mean of the per-pixel differences.
    """
    from skimage.color import deltaE_ciede2000, rgb2lab

    n = int(np.count_nonzero(region))
    if n < max(min_px, 1):
        return float("nan"), float("nan"), n
    a = rgb2lab(_unit(photo[region])[None])[0]
    b = rgb2lab(_unit(render[region])[None])[0]
    med = float(deltaE_ciede2000(np.median(a, 0), np.median(b, 0)))
    return med, float(deltaE_ciede2000(a, b).mean()), n


def _unit(rgb: np.ndarray) -> np.ndarray:
    """``float64`` RGB in [0, 1] from ``uint8`` (/ 255) or float input."""
    rgb = np.asarray(rgb)
    return rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)


def colour_metrics(photo: np.ndarray, render: np.ndarray, regions: dict[str, np.ndarray],
                   min_px: int = MIN_REGION_PX) -> dict[str, float]:
    """``dE_<region>`` (CIEDE2000 of region medians) for ``face`` and each outside zone,
    ``dE_outside`` (mean over the outside zones present), ``dEpx_face`` / ``dEpx_outside``
    (mean per-pixel CIEDE2000; outside: over the union of the outside zones) and the pixel
    counts ``px_<region>``. A region under ``min_px`` pixels is NaN.

    Args:
        photo, render: ``uint8 [H, W, 3]``; regions: from :func:`colour_regions`.
    """
    m: dict[str, float] = {}
    for name, reg in regions.items():
        med, px, n = delta_e(photo, render, reg, min_px)
        m[f"dE_{name}"] = med
        m[f"px_{name}"] = n
        if name == "face":
            m["dEpx_face"] = px
    present = [m[f"dE_{z}"] for z in OUTSIDE_ZONES if math.isfinite(m.get(f"dE_{z}", math.nan))]
    m["dE_outside"] = statistics.fmean(present) if present else float("nan")
    union = np.zeros(photo.shape[:2], bool)
    for z in OUTSIDE_ZONES:
        if math.isfinite(m.get(f"dE_{z}", math.nan)):
            union |= regions[z]
    m["dEpx_outside"] = delta_e(photo, render, union, min_px)[1]
    return m


def head_with_eyes(head, texture: np.ndarray, eyes, hair=None) -> tuple:
    """One mesh + one texture atlas for the textured head, its hair and its two eyeballs.

    Args:
        head: :class:`ffhquv.mesh.MeshData` (model space, UVs into ``texture``).
        texture: ``uint8 [S, S, 3]`` head texture.
        eyes: :class:`services.eyeball.core.EyeballResult`.
        hair: the fit's hair mesh (UVs into ``texture``, posed as ``head``) or None.
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
    parts = ((head, 0.0), (eyes.left, 0.5), (eyes.right, 0.5)) + (
        () if hair is None else ((hair, 0.0),))
    for mesh, off in parts:
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
                backend=None, hair=None) -> np.ndarray:
    """``uint8 [size, size, 3]``: the textured head with eyeballs turned by ``yaw_deg`` on a
    mid-grey background (:func:`ffhquv.render.renderer.render_preview`, preview light)."""
    import torch

    from ffhquv.render.renderer import PreviewOptions, Surface, render_preview

    v, f, uv, uvf, atlas = head_with_eyes(head, texture, eyes, hair)
    dev = getattr(backend, "device", "cpu")  # the backend draws tensors of its own device
    surface = Surface(uv=torch.tensor(uv, dtype=torch.float32, device=dev),
                      uv_tri=torch.tensor(uvf, device=dev), texture=torch.from_numpy(atlas))
    return render_preview(torch.tensor(v, dtype=torch.float32, device=dev),
                          torch.tensor(f, device=dev), surface,
                          PreviewOptions(yaw_deg=yaw_deg, size=size, background=BACKGROUND,
                                         backend=backend, interior_faces=len(head.faces)))


def contact_sheet(photo: np.ndarray, head, texture: np.ndarray, eyes, size: int = SHEET_PX,
                  views: dict[str, float] = SHEET_VIEWS, backend=None, hair=None) -> np.ndarray:
    """One row: the photo, then the textured head with its eyeballs at each yaw of ``views``
    (:func:`turned_view`), each ``size`` square and labelled.

    Args:
        photo: ``uint8 [H, W, 3]`` (the aligned hi-res crop); head, texture, eyes: as
            :func:`head_with_eyes`.
    Returns:
        ``uint8 [size, size * (1 + len(views)), 3]``.
    """
    import cv2

    tiles = [cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)]
    labels = ["photo"]
    for label, yaw in views.items():
        tiles.append(turned_view(head, texture, eyes, yaw, size=size, backend=backend,
                                 hair=hair))
        labels.append(f"{label} {yaw:g} deg")
    for t, label in zip(tiles, labels, strict=True):
        (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)
        t[: h + 12, : w + 12] //= 3
        cv2.putText(t, label, (6, h + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.concatenate(tiles, 1)


#: overlay colours of the colour-measure regions (face, then :data:`OUTSIDE_ZONES`)
REGION_COLOURS = {"face": (255, 255, 255), "forehead_top": (255, 0, 0), "scalp": (0, 200, 0),
                  "ears": (0, 0, 255), "jaw": (255, 200, 0), "neck": (200, 0, 200)}


def zone_overlay(photo: np.ndarray, regions: dict[str, np.ndarray]) -> np.ndarray:
    """``uint8 [H, W, 3]``: the photo, darkened, with each region of :func:`colour_regions`
    tinted in its :data:`REGION_COLOURS` colour (to check what the ``dE_*`` numbers cover)."""
    out = photo.astype(np.float32) * 0.5
    for name, reg in regions.items():
        out[reg] = 0.5 * photo[reg] + 0.5 * np.asarray(REGION_COLOURS.get(name, (128,) * 3))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


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
        overrides: preset fields changed (``bench.common.preset_overrides``).
    """

    def __init__(self, preset: str = "standard", device: str = "cpu",
                 face_model: str = "default", threads: int | None = 2,
                 texture_size: int = 1024, overrides: dict | None = None):
        from services.detector.core import Detector
        from services.fitter.core import FitterCore
        from services.fitter.presets import get_preset

        self.preset = preset_label(preset, overrides or {})
        self._preset = get_preset(preset).with_overrides(**(overrides or {}))
        self.texture_size = texture_size
        self.detector = Detector()
        self.identity = FaceIdentity(self.detector)
        self.fitter = FitterCore(face_model, device=device, threads=threads)
        self.zones = head_zones(self.fitter.model)

    def evaluate(self, name: str, data: bytes, sheet: bool = False) -> PhotoResult:
        """Evaluate one photo (JPEG / PNG bytes); with ``sheet`` also build its contact sheet
        (``images["sheet"]``, :func:`contact_sheet`). Raises the detector's / fitter's typed
        errors (e.g. :class:`ffhquv.errors.NoFace`)."""
        import cv2
        import torch

        from ffhquv.aligned import crop_to_hires
        from services.eyeball.core import place_eyeballs
        from services.fitter.texture import seam_step, uv_maps

        t0 = time.perf_counter()
        det = self.detector.detect(data, unwrap_size=1024)
        a = det.aligned
        fit = self.fitter.fit(a, preset=self._preset, texture_size=self.texture_size,
                              want_intermediates=False)
        eyes = place_eyeballs(fit.mesh_neutral, fit.eye_ring_left, fit.eye_ring_right,
                              photo=a.crop_hires,
                              photo_landmarks=crop_to_hires(a.crop_landmarks,
                                                            a.crop_hires.shape[0]))
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
        # the head as the GLB opens: fitted expression, its hair (posed the same) and eyeballs
        hair = None if fit.hair is None else fit.hair.posed()
        for key, yaw in YAWS.items():
            view = turned_view(fit.mesh_expression, fit.uv_texture, eyes, yaw, backend=be,
                               hair=hair)
            m[key] = ident.distance(d_photo, ident.descriptor(view))
            images[key] = view
        m["id_front_neutral"] = ident.distance(d_photo, ident.descriptor(
            turned_view(fit.mesh_neutral, fit.uv_texture, eyes, 0.0, backend=be,
                        hair=fit.hair)))  # its own vertices: the neutral head's hair
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
        # whole-head colour at the fitted pose, hi-res crop vs the render (fitted light)
        n = COLOUR_SIZE
        photo_n = cv2.resize(a.crop_hires, (n, n), interpolation=cv2.INTER_AREA)
        render_n = (r448.image[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        zimg = zone_image(model, fit.coefficients, cam, be, self.zones, size=n)
        cover = r448.mask[0, ..., 0].cpu().numpy()
        valid = photo_pixels(a.crop_hires, n)
        skin_n = cv2.resize(a.skin_mask, (n, n), interpolation=cv2.INTER_LINEAR) >= SKIN_PROB_MIN
        regions = colour_regions(zimg, cover, parse448, valid=valid, skin=skin_n)
        m.update(colour_metrics(photo_n, render_n, regions))
        raw = colour_metrics(photo_n, render_n, colour_regions(zimg, cover, parse448, valid=valid))
        m["dE_outside_raw"] = raw["dE_outside"]
        # the same head under the neutral light (uniform white, irradiance 1): does the albedo
        # alone show the photo's skin (the neutral-light convention, docs/conventions.md)?
        from ffhquv.render.sh import uniform_gamma

        neutral = dict(fit.coefficients, gamma=uniform_gamma().numpy())
        rn = render_fit(model, neutral, fit.uv_texture, cam, be, size=448)
        render_nl = (rn.image[0].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        nl = colour_metrics(photo_n, render_nl, regions)
        m["dE_face_neutral"] = nl["dE_face"]
        m["dE_outside_neutral"] = nl["dE_outside"]
        images["colour"] = np.concatenate([photo_n, render_n, zone_overlay(photo_n, regions)], 1)
        m["fit_coverage"] = float(fit.metrics.get("texture_coverage", float("nan")))
        m["sym_err_pct"] = symmetry_error(fit.uv_texture, maps_tex.face.cpu().numpy() > 0.5,
                                          maps_tex.mirror.cpu().numpy(),
                                          maps_tex.has_mirror.cpu().numpy())
        m["seam_step"] = seam_step(fit.uv_texture, maps_tex)
        m["fit_landmark_error_iod"] = float(fit.metrics.get("landmark_error_iod", float("nan")))
        m["fit_psnr_masked"] = float(fit.metrics.get("psnr_masked", float("nan")))
        m["fit_seconds"] = float(fit.report["timings_s"]["total"])
        m["long_hair"] = float(bool((fit.report.get("hair") or {}).get("long_hair")))
        m["hair_from_photo"] = float((fit.report.get("hair") or {}).get("texture") == "photo")
        m["hair_mesh_vertices"] = 0.0 if fit.hair is None else float(len(fit.hair.vertices))
        if sheet:
            images["sheet"] = contact_sheet(a.crop_hires, fit.mesh_expression, fit.uv_texture,
                                            eyes, backend=be, hair=hair)
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
                     "id_yaw_m30", "id_front_neutral"],
        "texture": ["uv_coverage", "fit_coverage", "sym_err_pct", "seam_step"],
        "colour": DE_COLS,
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


#: file-name endings (stem, lower case) of images in a photo folder that are not photos
NON_PHOTO_STEMS = ("_texture", "tex_uv", "_uv", "_vis")


def is_texture(path: Path) -> bool:
    """True for UV textures and visualisations kept next to photos (``*_ffhquv_texture.png``,
    ``tex_uv.png``, ...), which folder inputs skip."""
    return path.stem.lower().endswith(NON_PHOTO_STEMS)


def collect(inputs: list[str], astronaut: bool) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the photos in files / folders (non-recursive; sub-folders and
    :func:`is_texture` files are skipped), plus skimage's astronaut as ``astronaut.png`` when
    asked."""
    from ffhquv_cli.commands import IMAGE_SUFFIXES

    items: list[tuple[str, bytes]] = []
    for s in inputs:
        p = Path(s)
        files = (sorted(q for q in p.iterdir() if q.is_file()
                        and q.suffix.lower() in IMAGE_SUFFIXES and not is_texture(q))
                 if p.is_dir() else [p])
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
              "id_composite", "id_front", "id_yaw_p30", "id_yaw_m30", "id_front_neutral",
              "uv_coverage",
              "fit_coverage", "sym_err_pct", "seam_step", "fit_seconds"]
#: the second per-photo table: whole-head colour (CIEDE2000) next to identity
COLOUR_COLS = ["photo", *DE_COLS, "id_front", "id_yaw_p30", "id_yaw_m30"]


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
    ap.add_argument("--set", action="append", metavar="FIELD=VALUE",
                    help="change a preset field (repeatable), e.g. --set stage3_steps=50")
    ap.add_argument("--sheets", default=None,
                    help="folder for one contact sheet per photo (photo | front | 3/4 | profile "
                         "| back), DIR/<photo>.png")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    items = collect(args.inputs, args.astronaut)
    meta = header(f"quality: {len(items)} photo(s), preset {args.preset}, "
                  f"face model {args.face_model}")
    overrides = preset_overrides(args.set)
    ev = QualityEvaluator(args.preset, args.device, args.face_model, args.threads,
                          overrides=overrides)
    rows, failed = [], []
    for name, data in items:
        try:
            res = ev.evaluate(name, data, sheet=bool(args.sheets))
        except Exception as e:  # noqa: BLE001 - reported per photo, the others go on
            print(f"# {name}: FAILED {type(e).__name__}: {e}")
            failed.append({"photo": name, "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append(res.metrics)
        print(f"# {name}: fit {res.metrics['fit_seconds']:.1f} s, "
              f"eval {res.metrics['eval_s']:.1f} s", flush=True)
        from ffhquv.imaging import png_bytes

        if args.sheets:
            sd = Path(args.sheets)
            sd.mkdir(parents=True, exist_ok=True)
            (sd / f"{Path(name).stem}.png").write_bytes(png_bytes(res.images["sheet"]))
        if args.views:
            vd = Path(args.views)
            vd.mkdir(parents=True, exist_ok=True)
            stem = Path(name).stem
            (vd / f"{stem}_composite.png").write_bytes(png_bytes(res.images["composite"]))
            turned = np.concatenate([res.images[k] for k in ("id_yaw_m30", "id_front",
                                                             "id_yaw_p30")], 1)
            (vd / f"{stem}_turned.png").write_bytes(png_bytes(turned))
            (vd / f"{stem}_colour.png").write_bytes(png_bytes(res.images["colour"]))
    if rows:
        table(rows, PHOTO_COLS)
        print()
        print("# whole-head colour: CIEDE2000 (skimage deltaE_ciede2000, sRGB D65 -> CIELAB); "
              "dE_* of region medians, dEpx_* mean per pixel; lower is better")
        table(rows, COLOUR_COLS)
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
    for f in failed:
        print(f"# failed: {f['photo']}: {f['error']}")
    meta["loadavg_end"] = loadavg()
    print(f"# load average at the end: {', '.join(map(str, meta['loadavg_end']))}")
    write_json(args.json, meta, rows, summary=summary, failed=failed,
               preset=preset_label(args.preset, overrides),
               face_model=args.face_model, threads=args.threads)
    # a photo without a detectable face is a result (listed above), not a failed run
    return 0 if rows or not items else 1


if __name__ == "__main__":
    raise SystemExit(main())
