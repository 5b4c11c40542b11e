"""bench/quality.py and bench/speed.py on one real photo (skimage astronaut, ``fast`` preset)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import quality, speed


@pytest.fixture(scope="module")
def astronaut_result(astronaut_jpg_bytes):
    ev = quality.QualityEvaluator(preset="fast", device="cpu", threads=2)
    return ev, ev.evaluate("astronaut.jpg", astronaut_jpg_bytes)


def test_quality_fields_and_sane_values(astronaut_result):
    _, res = astronaut_result
    m = res.metrics
    for key in quality.HIGHER_IS_BETTER:
        assert key in m, key
        assert math.isfinite(m[key]), (key, m[key])
    # the model follows the detected landmarks to a few % of the inter-ocular distance
    assert 0 < m["lmk_err_iod"] < 0.05
    assert m["lmk_err_inner_iod"] <= m["lmk_err_max_iod"]
    assert m["lmk_composite_iod"] < 0.1
    assert 60 < m["iod_px"] < 140
    assert 15 < m["psnr"] < 60 and 0.5 < m["ssim"] <= 1
    assert m["region_px"] > 5000
    # the crop and the composite are the same person; the crop is close to the photo
    assert m["id_crop_baseline"] < 0.3 and m["id_composite"] < 0.6
    for k in quality.YAWS:
        assert 0 < m[k] < 1.0
    assert 0.4 < m["uv_coverage"] <= 1 and 0.2 < m["fit_coverage"] <= 1
    assert 0 <= m["sym_err_pct"] < 10
    # the images the numbers come from
    assert res.images["composite"].shape == (224, 672, 3)
    for k in quality.YAWS:
        assert res.images[k].shape == (512, 512, 3)
        assert res.images[k].std() > 10  # a rendered head, not a blank frame


def test_metric_functions_on_known_inputs():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    region = np.zeros((64, 64), bool)
    region[16:48, 16:48] = True
    same = quality.masked_psnr_ssim(photo, photo.copy(), region)
    assert same["psnr"] == 99.0 and same["ssim"] == pytest.approx(1.0)
    noisy = np.clip(photo.astype(int) + 8, 0, 255).astype(np.uint8)
    comp = quality.composite(photo, noisy, region)
    assert (comp[~region] == photo[~region]).all()
    assert 25 < quality.masked_psnr_ssim(photo, comp, region)["psnr"] < 35
    lm = rng.uniform(50, 150, (68, 2))
    lm[36], lm[45] = (60, 100), (160, 100)
    err = quality.landmark_error(lm, lm + [3.0, 4.0])
    assert err["lmk_err_iod"] == pytest.approx(0.05) and err["iod_px"] == pytest.approx(100)
    # a left/right mirrored texture has no symmetry error; a one-sided darkening has some
    s = 8
    mirror = np.arange(s * s).reshape(s, s)[:, ::-1].reshape(-1)
    tex = np.full((s, s, 3), 128, np.uint8)
    face = np.ones((s, s), bool)
    assert quality.symmetry_error(tex, face, mirror, face) == 0.0
    tex[:, : s // 2] = 102
    assert quality.symmetry_error(tex, face, mirror, face) == pytest.approx(100 * 26 / 255)


def test_summary_json_and_plots(astronaut_result, tmp_path):
    _, res = astronaut_result
    rows = [res.metrics, {**res.metrics, "photo": "b", "psnr": 10.0}]
    summary = {r["metric"]: r for r in quality.summarize(rows)}
    assert summary["psnr"]["worst"] == 10.0 and summary["psnr"]["worst_photo"] == "b"
    quality.write_json(str(tmp_path / "q.json"), {"title": "t"}, rows, summary=list(
        summary.values()))
    back = json.loads((tmp_path / "q.json").read_text())
    assert back["rows"][0]["photo"] == "astronaut.jpg" and back["summary"]
    files = quality.plot(rows, tmp_path / "plots")
    pytest.importorskip("matplotlib")
    assert len(files) == 4 and all(f.stat().st_size > 1000 for f in files)


def test_speed_faces_roundtrip(astronaut_result, tmp_path):
    ev, _ = astronaut_result
    from skimage import data

    from ffhquv.imaging import png_bytes

    face = ev.detector.detect(png_bytes(data.astronaut())).aligned
    speed.save_face(tmp_path / "a.npz", face)
    back = speed.load_face(tmp_path / "a.npz")
    for k in speed.FACE_FIELDS:
        a, b = getattr(face, k), getattr(back, k)
        assert a.dtype == b.dtype and np.array_equal(a, b), k
    assert back.parse_source == face.parse_source
    from ffhquv.errors import InvalidInput

    np.savez(tmp_path / "bad.npz", crop=face.crop)
    with pytest.raises(InvalidInput, match="missing"):
        speed.load_face(tmp_path / "bad.npz")
