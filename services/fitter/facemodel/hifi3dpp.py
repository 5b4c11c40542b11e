"""The paper's HiFi3D++ model, read from a user's ``topo_assets/`` folder.

Field semantics follow ``hifi3dpp-facts.md``: ``hifi3dpp_model_info.mat`` (MATLAB v5) holds the
mean shape / texture and the identity, expression and texture bases as ``3N x K`` matrices
(rows ``x0, y0, z0, x1, ...``), 1-based triangle / texture-coordinate / keypoint indices;
``unwrap_1024_info.mat`` holds per-texel barycentrics and vertex ids of the 1024 UV map. The
model space is already the one of :mod:`ffhquv.render.camera` (y up, face toward +z, about
decimetres); the mean shape is recentred to zero vertex mean on load (as the reference does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ffhquv.errors import InvalidInput, PreconditionFailed
from ffhquv.vocab import FACE_MODEL_HIFI3DPP
from services.fitter.facemodel.base import FaceModel

MODEL_FILE = "hifi3dpp_model_info.mat"
UNWRAP_FILE = "unwrap_1024_info.mat"
N_VERTICES = 20481

#: Eye-opening contours on the HiFi3D++ topology (0-based, hifi3dpp-facts.md); subject's left
#: eye is at +x.
EYE_RING_LEFT = [7196, 7635, 7223, 1250, 7199, 1352, 1883, 8472, 8483, 8466, 8502, 8567, 8477,
                 16946, 16950, 8492, 8489, 8495, 8491]
EYE_RING_RIGHT = [3790, 12773, 12357, 3897, 12382, 3795, 4428, 13576, 13586, 13570, 13602,
                  13659, 13579, 13584, 13573, 13593, 13590, 13597, 13594]
REQUIRED_KEYS = ("meanshape", "meantex", "idBase", "exBase", "texBase", "tri", "head_tri",
                 "head_tri_vt", "vt_list", "keypoints", "skinmask")


def _require(topo_dir: Path, name: str) -> Path:
    p = Path(topo_dir) / name
    if not p.is_file():
        raise PreconditionFailed(
            f"HiFi3D++ face model: missing file {name} (expected at {p}); put the paper's "
            f"topo_assets/ folder there or choose face model 'default'")
    return p


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure is a bad user file
        raise InvalidInput(f"cannot read {path} as a MATLAB v5 .mat file: {err}") from err


def _index(a: np.ndarray, name: str, n: int, cols: int | None) -> np.ndarray:
    """1-based index array (any numeric dtype) -> 0-based int64, range-checked."""
    a = np.asarray(a)
    out = np.rint(a.astype(np.float64)).astype(np.int64) - 1
    if cols is not None:
        out = out.reshape(-1, cols)
    else:
        out = out.reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= n):
        raise InvalidInput(f"{MODEL_FILE}: {name} holds indices outside 1..{n}")
    return out


def _basis(a: np.ndarray, name: str, n: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] != 3 * n:
        raise InvalidInput(f"{MODEL_FILE}: {name} must be 3N x K with N = {n}, got {a.shape}")
    return a.reshape(n, 3, a.shape[1])


def load_hifi3dpp(topo_dir: Path, device: str | torch.device = "cpu") -> FaceModel:
    """Read HiFi3D++ from ``topo_dir``.

    Args:
        topo_dir: folder with ``hifi3dpp_model_info.mat`` and ``unwrap_1024_info.mat``.
        device: torch device of the returned tensors.
    Returns:
        :class:`FaceModel` ``"hifi3dpp"``: ``mean_shape [N, 3]`` (recentred), ``id_base
        [N, 3, 532]``, ``exp_base [N, 3, 45]``, ``mean_tex [N, 3]`` and ``tex_base [N, 3, 439]``
        in [0, 1] units (divided by 255), ``tri = head_tri`` (whole head, 0-based),
        ``uv = vt_list``, ``uv_tri = head_tri_vt``, landmarks at the ``keypoints`` vertices
        (barycentric ``(1, 0, 0)``), ``face_tri_mask`` = the head triangles that are in ``tri``
        (the facial triangles), ``skin_mask = skinmask``, the eye rings of hifi3dpp-facts.md
        and a mirror map computed from the mean shape.
    Raises:
        PreconditionFailed: a file is missing (the message names it and the expected path).
        InvalidInput: a file is unreadable or a field has the wrong shape / indices.
    """
    from services.fitter.facemodel.topology import mirror_map

    topo_dir = Path(topo_dir)
    model_path = _require(topo_dir, MODEL_FILE)
    _require(topo_dir, UNWRAP_FILE)
    m = _loadmat(model_path)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise InvalidInput(f"{model_path}: missing fields {', '.join(missing)}")

    mean = np.asarray(m["meanshape"], np.float64).reshape(-1, 3)
    n = len(mean)
    mean = mean - mean.mean(0)
    id_base = _basis(m["idBase"], "idBase", n)
    exp_base = _basis(m["exBase"], "exBase", n)
    tex_base = _basis(m["texBase"], "texBase", n) / 255.0
    mean_tex = np.asarray(m["meantex"], np.float32).reshape(n, 3) / 255.0
    head_tri = _index(m["head_tri"], "head_tri", n, 3)
    face_tri = _index(m["tri"], "tri", n, 3)
    vt = np.asarray(m["vt_list"], np.float32).reshape(-1, 2)
    head_tri_vt = _index(m["head_tri_vt"], "head_tri_vt", len(vt), 3)
    if head_tri_vt.shape != head_tri.shape:
        raise InvalidInput(f"{model_path}: head_tri_vt {head_tri_vt.shape} must match head_tri "
                           f"{head_tri.shape}")
    keypoints = _index(m["keypoints"], "keypoints", n, None)
    if len(keypoints) != 68:
        raise InvalidInput(f"{model_path}: keypoints must hold 68 vertex ids, got "
                           f"{len(keypoints)}")
    skin = np.asarray(m["skinmask"]).reshape(-1)
    if skin.size == n:
        skin_mask = skin.astype(np.float64) > 0.5
    else:  # stored as a list of (1-based) vertex ids
        skin_mask = np.zeros(n, bool)
        skin_mask[_index(skin, "skinmask", n, None)] = True

    # face_tri_mask: head triangles that are facial triangles (same vertex set)
    key = lambda t: set(map(tuple, np.sort(t, 1).tolist()))  # noqa: E731
    facial = key(face_tri)
    face_mask = np.array([tuple(r) in facial for r in np.sort(head_tri, 1).tolist()])

    # landmarks: a head triangle holding each keypoint vertex, that vertex first
    owner = np.full(n, -1, np.int64)
    for c in range(3):
        owner[head_tri[:, c]] = np.arange(len(head_tri))
    if (owner[keypoints] < 0).any():
        raise InvalidInput(f"{model_path}: a keypoint vertex is in no head triangle")
    lmk_tri = head_tri[owner[keypoints]]
    lmk_tv = np.zeros((68, 3), np.int64)
    for i, (k, t) in enumerate(zip(keypoints, lmk_tri, strict=True)):
        j = int(np.nonzero(t == k)[0][0])
        lmk_tv[i] = np.roll(t, -j)
    lmk_bary = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (68, 1))

    mirror, involution = mirror_map(mean)
    if max(EYE_RING_LEFT + EYE_RING_RIGHT) < n:
        ring_l, ring_r = np.array(EYE_RING_LEFT), np.array(EYE_RING_RIGHT)
    else:
        ring_l = ring_r = np.zeros(0, np.int64)

    f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    i64 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731
    model = FaceModel(
        name=FACE_MODEL_HIFI3DPP,
        unit="HiFi3D++ model units (about decimetres)",
        mean_shape=f32(mean),
        id_base=f32(id_base),
        exp_base=f32(exp_base),
        tri=i64(head_tri),
        uv=f32(vt),
        uv_tri=i64(head_tri_vt),
        lmk_tri_vertices=i64(lmk_tv),
        lmk_bary=f32(lmk_bary),
        face_tri_mask=torch.as_tensor(face_mask),
        skin_mask=torch.as_tensor(skin_mask),
        mirror=i64(mirror),
        eye_ring_left=i64(ring_l),
        eye_ring_right=i64(ring_r),
        mean_tex=f32(mean_tex),
        tex_base=f32(tex_base),
        id_labels=[f"id{k:03d}" for k in range(id_base.shape[-1])],
        exp_labels=[f"exp{k:02d}" for k in range(exp_base.shape[-1])],
        meta={"source": str(model_path), "n_vertices": n,
              "mirror_involution_rate": involution,
              "n_facial_triangles": int(len(face_tri))},
    )
    return model.to(device)


def load_hifi3dpp_unwrap(topo_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The per-texel splatting table of the 1024 UV map (``unwrap_1024_info.mat``).

    Returns:
        ``(bw float32 [1024, 1024, 3], v_idx int64 [1024, 1024, 3])``: barycentric weights and
        0-based vertex ids per texel (ids are stored as floats; a table whose smallest id is 1
        and largest is N is taken as 1-based and shifted).
    Raises:
        PreconditionFailed: the file is missing; InvalidInput: wrong fields.
    """
    path = _require(Path(topo_dir), UNWRAP_FILE)
    u = _loadmat(path)
    if "uv_idx_bw" not in u or "uv_idx_v_idx" not in u:
        raise InvalidInput(f"{path}: needs fields uv_idx_bw and uv_idx_v_idx")
    bw = np.asarray(u["uv_idx_bw"], np.float32)
    vi = np.rint(np.asarray(u["uv_idx_v_idx"], np.float64)).astype(np.int64)
    if bw.ndim != 3 or bw.shape[-1] != 3 or vi.shape != bw.shape:
        raise InvalidInput(f"{path}: uv_idx_bw / uv_idx_v_idx must be S x S x 3, got "
                           f"{bw.shape} / {vi.shape}")
    if vi.min() >= 1:
        vi = vi - 1
    return bw, vi
