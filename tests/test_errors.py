"""google.rpc error details read by a real client over loopback: ErrorInfo reasons, BadRequest
field violations and RetryInfo, from a real detector server and a real gateway (whose fitter /
eyeball / exporter addresses are closed ports: every failure here happens before a fit)."""

from __future__ import annotations

import io
import socket
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from ffhquv import metrics
from ffhquv.errors import DOMAIN, status_details
from ffhquv.pb import common_pb2, detector_pb2, detector_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from ffhquv.server import build_server, channel
from gateway.backends import GrpcBackends, RetryPolicy
from gateway.orchestrator import Orchestrator
from gateway.server import GatewayLimits, GatewayServer
from gateway.storage import LocalArtifactStore
from services.detector.core import Detector
from services.detector.servicer import register


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _unwatched(backends: GrpcBackends) -> GrpcBackends:
    """The gateway does not follow these backends' health, so a request with a dead backend
    gets as far as calling it (the point of these tests); failing fast on a backend known to be
    down is tested in ``tests/test_gateway_reliability.py``."""
    backends.watch_health = None
    return backends


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


GRAY = _png(np.full((256, 256, 3), 128, np.uint8))


@pytest.fixture(scope="module")
def detector_addr():
    # A real detector with a small byte limit, so that IMAGE_TOO_LARGE needs no huge file.
    det = Detector(max_bytes=200_000)
    running = build_server(lambda srv: register(srv, det), port=0, max_workers=2)
    yield running.address
    running.stop(0)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, detector_addr):
    closed = _closed_port()
    backends = GrpcBackends(detector=detector_addr, fitter=closed, eyeball=closed,
                            exporter=closed, retry=RetryPolicy(attempts=2, initial_backoff=0.05,
                                                               max_backoff=0.1))
    gw = GatewayServer(Orchestrator(_unwatched(backends)), LocalArtifactStore(
        tmp_path_factory.mktemp("artifacts")), limits=GatewayLimits(max_concurrent=1,
                                                                     max_queue=4),
        close_backends=backends.close)
    gw.start_in_thread()
    yield gw
    gw.stop(1.0)


def _fail(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        r = call(*args, **kw)
        if hasattr(r, "__iter__") and not hasattr(r, "ByteSize"):
            list(r)
    return ei.value


def test_detector_reasons_and_fields(detector_addr, astronaut_jpg_bytes):
    with channel(detector_addr) as ch:
        stub = detector_pb2_grpc.DetectorStub(ch)

        d = status_details(_fail(stub.Detect, detector_pb2.DetectRequest(
            image=common_pb2.Image(data=b"GIF89a not a photo"))))
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (d.reason, d.domain) == ("INVALID_IMAGE", DOMAIN)
        assert [f for f, _ in d.field_violations] == ["image.data"]
        assert d.retry_after is None

        big = _png(np.random.default_rng(0).integers(0, 255, (400, 400, 3), np.uint8))
        d = status_details(_fail(stub.Detect, detector_pb2.DetectRequest(
            image=common_pb2.Image(data=big))))
        assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE")
        assert d.field_violations[0][0] == "image.data"
        assert "too large" in d.field_violations[0][1]

        d = status_details(_fail(stub.Detect, detector_pb2.DetectRequest(
            image=common_pb2.Image(data=GRAY))))
        assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_FACE")
        assert d.field_violations == []

        d = status_details(_fail(stub.Detect, detector_pb2.DetectRequest(
            image=common_pb2.Image(data=astronaut_jpg_bytes), backend=42)))
        assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert [f for f, _ in d.field_violations] == ["backend"]


def _req(data: bytes, **opts) -> gateway_pb2.ReconstructRequest:
    return gateway_pb2.ReconstructRequest(image=common_pb2.Image(data=data, filename="x.png"),
                                          options=gateway_pb2.Options(**opts))


def test_gateway_details_own_and_passed_through(gateway, astronaut_jpg_bytes):
    with channel(gateway.address) as ch:
        stub = gateway_pb2_grpc.ReconstructionStub(ch)

        d = status_details(_fail(stub.Reconstruct, _req(GRAY, texture_size=300), timeout=60))
        assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert [f for f, _ in d.field_violations] == ["options.texture_size"]

        d = status_details(_fail(stub.Reconstruct, _req(b""), timeout=60))
        assert (d.reason, d.field_violations[0][0]) == ("INVALID_IMAGE", "image.data")

        # The detector's details pass through the gateway unchanged (unary and stream).
        d = status_details(_fail(stub.Reconstruct, _req(GRAY), timeout=60))
        assert (d.code, d.reason, d.domain) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_FACE",
                                                DOMAIN)
        d = status_details(_fail(stub.ReconstructStream, _req(b"\x89PNG\r\n\x1a\n broken"),
                                 timeout=60))
        assert d.reason == "INVALID_IMAGE" and d.field_violations[0][0] == "image.data"

        d = status_details(_fail(stub.GetArtifact, gateway_pb2.GetArtifactRequest(
            artifact_id="nope"), timeout=60))
        assert (d.code, d.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")

        # A face is found, then the fitter is unreachable: UNAVAILABLE with RetryInfo.
        d = status_details(_fail(stub.Reconstruct, _req(astronaut_jpg_bytes), timeout=120))
        assert (d.code, d.reason) == (grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")
        assert d.retry_after is not None and d.retry_after > 0


def test_full_queue_gives_retry_info(tmp_path):
    closed = _closed_port()
    backends = GrpcBackends(detector=closed, fitter=closed, eyeball=closed, exporter=closed)
    gw = GatewayServer(Orchestrator(_unwatched(backends)), LocalArtifactStore(tmp_path),
                       limits=GatewayLimits(max_concurrent=0, max_queue=0),
                       close_backends=backends.close)
    gw.start_in_thread()
    try:
        with channel(gw.address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            for call in (stub.Reconstruct, stub.ReconstructStream):
                d = status_details(_fail(call, _req(GRAY), timeout=60))
                assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
                assert d.retry_after is not None and d.retry_after > 0
                assert "retry later" in d.message
    finally:
        gw.stop(1.0)


def _count(method: str, code: str) -> float:
    return metrics.REQUESTS.labels("Reconstruction", method, code)._value.get()


def _wait_for(pred, what: str, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_cancelled_and_deadline_exceeded_are_counted_as_such(tmp_path, detector_addr,
                                                             astronaut_jpg_bytes):
    closed = _closed_port()
    # The fitter is down and retried for a long time: the request stays in flight.
    backends = GrpcBackends(detector=detector_addr, fitter=closed, eyeball=closed,
                            exporter=closed, retry=RetryPolicy(attempts=10_000,
                                                               initial_backoff=0.2,
                                                               max_backoff=0.2))
    gw = GatewayServer(Orchestrator(_unwatched(backends)), LocalArtifactStore(tmp_path),
                       limits=GatewayLimits(max_concurrent=2, max_queue=2),
                       close_backends=backends.close)
    gw.start_in_thread()
    try:
        with channel(gw.address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            before = _count("ReconstructStream", "CANCELLED")
            ok_before = _count("ReconstructStream", "OK")
            call = stub.ReconstructStream(_req(astronaut_jpg_bytes), timeout=600)
            for ev in call:  # wait until the face is detected: the run is under way
                if ev.progress.stage == common_pb2.STAGE_DETECTED:
                    break
            call.cancel()
            # at least this one: the counter is the process's, and a call an earlier test's
            # gateway cancelled as it stopped may be counted late, during this wait
            _wait_for(lambda: _count("ReconstructStream", "CANCELLED") >= before + 1,
                      "ReconstructStream counted as CANCELLED")
            assert _count("ReconstructStream", "OK") == ok_before

            before = _count("Reconstruct", "DEADLINE_EXCEEDED")
            ok_before = _count("Reconstruct", "OK")
            err = _fail(stub.Reconstruct, _req(astronaut_jpg_bytes), timeout=3)
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_for(lambda: _count("Reconstruct", "DEADLINE_EXCEEDED") >= before + 1,
                      "Reconstruct counted as DEADLINE_EXCEEDED")
            assert _count("Reconstruct", "OK") == ok_before
    finally:
        gw.stop(1.0)


class _ChattyOrchestrator(Orchestrator):
    """A run that reports progress without end, in large events: the gateway's stream is
    nearly always sending when its client goes away (the race a real run hits now and then)."""

    backends = None

    def __init__(self):  # no backends: this run never calls one
        pass

    def preflight(self, req) -> None:
        pass

    async def run(self, req, progress):
        import asyncio

        while True:
            await progress(common_pb2.Progress(stage=common_pb2.STAGE_DETECTED, fraction=0.1,
                                               message="x" * 200_000))
            await asyncio.sleep(0)


def test_a_stream_cancelled_while_sending_is_counted_cancelled_not_ok(tmp_path):
    """A client that cancels while the gateway sends it an event closes the handler's
    generator at its ``yield`` (GeneratorExit, not CancelledError): counted CANCELLED, never
    OK (before the fix about five in six of these were counted OK)."""
    gw = GatewayServer(_ChattyOrchestrator(), LocalArtifactStore(tmp_path))
    gw.start_in_thread()
    n = 12
    try:
        with channel(gw.address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            before = _count("ReconstructStream", "CANCELLED")
            ok_before = _count("ReconstructStream", "OK")
            for _ in range(n):
                call = stub.ReconstructStream(_req(_png(np.zeros((64, 64, 3), np.uint8))),
                                              timeout=60)
                for k, _ev in enumerate(call):
                    if k == 3:
                        break
                call.cancel()
            _wait_for(lambda: _count("ReconstructStream", "CANCELLED") >= before + n,
                      f"{n} ReconstructStreams counted as CANCELLED")
            assert _count("ReconstructStream", "OK") == ok_before
    finally:
        gw.stop(1.0)


def test_a_service_stream_cancelled_while_sending_is_counted_cancelled_not_ok():
    """The services' interceptor (``ffhquv.server``), for a server stream (the fitter's Fit):
    a client gone while an item was sent closes the handler's generator (GeneratorExit), and
    the call is counted CANCELLED, not OK."""
    import grpc as g

    def talk(request, context):
        while True:
            yield b"x" * 200_000

    def register(server):
        server.add_generic_rpc_handlers((g.method_handlers_generic_handler(
            "test.Chatty", {"Talk": g.unary_stream_rpc_method_handler(talk)}),))
        return ["test.Chatty"]

    def count(code: str) -> float:
        return metrics.REQUESTS.labels("Chatty", "Talk", code)._value.get()

    srv = build_server(register)
    n = 8
    try:
        before, ok_before = count("CANCELLED"), count("OK")
        with channel(f"127.0.0.1:{srv.port}") as ch:
            talk_call = ch.unary_stream("/test.Chatty/Talk")
            for _ in range(n):
                call = talk_call(b"", timeout=60)
                for k, _item in enumerate(call):
                    if k == 3:
                        break
                call.cancel()
            _wait_for(lambda: count("CANCELLED") >= before + n, f"{n} Talks counted as CANCELLED")
        assert count("OK") == ok_before
    finally:
        srv.stop(0)
