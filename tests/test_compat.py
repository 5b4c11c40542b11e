"""gRPC compatibility across versions: a server built from one version of the protos answers a
client built from another. The "next" version adds field 99 to a request and a response
(``DetectRequest``/``DetectResponse``, unary; ``GetArtifactRequest``/``ArtifactChunk``,
server streaming); its stubs live in a temporary package tree used by a subprocess, the
current ones are the repository's. Unknown fields must be ignored (and kept on re-serialising)
and every call must succeed, in both directions."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from ffhquv import protogen

PEER = '''"""Compatibility peer: the same code runs on either version of the stubs."""
import json
import sys

from ffhquv.common.v1 import common_pb2
from ffhquv.detector.v1 import detector_pb2, detector_pb2_grpc
from ffhquv.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from ffhquv.server import build_server, channel

NEXT = "client_hint" in detector_pb2.DetectRequest.DESCRIPTOR.fields_by_name
VERSION = "next" if NEXT else "current"
ARTIFACT = b"0123456789abcdef" * 5


class Detector(detector_pb2_grpc.DetectorServicer):
    def Detect(self, request, context):
        resp = detector_pb2.DetectResponse(
            image_width=len(request.image.data), selected_index=request.face_index,
            notes=[VERSION, request.image.filename, request.SerializeToString().hex()])
        if NEXT:
            resp.server_build = "next-build-7"
            resp.notes.append("hint=" + request.client_hint)
        return resp


class Reconstruction(gateway_pb2_grpc.ReconstructionServicer):
    def GetArtifact(self, request, context):
        size = request.chunk_size or 1024
        for off in range(0, len(ARTIFACT), size):
            chunk = common_pb2.ArtifactChunk(offset=off, data=ARTIFACT[off:off + size],
                                             total_size=len(ARTIFACT))
            if NEXT:
                chunk.checksum = "crc-%d" % off
            yield chunk


def register(server):
    detector_pb2_grpc.add_DetectorServicer_to_server(Detector(), server)
    gateway_pb2_grpc.add_ReconstructionServicer_to_server(Reconstruction(), server)
    return ["ffhquv.detector.v1.Detector", "ffhquv.gateway.v1.Reconstruction"]


def serve():
    return build_server(register, port=0)


def call(address):
    with channel(address) as ch:
        req = detector_pb2.DetectRequest(
            image=common_pb2.Image(data=b"x" * 37, filename="a.png"), face_index=3)
        if NEXT:
            req.client_hint = "from-next"
        resp = detector_pb2_grpc.DetectorStub(ch).Detect(req, timeout=20)
        areq = gateway_pb2.GetArtifactRequest(artifact_id="art-1", chunk_size=32)
        if NEXT:
            areq.want_checksum = True
        chunks = list(gateway_pb2_grpc.ReconstructionStub(ch).GetArtifact(areq, timeout=20))
    return {
        "client": VERSION,
        "sent_request_hex": req.SerializeToString().hex(),
        "notes": list(resp.notes),
        "image_width": resp.image_width,
        "selected_index": resp.selected_index,
        "server_build": getattr(resp, "server_build", None),
        "response_hex": resp.SerializeToString().hex(),
        "chunks": [[c.offset, c.data.hex(), c.total_size, getattr(c, "checksum", None)]
                   for c in chunks],
        "chunk_hex": [c.SerializeToString().hex() for c in chunks],
    }


if __name__ == "__main__":
    if sys.argv[1] == "server":
        running = serve()
        print(running.port, flush=True)
        sys.stdin.read()  # until the test closes our stdin
        running.stop(0)
    else:
        print(json.dumps(call(sys.argv[2])))
'''

# The next version's fields: after the last field of each message, a documented field 99.
ADDITIONS = {
    "detector/v1/detector.proto": [("DetectRequest", "string client_hint = 99;"),
                                   ("DetectResponse", "string server_build = 99;")],
    "gateway/v1/gateway.proto": [("GetArtifactRequest", "bool want_checksum = 99;")],
    "common/v1/common.proto": [("ArtifactChunk", "string checksum = 99;")],
}
ARTIFACT = b"0123456789abcdef" * 5


def _add_field(text: str, message: str, field: str) -> str:
    m = re.search(r"\nmessage " + message + r" \{\n(.*?)\n\}", text, re.S)
    assert m, message
    body = m.group(1) + f"\n  // Added by the next version (compatibility test).\n  {field}"
    return text[:m.start(1)] + body + text[m.end(1):]


def _make_next_stubs(root: Path) -> Path:
    from grpc_tools import protoc

    protos, stubs = root / "protos", root / "stubs"
    shutil.copytree(protogen.PROTO_ROOT / "ffhquv", protos / "ffhquv")
    for rel, adds in ADDITIONS.items():
        path = protos / "ffhquv" / rel
        text = path.read_text()
        for message, field in adds:
            text = _add_field(text, message, field)
        path.write_text(text)
    stubs.mkdir()
    names = [str(p.relative_to(protos)) for p in protogen.proto_files(protos)]
    code = protoc.main(["grpc_tools.protoc", f"-I{protos}", f"-I{files('grpc_tools') / '_proto'}",
                        f"--python_out={stubs}", f"--grpc_python_out={stubs}", *names])
    assert code == 0
    for d in (stubs / "ffhquv").rglob("*"):
        if d.is_dir():
            (d / "__init__.py").touch()
    # The stub tree shadows the package's generated modules; everything else (ffhquv.server
    # ...) still comes from the real package.
    (stubs / "ffhquv" / "__init__.py").write_text(
        "import os\n__version__ = 'next'\n__path__.append(os.environ['FFHQUV_REAL_PACKAGE'])\n")
    return stubs


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    import ffhquv.pb  # noqa: F401  (current stubs generated and importable)

    root = tmp_path_factory.mktemp("compat")
    peer_path = root / "compat_peer.py"
    peer_path.write_text(PEER)
    spec = importlib.util.spec_from_file_location("ffhquv_compat_peer", peer_path)
    current = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(current)
    assert current.VERSION == "current"
    stubs = _make_next_stubs(root)
    env = {**os.environ, "PYTHONPATH": str(stubs),
           "FFHQUV_REAL_PACKAGE": str(Path(ffhquv.__file__).parent), "FFHQUV_LOG_FORMAT": "text"}
    return current, [sys.executable, str(peer_path)], env


def _next_client(versions, address: str) -> dict:
    _, cmd, env = versions
    out = subprocess.run([*cmd, "client", address], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def next_server(versions):
    _, cmd, env = versions
    proc = subprocess.Popen([*cmd, "server"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read() if proc.poll() is not None else line
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _check_chunks(result: dict, checksum: bool) -> None:
    data = b"".join(bytes.fromhex(c[1]) for c in result["chunks"])
    assert data == ARTIFACT
    assert [c[0] for c in result["chunks"]] == list(range(0, len(ARTIFACT), 32))
    assert {c[2] for c in result["chunks"]} == {len(ARTIFACT)}
    for off, _, _, value in result["chunks"]:
        assert value == (f"crc-{off}" if checksum else ("" if value is not None else None))


def test_next_client_calls_current_server(versions):
    current, _, _ = versions
    server = current.serve()
    try:
        r = _next_client(versions, server.address)
    finally:
        server.stop(0)
    assert r["client"] == "next"
    version, filename, echoed = r["notes"]
    assert (version, filename) == ("current", "a.png")
    assert (r["image_width"], r["selected_index"]) == (37, 3)
    # the old server parsed the request, ignored field 99 and kept it when re-serialising
    assert b"from-next".hex() in r["sent_request_hex"]
    assert echoed == r["sent_request_hex"]
    assert r["server_build"] == ""  # the old server cannot set it
    _check_chunks(r, checksum=False)


def test_current_client_calls_next_server(versions, next_server):
    current, _, _ = versions
    r = current.call(next_server)
    assert r["client"] == "current"
    assert r["notes"][0] == "next" and r["notes"][1] == "a.png"
    assert r["notes"][-1] == "hint="  # field 99 never sent
    assert (r["image_width"], r["selected_index"]) == (37, 3)
    assert r["server_build"] is None  # unknown to this client ...
    assert b"next-build-7".hex() in r["response_hex"]  # ... but kept as unknown field
    _check_chunks(r, checksum=False)
    for off, h in zip(range(0, len(ARTIFACT), 32), r["chunk_hex"], strict=True):
        assert f"crc-{off}".encode().hex() in h


def test_next_client_calls_next_server(versions, next_server):
    r = _next_client(versions, next_server)
    assert r["notes"][0] == "next" and r["notes"][-1] == "hint=from-next"
    assert r["server_build"] == "next-build-7"
    _check_chunks(r, checksum=True)
