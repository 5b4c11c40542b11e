"""The built-in ``default`` face model: a linear full-head model distilled from ``anny``.

Build (:func:`build_default_model`, a few minutes at most on 2 cores, cached by
:func:`ensure_default_model`):

1. anny head ``Anny(rig='makehuman-head', topology='head', local_changes='all',
   facial_actions='all')``; drop the eyeballs, the eye-socket pockets (this opens the eye holes
   our eyeballs sit in) and the tongue. The mouth pocket is kept: the mouth interior stays a
   closed dark cavity when the jaw opens (no teeth: anny has none).
2. Identity: sample ``N_SAMPLES`` plausible identities (6 phenotypes over their ranges, adults
   mostly, and the ~140 local changes that move the head, left/right pairs correlated), rest pose,
   rigidly aligned; PCA -> ``K_ID`` components scaled so coefficients are ``N(0, 1)``.
3. Expression: anny's 52 ARKit facial actions are linear blend shapes (checked at build time),
   so each basis vector is the displacement at activation 1 (rotated like the mean).
4. Frame: anny (metres, z up, face toward -y) -> model (y up, face toward +z):
   ``(x, y, z) -> s * (x, z, -y) + t``, with ``s`` and ``t`` matching the eye-ring centres of
   the HiFi3D++ head (inter-ocular distance 0.663, eye midpoint (0, 0.336, 0.380)), so the
   shared camera frames both models alike (``s`` is about 10: decimetres).
5. UVs: anny's full-body atlas islands used by the head, split into face / left / right
   side islands and repacked into one head-only atlas (face island largest).
6. Landmarks from dlib on renders of the mean head (:mod:`.landmarks`): the caller's 68-point
   landmarker (``ffhquv build-model`` passes the detector service's), else dlib directly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ffhquv.vocab import FACE_MODEL_DEFAULT
from services.fitter.facemodel.base import FaceModel

if TYPE_CHECKING:
    from services.fitter.facemodel.landmarks import Landmarker

log = logging.getLogger(__name__)

#: Bump when the build changes (the cache file name carries it).
BUILD_VERSION = 1
K_ID = 80
N_SAMPLES = 2000
SEED = 1234
#: texels between islands / to the border of a 1024 atlas
UV_MARGIN_TEXELS = 6
UV_SIZE = 1024
#: texel-density multiplier of the face island relative to the rest of the head
FACE_UV_WEIGHT = 3.0
#: HiFi3D++ reference head (teaser_1/mesh_head.obj): eye-contour centres (subject's left at +x).
HIFI_EYE_MID = np.array([0.0, 0.3359, 0.3798])
HIFI_IOD = 0.6630
#: anny (x, y, z) -> model (x, z, -y): a proper rotation
ANNY_TO_MODEL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def default_model_path() -> Path:
    """``<cache>/facemodels/default-v{BUILD_VERSION}.npz``."""
    from ffhquv.config import cache_dir

    return cache_dir() / "facemodels" / f"default-v{BUILD_VERSION}.npz"


def ensure_default_model(rebuild: bool = False, progress: bool = True,
                         preview_dir: Path | None = None,
                         landmarker: Landmarker | None = None) -> Path:
    """Build the default model unless it is cached; return the cache file.

    Args:
        rebuild: build even when the cache file exists.
        progress: show tqdm progress bars for the long steps.
        preview_dir: also write preview renders (mean head, random identities / expressions,
            front / 45 degrees / profile, the UV layout, the landmarks) to this folder.
        landmarker: the 68-point landmarker run on renders of the mean head when building
            (:data:`services.fitter.facemodel.landmarks.Landmarker`; ``ffhquv build-model``
            passes the detector service's); None = dlib directly
            (:func:`~services.fitter.facemodel.landmarks.dlib_landmarks`).
    Returns:
        the ``.npz`` path (load it with :meth:`FaceModel.load`).
    """
    path = default_model_path()
    if rebuild or not path.is_file():
        t0 = time.time()
        model, extras = build_default_model(progress=progress, keep_extras=preview_dir is not None,
                                            landmarker=landmarker)
        model.save(path)
        log.info("default face model built in %.1f s -> %s", time.time() - t0, path)
        if preview_dir is not None:
            _save_landmark_previews(extras, Path(preview_dir))
    if preview_dir is not None:
        from services.fitter.facemodel.preview import write_previews

        write_previews(FaceModel.load(path), Path(preview_dir))
    return path


# ------------------------------------------------------------------------------------- build
def _sample_identities(head, lc_idx: list[int], n: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Phenotypes ``[n, 6]`` and local changes ``[n, 256]`` of plausible people."""
    labels = head.phenotype_labels
    ph = np.full((n, len(labels)), 0.5)
    ranges = {"gender": (0.0, 1.0), "age": (0.42, 1.0), "muscle": (0.0, 1.0),
              "weight": (0.0, 1.0), "height": (0.0, 1.0), "proportions": (0.0, 1.0)}
    for i, lab in enumerate(labels):
        lo, hi = ranges.get(lab, (0.5, 0.5))
        ph[:, i] = rng.uniform(lo, hi, n)
    names = head.local_change_labels
    lc = np.zeros((n, len(names)))
    done: set[int] = set()
    for i in lc_idx:
        if i in done:
            continue
        nm = names[i]
        # ears and nostrils fold into themselves at large values: narrower spreads there
        sigma = 0.18 if ("ear-" in nm or "nostril" in nm or "flaring" in nm) else 0.35
        twin = None
        if nm.startswith(("l-", "r-")):
            other = ("r-" if nm.startswith("l-") else "l-") + nm[2:]
            twin = names.index(other) if other in names else None
        if twin is not None and twin in lc_idx:
            common = rng.normal(0, sigma, n)
            lc[:, i] = common + rng.normal(0, 0.3 * sigma, n)
            lc[:, twin] = common + rng.normal(0, 0.3 * sigma, n)
            done.update((i, twin))
        else:
            lc[:, i] = rng.normal(0, sigma, n)
            done.add(i)
    return ph, np.clip(lc, -1, 1)


def build_default_model(progress: bool = True, keep_extras: bool = False,
                        landmarker: Landmarker | None = None) -> tuple[FaceModel, dict]:
    """Build the default model from anny (see the module docstring).

    Args:
        progress: show tqdm progress bars.
        keep_extras: keep the landmark renders for the previews.
        landmarker: see :func:`ensure_default_model`; None = dlib directly.

    Returns:
        ``(model, extras)``; ``extras`` holds build diagnostics (renders for the landmark
        previews when ``keep_extras``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        return _build(progress, keep_extras, landmarker)
    finally:
        torch.set_num_threads(threads)


def _build(progress: bool, keep_extras: bool, landmarker: Landmarker | None
           ) -> tuple[FaceModel, dict]:
    from tqdm import tqdm

    from services.fitter.facemodel.anny_build import (
        DROPPED_PARTS,
        head_local_changes,
        load_anny_head,
        rigid_align,
    )
    from services.fitter.facemodel.landmarks import derive_landmarks
    from services.fitter.facemodel.topology import (
        boundary_loops,
        dilate,
        mirror_map,
        order_ring,
        vertex_normals,
    )

    t_start = time.time()
    timings: dict[str, float] = {}
    steps = tqdm(total=7, desc="default face model", disable=not progress)

    def step(name: str, t0: float) -> float:
        timings[name] = round(time.time() - t0, 2)
        steps.set_postfix_str(name)
        steps.update(1)
        return time.time()

    t = time.time()
    head = load_anny_head()
    keep = ~np.isin(head.part, DROPPED_PARTS)
    tri_anny = head.faces[keep]
    vid = np.unique(tri_anny)  # kept anny vertex ids
    remap = np.full(len(head.model.template_vertices), -1, np.int64)
    remap[vid] = np.arange(len(vid))
    tri = remap[tri_anny]
    part = head.part[keep]
    regions = {k: v[keep] for k, v in head.regions.items()}
    n_v = len(vid)
    mouth = part == "mouth_cavity"
    mouth_v = np.zeros(n_v, bool)
    mouth_v[np.unique(tri[mouth])] = True
    mouth_v &= ~np.isin(np.arange(n_v), np.unique(tri[~mouth]))  # keep the lip rim vertices
    t = step("anny", t)

    # ---- identity samples, rigidly aligned, PCA
    rng = np.random.default_rng(SEED)
    lc_idx = head_local_changes(head)
    ph, lc = _sample_identities(head, lc_idx, N_SAMPLES, rng)
    chunks = []
    for s in tqdm(range(0, N_SAMPLES, 500), desc="identity samples", disable=not progress,
                  leave=False):
        chunks.append(head.rest_vertices(ph[s:s + 500], lc[s:s + 500], vertices=vid))
    x = np.concatenate(chunks, 0)
    del chunks
    x = _mouth_follows_skin(head, x, ph, vid, mouth_v)
    ref = head.rest_vertices(vertices=vid)[0]
    w_align = np.isin(np.arange(n_v), np.unique(tri[part == "head"])).astype(np.float64)
    for _ in range(2):
        x = rigid_align(x, ref, w_align)
        ref = x.mean(0)
    mean_anny = ref
    d = (x - mean_anny).reshape(N_SAMPLES, -1)
    del x
    # PCA through the (samples x samples) Gram matrix: much cheaper than an SVD of d
    evals, evecs = np.linalg.eigh(d @ d.T)
    evals, evecs = evals[::-1].clip(0), evecs[:, ::-1]
    var = evals
    explained = float(var[:K_ID].sum() / var.sum())
    sv = np.sqrt(evals[:K_ID])
    vt = (evecs[:, :K_ID].T @ d) / sv[:, None]  # unit principal directions [K, 3N]
    del d
    std = sv / np.sqrt(N_SAMPLES - 1)
    id_anny = (vt * std[:, None]).reshape(K_ID, n_v, 3).transpose(1, 2, 0)
    t = step("identity PCA", t)

    # ---- expressions: linear blend shapes at activation 1 on the mean identity
    n_fa = len(head.facial_action_labels)
    base = head.rest_vertices(vertices=vid)[0]
    full = head.rest_vertices(facial_actions=np.eye(n_fa), vertices=vid)
    # anny's full forward (skinning, zero pose) at activations 1 and 0.5: if the actions
    # were bone-driven the posed displacement would differ from the blend shape or be non-linear
    with torch.no_grad():
        fa = torch.cat([torch.zeros(1, n_fa), torch.eye(n_fa), 0.5 * torch.eye(n_fa)]).double()
        posed = head.model(facial_actions=fa)["vertices"][:, vid].numpy()
    d_full = posed[1:1 + n_fa] - posed[:1]
    d_half = posed[1 + n_fa:] - posed[:1]
    nonlin = float(max(np.abs(d_full - 2 * d_half).max(),
                       np.abs(d_full - (full - base[None])).max()))
    rot = _kabsch(base, mean_anny, w_align)
    exp_anny = ((full - base[None]) @ rot).transpose(1, 2, 0)  # [N, 3, 52]
    del full, posed
    t = step("expressions", t)

    # ---- frame and units: eye rings of the mean
    loops = boundary_loops(tri)
    if len(loops) != 3:
        raise RuntimeError(f"expected 3 boundary loops (neck, 2 eyes), got {len(loops)}")
    neck, eyes = loops[0], loops[1:]
    m_anny = mean_anny @ ANNY_TO_MODEL.T
    centres = [m_anny[e].mean(0) for e in eyes]
    iod = float(np.linalg.norm(centres[0] - centres[1]))
    scale = HIFI_IOD / iod
    trans = HIFI_EYE_MID - scale * 0.5 * (centres[0] + centres[1])
    mean = scale * m_anny + trans
    id_base = scale * np.einsum("ij,njk->nik", ANNY_TO_MODEL, id_anny)
    exp_base = scale * np.einsum("ij,njk->nik", ANNY_TO_MODEL, exp_anny)
    ring_l, ring_r = sorted(eyes, key=lambda e: -mean[e, 0].mean())  # subject's left = +x
    ring_l, ring_r = order_ring(ring_l, mean), order_ring(ring_r, mean)
    mirror, involution = mirror_map(mean)
    t = step("frame", t)

    # ---- landmarks (dlib on renders of the mean head)
    lips_v = np.zeros(n_v, bool)
    lips_v[np.unique(tri[regions["lips"] & ~mouth])] = True
    albedo = render_albedo(n_v, np.nonzero(lips_v)[0], np.nonzero(mouth_v)[0])
    lm = derive_landmarks(mean, tri, albedo, [ring_l, ring_r], allowed=~mouth,
                          landmarker=landmarker, progress=progress)
    lmk_pos = (mean[lm["tri_vertices"]] * lm["bary"][..., None]).sum(1)
    t = step("landmarks", t)

    # ---- masks
    nrm = vertex_normals(mean, tri)
    brow_v = _near_polyline(mean, nrm, [lmk_pos[17:22], lmk_pos[22:27]], 0.07)
    margin_v = dilate(np.isin(np.arange(n_v), np.concatenate([ring_l, ring_r])), tri, 1)
    skin = ~(mouth_v | lips_v | brow_v | margin_v)
    face_v = _face_region(mean, nrm, lmk_pos, part, tri)
    face_tri = face_v[tri].all(1) & ~mouth & ~regions["ears"]
    t = step("masks", t)

    # ---- UV atlas
    uv, uv_tri, uv_stats = _repack_uv(head.uv, head.uv_faces[keep], tri, mean, face_tri, part)
    t = step("uv atlas", t)
    steps.close()

    meta = {
        "builder": "services.fitter.facemodel.default",
        "build_version": BUILD_VERSION,
        "anny_version": head.version,
        "anny_config": {"rig": "makehuman-head", "topology": "head", "local_changes": "all",
                        "facial_actions": "all"},
        "dropped_parts": list(DROPPED_PARTS),
        "n_samples": N_SAMPLES,
        "seed": SEED,
        "k_id": K_ID,
        "id_explained_variance": explained,
        "id_explained_variance_curve": [float(v) for v in
                                        (np.cumsum(var) / var.sum())[[9, 19, 39, 59, 79, 99, 149]]],
        "local_changes_used": [head.local_change_labels[i] for i in lc_idx],
        "facial_actions_are_blendshapes": nonlin < 1e-5,
        "facial_action_nonlinearity_m": nonlin,
        "anny_to_model": {"rotation": ANNY_TO_MODEL.tolist(), "scale": float(scale),
                          "translation": trans.tolist()},
        "mirror_involution_rate": involution,
        "landmark_frontal_error_iod": lm["frontal_error"],
        "landmark_frontal_error_mean_iod": lm["frontal_error_mean"],
        "uv": uv_stats,
        "n_neck_boundary": int(len(neck)),
        # vertex groups of the landmark render (see render_albedo / landmark_render_albedo)
        "lips_vertices": np.nonzero(lips_v)[0].tolist(),
        "mouth_interior_vertices": np.nonzero(mouth_v)[0].tolist(),
        "timings_s": timings,
        "build_seconds": round(time.time() - t_start, 1),
    }
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    i64 = lambda a: torch.tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731
    model = FaceModel(
        name=FACE_MODEL_DEFAULT,
        unit=f"anny metres x {scale:.3f} (about decimetres, eye rings matched to HiFi3D++)",
        mean_shape=f32(mean),
        id_base=f32(id_base),
        exp_base=f32(exp_base),
        tri=i64(tri),
        uv=f32(uv),
        uv_tri=i64(uv_tri),
        lmk_tri_vertices=i64(lm["tri_vertices"]),
        lmk_bary=f32(lm["bary"]),
        face_tri_mask=torch.tensor(face_tri),
        skin_mask=torch.tensor(skin),
        mirror=i64(mirror),
        eye_ring_left=i64(ring_l),
        eye_ring_right=i64(ring_r),
        id_labels=[f"pc{k:03d}" for k in range(K_ID)],
        exp_labels=list(head.facial_action_labels),
        meta=meta,
    )
    extras = {"landmarks": lm} if keep_extras else {}
    return model, extras


# ------------------------------------------------------------------------------------ helpers
def _mouth_follows_skin(head, x: np.ndarray, ph: np.ndarray, vid: np.ndarray,
                        mouth_v: np.ndarray, k: int = 8) -> np.ndarray:
    """Make the mouth pocket follow the skin around it under local changes.

    anny's local changes move the lips, nose base and chin but barely the mouth pocket behind
    them, so the pocket pierces the skin for some identities. The local-change displacement of
    each pocket vertex is replaced by an inverse-distance blend of that of its ``k`` nearest
    non-pocket vertices (local changes are linear in anny, so they separate from phenotypes).

    Args:
        x: ``[S, V, 3]`` sample shapes (kept vertices), ph ``[S, 6]`` their phenotypes.
        vid: ``[V]`` kept anny vertex ids; mouth_v ``[V]`` bool pocket vertices.
    Returns:
        ``[S, V, 3]`` corrected shapes.
    """
    from scipy.spatial import cKDTree

    base = np.concatenate([head.rest_vertices(ph[s:s + 500], vertices=vid)
                           for s in range(0, len(ph), 500)], 0)
    d = x - base  # local-change displacements
    src, dst = np.nonzero(~mouth_v)[0], np.nonzero(mouth_v)[0]
    ref = base.mean(0)
    dist, nn = cKDTree(ref[src]).query(ref[dst], k=k)
    w = 1.0 / (dist + 1e-4)
    w /= w.sum(1, keepdims=True)
    d[:, dst] = np.einsum("sjkc,jk->sjc", d[:, src[nn]], w)
    return base + d


def render_albedo(n: int, lips: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    """``[n, 3]`` albedo of the render dlib sees: skin, red lips, dark mouth interior."""
    albedo = np.tile(np.array([0.80, 0.60, 0.50]), (n, 1))
    albedo[lips] = (0.62, 0.33, 0.32)
    albedo[mouth] = (0.15, 0.05, 0.05)
    return albedo


def landmark_render_albedo(model: FaceModel) -> np.ndarray:
    """The albedo the landmarks of a built default ``model`` were derived with ``[N, 3]``."""
    return render_albedo(model.n_vertices, np.asarray(model.meta.get("lips_vertices", []), int),
                         np.asarray(model.meta.get("mouth_interior_vertices", []), int))


def _kabsch(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation ``r`` with ``(src - mu) @ r ~ dst - mu'`` (weighted)."""
    w = w / w.sum()
    a = src - w @ src
    b = dst - w @ dst
    u, _, vt = np.linalg.svd((a * w[:, None]).T @ b)
    dd = np.sign(np.linalg.det(u @ vt))
    u[:, -1] *= dd
    return u @ vt


def _near_polyline(v: np.ndarray, nrm: np.ndarray, lines: list[np.ndarray], radius: float
                   ) -> np.ndarray:
    """``[N]`` bool: front-facing vertices within ``radius`` (x-y plane) of any polyline."""
    out = np.zeros(len(v), bool)
    p = v[:, :2]
    for line in lines:
        q = line[:, :2]
        for a, b in zip(q[:-1], q[1:], strict=True):
            ab = b - a
            s = np.clip(((p - a) @ ab) / (ab @ ab), 0, 1)
            dist = np.linalg.norm(p - (a + s[:, None] * ab), axis=1)
            out |= dist < radius
    zmin = float(np.concatenate(lines)[:, 2].min()) - 0.15
    return out & (nrm[:, 2] > 0.2) & (v[:, 2] > zmin)


def _face_region(v: np.ndarray, nrm: np.ndarray, lmk: np.ndarray, part: np.ndarray,
                 tri: np.ndarray) -> np.ndarray:
    """``[N]`` bool vertices of the frontal face: forehead to chin, cheek to cheek.

    Inside a curve through the jaw-line landmarks (x) from just below the chin to ``0.75 IOD``
    above the brows (y): a superellipse (square-ish forehead) above the mid height, an ellipse
    (round chin) below; in front of the jaw-line landmarks 2 / 14 (z); on the sides only
    front-facing vertices (the lid margins and nostrils in the middle are kept). The caller also
    drops anny's ear region and the mouth pocket."""
    iod = float(np.linalg.norm(lmk[36:42].mean(0) - lmk[42:48].mean(0)))
    half_w = 0.5 * float(lmk[16, 0] - lmk[0, 0])
    y_lo = float(lmk[8, 1]) - 0.04 * iod
    y_hi = float(lmk[17:27, 1].max()) + 0.75 * iod
    y_c = 0.5 * (y_lo + y_hi)
    half_h = 0.5 * (y_hi - y_lo)
    ex = np.where(v[:, 1] > y_c, 3.0, 2.0)
    r = np.abs(v[:, 0] / half_w) ** ex + np.abs((v[:, 1] - y_c) / half_h) ** ex
    z_min = 0.5 * float(lmk[2, 2] + lmk[14, 2]) - 0.1 * iod
    central = np.abs(v[:, 0]) < 0.6 * half_w
    return (r <= 1.0) & (v[:, 2] > z_min) & (central | (nrm[:, 2] > 0.1))


def _repack_uv(uv_anny: np.ndarray, uv_faces: np.ndarray, tri: np.ndarray, mean: np.ndarray,
               face_tri: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Head-only atlas: islands = (anny island) x (face / left side / right side).

    Returns:
        ``(uv [M, 2], uv_tri [T, 3], stats)`` with stats = coverage, overlaps, island count,
        face share.
    """
    from services.fitter.facemodel.uvpack import (
        Island,
        pack_islands,
        rasterize_uv,
        upright,
        uv_islands,
    )

    cx = mean[tri].mean(1)[:, 0]
    # the face group vs the left and right of the head; stray face triangles outside the main
    # face island join their side
    side = np.where(cx >= 0, 1, 2)
    grp = np.where(face_tri, 0, side)
    isl = uv_islands(uv_faces, len(uv_anny), grp)
    face_isl = np.bincount(isl[grp == 0]).argmax()
    grp = np.where((grp == 0) & (isl != face_isl), side, grp)
    isl = uv_islands(uv_faces, len(uv_anny), grp)
    islands = []
    for k in np.unique(isl):
        tk = np.nonzero(isl == k)[0]
        g = int(np.bincount(grp[tk]).argmax())
        corner = upright(uv_anny[uv_faces[tk]], mean[tri[tk], 1])
        # 3D/UV area ratio normalises densities: islands are packed at a common texel density
        a3 = 0.5 * np.linalg.norm(np.cross(mean[tri[tk, 1]] - mean[tri[tk, 0]],
                                           mean[tri[tk, 2]] - mean[tri[tk, 0]]), axis=1).sum()
        a2 = 0.5 * np.abs(np.cross(corner[:, 1] - corner[:, 0],
                                   corner[:, 2] - corner[:, 0])).sum()
        dens = np.sqrt(a3 / max(a2, 1e-12))
        weight = dens * (FACE_UV_WEIGHT if g == 0 else 1.0)
        if str(part[tk[0]]) == "mouth_cavity":
            weight *= 0.5
        islands.append(Island(tris=tk, uv=corner, weight=weight,
                              name=["face", "left", "right"][g]))
    margin = UV_MARGIN_TEXELS / UV_SIZE
    packed = pack_islands(islands, margin, UV_SIZE)
    uv_list, uv_tri = [], np.zeros_like(tri)
    off = 0
    for isl_obj, p in zip(islands, packed, strict=True):
        ids = uv_faces[isl_obj.tris]
        uniq, inv = np.unique(ids.ravel(), return_inverse=True)
        coords = np.zeros((len(uniq), 2))
        coords[inv] = p.reshape(-1, 2)
        uv_list.append(coords)
        uv_tri[isl_obj.tris] = inv.reshape(-1, 3) + off
        off += len(uniq)
    uv = np.concatenate(uv_list, 0)
    count, _ = rasterize_uv(uv, uv_tri, UV_SIZE)
    face_area = sum(0.5 * np.abs(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])).sum()
                    for isl_obj, p in zip(islands, packed, strict=True) if isl_obj.name == "face")
    stats = {"size": UV_SIZE, "margin_texels": UV_MARGIN_TEXELS, "islands": len(islands),
             "coverage": float((count > 0).mean()), "overlap_texels": int((count > 1).sum()),
             "face_area_share": float(face_area)}
    return uv, uv_tri, stats


def _save_landmark_previews(extras: dict, out: Path) -> None:
    """Renders used for the landmarks with dlib's points (green) and the embedded ones (red)."""
    from PIL import Image, ImageDraw

    lm = extras.get("landmarks")
    if not lm:
        return
    out.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(lm["images"][0])
    dr = ImageDraw.Draw(img)
    for (x, y) in lm["dlib"][0]:
        dr.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(0, 255, 0))
    for (x, y) in lm["projected"]:
        dr.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(255, 0, 0))
    img.save(out / "landmarks_frontal.png")
