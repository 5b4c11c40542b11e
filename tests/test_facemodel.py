"""The built-in ``default`` face model (built from anny once per cache, ~1 min on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffhquv.errors import InvalidInput
from services.fitter.facemodel import FaceModel, load_face_model
from services.fitter.facemodel.default import (
    BUILD_VERSION,
    default_model_path,
    ensure_default_model,
    landmark_render_albedo,
)
from services.fitter.facemodel.topology import boundary_loops, self_intersections


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load(ensure_default_model(progress=False))


def _random_ids(model: FaceModel, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, model.id_dim, generator=torch.Generator().manual_seed(seed))


def test_sizes_and_provenance(model):
    assert model.name == "default"
    assert default_model_path().name == f"default-v{BUILD_VERSION}.npz"
    n = model.n_vertices
    assert 3000 < n < 4538  # eyeballs and tongue dropped
    assert model.id_base.shape == (n, 3, model.id_dim) and 60 <= model.id_dim <= 100
    assert model.exp_base.shape == (n, 3, 52) and len(model.exp_labels) == 52
    assert "jawOpen" in model.exp_labels and "eyeBlinkLeft" in model.exp_labels
    assert model.uv_tri.shape == model.tri.shape
    assert model.meta["anny_version"] and model.meta["facial_actions_are_blendshapes"]
    assert model.meta["id_explained_variance"] > 0.99
    assert "decimetres" in model.unit


def test_frame_matches_hifi3dpp(model):
    """Eye rings centred like HiFi3D++'s: IOD 0.663, eye midpoint (0, 0.336, 0.380); the face
    looks toward +z, y is up, the subject's left eye at +x."""
    v = model.mean_shape
    cl, cr = v[model.eye_ring_left].mean(0), v[model.eye_ring_right].mean(0)
    assert abs(float((cl - cr).norm()) - 0.663) < 1e-3
    assert torch.allclose(0.5 * (cl + cr), torch.tensor([0.0, 0.3359, 0.3798]), atol=1e-3)
    lm = model.landmarks(v[None])[0]
    assert lm[30, 2] > cl[2] + 0.2  # nose tip in front of the eyes
    assert lm[8, 1] < lm[30, 1] < lm[27, 1]  # chin below nose tip below nose bridge
    assert lm[45, 0] > 0 > lm[36, 0]  # iBUG 36 is the subject's right eye (image left)


def test_random_head_is_closed_and_outward(model):
    tri = model.tri.numpy()
    loops = boundary_loops(tri)
    assert len(loops) == 3  # the neck and the two eye openings only
    ring_sets = {frozenset(model.eye_ring_left.tolist()), frozenset(model.eye_ring_right.tolist())}
    assert {frozenset(lp.tolist()) for lp in loops[1:]} == ring_sets
    e = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), 1)
    assert np.unique(e, axis=0, return_counts=True)[1].max() <= 2  # manifold edges
    for v in model.shape(_random_ids(model, 3))[:, :, :].double():
        a, b, c = v[model.tri[:, 0]], v[model.tri[:, 1]], v[model.tri[:, 2]]
        cross = torch.cross(b - a, c - a, dim=-1)
        assert float(cross.norm(dim=-1).min()) > 0  # no degenerate triangles
        volume = float((a * cross).sum() / 6)  # > 0: counter-clockwise seen from outside
        assert volume > 1.0
        n = model.vertex_normals(v[None].float())[0]
        tip = model.lmk_tri_vertices[30, 0]
        assert n[tip, 2] > 0.5  # the nose tip normal looks forward


def test_random_heads_do_not_self_intersect(model):
    """No edge pierces a triangle far from it on the surface (more than 3 edge steps away),
    except where the lips press together and inside the mouth pocket (anny's closed mouth)."""
    tri = model.tri.numpy()
    mouth = set(model.meta["lips_vertices"]) | set(model.meta["mouth_interior_vertices"])
    e = np.unique(np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), 1),
                  axis=0)
    ids = torch.cat([torch.zeros(1, model.id_dim), _random_ids(model, 3, seed=1)])
    for v in model.shape(ids).double().numpy():
        hits = self_intersections(v, tri, exclude_rings=3)
        bad = [(ei, ti) for ei, ti in hits
               if not (set(e[ei].tolist()) & mouth and set(tri[ti].tolist()) & mouth)]
        assert not bad, f"{len(bad)} intersections, e.g. at {v[tri[bad[0][1]]].mean(0)}"


def test_neutral_ignores_expression(model):
    ids = _random_ids(model, 2)
    exp = torch.rand(2, model.exp_dim)
    assert torch.equal(model.neutral(ids), model.shape(ids, None))
    assert not torch.allclose(model.shape(ids, exp), model.neutral(ids))
    jaw = torch.zeros(1, model.exp_dim)
    jaw[0, model.exp_labels.index("jawOpen")] = 1.0
    lm0 = model.landmarks(model.neutral(ids[:1]))[0]
    lm1 = model.landmarks(model.shape(ids[:1], jaw))[0]
    assert float(lm0[8, 1] - lm1[8, 1]) > 0.1  # the chin drops
    assert float((lm1[36:48] - lm0[36:48]).abs().max()) < 0.02  # the eyes stay


def test_landmarks_match_dlib_on_render(model):
    """The embedded landmarks of the mean head, projected frontally, land on dlib's landmarks
    of a render of it within 2 % of the inter-ocular distance."""
    from services.fitter.facemodel.landmarks import (
        dlib_landmarks,
        eye_caps,
        inter_ocular,
        project_points,
        render_for_dlib,
    )

    mean = model.mean_shape.double().numpy()
    rings = [model.eye_ring_left.numpy(), model.eye_ring_right.numpy()]
    img, _, _ = render_for_dlib(mean, model.tri.numpy(), landmark_render_albedo(model),
                                eye_caps(mean, rings), size=512)
    det = dlib_landmarks(img)
    assert det is not None
    emb = model.landmarks(model.mean_shape[None])[0].double().numpy()
    err = np.linalg.norm(project_points(emb, size=512) - det, axis=1) / inter_ocular(det)
    assert err.max() < 0.02, f"max {err.max():.4f} at landmark {err.argmax()}"
    assert torch.allclose(model.lmk_bary.sum(1), torch.ones(68), atol=1e-5)
    assert float(model.lmk_bary.min()) >= 0



def test_detector_landmarker_matches_dlib_on_the_build_render(model):
    """``ffhquv build-model`` injects the detector service's landmarker; without one the build
    runs dlib directly: both find the same landmarks on the landmark render, so the built model
    is the same whichever is wired (the builder never imports the detector)."""
    from services.detector.core import Detector
    from services.fitter.facemodel.landmarks import dlib_landmarks, eye_caps, render_for_dlib

    mean = model.mean_shape.double().numpy()
    rings = [model.eye_ring_left.numpy(), model.eye_ring_right.numpy()]
    img, _, _ = render_for_dlib(mean, model.tri.numpy(), landmark_render_albedo(model),
                                eye_caps(mean, rings), size=512)
    direct = dlib_landmarks(img)
    injected = Detector("hog").largest_face_landmarks(img)
    assert direct is not None and injected is not None
    assert np.array_equal(np.asarray(injected, np.float64), direct)
    assert Detector("hog").largest_face_landmarks(np.zeros((64, 64, 3), np.uint8)) is None

def test_uv_atlas(model):
    from scipy.ndimage import binary_dilation

    from services.fitter.facemodel.uvpack import rasterize_uv, uv_islands

    uv, ut = model.uv.numpy().astype(np.float64), model.uv_tri.numpy()
    assert uv.min() >= 0 and uv.max() <= 1
    count, owner = rasterize_uv(uv, ut, 1024)
    assert count.max() <= 1  # no texel claimed by two triangles
    assert (count > 0).mean() > 0.5
    isl = uv_islands(ut, len(uv))
    lab = np.where(owner >= 0, isl[owner.clip(0)], -1)
    inclusive, _ = rasterize_uv(uv, ut, 1024, inclusive=True)
    assert inclusive.max() <= 2  # shared edges only
    for k in np.unique(isl):
        grown = binary_dilation(lab == k, iterations=4)
        others = (lab >= 0) & (lab != k)
        assert not (grown & others).any(), f"island {k} is within 4 texels of another"
    # the face island is the largest
    areas = np.bincount(lab[lab >= 0])
    face_isl = np.bincount(isl[model.face_tri_mask.numpy()]).argmax()
    assert areas.argmax() == face_isl


def test_mirror_and_masks(model):
    m = model.mirror
    assert float((m[m] == torch.arange(model.n_vertices)).float().mean()) > 0.95
    v = model.mean_shape
    flipped = v[m] * torch.tensor([-1.0, 1.0, 1.0])
    assert float((flipped - v).norm(dim=1).median()) < 0.01
    assert torch.equal(model.eye_ring_left.sort().values, m[model.eye_ring_right].sort().values)
    # face region: all inner-face landmarks sit on face triangles, the ears do not
    face_v = torch.zeros(model.n_vertices, dtype=torch.bool)
    face_v[model.tri[model.face_tri_mask].reshape(-1)] = True
    assert face_v[model.lmk_tri_vertices[17:]].all()
    assert not face_v[v[:, 0].abs() > 0.95 * v[:, 0].abs().max()].any()
    assert 0.2 < float(model.face_tri_mask.float().mean()) < 0.7
    skin = model.skin_mask
    assert not skin[model.meta["lips_vertices"]].any()
    assert not skin[model.meta["mouth_interior_vertices"]].any()
    inner_lip = model.lmk_tri_vertices[60:68].gather(1, model.lmk_bary[60:68].argmax(1,
                                                                                   keepdim=True))
    assert not skin[inner_lip].any()
    assert not skin[model.eye_ring_left].any()
    assert skin[model.lmk_tri_vertices[30, 0]]  # nose tip is skin


def test_eye_rings_are_closed_loops(model):
    tri = model.tri.numpy()
    edges = set(map(tuple, np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]],
                                                   tri[:, [2, 0]]]), 1).tolist()))
    v = model.mean_shape
    for ring, sign in ((model.eye_ring_left, 1), (model.eye_ring_right, -1)):
        r = ring.tolist()
        assert len(r) == len(set(r)) >= 12
        for a, b in zip(r, r[1:] + r[:1], strict=True):
            assert tuple(sorted((a, b))) in edges
        assert (v[ring, 0] * sign > 0).all()


def test_load_face_model_cache(model):
    a = load_face_model("default")
    assert a is load_face_model("default", "cpu")
    assert torch.equal(a.mean_shape, model.mean_shape)
    with pytest.raises(InvalidInput, match="unknown face model"):
        load_face_model("nope")


def test_cli_build_model_reports_cache(capsys):
    from ffhquv_cli.main import main

    assert main(["build-model"]) == 0
    out = capsys.readouterr().out
    assert str(default_model_path()) in out and "cached" in out
