"""``ffhquv serve all`` as a whole: mutual TLS and tokens inside the stack, supervision (kill -9
of a child and of ``serve all``), health while a backend is down, fail fast.

Each test starts its own stack. Times are printed (``-s``) for the record, never asserted
beyond the generous limits of the issue's "done when" (30 s to recover).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ffhquv.pb import (
    common_pb2,
    detector_pb2,
    detector_pb2_grpc,
    fitter_pb2,
    fitter_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from gateway.security import channel_credentials
from tests.gateway_stack import ServeAll, make_certs, pid_alive, wait_until

GATEWAY = "ffhquv.gateway.v1.Reconstruction"
EXPORTER = "ffhquv.exporter.v1.Exporter"
FAST = gateway_pb2.Options(preset=common_pb2.PRESET_FAST, texture_size=256,
                           formats=[1])  # OBJ only: the smallest export


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("pki"))


def _status(ch: grpc.Channel, service: str = "") -> str:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                            timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)


def _request(rid: str, image: bytes) -> gateway_pb2.ReconstructRequest:
    return gateway_pb2.ReconstructRequest(
        request_id=rid, options=FAST, image=common_pb2.Image(data=image, filename="a.jpg"))


def test_mtls_token_file_supervision_and_orphans(tmp_path, certs, astronaut_jpg_bytes):
    """mTLS between every part, the public token from a file (two gateway processes); a photo
    end to end; direct calls to a backend without the internal token or without a client
    certificate refused; kill -9 of the exporter: NOT_SERVING and UNAVAILABLE at once, back
    and serving again; kill -9 of ``serve all``: no child left."""
    c = lambda n: str(certs / n)  # noqa: E731
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-from-file\n")
    client = channel_credentials(c("ca.pem"), c("client.pem"), c("client.key"))
    stack = ServeAll(tmp_path, ["--tls-cert", c("server.pem"), "--tls-key", c("server.key"),
                                "--tls-ca", c("ca.pem"), "--token-file", str(token_file)],
                     env={"FFHQUV_GATEWAY_REPLICAS": "2"}, credentials=client)
    try:
        auth = [("authorization", "Bearer s3cret-from-file")]
        pids = stack.child_pids()
        # the second gateway process too: mTLS and the token file's token reach it
        assert set(pids) == {"detector", "fitter", "eyeball", "exporter", "gateway"}, \
            stack.log()[-3000:]
        # the token is on no command line
        for pid in [stack.proc.pid, *pids.values()]:
            assert b"s3cret" not in open(f"/proc/{pid}/cmdline", "rb").read()
        with stack.channel() as ch:
            assert _status(ch, GATEWAY) == "SERVING"
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.Reconstruct(_request("no-token", astronaut_jpg_bytes), timeout=30)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED

            t0 = time.monotonic()
            res = stub.Reconstruct(_request("mtls-1", astronaut_jpg_bytes), metadata=auth,
                                   timeout=900)
            names = {a.name for a in res.artifacts}
            assert "stage3_mesh_id.obj" in names and "stage3_uv.png" in names, names
            data = b"".join(ch_.data for ch_ in stub.GetArtifact(gateway_pb2.GetArtifactRequest(
                artifact_id="mtls-1/stage3_uv.png"), metadata=auth, timeout=60))
            assert data.startswith(b"\x89PNG")
            print(f"\nmTLS photo end to end: {time.monotonic() - t0:.1f} s")

        # a backend called directly: with a client certificate but no internal token ...
        addrs = stack.child_addresses()
        det_addr = "localhost:" + addrs["detector"].rsplit(":", 1)[1]
        with grpc.secure_channel(det_addr, client) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                detector_pb2_grpc.DetectorStub(ch).Detect(detector_pb2.DetectRequest(
                    image=common_pb2.Image(data=astronaut_jpg_bytes)), timeout=30)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _status(ch) == "SERVING"  # probes stay open (over the same transport)
        fit_addr = "localhost:" + addrs["fitter"].rsplit(":", 1)[1]
        with grpc.secure_channel(fit_addr, client) as ch, pytest.raises(grpc.RpcError) as ei:
            fitter_pb2_grpc.FitterStub(ch).DescribeModel(fitter_pb2.DescribeModelRequest(),
                                                         timeout=30)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # ... with the right token but no client certificate: the handshake fails
        with grpc.secure_channel(det_addr, channel_credentials(c("ca.pem"))) as ch, \
                pytest.raises(grpc.RpcError) as ei:
            _status(ch)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE

        # kill -9 of the exporter
        with stack.channel() as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            t_kill = time.monotonic()
            os.kill(pids["exporter"], signal.SIGKILL)
            wait_until(lambda: _status(ch, GATEWAY) == "NOT_SERVING", timeout=30, step=0.02)
            t_down = time.monotonic() - t_kill
            assert _status(ch, EXPORTER) == "NOT_SERVING"
            assert _status(ch) == "SERVING"  # liveness: the gateway process itself is fine
            t = time.monotonic()
            with pytest.raises(grpc.RpcError) as ei:
                stub.Reconstruct(_request("while-down", astronaut_jpg_bytes), metadata=auth,
                                 timeout=60)
            fail_ms = (time.monotonic() - t) * 1000
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "exporter" in ei.value.details()
            wait_until(lambda: _status(ch, GATEWAY) == "SERVING", timeout=120, step=0.1)
            t_back = time.monotonic() - t_kill
            assert stack.child_pids()["exporter"] != pids["exporter"]
            stub.Reconstruct(_request("after-restart", astronaut_jpg_bytes), metadata=auth,
                             timeout=900)
            t_ok = time.monotonic() - t_kill
        print(f"exporter kill -9: NOT_SERVING after {t_down:.2f} s, a new request refused in "
              f"{fail_ms:.0f} ms, SERVING again after {t_back:.1f} s, a whole request done "
              f"{t_ok:.1f} s after the kill")
        assert "child restarted" in stack.log()

        # kill -9 of serve all: every child goes too
        children = list(stack.child_pids().values())
        os.kill(stack.proc.pid, signal.SIGKILL)
        stack.proc.wait(timeout=10)
        try:
            took = wait_until(lambda: not any(pid_alive(p) for p in children), timeout=120)
        except TimeoutError:
            left = {p: _proc_line(p) for p in children if pid_alive(p)}
            raise AssertionError(f"children left 120 s after kill -9 of serve all: {left}\n"
                                 f"{stack.log()[-3000:]}") from None
        print(f"serve all kill -9: last child gone after {took:.1f} s")
    finally:
        stack.stop()


def test_tls_public_port_env_token_and_internal_token(tmp_path, certs, astronaut_jpg_bytes):
    """TLS on the public port only (no CA), the public token from the environment: the gateway
    answers over TLS with the token; a backend called directly (plaintext on loopback) without
    the internal token refuses, and the internal token is on no command line; CUDA asked of the
    CPU-only fitter is refused FAILED_PRECONDITION before any work."""
    c = lambda n: str(certs / n)  # noqa: E731
    stack = ServeAll(tmp_path, ["--tls-cert", c("server.pem"), "--tls-key", c("server.key")],
                     env={"FFHQUV_AUTH_TOKEN": "env-token"},
                     credentials=channel_credentials(c("ca.pem")))
    try:
        with stack.channel() as ch:
            assert _status(ch, GATEWAY) == "SERVING"
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            req = gateway_pb2.GetArtifactRequest(artifact_id="nope/x.png")
            with pytest.raises(grpc.RpcError) as ei:
                list(stub.GetArtifact(req, timeout=30))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                list(stub.GetArtifact(req, metadata=[("authorization", "Bearer env-token")],
                                      timeout=30))
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
            if not _has_cuda():
                # CUDA asked of this CPU-only fitter: refused by the gateway before any work
                # (ready = every backend up, the fitter's devices known)
                wait_until(lambda: _status(ch, GATEWAY) == "SERVING", timeout=120)
                cuda = gateway_pb2.ReconstructRequest(
                    request_id="cuda-on-cpu", image=common_pb2.Image(data=astronaut_jpg_bytes),
                    options=gateway_pb2.Options(device_hint=common_pb2.DEVICE_CUDA))
                with pytest.raises(grpc.RpcError) as ei:
                    stub.Reconstruct(cuda, metadata=[("authorization", "Bearer env-token")],
                                     timeout=30)
                assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, \
                    ei.value.details()
                assert "no CUDA device" in ei.value.details()
        pids = stack.child_pids()
        for pid in pids.values():
            environ = open(f"/proc/{pid}/environ", "rb").read()
            assert b"FFHQUV_INTERNAL_TOKEN=" in environ and b"env-token" not in environ
            assert b"FFHQUV_INTERNAL_TOKEN" not in open(f"/proc/{pid}/cmdline", "rb").read()
        det = stack.child_addresses()["detector"]
        with grpc.insecure_channel(det) as ch:
            assert _status(ch) == "SERVING"
            with pytest.raises(grpc.RpcError) as ei:
                detector_pb2_grpc.DetectorStub(ch).Detect(detector_pb2.DetectRequest(),
                                                          timeout=30)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                detector_pb2_grpc.DetectorStub(ch).Detect(
                    detector_pb2.DetectRequest(),
                    metadata=[("authorization", "Bearer env-token")], timeout=30)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the public token
    finally:
        stack.stop()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _proc_line(pid: int) -> str:
    """``state | command line`` of a process, for the failure message."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "gone"
    return f"{stat} | {cmd}"


def _sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            n += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return n


def test_gateway_replicas_share_the_port_and_the_results(tmp_path, astronaut_jpg_bytes):
    """``FFHQUV_GATEWAY_REPLICAS=2``: a second gateway process on the public port (the kernel
    spreads new connections over both), the public token in its environment only; a result
    made through one connection is downloaded through many others (whichever replica each
    reaches: they share the artifact folder); kill -9 of the replica: restarted, serving;
    kill -9 of ``serve all``: the replica goes too."""
    stack = ServeAll(tmp_path, env={"FFHQUV_GATEWAY_REPLICAS": "2",
                                    "FFHQUV_AUTH_TOKEN": "replica-token"})
    auth = [("authorization", "Bearer replica-token")]
    try:
        wait_until(lambda: "gateway" in stack.child_pids(), timeout=120)
        gw = stack.child_pids()["gateway"]
        cmd = open(f"/proc/{gw}/cmdline", "rb").read()
        assert b"--reuse-port" in cmd and b"replica-token" not in cmd
        assert b"FFHQUV_AUTH_TOKEN=replica-token" in open(f"/proc/{gw}/environ", "rb").read()
        # serve all says so once the replica is healthy, after its process appeared
        wait_until(lambda: "gateway: 2 processes on port" in stack.log(), timeout=120)
        with stack.channel() as ch:
            wait_until(lambda: _status(ch, GATEWAY) == "SERVING", timeout=120)
            res = gateway_pb2_grpc.ReconstructionStub(ch).Reconstruct(
                _request("replicas-1", astronaut_jpg_bytes), metadata=auth, timeout=900)
        want = next(a for a in res.artifacts if a.name == "stage3_uv.png")
        before = _sockets(gw)
        channels = [stack.channel(own_connection=True) for _ in range(24)]
        try:
            for ch in channels:
                data = b"".join(c.data for c in gateway_pb2_grpc.ReconstructionStub(
                    ch).GetArtifact(gateway_pb2.GetArtifactRequest(artifact_id=want.id),
                                    metadata=auth, timeout=60))
                assert len(data) == want.size_bytes and data.startswith(b"\x89PNG")
            # some of the 24 connections reached the replica (all to one: p = 2^-23)
            assert _sockets(gw) > before
        finally:
            for ch in channels:
                ch.close()

        os.kill(gw, signal.SIGKILL)
        wait_until(lambda: stack.child_pids().get("gateway", gw) != gw, timeout=120)
        wait_until(lambda: "child restarted" in stack.log(), timeout=60)
        with stack.channel() as ch:
            # the same request id again: the stored result, from whichever replica
            res2 = gateway_pb2_grpc.ReconstructionStub(ch).Reconstruct(
                _request("replicas-1", astronaut_jpg_bytes), metadata=auth, timeout=60)
            assert [a.sha256 for a in res2.artifacts] == [a.sha256 for a in res.artifacts]

        replica = stack.child_pids()["gateway"]
        os.kill(stack.proc.pid, signal.SIGKILL)
        stack.proc.wait(timeout=10)
        wait_until(lambda: not pid_alive(replica), timeout=60)
    finally:
        stack.stop()
