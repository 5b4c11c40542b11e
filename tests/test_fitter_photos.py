"""Fitter core end to end on real photos (detector core -> fitter core, default face model)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.fitter.core import FitterCore
from services.fitter.texture import uv_maps


@pytest.fixture(scope="module")
def core():
    torch.set_num_threads(2)
    return FitterCore("default", device="cpu")


@pytest.fixture(scope="module")
def detector():
    from services.detector.core import Detector

    return Detector()


@pytest.fixture(scope="module")
def astronaut_fit(core, detector, astronaut_jpg_bytes):
    face = detector.detect(astronaut_jpg_bytes).aligned
    return face, core.fit(face, preset="fast", texture_size=1024)


def test_astronaut_landmarks_and_photometric(astronaut_fit):
    _, out = astronaut_fit
    m = out.metrics
    assert m["landmark_error_iod"] < 0.04, m
    # the render at the fitted pose reproduces the photo's face; not to the last strand: the
    # astronaut's fringe, its anti-aliased edges and thin dark marks are kept out of the skin
    # texture on purpose (issue 21), which costs about 3 dB here (26.5 -> 23.6 dB)
    assert m["psnr_masked"] > 22, m
    assert 0.2 < m["texture_coverage"] <= 1.0
    for k in ("seconds_stage1", "seconds_stage2", "seconds_stage3", "seconds_total"):
        assert m[k] > 0


def test_astronaut_skin_renders_at_the_photos_level(astronaut_fit, core):
    """The neutral-light convention end to end: the head rendered at the fitted pose and
    light shows the photo's skin at its brightness (median L* over the skin both show within
    2.5; stage 2's shadow lifting and stage 3's trade of light for texel brightness had put
    it 2-6 L* above the photo on faces-dev)."""
    face, out = astronaut_fit
    lp, lr, _ = _skin_lstar(core, face, out)
    assert abs(lr - lp) < 2.5, (lp, lr)
    # the factor that did it is in the report; the astronaut's light is not from one side
    assert 1 / 1.3 <= out.report["texture_level_scale"] <= 1.3, out.report
    assert out.report["texture_lit_scale"] == 1.0, out.report


def _skin_lstar(core, face, out, gamma=None):
    """Median L* over the seen skin of the photo and of the head rendered at the fitted pose
    (under the fitted light, or ``gamma``), and the photo's lit skin (its brighter half)."""
    from skimage.color import rgb2lab

    from ffhquv.render.camera import rigid_transform, rotate_normals
    from ffhquv.render.renderer import MeshRenderer, RasterOptions, Surface

    m = core.model
    c = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None]
         for k, v in out.coefficients.items()}
    with torch.no_grad():
        v = m.shape(c["id"], c["exp"])
        r = MeshRenderer(core.camera, core.backend).render(
            rigid_transform(v, c["angles"], c["trans"]), m.tri,
            Surface(normals=rotate_normals(m.vertex_normals(v), c["angles"]), uv=m.uv,
                    uv_tri=m.uv_tri,
                    texture=torch.from_numpy(out.uv_texture).float()[None] / 255),
            gamma=c["gamma"] if gamma is None else gamma[None],
            options=RasterOptions(antialias=True))
    skin = (face.parse_mask == 1) & (face.skin_mask > 0.5) & (r.mask[0, ..., 0].numpy() > 0.99)
    assert skin.sum() > 2000
    lp = rgb2lab(face.crop[skin][None] / 255.0)[0, :, 0]
    lr = rgb2lab(r.image[0].clamp(0, 1).numpy()[skin][None])[0, :, 0]
    return float(np.median(lp)), float(np.median(lr)), float(np.median(lp[lp > np.median(lp)]))


def test_a_side_lit_face_shows_its_lit_side_under_the_neutral_light(core, detector):
    """fd11 is lit from one side, the other in shadow (the fitted light's irradiance over the
    seen skin: 80th percentile 1.40, 10th 0.38). Its albedo is shown under the neutral light
    at the lit side's brightness, not at the average with the shadow (which made the head
    grey and dark), its light dimmed by as much: the head at the fitted light still shows the
    photo's skin level."""
    from ffhquv.render.sh import uniform_gamma

    path = (Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev"
            / "fd11_light_m_sidelit_src_man1.jpg")
    if not path.is_file():
        pytest.skip(f"faces-dev photo not found: {path}")
    face = detector.detect(path.read_bytes()).aligned
    out = core.fit(face, preset="fast", texture_size=512)
    assert out.report["texture_lit_scale"] > 1.15, out.report
    photo, fitted, lit = _skin_lstar(core, face, out)
    assert abs(fitted - photo) < 2.5, (photo, fitted)
    _, neutral, _ = _skin_lstar(core, face, out, uniform_gamma(1.0))
    # photo 45.7, lit side 69.5, neutral 58.2 L* (at the average it was about the photo's:
    # the factor is bounded, LIT_REF leaves frontal light alone)
    assert photo + 8 < neutral < lit, (photo, lit, neutral)


def test_astronaut_texture_complete_and_symmetric(astronaut_fit, core, tmp_path):
    _, out = astronaut_fit
    tex = out.uv_texture
    assert tex.shape == (1024, 1024, 3) and tex.dtype == np.uint8
    # no hole: no texel left at zero / untouched anywhere in the atlas
    assert int((tex.max(-1) == 0).sum()) == 0
    maps = uv_maps(core.model, 1024, core.backend)
    face = maps.face.numpy() > 0.5
    lum = tex.astype(np.float64).mean(-1)
    assert lum[face].min() > 20, "dark holes in the face region"
    # background / hair must not leak in: face texels stay close to the skin tone
    med = np.median(tex[face].astype(np.float64), 0)
    far = np.abs(tex[face].astype(np.float64) - med).max(-1) > 90
    assert far.mean() < 0.03, far.mean()
    # lighting-symmetric: the two halves of the face have the same brightness within 6 %
    assert out.metrics["texture_lr_asymmetry"] < 0.06, out.metrics["texture_lr_asymmetry"]
    # files: preview and texture written and read back
    for name, img in (("preview.png", out.preview), ("stage3_uv.png", tex)):
        (tmp_path / name).write_bytes(_png(img))
        back = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        np.testing.assert_array_equal(back, img)
    assert out.preview.shape == (224, 896, 3)


def test_astronaut_meshes_and_report(astronaut_fit, core):
    _, out = astronaut_fit
    m = core.model
    for mesh in (out.mesh_neutral, out.mesh_expression):
        mesh.validate()
        assert mesh.vertices.shape == (m.n_vertices, 3)
        assert mesh.uvs is not None and len(mesh.uvs) == len(m.uv)
    # the astronaut smiles: the expression moves the mouth
    assert np.abs(out.mesh_expression.vertices - out.mesh_neutral.vertices).max() > 0.01
    rep = out.report
    assert rep["face_model"]["name"] == "default" and rep["device"] == "cpu"
    assert rep["versions"]["ffhquv"] and rep["preset"]["name"] == "fast"
    assert len(out.eye_ring_left) > 3 and len(out.eye_ring_right) > 3
    obj = out.intermediates["stage2_mesh.obj"].decode()
    assert obj.count("\nv ") == m.n_vertices and "mtllib stage2_mesh.mtl" in obj


@pytest.mark.reference_data
def test_ffhq_example_photo(core, detector, ref_dir):
    face = detector.detect((ref_dir / "000055.jpg").read_bytes()).aligned
    out = core.fit(face, preset="fast", texture_size=512, want_intermediates=False)
    assert out.metrics["landmark_error_iod"] < 0.04
    assert out.metrics["psnr_masked"] > 25
    assert out.uv_texture.shape == (512, 512, 3) and out.uv_texture.max(-1).min() > 0


def _gpu_faces(astronaut_rgb, astronaut_jpg_bytes):
    """The astronaut and its mirror image, aligned. On a GPU machine without the dlib model
    files, ``FFHQUV_TEST_FACES`` names a folder with ``astronaut.npz`` and
    ``astronaut_flipped.npz`` saved here by ``AlignedFace.save_npz``."""
    import os
    from pathlib import Path

    from services.detector.types import AlignedFace

    folder = os.environ.get("FFHQUV_TEST_FACES")
    if folder:
        return [AlignedFace.load_npz(Path(folder) / f"{n}.npz")
                for n in ("astronaut", "astronaut_flipped")]
    from services.detector.core import Detector

    det = Detector()
    flipped = _png(np.ascontiguousarray(astronaut_rgb[:, ::-1]))
    return [det.detect(astronaut_jpg_bytes).aligned, det.detect(flipped).aligned]


@pytest.mark.gpu
def test_gpu_batch_of_two(astronaut_rgb, astronaut_jpg_bytes):
    gpu = FitterCore("default", device="cuda")
    assert gpu.device.type == "cuda"
    faces = _gpu_faces(astronaut_rgb, astronaut_jpg_bytes)
    outs = gpu.fit_batch(faces, preset="standard", texture_size=1024)
    assert len(outs) == 2
    for o in outs:
        assert o.metrics["landmark_error_iod"] < 0.04
        assert o.uv_texture.shape == (1024, 1024, 3) and o.uv_texture.max(-1).min() > 0
        assert o.report["device"].startswith("cuda") and o.report["batch_size"] == 2
    # the batch does not mix photos: the mirrored photo has the opposite head roll
    z0, z1 = outs[0].coefficients["angles"][2], outs[1].coefficients["angles"][2]
    assert abs(z0 + z1) < 0.05 and abs(z0 - z1) > 0.04, (z0, z1)
    single = gpu.fit(faces[1], preset="standard", texture_size=1024)
    assert abs(single.metrics["landmark_error_px"] - outs[1].metrics["landmark_error_px"]) < 0.5


_COMPILED_BATCH = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests.test_fitter_photos import _gpu_faces
from skimage import data
from services.fitter.core import FitterCore
from tests.test_fitter_photos import _png
rgb = data.astronaut()
faces = _gpu_faces(rgb, _png(rgb))
gpu = FitterCore("default", device="cuda")
both = gpu.fit_batch(faces, preset="standard", texture_size=1024)
alone = gpu.fit(faces[1], preset="standard", texture_size=1024)
diff = np.abs(both[1].uv_texture.astype(int) - alone.uv_texture.astype(int))
print(json.dumps({"lm": [both[1].metrics["landmark_error_px"], alone.metrics["landmark_error_px"]],
                  "angles": np.abs(both[1].coefficients["angles"]
                                   - alone.coefficients["angles"]).max().item(),
                  "tex_mean": float(diff.mean()), "tex_p99": float(np.percentile(diff, 99))}))
"""


@pytest.mark.gpu
def test_gpu_compiled_batch_equals_alone(tmp_path):
    """With the steps compiled (FFHQUV_COMPILE=1, what serve all's CUDA fitters run), a photo
    fitted in a batch of two gets its result alone, to the GPU's float noise (a new
    interpreter: the compile settings and dynamo's caches are process-wide). Minutes: it
    compiles a batch of one and the program of every larger batch."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", _COMPILED_BATCH, str(root)], capture_output=True,
                       text=True, timeout=1200, cwd=root,
                       env={**os.environ, "FFHQUV_COMPILE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert abs(got["lm"][0] - got["lm"][1]) < 0.5, got
    assert got["angles"] < 5e-3 and got["tex_mean"] <= 1.0 and got["tex_p99"] <= 4, got


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
