"""Fitter core on synthetic ground truth: a face model rendered with known coefficients and a
known texture is fitted back (pose, landmarks, texture colour and alignment)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ffhquv.errors import Cancelled, InvalidInput, PreconditionFailed
from ffhquv.imaging import read_png_bytes
from services.fitter.core import FitterCore
from services.fitter.presets import get_preset
from services.fitter.synthetic import build_synthetic_model, synthetic_face, synthetic_texture
from services.fitter.texture import uv_maps

TEX = 256


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return build_synthetic_model()


@pytest.fixture(scope="module")
def truth(model):
    c = model.zeros(1)
    g = torch.Generator().manual_seed(3)
    c["id"] = torch.randn(1, model.id_dim, generator=g) * 0.5
    c["exp"][0, 0] = 1.0  # mouth open
    c["angles"] = torch.tensor([[0.08, 0.45, -0.05]])  # ~26 degrees of yaw
    c["trans"] = torch.tensor([[0.05, -0.08, 0.2]])
    # albedo and light brightness are only known up to a common scale; the fitter's
    # convention is an average irradiance of about 1 (DC term 1 / (pi / sqrt(4 pi)) - 0.8)
    c["gamma"][0, [0, 9, 18]] = 0.33
    c["gamma"][0, [1, 10, 19]] = -0.15  # light from above
    c["gamma"][0, [3, 12, 21]] = -0.2  # and from the side
    tex = synthetic_texture(TEX)
    face, lm = synthetic_face(model, c, tex, hires=512)
    return c, tex, face


@pytest.fixture(scope="module")
def core(model):
    return FitterCore(model=model, device="cpu")


@pytest.fixture(scope="module")
def fitted(core, truth):
    _, _, face = truth
    events = []
    out = core.fit(face, preset=get_preset("fast").with_overrides(stage3_steps=15),
                   texture_size=TEX, progress=lambda s, f, m: events.append((s, f, m)))
    return out, events


def test_pose_and_landmarks_recovered(fitted, truth):
    out, _ = fitted
    c, _, _ = truth
    ang = out.coefficients["angles"]
    assert np.abs(ang - c["angles"][0].numpy()).max() < 0.06, ang
    assert out.metrics["landmark_error_px"] < 1.5
    assert out.metrics["landmark_error_iod"] < 0.02
    assert out.metrics["psnr_masked"] > 25


def test_texture_colour_and_alignment(fitted, truth, model, core):
    out, _ = fitted
    _, tex, _ = truth
    maps = uv_maps(model, TEX, core.backend)
    got = out.uv_texture.astype(np.float32) / 255
    assert got.shape == (TEX, TEX, 3)
    assert got.min() > 0, "no texel may stay untouched (zero)"
    seen = np.zeros((TEX, TEX), bool)
    # texels seen well in the photo: the face front, away from eyes / mouth
    face = (maps.face.numpy() > 0.5) & (maps.skin.numpy() > 0.5)
    pos = maps.pos_mean.numpy()
    seen = face & (pos[..., 2] > 0.5) & (np.abs(pos[..., 0]) < 0.35)
    assert seen.sum() > 500
    # colour: mean albedo within 12 %
    rel = np.abs(got[seen].mean(0) / tex[seen].mean(0) - 1)
    assert rel.max() < 0.12, rel
    # alignment: the stripe pattern (high frequency) must correlate with the truth
    hp = lambda a: a - np.stack([np.convolve(r, np.ones(9) / 9, "same") for r in a])  # noqa: E731
    g, t = hp(got.mean(-1)), hp(tex.mean(-1))
    corr = np.corrcoef(g[seen], t[seen])[0, 1]
    # half a stripe period (TEX / 48 texels) off would anti-correlate
    shifted = np.corrcoef(np.roll(g, TEX // 48, axis=1)[seen], t[seen])[0, 1]
    assert corr > 0.7 and shifted < -0.3, (corr, shifted)


def test_outputs_and_progress(fitted, model):
    out, events = fitted
    stages = [e[0] for e in events]
    assert stages[0] == "stage1" and "stage2" in stages and stages[-1] == "stage3"
    assert all(0.0 <= e[1] <= 1.0 for e in events)
    assert out.mesh_neutral.vertices.shape == (model.n_vertices, 3)
    assert out.mesh_expression.uvs is not None and out.mesh_expression.uv_faces.shape == (
        model.tri.shape[0], 3)
    # expression moves the mesh (mouth open in the truth)
    assert np.abs(out.mesh_expression.vertices - out.mesh_neutral.vertices).max() > 1e-3
    # the expression basis travels as named morph targets at the fitted weights
    mt = out.mesh_neutral.morphs
    assert mt.names == model.expression_names()
    np.testing.assert_allclose(mt.weights, out.coefficients["exp"])
    np.testing.assert_allclose(mt.applied(out.mesh_neutral.vertices),
                               out.mesh_expression.vertices, atol=1e-4)
    assert out.metres_per_unit == pytest.approx(model.metres_per_unit)
    assert out.preview.shape == (224, 896, 3) and out.preview.dtype == np.uint8
    for name in ("stage1_mesh.obj", "stage1_render.png", "stage1_coeffs.json", "stage2_uv.png",
                 "stage2_mesh.obj", "stage2_mesh.mtl", "stage3_coeffs.npz",
                 "stage3_coeffs.json"):
        assert name in out.intermediates and len(out.intermediates[name]) > 0
    assert b"mtllib stage2_mesh.mtl" in out.intermediates["stage2_mesh.obj"]
    # the texture encoded once, where it was made: the same pixels
    np.testing.assert_array_equal(read_png_bytes(out.uv_texture_png), out.uv_texture)
    np.testing.assert_array_equal(read_png_bytes(out.preview_png), out.preview)
    rep = out.report
    assert set(rep["timings_s"]) >= {"stage1", "stage2", "stage3", "total"}
    assert rep["preset"]["name"] == "fast" and rep["device"] == "cpu"
    assert 0 < out.metrics["texture_coverage"] <= out.metrics["texture_coverage_mirrored"] <= 1


def test_batch_matches_single(core, truth):
    _, _, face = truth
    p = get_preset("fast").with_overrides(stage1_steps=60, stage3_steps=3)
    outs = core.fit_batch([face, face], preset=p, texture_size=128, want_intermediates=False)
    assert len(outs) == 2
    np.testing.assert_allclose(outs[0].coefficients["angles"], outs[1].coefficients["angles"],
                               atol=1e-4)
    assert outs[0].intermediates == {}


def test_stage2_images_made_beside_stage3_are_the_same(core, truth, monkeypatch):
    """On a GPU a fit encodes its stage-2 intermediate images while stage 3 runs
    (EARLY_IMAGES_DEVICES); here the CPU is let do the same: the same files, the same bytes,
    and no thread of theirs left when the fit returns or is cancelled in stage 3."""
    import services.fitter.core as core_mod

    _, _, face = truth
    p = get_preset("fast").with_overrides(stage1_steps=40, stage3_steps=3)
    late = core.fit(face, preset=p, texture_size=128)
    monkeypatch.setattr(core_mod, "EARLY_IMAGES_DEVICES", frozenset({"cpu"}))
    early = core.fit(face, preset=p, texture_size=128)
    assert set(early.intermediates) == set(late.intermediates)
    for name in ("stage2_uv.png", "stage2_uv_observed.png"):
        assert early.intermediates[name] == late.intermediates[name], name
    cancel = threading.Event()

    def progress(stage, frac, msg):
        if stage == "stage3":
            cancel.set()

    with pytest.raises(Cancelled):
        core.fit(face, preset=p, texture_size=128, progress=progress, cancel=cancel)
    assert not [t for t in threading.enumerate() if t.name.startswith("beside")]


def test_cancel_raises(core, truth):
    _, _, face = truth
    cancel = threading.Event()

    def progress(stage, frac, msg):
        if stage == "stage1" and frac > 0.1:
            cancel.set()

    with pytest.raises(Cancelled):
        core.fit(face, preset="fast", texture_size=128, progress=progress, cancel=cancel)


def test_bad_inputs(core, truth, model):
    _, _, face = truth
    from dataclasses import replace

    with pytest.raises(InvalidInput, match="crop must be uint8 224x224x3"):
        core.fit(replace(face, crop=face.crop[:100]))
    with pytest.raises(InvalidInput, match="68 finite"):
        core.fit(replace(face, crop_landmarks=face.crop_landmarks[:5]))
    bad = face.crop_landmarks.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InvalidInput, match="68 finite"):
        core.fit(replace(face, crop_landmarks=bad))
    with pytest.raises(InvalidInput, match="unknown preset"):
        core.fit(face, preset="ultra")
    with pytest.raises(InvalidInput, match="power of two"):
        core.fit(face, texture_size=1000)
    with pytest.raises(InvalidInput, match="no faces"):
        core.fit_batch([])
    with pytest.raises(InvalidInput, match="unknown device"):
        FitterCore(model=model, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_absent_is_precondition_failed(model):
    with pytest.raises(PreconditionFailed, match="CUDA is not available"):
        FitterCore(model=model, device="cuda")
