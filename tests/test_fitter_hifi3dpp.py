"""The fitter core and servicer with the ``hifi3dpp`` face model (synthetic topo_assets files in
the official layout, see ``tests/hifi3dpp_synthetic.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.fitter.core import FitterCore
from services.fitter.presets import get_preset
from services.fitter.servicer import FitterServicer, face_model_availability
from services.fitter.synthetic import synthetic_face, synthetic_texture
from tests.hifi3dpp_synthetic import write_synthetic_topo


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("topo_assets")
    write_synthetic_topo(folder)
    return folder


def test_fit_with_hifi3dpp(topo):
    torch.set_num_threads(2)
    core = FitterCore("hifi3dpp", device="cpu", topo_dir=topo)
    m = core.model
    assert m.name == "hifi3dpp"
    c = m.zeros(1)
    c["angles"] = torch.tensor([[0.0, 0.25, 0.0]])
    face, _ = synthetic_face(m, c, synthetic_texture(256), hires=512)
    p = get_preset("fast").with_overrides(stage1_steps=80, stage3_steps=5, tex_opt_size=64,
                                          tex_levels=(32, 64))
    out = core.fit(face, preset=p, texture_size=256)
    assert out.mesh_neutral.vertices.shape == (m.n_vertices, 3)
    assert out.uv_texture.shape == (256, 256, 3) and out.uv_texture.max(-1).min() > 0
    assert out.report["face_model"]["name"] == "hifi3dpp"
    assert np.isfinite(out.metrics["landmark_error_px"])
    assert out.metrics["landmark_error_iod"] < 0.05


def test_describe_availability(topo):
    avail = face_model_availability(str(topo))
    assert avail["hifi3dpp"] == "available"
    s = FitterServicer(device="cpu", topo_dir=str(topo))
    model = s._cpu_model("hifi3dpp")
    assert model.n_vertices > 0
