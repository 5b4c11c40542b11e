"""The HiFi3D++ loader on synthetic .mat files in the official layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffhquv.errors import InvalidInput, PreconditionFailed
from services.fitter.facemodel import load_face_model
from services.fitter.facemodel.hifi3dpp import (
    EYE_RING_LEFT,
    load_hifi3dpp,
    load_hifi3dpp_unwrap,
)
from tests.hifi3dpp_synthetic import write_synthetic_topo


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    d = tmp_path_factory.mktemp("topo_assets")
    info = write_synthetic_topo(d, unwrap_size=64)
    return d, info


def test_shapes_and_indices(topo):
    d, info = topo
    m = load_hifi3dpp(d, "cpu")
    n = len(info["vertices"])
    assert m.name == "hifi3dpp"
    assert m.mean_shape.shape == (n, 3)
    assert m.id_base.shape == (n, 3, info["n_id"])
    assert m.exp_base.shape == (n, 3, info["n_exp"])
    assert m.tex_base.shape == (n, 3, info["n_tex"])
    assert m.mean_tex.shape == (n, 3) and 0 <= float(m.mean_tex.min()) and m.mean_tex.max() <= 1
    # 1-based -> 0-based
    assert torch.equal(m.tri, torch.from_numpy(info["head_tri"]))
    assert torch.equal(m.uv_tri, torch.from_numpy(info["head_tri_vt"]))
    assert int(m.tri.min()) == 0 and int(m.tri.max()) == n - 1
    assert m.uv.shape == (len(info["vt"]), 2)
    # landmarks sit exactly on the keypoint vertices
    lm = m.landmarks(m.mean_shape[None])[0]
    assert torch.allclose(lm, m.mean_shape[torch.from_numpy(info["keypoints"])], atol=1e-6)
    # facial triangles -> face_tri_mask
    assert int(m.face_tri_mask.sum()) == len(info["tri"])
    assert torch.equal(m.skin_mask, torch.from_numpy(info["skinmask"]))
    if info["real_topology"]:
        assert (n, len(info["vt"]), len(info["head_tri"])) == (20481, 20792, 40832)
        assert m.eye_ring_left.tolist() == EYE_RING_LEFT
        assert m.mean_shape[m.eye_ring_left, 0].mean() > 0 > m.mean_shape[m.eye_ring_right,
                                                                            0].mean()
        assert m.meta["mirror_involution_rate"] > 0.8


def test_recentred_and_bases_reshaped(topo):
    d, info = topo
    m = load_hifi3dpp(d, "cpu")
    assert torch.allclose(m.mean_shape.double().mean(0), torch.zeros(3, dtype=torch.float64),
                          atol=1e-5)
    expect = info["vertices"] - info["vertices"].mean(0)
    assert np.allclose(m.mean_shape.numpy(), expect, atol=1e-5)
    # idBase rows are x0, y0, z0, x1, ...: column k of vertex 1's y is row 4
    import scipy.io

    raw = scipy.io.loadmat(str(d / "hifi3dpp_model_info.mat"))
    assert np.allclose(m.id_base[1, 1].numpy(), raw["idBase"][4])
    assert np.allclose(m.tex_base[2, 0].numpy(), raw["texBase"][6] / 255.0, atol=1e-7)
    v = m.shape(torch.ones(1, m.id_dim), torch.ones(1, m.exp_dim))
    assert v.shape == (1, m.n_vertices, 3)


def test_unwrap_table(topo):
    d, _ = topo
    bw, vid = load_hifi3dpp_unwrap(d)
    assert bw.shape == (64, 64, 3) and vid.shape == (64, 64, 3)
    assert vid.min() >= 0 and np.allclose(bw.sum(-1), 1, atol=1e-5)


def test_missing_files(tmp_path, topo):
    with pytest.raises(PreconditionFailed) as err:
        load_hifi3dpp(tmp_path, "cpu")
    assert "hifi3dpp_model_info.mat" in str(err.value) and str(tmp_path) in str(err.value)
    # model file present, unwrap file missing
    d, _ = topo
    (tmp_path / "hifi3dpp_model_info.mat").write_bytes((d / "hifi3dpp_model_info.mat")
                                                       .read_bytes())
    with pytest.raises(PreconditionFailed, match="unwrap_1024_info.mat"):
        load_hifi3dpp(tmp_path, "cpu")


def test_bad_file(tmp_path):
    (tmp_path / "hifi3dpp_model_info.mat").write_bytes(b"not a mat file")
    (tmp_path / "unwrap_1024_info.mat").write_bytes(b"nor this")
    with pytest.raises(InvalidInput, match="MATLAB"):
        load_hifi3dpp(tmp_path, "cpu")


def test_load_face_model_hifi3dpp(topo):
    d, _ = topo
    with pytest.raises(PreconditionFailed, match="topo"):
        load_face_model("hifi3dpp")
    a = load_face_model("hifi3dpp", "cpu", topo_dir=d)
    assert a is load_face_model("hifi3dpp", "cpu", topo_dir=d)
    with pytest.raises(InvalidInput, match="unknown face model"):
        load_face_model("bfm")
