"""Read what the ``default`` face model needs out of the ``anny`` package.

Everything here is in **anny's frame**: metres, z up, the face looking toward -y, the subject's
left at +x. :mod:`services.fitter.facemodel.default` converts to the model frame.

The anny head (``rig='makehuman-head', topology='head'``) holds 4538 vertices / 9014 triangles:
the head skin (with eye-socket pockets and a mouth pocket), two low-poly eyeballs and a tongue.
Triangles are classified with anny's own body-part segmentation (looked up through the full-body
texture coordinates) and with the MakeHuman region masks shipped in ``anny/data/mpfb2/textures``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: anny body-part labels (``data/segmentation/body_parts_segmentation.yaml``) that we drop: the
#: eyeballs (our eyeball service replaces them), the eye-socket pockets behind them (dropping
#: them opens the eye holes the eyeballs sit in) and the tongue (a separate floating part).
DROPPED_PARTS = ("eye_front.L", "eye_back.L", "eye_front.R", "eye_back.R", "eye_cavity.L",
                 "eye_cavity.R", "tongue")
#: MakeHuman region masks (in the full-body UV atlas) used to classify triangles.
REGION_MASKS = ("lips", "eyelids", "face", "ears", "inside-mouth")
#: Local changes kept out of the identity space: rigid moves of the whole head (the pose
#: handles those) and changes of the neck below the head.
EXCLUDED_LOCAL_CHANGES = ("head-trans-forward", "head-trans-up", "head-trans-out",
                          "head-angle-out")


@dataclass
class AnnyHead:
    """The anny head model, read once.

    Attributes:
        model: the ``anny.Anny`` module (float64, CPU).
        faces: ``[T, 3]`` int64 triangles of the full anny head mesh (CCW from outside).
        uv: ``[M, 2]`` anny's full-body texture coordinates (v up).
        uv_faces: ``[T, 3]`` int64 indices into ``uv``.
        part: ``[T]`` str, anny body-part label per triangle ("head", "mouth_cavity", ...).
        regions: name -> ``[T]`` bool, MakeHuman region masks per triangle (see REGION_MASKS).
        version: the anny package version.
    """

    model: torch.nn.Module
    faces: np.ndarray
    uv: np.ndarray
    uv_faces: np.ndarray
    part: np.ndarray
    regions: dict[str, np.ndarray]
    version: str

    @property
    def phenotype_labels(self) -> list[str]:
        return list(self.model.phenotype_labels)

    @property
    def local_change_labels(self) -> list[str]:
        return list(self.model.local_change_labels)

    @property
    def facial_action_labels(self) -> list[str]:
        return list(self.model.facial_action_labels)

    def rest_vertices(self, phenotypes: np.ndarray | None = None,
                      local_changes: np.ndarray | None = None,
                      facial_actions: np.ndarray | None = None,
                      vertices: np.ndarray | None = None, chunk: int = 500) -> np.ndarray:
        """Rest-pose vertices (no pose: the blend shapes only).

        Args:
            phenotypes: ``[B, 6]`` in [0, 1] (order of :attr:`phenotype_labels`), None = 0.5.
            local_changes: ``[B, 256]`` in [-1, 1], None = 0.
            facial_actions: ``[B, 52]`` in [0, 1], None = 0.
            vertices: optional ``[V]`` vertex ids to compute (default all 4538).
        Returns:
            ``[B, V, 3]`` float64 vertices in anny's frame (metres).
        """
        m = self.model
        sizes = [len(a) for a in (phenotypes, local_changes, facial_actions) if a is not None]
        b = max(sizes) if sizes else 1
        vid = slice(None) if vertices is None else torch.as_tensor(vertices)
        tmpl = m.template_vertices[vid]  # [V, 3]
        bs = m.blendshapes[:, vid].reshape(m.blendshapes.shape[0], -1).float()  # [S, V*3]
        out = []
        for s in range(0, b, chunk):
            e = min(b, s + chunk)

            def part(a, n, default, s=s, e=e):
                if a is None:
                    return torch.full((e - s, n), default, dtype=torch.float64)
                return torch.tensor(np.broadcast_to(a, (b, n))[s:e], dtype=torch.float64)

            with torch.no_grad():
                # anny's own mapping from parameters to blend-shape weights (phenotype
                # interpolation, local-change +/- split); the blend shapes are linear after it
                coeffs = m._get_phenotype_blendshape_coefficients(
                    part(phenotypes, len(self.phenotype_labels), 0.5),
                    part(local_changes, len(self.local_change_labels), 0.0),
                    part(facial_actions, len(self.facial_action_labels), 0.0))
                d = (coeffs.float() @ bs).double().reshape(e - s, -1, 3)
            out.append((tmpl[None] + d).numpy())
        return np.concatenate(out, 0)


def anny_root() -> Path:
    import anny.paths

    return Path(anny.paths.get_anny_root_dir())


def load_anny_head() -> AnnyHead:
    """Build (first time ~30 s, then cached under ``<cache>/anny``) and read the anny head."""
    import logging
    import warnings

    import yaml
    from PIL import Image

    from ffhquv.config import cache_dir

    cache = cache_dir() / "anny"
    # the cache path is set on anny's module, never in the environment: this runs on the
    # fitter's warm-up thread, and a setenv while another thread's native code calls getenv
    # (dlib, OpenCV, OpenMP) crashed a fresh install's first `ffhquv fit` (SIGSEGV in libc)
    logging.getLogger("anny").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import anny
        import anny.paths

        anny.paths.set_anny_cache_path(cache)
        model = anny.Anny(rig="makehuman-head", topology="head", local_changes="all",
                          facial_actions="all", skinning_method="lbs")
    model = model.to(torch.float64).eval()
    faces = model.faces.numpy().astype(np.int64)
    uv = model.texture_coordinates.numpy().astype(np.float64)
    uv_faces = model.face_texture_coordinate_indices.numpy().astype(np.int64)

    root = anny_root()
    seg_dir = root / "data" / "segmentation"
    seg = np.asarray(Image.open(seg_dir / "body_parts_segmentation.png").convert("RGB"))
    colours = yaml.safe_load((seg_dir / "body_parts_segmentation.yaml").read_text())["colors"]
    centre = uv[uv_faces].mean(1)  # [T, 2]
    part = np.full(len(faces), "body", dtype=object)
    fc = _sample_nearest(seg, centre)
    for label, col in colours.items():
        part[np.all(fc == np.asarray(col), -1)] = label
    regions = {}
    tex_dir = root / "data" / "mpfb2" / "textures"
    for name in REGION_MASKS:
        mask = np.asarray(Image.open(tex_dir / f"mpfb_{name}.jpg").convert("L"))
        regions[name] = _sample_nearest(mask, centre) > 127
    return AnnyHead(model=model, faces=faces, uv=uv, uv_faces=uv_faces, part=part.astype(str),
                    regions=regions, version=str(getattr(anny, "__version__", "unknown")))


def _sample_nearest(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup of ``[K, 2]`` OBJ uvs (v up) in an ``[H, W, ...]`` image."""
    h, w = img.shape[:2]
    col = np.clip(np.floor(uv[:, 0] * w).astype(int), 0, w - 1)
    row = np.clip(np.floor((1 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return img[row, col]


def head_local_changes(head: AnnyHead, min_disp: float = 1e-4) -> list[int]:
    """Indices of local changes that move the kept head vertices by more than ``min_disp``
    metres at value +1 or -1 (the others are body changes), minus EXCLUDED_LOCAL_CHANGES."""
    labels = head.local_change_labels
    n = len(labels)
    base = head.rest_vertices()[0]
    vals = np.concatenate([np.eye(n), -np.eye(n)], 0)
    disp = head.rest_vertices(local_changes=vals) - base[None]  # [2n, 4538, 3]
    mag = np.linalg.norm(disp, axis=-1).max(-1)
    mag = np.maximum(mag[:n], mag[n:])
    return [i for i in range(n) if mag[i] > min_disp and labels[i] not in EXCLUDED_LOCAL_CHANGES]


def rigid_align(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
                ) -> np.ndarray:
    """Rotate and translate each ``src`` shape onto ``dst`` (weighted Kabsch, no scale).

    Args:
        src: ``[B, N, 3]`` shapes.
        dst: ``[N, 3]`` target.
        weights: optional ``[N]`` non-negative weights.
    Returns:
        ``[B, N, 3]`` aligned shapes.
    """
    w = np.ones(src.shape[1]) if weights is None else weights
    w = w / w.sum()
    mu_s = np.einsum("n,bnc->bc", w, src)
    mu_d = w @ dst
    a = src - mu_s[:, None]
    b = dst - mu_d
    h = np.einsum("bni,n,nj->bij", a, w, b)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
    u[:, :, -1] *= d[:, None]
    r = np.einsum("bij,bjk->bik", u, vt)  # a @ r ~ b
    return np.einsum("bni,bij->bnj", a, r) + mu_d
