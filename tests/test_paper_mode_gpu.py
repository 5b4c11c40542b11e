"""Full-size paper-mode fit on CUDA (1024 texture GAN, Deep3D, ArcFace, VGG16 with random
weights; synthetic HiFi3D++ assets): runs ``bench/paper_fit.py`` and checks its JSON."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.gpu,
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
              pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated"),
              pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")]


def test_full_size_paper_fit_on_cuda(tmp_path):
    from bench.paper_fit import main

    out = tmp_path / "paper_fit.json"
    assert main(["--device", "cuda", "--repeat", "2", "--json", str(out),
                 "--out", str(tmp_path / "fit")]) == 0
    res = json.loads(out.read_text())
    assert res["texture_source"] == "texgan" and res["stage1_init"] == "deep3d"
    assert all(v.startswith("used") for v in res["paper_networks"].values())
    fit = [r for r in res["rows"] if r["step"].startswith("fit #2")][0]
    assert fit["stage2"] > 0 and fit["stage3"] > 0
    assert res["metrics"]["landmark_error_px"] < 2.0
    assert (tmp_path / "fit" / "texture.png").is_file()
