"""One level of Loop subdivision of the exported head (issue 21, item 7): the positions are
trimesh's ``subdivide_loop``, the morph targets go through the same linear operator (the
subdivided head at an expression is the subdivision of the head at that expression), the UVs
split at their own edges' midpoints and stay aligned with the triangles; exported as a GLB the
Khronos validator accepts, through the exporter's gRPC API and the gateway's options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from ffhquv.errors import InvalidInput
from ffhquv.mesh import MeshData, MorphTargets
from services.exporter.subdivide import loop_operator, subdivided


def _loop_matches_trimesh(v: np.ndarray, f: np.ndarray) -> None:
    s, faces = loop_operator(f, len(v))
    ours = s @ v
    ref, ref_faces = trimesh.remesh.subdivide_loop(v, f, iterations=1)
    assert ours.shape == ref.shape and faces.shape == ref_faces.shape == (4 * len(f), 3)
    assert np.allclose(ours[: len(v)], ref[: len(v)], atol=1e-12)  # the old vertices, moved
    assert cKDTree(ref).query(ours)[0].max() < 1e-12  # the new ones (edge order may differ)
    assert np.allclose(np.asarray(s.sum(1)).ravel(), 1.0)  # affine: a translation commutes


def test_loop_positions_are_trimeshs_on_a_sphere_and_on_the_head():
    sphere = trimesh.creation.icosphere(2)
    _loop_matches_trimesh(np.asarray(sphere.vertices), np.asarray(sphere.faces))
    torch.set_num_threads(2)
    from services.fitter.facemodel import load_face_model

    m = load_face_model("default")  # open at the neck and the eyes: the boundary rule
    _loop_matches_trimesh(m.mean_shape.cpu().numpy().astype(np.float64), m.tri.cpu().numpy())


def _cube_with_seams() -> MeshData:
    """A unit cube, each side its own UV square (UV seams along every edge), one morph target
    moving the top up."""
    box = trimesh.creation.box()
    v = np.asarray(box.vertices, np.float32)
    f = np.asarray(box.faces, np.int64)
    uvs, uv_faces = [], []
    for i, tri in enumerate(f):  # per side (two triangles with the same normal): a square
        n = np.asarray(box.face_normals[i])
        axis = int(np.argmax(np.abs(n)))
        a, b = [d for d in range(3) if d != axis]
        side = (axis * 2 + (n[axis] > 0)) * 0.125
        uv = np.stack([side + 0.1 * (v[tri, a] + 0.5), 0.1 * (v[tri, b] + 0.5)], 1)
        uv_faces.append(np.arange(3) + 3 * i)
        uvs.append(uv)
    off = np.zeros((1, len(v), 3), np.float32)
    off[0, v[:, 1] > 0, 1] = 0.5
    return MeshData(v, f, np.concatenate(uvs), np.stack(uv_faces),
                    morphs=MorphTargets(["up"], off, np.array([0.6], np.float32)))


def test_morphs_and_uvs_follow_the_subdivision():
    mesh = _cube_with_seams()
    sub = subdivided(mesh)
    sub.validate()
    n_edges = len(np.unique(np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1),
                            axis=0))
    assert len(sub.vertices) == len(mesh.vertices) + n_edges and len(sub.faces) == 48
    assert sub.morphs.offsets.shape == (1, len(sub.vertices), 3)
    assert sub.morphs.names == ["up"] and sub.morphs.weights.tolist() == pytest.approx([0.6])
    # the subdivided head at any expression is the subdivision of the head at it
    for w in (None, np.array([1.0])):
        assert np.allclose(sub.posed(w).vertices, subdivided(mesh.posed(w)).vertices,
                           atol=1e-6)
    # every new triangle's UVs lie inside its parent's UV triangle (seams kept apart): each
    # parent UV triangle is split in four, at its edges' midpoints
    for t in range(len(mesh.faces)):
        parent = mesh.uvs[mesh.uv_faces[t]].astype(np.float64)
        kids = sub.uvs[sub.uv_faces[4 * t:4 * t + 4]].astype(np.float64)
        bary = np.linalg.solve(np.c_[parent, np.ones(3)].T, np.c_[kids.reshape(-1, 2),
                                                                  np.ones(12)].T)
        assert bary.min() > -1e-6 and set(np.round(bary.ravel(), 6)) <= {0.0, 0.5, 1.0}
    # the cube's corners move in toward its limit surface (its flat sides stay flat)
    assert np.abs(sub.vertices[: len(mesh.vertices)]).max() < 0.45


def test_export_subdivided_head(tmp_path):
    """The exporter with ``subdivision=1``: the GLB's head has the subdivided vertex count and
    its morph targets, and passes the Khronos glTF-Validator; the OBJ has the new vertices;
    2 is INVALID_ARGUMENT through gRPC and an InvalidInput in the gateway's options."""
    import grpc
    import pygltflib

    from ffhquv.imaging import png_bytes
    from ffhquv.pb import exporter_pb2, exporter_pb2_grpc, gateway_pb2
    from ffhquv.server import build_server, channel
    from gateway.orchestrator import validate_options
    from services.exporter import core
    from services.exporter.servicer import register
    from services.eyeball.core import eyeball_mesh, eyeball_texture
    from tests.test_assets import _head_arrays, validate_glb

    head = _cube_with_seams()
    eyes = []
    for x in (0.2, -0.2):
        e = eyeball_mesh(0.08, 8, 10)
        e.vertices += np.array([x, 0.1, 0.5], np.float32)
        eyes.append(e)
    tex = np.full((64, 64, 3), 180, np.uint8)
    parts = dict(head_neutral=head, head_expression=head.posed(), head_texture=tex,
                 left_eye=eyes[0], right_eye=eyes[1], eye_texture=eyeball_texture(size=32))
    res = core.export("s", **parts, formats={"glb", "obj"}, subdivision=1)
    sub = subdivided(head)
    path = tmp_path / "s.glb"
    path.write_bytes(res.files["s.glb"])
    g = pygltflib.GLTF2.load_from_bytes(res.files["s.glb"])
    pos, _, dpos, _, names, w = _head_arrays(g)
    assert names == ["up"] and w.tolist() == pytest.approx([0.6])
    # the GLB splits vertices at UV seams: every subdivided position is there
    assert cKDTree(pos).query(sub.vertices * 0.1)[0].max() < 1e-6  # metres
    assert dpos.shape[1] == len(pos)
    obj = res.files[core.HEAD_OBJ_NEUTRAL].decode()
    assert sum(line.startswith("v ") for line in obj.splitlines()) == len(sub.vertices)
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]
    with pytest.raises(InvalidInput, match="subdivision"):
        core.export("s", **parts, formats={"glb"}, subdivision=2)
    core.export_to_dir("s", **parts, out_dir=tmp_path / "d", formats={"obj"}, subdivision=1)
    written = (tmp_path / "d" / core.HEAD_OBJ_NEUTRAL).read_text()
    assert sum(line.startswith("v ") for line in written.splitlines()) == len(sub.vertices)

    server = build_server(register, port=0)
    try:
        stub = exporter_pb2_grpc.ExporterStub(channel(server.address))
        with pytest.raises(grpc.RpcError) as ei:
            stub.Export(exporter_pb2.ExportRequest(
                name="s", head_neutral=head.to_proto(), head_texture_png=png_bytes(tex),
                left_eye=eyes[0].to_proto(), right_eye=eyes[1].to_proto(),
                eye_texture_png=png_bytes(parts["eye_texture"]),
                formats=[exporter_pb2.EXPORT_FORMAT_GLB], subdivision=2), timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "subdivision" in ei.value.details()
        ok = stub.Export(exporter_pb2.ExportRequest(
            name="s", head_neutral=head.to_proto(), head_texture_png=png_bytes(tex),
            left_eye=eyes[0].to_proto(), right_eye=eyes[1].to_proto(),
            eye_texture_png=png_bytes(parts["eye_texture"]),
            formats=[exporter_pb2.EXPORT_FORMAT_OBJ], subdivision=1), timeout=60)
        objs = {f.name: f.data for f in ok.files}
        assert objs[core.HEAD_OBJ_NEUTRAL].decode().count("\nv ") == len(sub.vertices)
    finally:
        server.stop(0)
    with pytest.raises(InvalidInput, match="subdivision"):
        validate_options(gateway_pb2.Options(subdivision=3))
    validate_options(gateway_pb2.Options(subdivision=1))


def test_cli_subdivision_option_reaches_the_request():
    from ffhquv_cli.commands import _options
    from ffhquv_cli.main import build_parser

    args = build_parser().parse_args(["fit", "a.jpg", "-o", "out", "--subdivision", "1"])
    assert _options(args).subdivision == 1
    assert _options(build_parser().parse_args(["fit", "a.jpg", "-o", "out"])).subdivision == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "a.jpg", "-o", "out", "--subdivision", "2"])
