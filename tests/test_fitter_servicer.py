"""A real gRPC round trip of ``ffhquv.fitter.v1.Fitter`` (loopback server, synthetic model)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import torch

from ffhquv.imaging import read_png_bytes
from ffhquv.mesh import MeshData
from ffhquv.pb import common_pb2, fitter_pb2, fitter_pb2_grpc
from ffhquv.server import build_server, channel
from services.fitter.core import FitterCore
from services.fitter.servicer import FitterServicer, register
from services.fitter.synthetic import build_synthetic_model, synthetic_face, synthetic_texture


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(2)
    model = build_synthetic_model()
    c = model.zeros(1)
    c["angles"] = torch.tensor([[0.05, -0.3, 0.0]])
    face, _ = synthetic_face(model, c, synthetic_texture(128), hires=512)
    servicer = FitterServicer()
    # the synthetic model serves as "default" on cpu (no build of the anny model in this test)
    servicer.add_core(FitterCore(model=model, device="cpu"), face_model="default")
    server = build_server(lambda s: register(s, servicer), port=0)
    ch = channel(server.address)
    yield fitter_pb2_grpc.FitterStub(ch), face, model
    ch.close()
    server.stop(0)


def _request(face, **kw):
    args = {"request_id": "r1", "face": face.to_proto(), "preset": common_pb2.PRESET_FAST,
            "device": common_pb2.DEVICE_CPU, "texture_size": 128, **kw}
    return fitter_pb2.FitRequest(**args)


def test_fit_round_trip(setup):
    stub, face, model = setup
    events = list(stub.Fit(_request(face, want_intermediates=True), timeout=120))
    progress = [e.progress for e in events if e.HasField("progress")]
    results = [e.result for e in events if e.HasField("result")]
    assert len(results) == 1 and events[-1].HasField("result")
    stages = {p.stage for p in progress}
    assert {common_pb2.STAGE_FIT_STAGE1, common_pb2.STAGE_FIT_STAGE2,
            common_pb2.STAGE_FIT_STAGE3} <= stages
    assert all(0 <= p.fraction <= 1 for p in progress)
    r = results[0]
    assert r.request_id == "r1"
    assert len(r.coefficients.identity) == model.id_dim and len(r.coefficients.gamma) == 27
    mesh = MeshData.from_proto(r.mesh_neutral)
    mesh.validate()
    assert mesh.vertices.shape == (model.n_vertices, 3) and mesh.uvs is not None
    tex = read_png_bytes(r.uv_texture_png)
    assert tex.shape == (128, 128, 3) and tex.min() > 0
    assert read_png_bytes(r.preview_png).shape == (224, 896, 3)
    assert r.metrics["landmark_error_px"] < 2.0
    names = {f.name for f in r.files}
    assert {"stage1_mesh.obj", "stage2_uv.png", "stage3_coeffs.npz", "stage3_coeffs.json"} <= names
    assert [t.name for t in r.mesh_neutral.morph_targets] == model.expression_names()
    assert r.metres_per_unit == pytest.approx(model.metres_per_unit)
    assert list(r.left_eye_ring) == model.eye_ring_left.tolist()
    assert r.camera.focal == pytest.approx(1015.0) and r.camera.image_size == 224
    assert '"preset"' in r.report_json
    # the shape came ahead of the result, once: the result's head without its morph targets
    geos = [i for i, e in enumerate(events) if e.HasField("geometry")]
    assert len(geos) == 1 and geos[0] < len(events) - 1
    g = events[geos[0]].geometry
    assert g.mesh_neutral.vertices == r.mesh_neutral.vertices
    assert g.mesh_neutral.uvs == r.mesh_neutral.uvs and g.mesh_neutral.faces == r.mesh_neutral.faces
    assert g.mesh_neutral.normals == r.mesh_neutral.normals
    assert not g.mesh_neutral.morph_targets
    assert g.left_eye_ring == r.left_eye_ring and g.right_eye_ring == r.right_eye_ring


def test_fit_without_intermediates_and_describe(setup):
    stub, face, model = setup
    events = list(stub.Fit(_request(face), timeout=120))
    assert len(events[-1].result.files) == 0
    d = stub.DescribeModel(fitter_pb2.DescribeModelRequest(face_model="default"), timeout=30)
    assert d.vertex_count == model.n_vertices and d.identity_dim == model.id_dim
    assert d.available["default"] == "available"
    assert d.available["hifi3dpp"].startswith(("unavailable", "available"))
    import torch

    want = [common_pb2.DEVICE_CPU] + ([common_pb2.DEVICE_CUDA] if torch.cuda.is_available()
                                      else [])
    assert list(d.devices) == want


def test_bad_requests(setup):
    stub, face, _ = setup
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Fit(_request(face, face_model="nope"), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Fit(fitter_pb2.FitRequest(request_id="x"), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = face.to_proto()
    bad.crop.width = 100
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Fit(fitter_pb2.FitRequest(face=bad), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    if not torch.cuda.is_available():
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Fit(_request(face, device=common_pb2.DEVICE_CUDA), timeout=30))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CUDA" in e.value.details()


def test_client_cancel_mid_fit(setup):
    stub, face, _ = setup
    req = fitter_pb2.FitRequest(request_id="c", face=face.to_proto(),
                                preset=common_pb2.PRESET_BEST, device=common_pb2.DEVICE_CPU,
                                texture_size=128)
    call = stub.Fit(req, timeout=120)
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for ev in call:
            got.append(ev)
            if ev.HasField("progress") and ev.progress.stage == common_pb2.STAGE_FIT_STAGE1:
                call.cancel()
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert not any(ev.HasField("result") for ev in got)
    # the server stops the fit and keeps serving: a new fit completes right after
    done = threading.Event()
    events = list(stub.Fit(_request(face), timeout=120))
    done.set()
    assert events[-1].HasField("result")
    assert np.isfinite(events[-1].result.metrics["psnr_masked"])


def test_events_without_grpc_and_cancel(setup):
    """The in-process path used by the gateway's local backends (no gRPC context)."""
    from ffhquv.errors import Cancelled

    stub, face, model = setup
    servicer = FitterServicer(device="cpu")
    servicer.add_core(FitterCore(model=model, device="cpu"), face_model="default")
    evs = list(servicer.events(_request(face), threading.Event()))
    assert evs[-1].HasField("result") and evs[0].HasField("progress")
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        for ev in servicer.events(_request(face, preset=common_pb2.PRESET_BEST), cancel):
            if ev.HasField("progress"):
                cancel.set()
    # the device slot was released: the next fit runs
    assert list(servicer.events(_request(face), threading.Event()))[-1].HasField("result")


def test_make_register_serves(setup, monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.fitter.servicer import make_register

    monkeypatch.delenv("FFHQUV_TOPO_DIR", raising=False)
    server = build_server(make_register(device="cpu"), port=0)
    ch = channel(server.address)
    try:
        h = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="ffhquv.fitter.v1.Fitter"), timeout=10)
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            fitter_pb2_grpc.FitterStub(ch).DescribeModel(
                fitter_pb2.DescribeModelRequest(face_model="hifi3dpp"), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "FFHQUV_TOPO_DIR" in e.value.details()
    finally:
        ch.close()
        server.stop(0)


def test_warm_builds_the_photo_independent_tables_without_a_fit():
    """``warm(fit=False)`` (``ffhquv fit``'s warm-up, overlapped with detection) builds the
    core's UV tables at the texture size and the preset's optimisation size and fits
    nothing; the batcher is ready afterwards."""
    from services.fitter.presets import get_preset
    from services.fitter.texture.atlas import _UV_CACHE, _model_key

    model = build_synthetic_model()
    servicer = FitterServicer()
    core = FitterCore(model=model, device="cpu")
    servicer.add_core(core, face_model="default")
    fits = []
    core.fit_batch = lambda *a, **k: fits.append(a)  # a fit here would be recorded
    opt = get_preset("fast").tex_opt_size
    for size in (256, opt):
        _UV_CACHE.pop(_model_key(core.model, size), None)
    servicer.warm("default", "cpu", "fast", 256, fit=False)
    assert _model_key(core.model, 256) in _UV_CACHE and _model_key(core.model, opt) in _UV_CACHE
    assert not fits
    assert servicer.batcher("cpu").ready.is_set()
    servicer.close()
