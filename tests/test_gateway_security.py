"""Gateway auth (bearer token) and TLS / mutual TLS on a real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ffhquv.pb import gateway_pb2, gateway_pb2_grpc
from gateway.backends import GrpcBackends
from gateway.orchestrator import Orchestrator
from gateway.security import channel_credentials, server_credentials
from gateway.server import GatewayServer
from gateway.storage import LocalArtifactStore
from tests.gateway_stack import make_certs

UNUSED = {k: "127.0.0.1:9" for k in ("detector", "fitter", "eyeball", "exporter")}


def _gateway(tmp_path, **kw) -> GatewayServer:
    backends = GrpcBackends(**UNUSED)
    gw = GatewayServer(Orchestrator(backends), LocalArtifactStore(tmp_path / "store"),
                       close_backends=backends.close, **kw)
    gw.start_in_thread()
    return gw


def _get(stub, metadata=None):
    return list(stub.GetArtifact(gateway_pb2.GetArtifactRequest(artifact_id="x/y.png"),
                                 metadata=metadata, timeout=10))


def test_bearer_token(tmp_path):
    gw = _gateway(tmp_path, token="s3cret")
    try:
        with grpc.insecure_channel(gw.address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                _get(stub)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                _get(stub, [("authorization", "Bearer wrong")])
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                stub.Reconstruct(gateway_pb2.ReconstructRequest(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                _get(stub, [("authorization", "Bearer s3cret")])
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND  # authenticated, unknown id
            # health stays open for probes
            h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert h.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        gw.stop(0.5)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("pki"))


def _health(address: str, creds) -> int:
    with grpc.secure_channel(address, creds) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                   timeout=5).status


def test_tls_and_mtls(tmp_path, certs):
    c = lambda n: str(certs / n)  # noqa: E731
    gw = _gateway(tmp_path, credentials=server_credentials(c("server.pem"), c("server.key")))
    try:
        addr = f"localhost:{gw.port}"
        assert _health(addr, channel_credentials(c("ca.pem"))) == 1
        with grpc.insecure_channel(addr) as ch, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    finally:
        gw.stop(0.5)
    gw = _gateway(tmp_path, credentials=server_credentials(c("server.pem"), c("server.key"),
                                                           c("ca.pem")))
    try:
        addr = f"localhost:{gw.port}"
        assert _health(addr, channel_credentials(c("ca.pem"), c("client.pem"),
                                                 c("client.key"))) == 1
        with pytest.raises(grpc.RpcError):
            _health(addr, channel_credentials(c("ca.pem")))  # no client certificate
    finally:
        gw.stop(0.5)
