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
    return ev, ev.evaluate("astronaut.jpg", astronaut_jpg_bytes, sheet=True)


def test_quality_fields_and_sane_values(astronaut_result):
    _, res = astronaut_result
    m = res.metrics
    for key in quality.HIGHER_IS_BETTER:
        assert key in m, key
        # a zone may be hidden at the fitted pose (NaN = missing); the rest is always measured
        if key.startswith("dE_") and key[3:] in quality.OUTSIDE_ZONES:
            continue
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
    # the face patch comes from the photo: close in colour; outside it, the whole head is
    # painted from the photo too (her dark hair on the scalp: was 20+ on a bald head)
    assert 0 <= m["dE_face"] < 6 and m["dE_face"] <= m["dEpx_face"] < 15
    assert m["px_face"] > 20000 and 0 < m["dE_outside"] < 60
    assert 0 <= m["dE_scalp"] < 15
    # the images the numbers come from
    assert res.images["composite"].shape == (224, 672, 3)
    for k in quality.YAWS:
        assert res.images[k].shape == (512, 512, 3)
        assert res.images[k].std() > 10  # a rendered head, not a blank frame
    n = quality.COLOUR_SIZE
    assert res.images["colour"].shape == (n, 3 * n, 3)
    px = quality.SHEET_PX
    sheet = res.images["sheet"]
    assert sheet.shape == (px, px * (1 + len(quality.SHEET_VIEWS)), 3)
    for i in range(1, 1 + len(quality.SHEET_VIEWS)):  # every view shows a head
        assert sheet[:, i * px:(i + 1) * px].std() > 10


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
    assert len(files) == 5 and all(f.stat().st_size > 1000 for f in files)


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


# ------------------------------------------------------------------ whole-head colour (CIEDE2000)
def _grey(lightness: float, shape=(20, 20)) -> np.ndarray:
    """Float sRGB image of the neutral grey with CIELAB ``L* = lightness`` (a* = b* = 0)."""
    from skimage.color import lab2rgb

    return np.broadcast_to(lab2rgb(np.array([[[lightness, 0.0, 0.0]]]))[0, 0],
                           (*shape, 3)).copy()


def _ciede2000_lightness(l1: float, l2: float) -> float:
    """CIEDE2000 of two neutral greys (the formula reduces to the lightness term)."""
    lbar = (l1 + l2) / 2
    s_l = 1 + 0.015 * (lbar - 50) ** 2 / math.sqrt(20 + (lbar - 50) ** 2)
    return abs(l2 - l1) / s_l


def test_delta_e_identical_and_known_shift():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    region = np.ones((32, 32), bool)
    assert quality.delta_e(photo, photo.copy(), region)[:2] == (0.0, 0.0)
    # a pure lightness shift around L* = 50: CIEDE2000 = the L* difference
    med, px, n = quality.delta_e(_grey(45, (32, 32)), _grey(55, (32, 32)), region)
    assert med == pytest.approx(10.0, abs=1e-3) and px == pytest.approx(10.0, abs=1e-3)
    assert n == 32 * 32
    # 40 % of the pixels 10 L* lighter: the medians agree, the per-pixel mean does not
    render = _grey(50, (10, 10))
    render[:4] = _grey(60, (4, 10))
    med, px, _ = quality.delta_e(_grey(50, (10, 10)), render, np.ones((10, 10), bool))
    assert med == pytest.approx(0.0, abs=1e-3)
    assert px == pytest.approx(0.4 * _ciede2000_lightness(50, 60), abs=1e-3)
    # too few pixels -> NaN
    small = np.zeros((32, 32), bool)
    small[:3, :3] = True
    assert math.isnan(quality.delta_e(photo, photo, small, min_px=10)[0])


def test_colour_metrics_regions():
    shape = (40, 40)
    photo, render = _grey(50, shape), _grey(50, shape)
    render[20:] = _grey(55, (20, 40))
    regions = {name: np.zeros(shape, bool) for name in ("face", *quality.OUTSIDE_ZONES)}
    regions["face"][:20] = True
    regions["scalp"][20:30] = True
    regions["neck"][30:] = True
    m = quality.colour_metrics(photo, render, regions, min_px=50)
    shift = _ciede2000_lightness(50, 55)
    assert m["dE_face"] == pytest.approx(0.0, abs=1e-3) and m["dEpx_face"] < 1e-3
    assert m["dE_scalp"] == pytest.approx(shift, abs=1e-3)
    assert m["dE_neck"] == pytest.approx(shift, abs=1e-3)
    for z in ("forehead_top", "ears", "jaw"):  # empty: missing, not zero
        assert math.isnan(m[f"dE_{z}"])
    assert m["dE_outside"] == pytest.approx(shift, abs=1e-3)
    assert m["dEpx_outside"] == pytest.approx(shift, abs=1e-3)
    assert m["px_scalp"] == 400
    for key in quality.DE_COLS:
        assert key in quality.HIGHER_IS_BETTER and not quality.HIGHER_IS_BETTER[key]


def test_zone_render_of_the_default_model():
    """Every zone of the real default model shows on a frontal render of its mean shape,
    with enough pixels after the erosion, in the right part of the picture."""
    from ffhquv.render.camera import Camera
    from ffhquv.render.raster import get_backend
    from services.fitter.facemodel import load_face_model

    model = load_face_model("default")
    zones = quality.head_zones(model)
    assert zones.shape == (model.n_vertices,)
    for i, name in enumerate(quality.ZONES):
        assert (zones == i).sum() > 20, name
    coeffs = {k: v[0].cpu().numpy() for k, v in model.zeros().items()}
    size = quality.COLOUR_SIZE
    zimg = quality.zone_image(model, coeffs, Camera(), get_backend("cpu"), zones, size=size)
    assert zimg.shape == (size, size) and zimg.min() == -1
    cover = (zimg >= 0).astype(np.float32)
    parse = np.where(zimg == quality.ZONES.index("face"), 1, 0).astype(np.uint8)
    regions = quality.colour_regions(zimg, cover, parse)
    rows = {}
    for name, reg in regions.items():
        assert reg.sum() >= quality.MIN_REGION_PX, name
        rows[name] = np.nonzero(reg)[0].mean()
        assert not (reg & ~(zimg >= 0)).any()  # only rendered pixels
    # top to bottom in the picture: scalp / forehead top above the face, jaw and neck below
    assert rows["forehead_top"] < rows["face"] < rows["jaw"] < rows["neck"]
    assert rows["scalp"] < rows["face"]
    ears = np.nonzero(regions["ears"])[1]
    assert ears.min() < size * 0.25 and ears.max() > size * 0.75  # both sides
    # the eye openings show no back faces as zones
    assert (zimg[regions["face"]] == quality.ZONES.index("face")).all()


def test_collect_skips_textures(tmp_path, astronaut_jpg_bytes):
    (tmp_path / "a.jpg").write_bytes(astronaut_jpg_bytes)
    (tmp_path / "a_ffhquv_texture.png").write_bytes(astronaut_jpg_bytes)
    (tmp_path / "tex_uv.png").write_bytes(astronaut_jpg_bytes)
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "processed_vis").mkdir()
    assert [n for n, _ in quality.collect([str(tmp_path)], False)] == ["a.jpg"]


def test_photo_pixels_drop_the_alignment_border():
    from services.detector.align import BORDER_VALUE

    crop = np.random.default_rng(2).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    crop[:, :50] = BORDER_VALUE  # the crop reached past the photo's left edge
    crop[100, 120] = BORDER_VALUE  # a lone photo pixel of that colour stays
    ok = quality.photo_pixels(crop, 100)
    assert not ok[:, :25].any() and ok[:, 26:].all()
    regions = quality.colour_regions(np.ones((100, 100), int), np.ones((100, 100)),
                                     np.ones((100, 100), np.uint8), valid=ok)
    assert not regions["face"][:, :25].any() and regions["face"][5:95, 30:70].all()


def test_skin_zones_leave_out_occluders():
    """Forehead top, ears and neck compare only photo pixels that show skin (a fringe or a
    collar is left out); scalp and jaw keep every pixel (hair and beards must show)."""
    zimg = np.zeros((100, 100), int)
    for i, name in enumerate(quality.OUTSIDE_ZONES):
        zimg[:, i * 20:(i + 1) * 20] = quality.ZONES.index(name)
    skin = np.ones((100, 100), bool)
    skin[:50] = False  # the top half of the photo shows hair / cloth
    args = (zimg, np.ones((100, 100)), np.zeros((100, 100), np.uint8))
    every = quality.colour_regions(*args)
    regions = quality.colour_regions(*args, skin=skin)
    for name in quality.OUTSIDE_ZONES:
        if name in quality.SKIN_ZONES:
            assert not regions[name][:50].any() and regions[name][60:].any()
        else:
            assert (regions[name] == every[name]).all() and regions[name][:50].any()


def test_preset_overrides_parse_fields_by_type():
    from bench.common import preset_label, preset_overrides

    ov = preset_overrides(["stage3_steps=20", "stage3_lr=0.01", "tex_levels=32,64"])
    assert ov == {"stage3_steps": 20, "stage3_lr": 0.01, "tex_levels": (32, 64)}
    assert preset_label("standard", {}) == "standard"
    assert preset_label("standard", {"stage3_steps": 20}) == \
        "standard[stage3_steps=20]"
    for bad in ("name=x", "nofield=1", "stage3_steps", "stage3_steps=many"):
        with pytest.raises(SystemExit, match="--set"):
            preset_overrides([bad])
