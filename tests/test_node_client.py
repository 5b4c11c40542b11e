"""The Node.js client example (examples/node, @grpc/grpc-js + @grpc/proto-loader) against a
real gateway on loopback: a stored result replayed by its request id and downloaded file by
file, and google.rpc error details decoded in Node (a real detector behind the gateway; the
other services are closed ports, so nothing here runs a fit)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffhquv.pb import gateway_pb2
from ffhquv.server import build_server
from gateway.backends import GrpcBackends
from gateway.orchestrator import Orchestrator
from gateway.server import GatewayLimits, GatewayServer
from gateway.storage import LocalArtifactStore
from services.detector.servicer import register

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (Node.js >= 18 runs the "
                       "examples/node client)"),
    pytest.mark.skipif(not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir(),
                       reason="examples/node has no node_modules: run `npm ci --prefix "
                       "examples/node` (./run test does this when npm exists)"),
]

FILES = {"stage3_mesh_id.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
         "stage3_uv.png": bytes(range(256)) * 40, "report.json": b'{"seed": 0}'}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    detector = build_server(register, port=0, max_workers=2)
    store = LocalArtifactStore(tmp_path_factory.mktemp("artifacts"))
    res = gateway_pb2.ReconstructResult(request_id="stored-1", metrics={"psnr_masked": 31.5},
                                        warnings=["a note"])
    store.put("stored-1", FILES, {"result": base64.b64encode(res.SerializeToString()).decode()})
    backends = GrpcBackends(detector=detector.address, fitter=closed, eyeball=closed,
                            exporter=closed)
    # not followed by the gateway's health watch: requests reach the detector (its NO_FACE /
    # INVALID_IMAGE are what this test decodes) although the other backends are closed
    backends.watch_health = None
    gw = GatewayServer(Orchestrator(backends), store, limits=GatewayLimits(),
                       close_backends=backends.close)
    gw.start_in_thread()
    yield gw
    gw.stop(1.0)
    detector.stop(0)


def node_client(addr: str, image: Path, out: Path, *extra: str) -> tuple[int, dict]:
    r = subprocess.run([NODE, str(EXAMPLE / "client.js"), "--addr", addr, "--image", str(image),
                        "--out", str(out), "--deadline", "120", *extra],
                       capture_output=True, text=True, timeout=180)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, (r.stdout, r.stderr)
    return r.returncode, json.loads(lines[0])


def _png(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(buf, format="PNG")
    p.write_bytes(buf.getvalue())
    return p


def test_node_client_downloads_a_stored_result(gateway, tmp_path):
    code, rec = node_client(gateway.address, _png(tmp_path, "face.png"), tmp_path / "out",
                            "--request-id", "stored-1")
    assert code == 0, rec
    assert rec["request_id"] == "stored-1"
    assert sorted(rec["files"]) == sorted(FILES)
    assert rec["metrics"] == {"psnr_masked": 31.5} and rec["warnings"] == ["a note"]
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_node_client_reads_error_details(gateway, tmp_path):
    code, rec = node_client(gateway.address, _png(tmp_path, "gray.png"), tmp_path / "o1")
    assert code == 1
    assert rec["error"]["code"] == "FAILED_PRECONDITION"
    assert rec["error"]["reason"] == "NO_FACE"

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code, rec = node_client(gateway.address, empty, tmp_path / "o2")
    assert code == 1
    assert (rec["error"]["code"], rec["error"]["reason"], rec["error"]["field"]) == \
        ("INVALID_ARGUMENT", "INVALID_IMAGE", "image.data")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
