"""Write a synthetic HiFi3D++ ``topo_assets/`` pair of .mat files in the official layout.

Same keys, dtypes and index conventions as the paper's ``hifi3dpp_model_info.mat`` and
``unwrap_1024_info.mat`` (see ``hifi3dpp-facts.md``): 1-based indices, ``3N x K`` bases with
rows ``x0, y0, z0, x1, ...``, 0..255 colours. The topology is the real HiFi3D++ one (20481
vertices, 20792 texture coordinates, 40832 triangles) read from the reference head
``teaser_1/mesh_head.obj`` when that file exists, else a small synthetic head (a UV sphere with
two eye holes). The bases are random and small (few components) so the files stay small.

Used by ``tests/test_facemodel_hifi3dpp.py`` and by the fitter's paper-mode tests::

    from tests.hifi3dpp_synthetic import write_synthetic_topo
    info = write_synthetic_topo(tmp_path)   # -> dict with the arrays written (0-based copies)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ffhquv.config import reference_data_dir

REFERENCE_HEAD = reference_data_dir() / "teaser_1" / "mesh_head.obj"


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(v [N, 3], vt [M, 2], f [T, 3], f_vt [T, 3])`` 0-based, triangles only."""
    v, vt, f, fvt = [], [], [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("v "):
                v.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("vt "):
                vt.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                parts = [p.split("/") for p in line.split()[1:4]]
                f.append([int(p[0]) - 1 for p in parts])
                fvt.append([int(p[1]) - 1 if len(p) > 1 and p[1] else int(p[0]) - 1
                            for p in parts])
    return (np.asarray(v, np.float64), np.asarray(vt, np.float64), np.asarray(f, np.int64),
            np.asarray(fvt, np.int64))


def small_head(n_lat: int = 24, n_lon: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """A UV sphere (radius 1.4, y up, face toward +z) with two eye holes; ``(v, vt, f, f_vt)``
    with one texture coordinate per vertex (equirectangular)."""
    lat = np.linspace(0.05, np.pi - 0.05, n_lat)
    lon = np.linspace(-np.pi, np.pi, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    v = np.stack([1.4 * np.sin(la) * np.sin(lo), 1.4 * np.cos(la),
                  1.4 * np.sin(la) * np.cos(lo)], -1).reshape(-1, 3)
    vt = np.stack([(lo + np.pi) / (2 * np.pi), 1 - la / np.pi], -1).reshape(-1, 2)
    f = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            f += [[a, c, b], [b, c, d]]
    f = np.asarray(f, np.int64)
    # eye holes: drop triangles near two frontal points
    cen = v[f].mean(1)
    eyes = np.array([[0.45, 0.3, 1.3], [-0.45, 0.3, 1.3]])
    hole = (np.linalg.norm(cen[:, None] - eyes[None], axis=2) < 0.2).any(1)
    f = f[~hole]
    return v, vt, f, f.copy()


def write_synthetic_topo(folder: Path, n_id: int = 8, n_exp: int = 5, n_tex: int = 6,
                         use_reference: bool = True, unwrap_size: int = 1024,
                         seed: int = 0) -> dict:
    """Write ``hifi3dpp_model_info.mat`` and ``unwrap_1024_info.mat`` into ``folder``.

    Args:
        folder: created if missing.
        n_id / n_exp / n_tex: basis sizes (the paper's are 532 / 45 / 439).
        use_reference: use the real topology when ``teaser_1/mesh_head.obj`` exists.
        unwrap_size: side of the per-texel unwrap tables (1024 in the paper).
    Returns:
        dict of what was written, with 0-based copies: ``vertices [N, 3]`` (not recentred),
        ``head_tri``, ``head_tri_vt``, ``tri`` (facial), ``vt``, ``keypoints``, ``skinmask``,
        ``real_topology`` (bool).
    """
    import scipy.io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    real = use_reference and REFERENCE_HEAD.is_file()
    v, vt, f, fvt = read_obj(REFERENCE_HEAD) if real else small_head()
    n = len(v)
    offset = np.array([0.02, -0.05, 0.03])  # not centred: the loader must recentre
    v = v + offset
    cen = v[f].mean(1)
    # facial triangles: the front of the head
    facial = (cen[:, 2] > np.quantile(v[:, 2], 0.6)) & (np.abs(cen[:, 0]) < 0.9)
    tri = f[facial]
    # keypoints: 68 distinct front vertices, skin: front vertices
    front = np.nonzero(v[:, 2] > np.quantile(v[:, 2], 0.7))[0]
    keypoints = rng.choice(np.unique(f[facial].ravel()), 68, replace=False)
    skin = np.zeros(n)
    skin[front] = 1
    vtx_vt = np.zeros((n, 2))
    vtx_vt[f.ravel()] = vt[fvt.ravel()]
    # triangles around each vertex (1-based, 0 padded), at most 8
    point_buf = np.zeros((n, 8), np.int32)
    fill = np.zeros(n, int)
    for t, row in enumerate(f):
        for k in row:
            if fill[k] < 8:
                point_buf[k, fill[k]] = t + 1
                fill[k] += 1
    f32 = np.float32
    model = {
        "meanshape": v.reshape(1, -1).astype(f32),
        "meantex": rng.uniform(60, 200, (1, 3 * n)).astype(f32),
        "idBase": (rng.normal(0, 0.01, (3 * n, n_id))).astype(f32),
        "exBase": (rng.normal(0, 0.01, (3 * n, n_exp))).astype(f32),
        "texBase": (rng.normal(0, 2.0, (3 * n, n_tex))).astype(f32),
        "tri": (tri + 1).astype(np.int32),
        "head_tri": (f + 1).astype(np.int32),
        "tri_vt": (fvt[facial] + 1).astype(np.int32),
        "head_tri_vt": (fvt + 1).astype(np.int32),
        "vt_list": vt.astype(np.float64),
        "vtx_vt": vtx_vt,
        "keypoints": (keypoints + 1).reshape(1, -1).astype(np.int32),
        "point_buf": point_buf,
        "skinmask": skin.reshape(1, -1).astype(f32),
        "uv_idx": np.zeros((512 * 512, 1), np.int32),
        "vtx_uv_idx": np.zeros((n, 1), np.int32),
        "vt_vtx_idx": np.zeros((len(vt), 1), np.int32),
    }
    scipy.io.savemat(str(folder / "hifi3dpp_model_info.mat"), model, do_compression=False)
    s = unwrap_size
    bw = rng.dirichlet(np.ones(3), (s, s)).astype(np.float64)
    vid = (rng.integers(0, n, (s, s, 3)) + 1).astype(np.float64)
    scipy.io.savemat(str(folder / "unwrap_1024_info.mat"),
                     {"uv_idx_bw": bw, "uv_idx_v_idx": vid}, do_compression=True)
    return {"vertices": v, "head_tri": f, "head_tri_vt": fvt, "tri": tri, "vt": vt,
            "keypoints": keypoints, "skinmask": skin > 0, "real_topology": real,
            "n_id": n_id, "n_exp": n_exp, "n_tex": n_tex}
