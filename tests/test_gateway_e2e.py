"""The public API end to end: real services in child processes, the real gateway, real clients.

Covers: a full result with downloadable artifacts, streamed progress, bad inputs through the
gateway, auth, idempotent request ids, the bounded queue, and a fitter killed mid-request.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from ffhquv.pb import common_pb2, gateway_pb2
from gateway.server import GatewayLimits
from tests.gateway_stack import SERVICES, Stack

FAST = gateway_pb2.Options(preset=common_pb2.PRESET_FAST, texture_size=512)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(storage=tmp_path_factory.mktemp("artifacts"))
    try:
        for name in SERVICES:
            s.start_service(name)
        s.start_gateway(limits=GatewayLimits(max_concurrent=1, max_queue=2))
        yield s
    finally:
        s.stop()


def _req(data: bytes, name: str = "astronaut.jpg", rid: str = "", opts=FAST):
    return gateway_pb2.ReconstructRequest(
        request_id=rid, image=common_pb2.Image(data=data, filename=name), options=opts)


def _download(stub, artifact_id: str, chunk: int = 0) -> bytes:
    buf = bytearray()
    offsets = []
    for c in stub.GetArtifact(gateway_pb2.GetArtifactRequest(artifact_id=artifact_id,
                                                             chunk_size=chunk)):
        offsets.append(c.offset)
        assert c.offset == len(buf)
        buf.extend(c.data)
    return bytes(buf)


def test_full_result_and_artifacts(stack, astronaut_jpg_bytes, tmp_path):
    import trimesh

    stub = stack.stub()
    res = stub.Reconstruct(_req(astronaut_jpg_bytes, rid="astro-full"), timeout=600)
    names = {a.name for a in res.artifacts}
    for required in ("stage3_mesh_id.obj", "stage3_mesh_exp.obj", "stage3_mesh.mtl",
                     "stage3_uv.png", "L_ball.obj", "R_ball.obj", "eye_ball_tex.mtl",
                     "eye_ball_tex.png", "report.json", "preview.png",
                     # the default formats include the fitter's intermediates
                     "stage1_render.png", "stage2_uv.png", "stage3_coeffs.json"):
        assert required in names, f"{required} missing from {sorted(names)}"
    assert res.bundle_artifact_id.endswith(".zip")
    assert len(res.faces) == 1 and len(res.faces[0].landmarks.points) == 68
    assert res.metrics["landmark_error_iod"] < 0.08
    for a in res.artifacts:
        data = _download(stub, a.id, chunk=64 * 1024)
        assert len(data) == a.size_bytes
        assert hashlib.sha256(data).hexdigest() == a.sha256
        (tmp_path / a.name).write_bytes(data)
    mesh = trimesh.load(tmp_path / "stage3_mesh_id.obj", force="mesh")
    assert mesh.visual.uv is not None and len(mesh.faces) > 1000
    uv = np.asarray(Image.open(tmp_path / "stage3_uv.png"))
    assert uv.shape[:2] == (512, 512)
    # her hair as geometry: its OBJ pair on the head's material, or none for a bald head
    hair = json.loads((tmp_path / "report.json").read_text())["hair"]
    assert ({"hair_id.obj", "hair_exp.obj"} <= names) == bool(hair.get("has_hair")), hair
    if hair.get("has_hair"):
        shell = trimesh.load(tmp_path / "hair_id.obj", force="mesh")
        assert len(shell.faces) > 100 and shell.visual.uv is not None
        assert "mtllib stage3_mesh.mtl" in (tmp_path / "hair_id.obj").read_text()


def test_stream_progress_order(stack, astronaut_jpg_bytes):
    stub = stack.stub()
    stages, result = [], None
    for ev in stub.ReconstructStream(_req(astronaut_jpg_bytes, rid="astro-stream"),
                                     timeout=600):
        if ev.WhichOneof("event") == "progress":
            stages.append(ev.progress.stage)
        else:
            result = ev.result
    assert result is not None and result.request_id == "astro-stream"
    order = [common_pb2.STAGE_DETECTED, common_pb2.STAGE_FIT_STAGE1, common_pb2.STAGE_FIT_STAGE2,
             common_pb2.STAGE_FIT_STAGE3, common_pb2.STAGE_EYEBALLS, common_pb2.STAGE_EXPORTED,
             common_pb2.STAGE_DONE]
    firsts = [stages.index(s) for s in order]
    assert firsts == sorted(firsts), stages


def test_idempotent_request_id(stack, astronaut_jpg_bytes):
    stub = stack.stub()
    first = stub.Reconstruct(_req(astronaut_jpg_bytes, rid="astro-full"), timeout=600)
    # the same key again answers with the stored result, not a new run: the bytes sent this
    # time are not even an image (a new run would refuse them INVALID_ARGUMENT)
    a = stub.Reconstruct(_req(b"not an image: the stored result answers", rid="astro-full"),
                         timeout=600)
    assert a.request_id == "astro-full" and a.artifacts
    assert [(x.id, x.sha256) for x in a.artifacts] == [(x.id, x.sha256) for x in first.artifacts]


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_inputs_through_gateway(stack, astronaut_jpg_bytes):
    stub = stack.stub()
    cases = [
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (b"definitely not an image", grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (astronaut_jpg_bytes[: len(astronaut_jpg_bytes) // 2], grpc.StatusCode.INVALID_ARGUMENT,
         "truncated"),
        (_png(np.full((300, 300, 3), 128, np.uint8)), grpc.StatusCode.FAILED_PRECONDITION,
         "no face"),
        (_png(np.zeros((8, 8, 3), np.uint8)), grpc.StatusCode.INVALID_ARGUMENT, "small"),
    ]
    for data, code, words in cases:
        with pytest.raises(grpc.RpcError) as ei:
            stub.Reconstruct(_req(data, name="bad.png"), timeout=120)
        assert ei.value.code() == code, (words, ei.value.details())
        assert words in ei.value.details().lower(), ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        stub.Reconstruct(_req(astronaut_jpg_bytes, opts=gateway_pb2.Options(face_model="bfm")))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.GetArtifact(gateway_pb2.GetArtifactRequest(artifact_id="nope/x.png")))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


def test_queue_bound_gives_resource_exhausted(stack, astronaut_jpg_bytes):
    """max_concurrent 1 + max_queue 2: of 6 simultaneous new requests at least 3 are refused
    at once with RESOURCE_EXHAUSTED, and the admitted ones succeed."""
    stub = stack.stub()
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        try:
            stub.Reconstruct(_req(astronaut_jpg_bytes, rid=f"q{i}"), timeout=900)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 3
    assert codes.count(grpc.StatusCode.OK) >= 1


def test_fitter_killed_mid_request(stack, astronaut_jpg_bytes):
    """Kill the fitter during a fit: the client gets UNAVAILABLE, nothing half-written is
    stored, and once the fitter is back the gateway serves again."""
    stub = stack.stub()
    fitter_port = int(stack.addrs["fitter"].rsplit(":", 1)[1])
    events = []
    err: list[grpc.RpcError] = []

    def run() -> None:
        try:
            for ev in stub.ReconstructStream(_req(astronaut_jpg_bytes, rid="killed"),
                                             timeout=600):
                events.append(ev)
        except grpc.RpcError as e:
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    end = time.monotonic() + 300
    while not any(e.WhichOneof("event") == "progress"
                  and e.progress.stage == common_pb2.STAGE_FIT_STAGE1 for e in events):
        assert time.monotonic() < end, "fit never started"
        time.sleep(0.05)
    stack.kill("fitter")
    t.join(timeout=120)
    assert err and err[0].code() == grpc.StatusCode.UNAVAILABLE, err
    assert not (stack.storage / "killed").exists()
    assert not list(stack.storage.glob(".tmp-*"))
    stack.start_service("fitter", port=fitter_port)
    res = stub.Reconstruct(_req(astronaut_jpg_bytes, rid="after-restart"), timeout=600)
    assert any(a.name == "stage3_uv.png" for a in res.artifacts)
