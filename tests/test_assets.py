"""Assets that drop into Blender, Unity and three.js: real size (metres), smooth normals equal
across UV seams, the face model's 52 ARKit expressions as named GLB morph targets / ``.blend``
shape keys at the fitted weights, checked by independent tools (the Khronos glTF-Validator,
trimesh, pygltflib, Blender through bpy)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import trimesh

from ffhquv.errors import InvalidInput
from ffhquv.mesh import MeshData, MorphTargets
from services.exporter import core
from services.exporter.blend import bpy_available
from services.exporter.obj import morph_normal_deltas, read_obj, smooth_normals
from services.eyeball.mesh import eyeball_mesh
from services.eyeball.texture import eyeball_texture

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR_JS = ROOT / "tests" / "tools" / "gltf_validate.js"
# where `./run test` installs the npm package (or a node_modules of the checkout)
VALIDATOR_DIRS = [ROOT / ".cache" / "npm" / "node_modules", ROOT / "node_modules"]
NEEDS_BPY = pytest.mark.skipif(not bpy_available(), reason="bpy is not installed here (it "
                               "needs its own venv); `./run test-blender` runs these")


def _texture(size: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _split_sphere() -> MeshData:
    """A UV sphere whose seam column of vertices is duplicated (as exporters of other tools
    write meshes split at UV seams): coincident vertices with different indices."""
    rings, segs = 8, 12
    th = np.linspace(0, np.pi, rings + 1)
    ph = np.linspace(0, 2 * np.pi, segs + 1)  # the last column repeats the first position
    t, p = np.meshgrid(th, ph, indexing="ij")
    v = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    uv = np.stack([p / (2 * np.pi), 1 - t / np.pi], -1).reshape(-1, 2)
    idx = np.arange((rings + 1) * (segs + 1)).reshape(rings + 1, segs + 1)
    faces = []
    for r in range(rings):
        for s in range(segs):
            a, b, c, d = idx[r, s], idx[r, s + 1], idx[r + 1, s], idx[r + 1, s + 1]
            faces += [[a, b, c], [b, d, c]]
    f = np.array(faces)
    return MeshData(v, f, uv, f)


@pytest.fixture(scope="module")
def parts():
    """A small head with three named morph targets and two eyeballs (model units)."""
    head = eyeball_mesh(1.2, n_rings=14, n_segments=20)
    n = len(head.vertices)
    off = np.zeros((3, n, 3), np.float32)
    low = head.vertices[:, 1] < -0.6
    off[0, low, 1] = -0.3  # "jawOpen": the lower part moves down
    off[1, head.vertices[:, 0] > 0.5, 0] = 0.1
    head.morphs = MorphTargets(["jawOpen", "mouthLeft", "tongueOut"], off,
                               np.array([0.5, 0.25, 0.0], np.float32))
    head_exp = MeshData(head.morphs.applied(head.vertices), head.faces, head.uvs, head.uv_faces)
    eyes = []
    for x in (0.35, -0.35):
        e = eyeball_mesh(0.12, 10, 12)
        e.vertices += np.array([x, 0.3, 0.95], np.float32)
        eyes.append(e)
    return dict(head_neutral=head, head_expression=head_exp, head_texture=_texture(),
                left_eye=eyes[0], right_eye=eyes[1], eye_texture=eyeball_texture(size=32))


def _view_array(g: pygltflib.GLTF2, view: int, offset: int | None, dt, count: int) -> np.ndarray:
    bv = g.bufferViews[view]
    size = np.dtype(dt).itemsize
    raw = g.binary_blob()[bv.byteOffset + (offset or 0):][: count * size]
    return np.frombuffer(raw, dt)


def _accessor(g: pygltflib.GLTF2, i: int) -> np.ndarray:
    """An accessor's values, ``float64 [count, n]``: plain, bufferless (zeros) or sparse (the
    listed rows over zeros or over its buffer)."""
    a = g.accessors[i]
    n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[a.type]
    dt = np.uint32 if a.componentType == pygltflib.UNSIGNED_INT else np.float32
    out = (np.zeros((a.count, n)) if a.bufferView is None else
           _view_array(g, a.bufferView, a.byteOffset, dt, a.count * n)
           .reshape(a.count, n).astype(np.float64))
    if a.sparse is not None:
        sp = a.sparse
        idt = {pygltflib.UNSIGNED_SHORT: np.uint16, pygltflib.UNSIGNED_INT: np.uint32,
               pygltflib.UNSIGNED_BYTE: np.uint8}[sp.indices.componentType]
        rows = _view_array(g, sp.indices.bufferView, sp.indices.byteOffset, idt, sp.count)
        assert (np.diff(rows.astype(np.int64)) > 0).all()  # strictly increasing (the spec)
        out[rows] = _view_array(g, sp.values.bufferView, sp.values.byteOffset, dt,
                                sp.count * n).reshape(sp.count, n)
    return out


def _head_arrays(g: pygltflib.GLTF2):
    """Head positions, normals, target POSITION / NORMAL deltas, names and weights."""
    mesh = g.meshes[g.nodes[0].mesh]
    prim = mesh.primitives[0]
    pos = _accessor(g, prim.attributes.POSITION)
    nrm = _accessor(g, prim.attributes.NORMAL)
    dpos = np.stack([_accessor(g, t["POSITION"]) for t in prim.targets])
    dnrm = np.stack([_accessor(g, t["NORMAL"]) for t in prim.targets])
    return pos, nrm, dpos, dnrm, mesh.extras["targetNames"], np.asarray(mesh.weights)


def validate_glb(path: Path) -> dict:
    """The Khronos glTF-Validator's report of ``path`` (skips when node or the npm package
    ``gltf-validator`` is absent)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is absent: the Khronos glTF-Validator (npm gltf-validator) needs it")
    mods = next((d for d in VALIDATOR_DIRS if (d / "gltf-validator").is_dir()), None)
    if mods is None:
        pytest.skip("npm package gltf-validator is not installed (`./run test` installs it "
                    "into .cache/npm; or: npm install --prefix .cache/npm gltf-validator)")
    out = subprocess.run([node, str(VALIDATOR_JS), str(path), str(mods)], capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------- normals, units
def test_smooth_normals_equal_across_uv_seams():
    m = _split_sphere()
    n = smooth_normals(m.vertices, m.faces)
    q = np.round(m.vertices, 6)
    _, group = np.unique(q, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g in np.unique(group):
        same = n[group == g]
        np.testing.assert_allclose(same, same[:1].repeat(len(same), 0), atol=1e-6)
    # on a sphere the smooth normal is the radial direction
    radial = m.vertices / np.linalg.norm(m.vertices, axis=1, keepdims=True)
    assert (n * radial).sum(1).min() > 0.98


def test_smooth_normals_of_many_poses_in_one_pass():
    """A stack of poses (a neutral head and its morph targets) gives each pose's own normals,
    welded where the first pose's vertices coincide."""
    m = _split_sphere()
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    poses = np.stack([m.vertices, m.vertices * [1.0, 1.3, 0.8], m.vertices @ rot.T + 0.5])
    got = smooth_normals(poses, m.faces)
    assert got.shape == poses.shape and got.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(got[i], smooth_normals(poses[i], m.faces))
    # the rotated pose's normals are the rotated normals
    np.testing.assert_allclose(got[2], got[0] @ rot.T, atol=1e-5)


def test_morph_normal_deltas_are_the_poses_normals_less_the_neutral():
    """Each morph target's change of the normals, computed on the faces it moves, is the
    difference of the two poses' smooth normals (welded where the neutral pose's vertices
    coincide, as a stack of poses is) to float64 rounding (the exporter drops changes below
    1e-7); untouched vertices exactly 0."""
    m = _split_sphere()
    rng = np.random.default_rng(4)
    offsets = np.zeros((4, *m.vertices.shape))
    offsets[0, :5] = rng.normal(0, 0.05, (5, 3))  # a few vertices
    offsets[1] = m.vertices * 0.2  # everything
    offsets[3, m.vertices[:, 2] > 0.5] = [0.0, 0.1, 0.0]  # a cap, seam vertices included
    got = morph_normal_deltas(m.vertices, offsets, m.faces)
    assert got.shape == offsets.shape and got.dtype == np.float32
    n0 = smooth_normals(m.vertices, m.faces)
    for k in range(len(offsets)):
        pair = smooth_normals(np.stack([m.vertices, m.vertices + offsets[k]]), m.faces)
        np.testing.assert_array_equal(pair[0], n0)
        np.testing.assert_allclose(got[k], pair[1] - n0, atol=1e-12, rtol=0)
    assert not got[2].any() and got[3].any()


def test_morph_normal_deltas_keep_the_targets_part_not_the_pose():
    """The targets' part (which faces each moves, how it moves their edges) is kept between
    calls by the offsets' and faces' contents: another neutral pose with the same targets, and
    other targets on the same faces, each give their own poses' normals (to a float32 unit
    normal's last digit: the exporter drops changes below 1e-7)."""
    m = _split_sphere()
    rng = np.random.default_rng(5)
    offsets = np.zeros((2, *m.vertices.shape), np.float32)
    offsets[0, :7] = rng.normal(0, 0.05, (7, 3))
    offsets[1, m.vertices[:, 1] > 0.3] = [0.05, 0.0, 0.0]

    def want(v, off):
        n0 = smooth_normals(v, m.faces)
        return np.stack([smooth_normals(np.stack([v, v + o]), m.faces)[1] - n0 for o in off])

    for v, off in ((m.vertices, offsets), (m.vertices * 1.3 + [0.1, 0, 0], offsets),
                   (m.vertices, offsets[::-1] * 2)):
        np.testing.assert_allclose(morph_normal_deltas(v, off, m.faces), want(v, off),
                                   atol=1e-7, rtol=0)


def test_obj_has_normals_smoothing_and_units(parts, tmp_path):
    res = core.export("u", **parts, formats={"obj"}, metres_per_unit=0.1)
    text = res.files["stage3_mesh_id.obj"].decode()
    lines = text.splitlines()
    assert "# units: face-model units (1 unit = 0.1 m); y up, face toward +z" in lines
    nv = sum(ln.startswith("v ") for ln in lines)
    assert sum(ln.startswith("vn ") for ln in lines) == nv and "s 1" in lines
    assert all(len(ln.split()[1].split("/")) == 3 for ln in lines if ln.startswith("f "))
    (tmp_path / "a.obj").write_text(text)
    np.testing.assert_allclose(read_obj(tmp_path / "a.obj").vertices,
                               parts["head_neutral"].vertices, atol=1e-5)
    # trimesh reads the normals back as unit vectors
    tm = trimesh.load(tmp_path / "a.obj", process=False)
    assert np.allclose(np.linalg.norm(tm.vertex_normals, axis=1), 1, atol=1e-4)


@pytest.mark.parametrize(("units", "obj_scale", "glb_scale"),
                         [("", 1.0, 0.1), ("m", 0.1, 0.1), ("cm", 10.0, 10.0),
                          ("model", 1.0, 1.0)])
def test_units_choice(parts, tmp_path, units, obj_scale, glb_scale):
    res = core.export("u", **parts, formats={"obj", "glb"}, metres_per_unit=0.1, units=units)
    (tmp_path / "h.obj").write_bytes(res.files["stage3_mesh_id.obj"])
    v = read_obj(tmp_path / "h.obj").vertices
    np.testing.assert_allclose(v, parts["head_neutral"].vertices * obj_scale, rtol=1e-5,
                               atol=1e-5)
    g = pygltflib.GLTF2.load_from_bytes(res.files["u.glb"])
    pos = _head_arrays(g)[0]
    h0 = np.ptp(parts["head_neutral"].vertices[:, 1])
    assert np.ptp(pos[:, 1]) == pytest.approx(h0 * glb_scale, rel=1e-5)
    assert g.asset.extras["unit"] == {"": "metres", "m": "metres", "cm": "centimetres",
                                      "model": "face-model units (1 unit = 0.1 m)"}[units]


def test_bad_units_rejected(parts):
    with pytest.raises(InvalidInput, match="unknown units"):
        core.export("u", **parts, formats={"glb"}, units="inch")
    with pytest.raises(InvalidInput, match="metres_per_unit"):
        core.export("u", **parts, formats={"glb"}, metres_per_unit=-1.0)


# ---------------------------------------------------------------------------- GLB morph targets
def test_glb_morph_targets_eyes_as_children(parts):
    data = core.export("m", **parts, formats={"glb"}, metres_per_unit=0.1).files["m.glb"]
    g = pygltflib.GLTF2.load_from_bytes(data)
    assert [n.name for n in g.nodes] == ["head", "eye_left", "eye_right"]
    assert g.scenes[0].nodes == [0] and g.nodes[0].children == [1, 2]
    # each eye node sits at its eyeball's centre (metres), its mesh around the node origin
    for i, key in [(1, "left_eye"), (2, "right_eye")]:
        c = np.asarray(g.nodes[i].translation)
        centre = parts[key].vertices.mean(0) * 0.1
        assert np.abs(c[:2] - centre[:2]).max() < 1e-4
        local = _accessor(g, g.meshes[g.nodes[i].mesh].primitives[0].attributes.POSITION)
        assert np.abs(local.mean(0)[:2]).max() < 1e-4
    pos, nrm, dpos, dnrm, names, w = _head_arrays(g)
    assert names == ["jawOpen", "mouthLeft", "tongueOut"]
    np.testing.assert_allclose(w, [0.5, 0.25, 0.0])
    assert dpos.shape == dnrm.shape == (3, *pos.shape)
    # default weights give the expression mesh (metres)
    posed = pos + np.einsum("k,knc->nc", w, dpos)
    exp = parts["head_expression"]
    from scipy.spatial import cKDTree

    d, _ = cKDTree(exp.vertices.astype(np.float64) * 0.1).query(posed)
    assert d.max() < 1e-6
    assert dpos[0][:, 1].min() == pytest.approx(-0.03, abs=1e-6)  # jawOpen: 3 cm down
    assert not dpos[2].any() and not dnrm[2].any()
    # NORMAL deltas: the moved normals stay (about) unit length
    moved = nrm + dnrm[0]
    assert np.abs(np.linalg.norm(moved, axis=1) - 1).max() < 1e-4
    # trimesh (no morph-target support of its own) reads the names from the mesh extras
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    assert scene.geometry["head"].metadata["targetNames"] == names
    assert np.ptp(scene.to_geometry().vertices[:, 1]) == pytest.approx(
        np.ptp(pos[:, 1]), rel=1e-3)


def test_glb_normals_equal_across_uv_seams():
    m = _split_sphere()
    tex = _texture()
    eye = eyeball_mesh(0.1, 6, 8)
    data = core.export("s", m, None, tex, eye, eye, tex, formats={"glb"}).files["s.glb"]
    g = pygltflib.GLTF2.load_from_bytes(data)
    prim = g.meshes[0].primitives[0]
    pos = _accessor(g, prim.attributes.POSITION)
    nrm = _accessor(g, prim.attributes.NORMAL)
    _, group = np.unique(np.round(pos, 6), axis=0, return_inverse=True)
    group = group.reshape(-1)
    assert len(np.unique(group)) < len(pos)  # the seam is split in the file
    for k in np.unique(group):
        same = nrm[group == k]
        assert np.abs(same - same[0]).max() < 1e-6


def test_glb_passes_khronos_validator(parts, tmp_path):
    path = tmp_path / "v.glb"
    path.write_bytes(core.export("v", **parts, formats={"glb"}).files["v.glb"])
    rep = validate_glb(path)
    issues = rep["issues"]
    assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"]
    assert rep["info"]["hasMorphTargets"]


def test_morph_targets_travel_in_the_mesh_message(parts):
    head = parts["head_neutral"]
    msg = head.to_proto()
    assert [t.name for t in msg.morph_targets] == head.morphs.names
    # sparse: only moved vertices are listed; a target moving nothing lists none
    assert 0 < len(msg.morph_targets[0].indices) < len(head.vertices)
    assert len(msg.morph_targets[2].indices) == 0 and len(msg.morph_targets[2].offsets) == 0
    back = MeshData.from_request(msg, "head_neutral")
    np.testing.assert_array_equal(back.morphs.offsets, head.morphs.offsets)
    np.testing.assert_array_equal(back.morphs.weights, head.morphs.weights)
    bad = head.to_proto()
    bad.morph_targets[0].indices.append(10**6)
    bad.morph_targets[0].offsets.extend([0.0, 0.0, 0.0])
    with pytest.raises(InvalidInput, match="out of range"):
        MeshData.from_request(bad, "head_neutral")
    dup = head.to_proto()
    dup.morph_targets[1].name = "jawOpen"
    with pytest.raises(InvalidInput, match="unique"):
        MeshData.from_request(dup, "head_neutral")


def test_a_face_models_shared_parts_are_built_once_into_the_same_message(parts):
    """Read-only topology, UVs and morph-target offsets (a face model's, the same for every
    photo) are put into a mesh message once and copied: the bytes are those of a mesh with
    writable copies, call after call, and changing one message leaves the next alone."""
    import dataclasses

    head = parts["head_neutral"]

    def frozen(a):
        a = np.array(a)
        a.flags.writeable = False
        return a

    shared = dataclasses.replace(
        head, faces=frozen(head.faces), uvs=frozen(head.uvs), uv_faces=frozen(head.uv_faces),
        morphs=MorphTargets(head.morphs.names, frozen(head.morphs.offsets),
                            head.morphs.weights))
    want = head.to_proto().SerializeToString()
    first = shared.to_proto()
    assert first.SerializeToString() == want
    first.morph_targets[0].indices.append(1)
    first.faces[0] = 7
    moved = dataclasses.replace(shared, vertices=shared.vertices + 1.0,
                                morphs=MorphTargets(head.morphs.names, shared.morphs.offsets,
                                                    head.morphs.weights + 0.5))
    again = moved.to_proto()
    assert again.faces[0] == head.faces.ravel()[0]
    want_moved = dataclasses.replace(
        moved, faces=np.array(head.faces), morphs=MorphTargets(
            head.morphs.names, np.array(head.morphs.offsets), head.morphs.weights + 0.5))
    assert again.SerializeToString() == want_moved.to_proto().SerializeToString()
    assert shared.to_proto().SerializeToString() == want


def test_each_photos_mesh_of_the_shared_arrays_finds_their_built_parts(parts, monkeypatch):
    """A new mesh for each photo, of the face model's read-only arrays, finds the message
    parts the first one built: MeshData keeps those arrays as they are (it wrapped each in a
    new view, and the parts, found by the arrays' identity, were built again every photo)."""
    head = parts["head_neutral"]

    def frozen(a):
        a = np.array(a)
        a.flags.writeable = False
        return a

    faces, uvs, uv_faces = frozen(head.faces), frozen(head.uvs), frozen(head.uv_faces)
    offsets = frozen(head.morphs.offsets)
    built = []
    fill = MeshData._fill_parts
    monkeypatch.setattr(MeshData, "_fill_parts", lambda self, m: (built.append(1), fill(self, m)))
    for k in range(3):
        mesh = MeshData(head.vertices + k, faces, uvs, uv_faces,
                        morphs=MorphTargets(head.morphs.names, offsets, head.morphs.weights))
        assert mesh.faces is faces and mesh.uvs is uvs and mesh.uv_faces is uv_faces
        mesh.to_proto()
    assert len(built) == 1


def test_grpc_export_carries_morph_targets_and_units(parts):
    """A real exporter server: the morph targets arrive inside the head mesh message, the unit
    choice and metres per model unit as request fields; a bad unit is INVALID_ARGUMENT."""
    import grpc

    from ffhquv.imaging import png_bytes
    from ffhquv.pb import exporter_pb2, exporter_pb2_grpc
    from ffhquv.server import build_server, channel
    from services.exporter.servicer import register

    def request(units: str) -> exporter_pb2.ExportRequest:
        return exporter_pb2.ExportRequest(
            name="g", head_neutral=parts["head_neutral"].to_proto(),
            head_expression=parts["head_expression"].to_proto(),
            head_texture_png=png_bytes(parts["head_texture"]),
            left_eye=parts["left_eye"].to_proto(), right_eye=parts["right_eye"].to_proto(),
            eye_texture_png=png_bytes(parts["eye_texture"]),
            formats=[exporter_pb2.EXPORT_FORMAT_GLB], metres_per_unit=0.1, units=units)

    server = build_server(register, port=0)
    try:
        stub = exporter_pb2_grpc.ExporterStub(channel(server.address))
        resp = stub.Export(request("cm"), timeout=60)
        g = pygltflib.GLTF2.load_from_bytes(resp.files[0].data)
        pos, _, dpos, _, names, w = _head_arrays(g)
        assert names == parts["head_neutral"].morphs.names and g.asset.extras["unit"] == \
            "centimetres"
        assert np.ptp(pos[:, 1]) == pytest.approx(
            np.ptp(parts["head_neutral"].vertices[:, 1]) * 10.0, rel=1e-5)
        assert dpos[0][:, 1].min() == pytest.approx(-3.0, abs=1e-4)  # 0.3 units = 3 cm
        with pytest.raises(grpc.RpcError) as ei:
            stub.Export(request("inch"), timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "units" in ei.value.details()
    finally:
        server.stop(0)

# ---------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def model():
    from services.fitter.facemodel import FaceModel
    from services.fitter.facemodel.default import ensure_default_model

    return FaceModel.load(ensure_default_model(progress=False))


@pytest.fixture(scope="module")
def model_parts(model):
    """The default model's mean head with a made-up expression, as the fitter sends it."""
    import torch

    m = model
    rng = np.random.default_rng(0)
    exp = rng.uniform(-0.3, 0.8, m.exp_dim).astype(np.float32)
    neu = m.mean_shape.numpy()
    uv, uv_tri, tri = m.uv.numpy(), m.uv_tri.numpy(), m.tri.numpy()
    head = MeshData(neu, tri, uv, uv_tri, morphs=m.morph_targets(exp))
    v_exp = m.shape(torch.zeros(1, m.id_dim), torch.from_numpy(exp)[None])[0].numpy()
    head_exp = MeshData(v_exp, tri, uv, uv_tri)
    eyes = []
    for ring in (m.eye_ring_left, m.eye_ring_right):
        e = eyeball_mesh(0.12, 10, 12)
        e.vertices += neu[ring.numpy()].mean(0) - np.array([0, 0, 0.1], np.float32)
        eyes.append(e)
    return dict(head_neutral=head, head_expression=head_exp, head_texture=_texture(),
                left_eye=eyes[0], right_eye=eyes[1], eye_texture=eyeball_texture(size=32))


def _chin_and_crown(model, vertices_m: np.ndarray) -> tuple[int, float]:
    """The vertex nearest the chin landmark (iBUG 8) and the crown-to-chin height (m)."""
    import torch

    lm = model.landmarks(torch.from_numpy(vertices_m.astype(np.float32))[None])[0].numpy()
    chin = int(np.argmin(np.linalg.norm(vertices_m - lm[8], axis=1)))
    return chin, float(vertices_m[:, 1].max() - lm[8, 1])


def test_default_model_glb_real_size_and_arkit_targets(model, model_parts, tmp_path):
    mpu = model.metres_per_unit
    assert 0.09 < mpu < 0.11
    res = core.export("h", **model_parts, formats={"obj", "glb"}, metres_per_unit=mpu)
    path = tmp_path / "h.glb"
    path.write_bytes(res.files["h.glb"])
    g = pygltflib.GLTF2.load_from_bytes(res.files["h.glb"])
    pos, _, dpos, _, names, w = _head_arrays(g)
    # the 52 ARKit names, stored in the model
    assert names == model.exp_labels and len(names) == 52
    assert names[0] == "browDownLeft" and names[-1] == "tongueOut" and "jawOpen" in names
    # real size: the head (with its neck stump) and crown to chin, in metres
    height = float(np.ptp(pos[:, 1]))
    assert 0.20 <= height <= 0.27
    neu_m = model_parts["head_neutral"].vertices.astype(np.float64) * mpu
    chin, crown_chin = _chin_and_crown(model, neu_m)
    assert 0.20 <= crown_chin <= 0.25
    # the default weights reproduce the expression mesh to 1e-4 of the head's size
    posed = pos + np.einsum("k,knc->nc", w, dpos)
    from scipy.spatial import cKDTree

    _, idx = cKDTree(neu_m).query(pos)
    exp_m = model_parts["head_expression"].vertices.astype(np.float64) * mpu
    err = np.linalg.norm(posed - exp_m[idx], axis=1).max()
    assert err < 1e-4 * np.linalg.norm(np.ptp(pos, 0))
    # jawOpen = 1 moves the chin down by 1-5 cm
    jaw = dpos[names.index("jawOpen")]
    drop = -float(jaw[idx == chin][:, 1].mean())
    assert 0.01 < drop < 0.05
    rep = validate_glb(path)
    assert (rep["issues"]["numErrors"], rep["issues"]["numWarnings"]) == (0, 0), \
        rep["issues"]["messages"]


def _cap(head: MeshData) -> MeshData:
    """A hair-like part for ``head``: its faces above the brows lifted outward 2 % of its
    height, UVs into the head texture, the head's morph targets on their roots (as
    ``services.fitter.hair_mesh`` makes it; built here without OpenCV, which the Blender venv's
    numpy cannot import)."""
    v = head.vertices.astype(np.float64)
    top = v[:, 1] > v[:, 1].min() + 0.7 * np.ptp(v[:, 1])
    keep = top[head.faces].all(1)
    sub = np.unique(head.faces[keep])
    idx = np.full(len(v), -1)
    idx[sub] = np.arange(len(sub))
    c = v.mean(0)
    out = (v[sub] - c) / np.linalg.norm(v[sub] - c, axis=1, keepdims=True)
    morphs = MorphTargets(head.morphs.names, head.morphs.offsets[:, sub], head.morphs.weights)
    return MeshData(v[sub] + out * 0.02 * np.ptp(v[:, 1]), idx[head.faces[keep]], head.uvs,
                    head.uv_faces[keep], morphs=morphs)


def test_glb_with_hair_passes_khronos_validator(model, model_parts, tmp_path):
    hair = _cap(model_parts["head_neutral"])
    res = core.export("hh", **model_parts, formats={"glb"}, hair=hair,
                      metres_per_unit=model.metres_per_unit)
    path = tmp_path / "hh.glb"
    path.write_bytes(res.files["hh.glb"])
    g = pygltflib.GLTF2.load_from_bytes(res.files["hh.glb"])
    names = [n.name for n in g.nodes]
    assert names.index("hair") in g.nodes[names.index("head")].children
    assert len(g.images) == 2  # the hair reads the head's image
    gl = g.meshes[g.nodes[names.index("hair")].mesh]
    assert gl.extras["targetNames"] == model.exp_labels
    np.testing.assert_allclose(gl.weights, model_parts["head_neutral"].morphs.weights, atol=1e-6)
    rep = validate_glb(path)
    assert (rep["issues"]["numErrors"], rep["issues"]["numWarnings"]) == (0, 0), \
        rep["issues"]["messages"]


def test_glb_bytes_are_pygltflibs_own(model, model_parts, monkeypatch):
    """``glb_container`` (the JSON and the binary container written without pygltflib's copies)
    gives the bytes of pygltflib's ``save_to_bytes``, for the default head with its 52 sparse
    morph targets, hair and eyeballs."""
    from services.exporter import glb

    hair = _cap(model_parts["head_neutral"])
    ours = core.export("hh", **model_parts, formats={"glb"}, hair=hair,
                       metres_per_unit=model.metres_per_unit).files["hh.glb"]

    def library(g, blob):
        g.set_binary_blob(blob)
        return b"".join(g.save_to_bytes())

    monkeypatch.setattr(glb, "glb_container", library)
    theirs = core.export("hh", **model_parts, formats={"glb"}, hair=hair,
                         metres_per_unit=model.metres_per_unit).files["hh.glb"]
    assert ours == theirs


def test_named_coefficients(model):
    c = {"id": np.zeros(model.id_dim), "exp": np.linspace(-0.5, 1.5, model.exp_dim),
         "angles": np.zeros(3), "gamma": np.zeros(27), "trans": np.zeros(3)}
    d = json.loads(json.dumps(model.named_coefficients(c)))
    assert list(d["expression"]) == model.exp_labels
    assert d["expression"]["browDownLeft"] == -0.5 and d["expression"]["tongueOut"] == 1.5
    assert set(d["expression_outside_0_1"]) == {
        n for n, v in d["expression"].items() if not 0 <= v <= 1}
    assert "outside [0, 1]" in d["expression_note"]
    assert d["metres_per_unit"] == pytest.approx(model.metres_per_unit)
    assert set(d["angles_rad"]) == {"x", "y", "z"} and len(d["gamma"]) == 27


# ---------------------------------------------------------------------------- Blender
def _bpy_reset():
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


@NEEDS_BPY
def test_blend_shape_keys_metres_and_parented_eyes(model, model_parts, tmp_path):
    out = tmp_path / "b"
    core.export_to_dir("b", **model_parts, out_dir=out, formats={"blend"},
                       metres_per_unit=model.metres_per_unit)
    bpy = _bpy_reset()
    bpy.ops.wm.open_mainfile(filepath=str(out / "b.blend"))
    try:
        head = bpy.data.objects["head"]
        keys = head.data.shape_keys.key_blocks
        assert [k.name for k in keys][1:] == model.exp_labels and keys[0].name == "Basis"
        w = model_parts["head_neutral"].morphs.weights
        np.testing.assert_allclose([k.value for k in keys][1:], w, atol=1e-6)
        assert all(k.slider_min <= k.value <= k.slider_max for k in keys)
        for e in ("eye_left", "eye_right"):
            assert bpy.data.objects[e].parent == head
        co = np.array([v.co[:] for v in head.data.vertices])  # Basis = neutral, Blender axes
        assert 0.20 <= np.ptp(co[:, 2]) <= 0.27  # z up
        front = co[:, 1].min(), co[:, 1].max()
        nose = co[np.argmin(co[:, 1])]
        assert front[0] < -0.07 and abs(nose[0]) < 0.01  # the face looks toward -y
        assert all(p.use_smooth for p in head.data.polygons)
    finally:
        _bpy_reset()


@NEEDS_BPY
def test_blend_subdivided_head_keeps_its_shape_keys(model, model_parts, tmp_path):
    """``subdivision=1``: the .blend's head has the subdivided vertex count, every shape key
    on it, and a key at weight 1 moves the head as the subdivided morph target does."""
    from services.exporter.subdivide import subdivided

    out = tmp_path / "sb"
    core.export_to_dir("sb", **model_parts, out_dir=out, formats={"blend"},
                       metres_per_unit=model.metres_per_unit, subdivision=1)
    sub = subdivided(model_parts["head_neutral"])
    bpy = _bpy_reset()
    bpy.ops.wm.open_mainfile(filepath=str(out / "sb.blend"))
    try:
        head = bpy.data.objects["head"]
        assert len(head.data.vertices) == len(sub.vertices)
        keys = head.data.shape_keys.key_blocks
        assert [k.name for k in keys][1:] == sub.morphs.names
        basis = np.array([v.co[:] for v in keys[0].data])
        jaw = np.array([v.co[:] for v in keys["jawOpen"].data])
        k = sub.morphs.names.index("jawOpen")
        # Blender axes (x, -z, y), metres: the displacement's size is the target's
        moved = np.linalg.norm(jaw - basis, axis=1)
        want = np.linalg.norm(sub.morphs.offsets[k], axis=1) * model.metres_per_unit
        np.testing.assert_allclose(np.sort(moved), np.sort(want), atol=1e-5)
    finally:
        _bpy_reset()


@NEEDS_BPY
def test_blend_hair_is_parented_with_the_heads_shape_keys(model, model_parts, tmp_path):
    out = tmp_path / "hb"
    core.export_to_dir("hb", **model_parts, out_dir=out, formats={"blend"},
                       metres_per_unit=model.metres_per_unit,
                       hair=_cap(model_parts["head_neutral"]))
    bpy = _bpy_reset()
    bpy.ops.wm.open_mainfile(filepath=str(out / "hb.blend"))
    try:
        hair, head = bpy.data.objects["hair"], bpy.data.objects["head"]
        assert hair.parent == head
        keys = hair.data.shape_keys.key_blocks
        assert [k.name for k in keys][1:] == model.exp_labels
        np.testing.assert_allclose([k.value for k in keys][1:],
                                   model_parts["head_neutral"].morphs.weights, atol=1e-6)
        assert hair.data.materials[0].node_tree.nodes["Image Texture"].image.name == \
            head.data.materials[0].node_tree.nodes["Image Texture"].image.name
    finally:
        _bpy_reset()


@NEEDS_BPY
def test_blender_imports_glb_with_52_shape_keys_and_jaw_opens(model, model_parts, tmp_path):
    path = tmp_path / "j.glb"
    path.write_bytes(core.export("j", **model_parts, formats={"glb"},
                                 metres_per_unit=model.metres_per_unit).files["j.glb"])
    bpy = _bpy_reset()
    try:
        bpy.ops.import_scene.gltf(filepath=str(path))
        head = bpy.data.objects["head"]
        keys = head.data.shape_keys.key_blocks
        assert len(keys) == 53 and [k.name for k in keys][1:] == model.exp_labels
        assert {o.name for o in head.children} == {"eye_left", "eye_right"}

        def evaluated() -> np.ndarray:
            deps = bpy.context.evaluated_depsgraph_get()
            me = head.evaluated_get(deps).to_mesh()
            co = np.array([(head.matrix_world @ v.co)[:] for v in me.vertices])
            head.evaluated_get(deps).to_mesh_clear()
            return co

        for k in keys:
            k.value = 0.0
        bpy.context.view_layer.update()
        neutral = evaluated()
        assert 0.20 <= np.ptp(neutral[:, 2]) <= 0.27
        keys["jawOpen"].value = 1.0
        bpy.context.view_layer.update()
        opened = evaluated()
        neu_m = model_parts["head_neutral"].vertices.astype(np.float64) * model.metres_per_unit
        chin, _ = _chin_and_crown(model, neu_m)
        chin_b = np.array([neu_m[chin, 0], -neu_m[chin, 2], neu_m[chin, 1]])
        near = np.linalg.norm(neutral - chin_b, axis=1) < 1e-5  # its split copies
        assert near.any()
        drop = float((neutral[near, 2] - opened[near, 2]).mean())
        assert 0.01 < drop < 0.05  # the chin goes down 1-5 cm
        assert all(p.use_smooth for p in head.data.polygons)
    finally:
        _bpy_reset()


@NEEDS_BPY
def test_blender_default_obj_import_is_smooth(parts, tmp_path):
    out = tmp_path / "o"
    core.export_to_dir("o", **parts, out_dir=out, formats={"obj"})
    bpy = _bpy_reset()
    try:
        bpy.ops.wm.obj_import(filepath=str(out / "stage3_mesh_id.obj"))
        ob = next(o for o in bpy.data.objects if o.type == "MESH")
        assert all(p.use_smooth for p in ob.data.polygons)
        assert ob.data.has_custom_normals
        n = np.array([c.vector[:] for c in ob.data.corner_normals])
        assert np.abs(np.linalg.norm(n, axis=1) - 1).max() < 1e-3
    finally:
        _bpy_reset()



def test_cli_units_option_reaches_the_request():
    from ffhquv_cli.commands import _options
    from ffhquv_cli.main import build_parser
    from gateway.orchestrator import validate_options

    args = build_parser().parse_args(["fit", "a.jpg", "-o", "out", "--units", "cm"])
    opts = _options(args)
    assert opts.units == "cm"
    validate_options(opts)
    assert _options(build_parser().parse_args(["fit", "a.jpg", "-o", "out"])).units == ""
    opts.units = "inch"
    with pytest.raises(InvalidInput, match="unknown units"):
        validate_options(opts)
