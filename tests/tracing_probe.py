"""Run one Reconstruct through real gRPC servers in this process with tracing on and an
in-memory span exporter; print the spans as JSON lines on stdout (logs go to stderr as JSON).

    python -m tests.tracing_probe detect-only   # fitter / eyeball / exporter are closed ports
    python -m tests.tracing_probe full          # all four services: a real (fast) fit

Run in its own process by tests/test_tracing.py: tracing instruments grpc process-wide.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

REQUEST_ID = "trace-probe-1"


def main(mode: str, photo: str) -> int:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ffhquv import logs, tracing

    spans = InMemorySpanExporter()
    assert tracing.setup("probe", exporter=spans)
    logs.setup("json", level="INFO")

    import grpc

    from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc
    from ffhquv.server import build_server, channel
    from gateway.backends import GrpcBackends, RetryPolicy
    from gateway.orchestrator import Orchestrator
    from gateway.server import GatewayLimits, GatewayServer
    from gateway.storage import LocalArtifactStore
    from services.detector.servicer import register as detector

    servers = [build_server(detector, max_workers=2)]
    addrs = {"detector": servers[0].address}
    if mode == "full":
        from services.exporter.servicer import register as exporter
        from services.eyeball.servicer import register as eyeball
        from services.fitter.servicer import make_register

        for name, reg in (("fitter", make_register(device="cpu")), ("eyeball", eyeball),
                          ("exporter", exporter)):
            servers.append(build_server(reg, max_workers=2))
            addrs[name] = servers[-1].address
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        addrs.update(fitter=closed, eyeball=closed, exporter=closed)
    import tempfile

    backends = GrpcBackends(**addrs, retry=RetryPolicy(attempts=1))
    if mode != "full":  # closed backends: not followed, so the request reaches the detector
        backends.watch_health = None
    gw = GatewayServer(Orchestrator(backends), LocalArtifactStore(Path(tempfile.mkdtemp())),
                       limits=GatewayLimits(), close_backends=backends.close)
    gw.start_in_thread()
    code = "OK"
    try:
        with channel(gw.address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            opts = gateway_pb2.Options(preset=common_pb2.PRESET_FAST, texture_size=256,
                                       formats=[1])
            try:
                stub.Reconstruct(gateway_pb2.ReconstructRequest(
                    request_id=REQUEST_ID, image=common_pb2.Image(
                        data=Path(photo).read_bytes(), filename="probe.jpg"), options=opts),
                    timeout=1800)
            except grpc.RpcError as e:
                code = e.code().name
    finally:
        gw.stop(1.0)
        for s in servers:
            s.stop(0)
    for sp in spans.get_finished_spans():
        print(json.dumps({
            "name": sp.name, "kind": sp.kind.name, "trace_id": f"{sp.context.trace_id:032x}",
            "span_id": f"{sp.context.span_id:016x}",
            "parent_id": f"{sp.parent.span_id:016x}" if sp.parent else None,
            "attributes": {k: v for k, v in (sp.attributes or {}).items()
                           if isinstance(v, str | int | float | bool)},
            "service": sp.resource.attributes.get("service.name")}))
    print(json.dumps({"call_code": code}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
