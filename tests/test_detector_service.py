"""The Detector gRPC service on a real loopback server: status codes, messages, health,
reflection, and a correct answer after every bad request."""

from __future__ import annotations

import io

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from ffhquv.pb import common_pb2, detector_pb2, detector_pb2_grpc
from ffhquv.server import build_server, channel
from services.detector.core import Detector
from services.detector.servicer import SERVICE_NAME, register
from services.detector.types import AlignedFace, landmarks_from_proto
from tests.test_detector_decode import bomb_png, encode


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


@pytest.fixture(scope="module")
def server(detector):
    running = build_server(lambda s: register(s, detector), port=0, max_workers=4)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def stub(server):
    with channel(server.address) as ch:
        yield detector_pb2_grpc.DetectorStub(ch)


def request(data: bytes, **kw) -> detector_pb2.DetectRequest:
    return detector_pb2.DetectRequest(image=common_pb2.Image(data=data, filename="x"), **kw)


@pytest.fixture(scope="module")
def two_faces_png(astronaut_rgb) -> bytes:
    canvas = np.full((512, 1024, 3), 200, np.uint8)
    canvas[:, :512] = astronaut_rgb
    canvas[:, 512:] = astronaut_rgb
    return encode(canvas)


def check_good(stub, detector, astronaut_png_bytes):
    resp = stub.Detect(request(astronaut_png_bytes, unwrap_size=512), timeout=30)
    want = detector.detect(astronaut_png_bytes, unwrap_size=512)
    assert len(resp.faces) == 1
    np.testing.assert_array_equal(landmarks_from_proto(resp.faces[0].landmarks),
                                  want.faces[0].landmarks)
    return resp


def bad_cases(astronaut_rgb, two_faces_png):
    from skimage import data

    jpg = encode(astronaut_rgb, "JPEG")
    return [
        ("empty", request(b""), grpc.StatusCode.INVALID_ARGUMENT,
         "empty image: 0 bytes received; send JPEG or PNG"),
        ("random", request(bytes(range(256)) * 4), grpc.StatusCode.INVALID_ARGUMENT,
         "not an image: unrecognised data of 1024 bytes starting with 00 01 02"),
        ("gif", request(encode(astronaut_rgb, "GIF")), grpc.StatusCode.INVALID_ARGUMENT,
         "unsupported image format GIF; send JPEG or PNG"),
        ("webp", request(encode(astronaut_rgb, "WEBP")), grpc.StatusCode.INVALID_ARGUMENT,
         "unsupported image format WebP; send JPEG or PNG"),
        ("truncated jpeg", request(jpg[: len(jpg) // 2]), grpc.StatusCode.INVALID_ARGUMENT,
         "truncated or corrupt JPEG: "),
        ("bomb", request(bomb_png(20000)), grpc.StatusCode.INVALID_ARGUMENT,
         "image has too many pixels: 20000x20000 = 400.0 MP, limit is 50.0 MP"),
        ("oversized", request(b"\xff\xd8\xff" + bytes(31 * 2**20)),
         grpc.StatusCode.INVALID_ARGUMENT, "image file too large: 31.0 MiB, limit is 30.0 MiB"),
        ("tiny", request(encode(astronaut_rgb[:50, :50])), grpc.StatusCode.INVALID_ARGUMENT,
         "image too small: 50x50 pixels, each side must be at least 64 pixels"),
        ("unwrap", request(encode(astronaut_rgb), unwrap_size=300),
         grpc.StatusCode.INVALID_ARGUMENT, "unwrap_size must be 512 or 1024, got 300"),
        ("no face", request(encode(data.coffee())), grpc.StatusCode.FAILED_PRECONDITION,
         "no face detected"),
        ("only", request(two_faces_png, selection=detector_pb2.FACE_SELECTION_ONLY),
         grpc.StatusCode.FAILED_PRECONDITION, "2 faces detected; selection 'only' needs"),
        ("index", request(two_faces_png, selection=detector_pb2.FACE_SELECTION_INDEX,
                          face_index=5),
         grpc.StatusCode.FAILED_PRECONDITION,
         "face index 5 out of range: 2 faces detected (valid indices 0..1)"),
    ]


def test_bad_inputs_then_good(stub, detector, astronaut_rgb, two_faces_png):
    good = encode(astronaut_rgb)
    for name, req, code, message in bad_cases(astronaut_rgb, two_faces_png):
        with pytest.raises(grpc.RpcError) as ei:
            stub.Detect(req, timeout=30)
        assert ei.value.code() == code, (name, ei.value.code(), ei.value.details())
        assert ei.value.details().startswith(message), (name, ei.value.details())
        check_good(stub, detector, good)


def test_good_response(stub, detector, astronaut_rgb):
    resp = stub.Detect(request(encode(astronaut_rgb), want_visualization=True), timeout=30)
    assert (resp.image_width, resp.image_height, resp.exif_orientation) == (512, 512, 1)
    assert resp.selected_index == 0 and len(resp.faces) == 1
    box = resp.faces[0].box
    assert box.score > 0.3 and box.left < box.right and box.top < box.bottom
    aligned = AlignedFace.from_proto(resp.aligned)
    assert aligned.crop_hires.shape == (1024, 1024, 3)  # unwrap_size 0 -> 1024
    assert aligned.parse_source == "landmarks"
    lm = landmarks_from_proto(resp.faces[0].landmarks)
    from services.detector.align import transform_points

    np.testing.assert_allclose(transform_points(aligned.image_to_crop, lm),
                               aligned.crop_landmarks, atol=1e-3)
    vis = np.asarray(Image.open(io.BytesIO(resp.visualization_png)))
    assert vis.shape == (224, 896, 3)
    np.testing.assert_array_equal(vis[:, :224], aligned.crop)


def test_several_faces_over_grpc(stub, two_faces_png):
    resp = stub.Detect(request(two_faces_png, selection=detector_pb2.FACE_SELECTION_INDEX,
                               face_index=1, unwrap_size=512), timeout=30)
    assert len(resp.faces) == 2 and resp.selected_index == 1
    lm1 = landmarks_from_proto(resp.faces[1].landmarks)
    assert lm1[:, 0].min() > 512  # the right-hand astronaut, in original pixels


def test_notes_and_orientation_over_grpc(stub, astronaut_rgb):
    rgba = np.dstack([astronaut_rgb, np.full((512, 512), 255, np.uint8)])
    im = Image.fromarray(np.ascontiguousarray(np.rot90(rgba, 1)))
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    resp = stub.Detect(request(buf.getvalue(), unwrap_size=512), timeout=30)
    assert resp.exif_orientation == 6
    assert list(resp.notes) == ["RGBA flattened on white",
                                "EXIF orientation 6 applied (rotated 90 clockwise)"]


def test_cnn_backend_over_grpc(stub, astronaut_rgb):
    small = cv2.resize(astronaut_rgb[0:320, 60:380], (256, 256), interpolation=cv2.INTER_AREA)
    resp = stub.Detect(request(encode(small), backend=detector_pb2.DETECTOR_BACKEND_CNN,
                               unwrap_size=512), timeout=60)
    assert len(resp.faces) == 1


def test_register_names_the_service(server):
    assert server.service_names == ["ffhquv.detector.v1.Detector"]


def test_health_serving(server):
    with channel(server.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE_NAME):
            r = h.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with channel(server.address) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert SERVICE_NAME in services
        assert "grpc.health.v1.Health" in services
        fd = db.FindFileContainingSymbol(SERVICE_NAME)
        assert fd.package == "ffhquv.detector.v1"

