"""Exporter: every format read back by an independent reader (trimesh, pygltflib, bpy),
textures and UVs intact, exact names, atomic output folders, a real gRPC round trip."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from ffhquv.errors import InvalidInput, PreconditionFailed
from ffhquv.imaging import png_bytes
from ffhquv.mesh import MeshData
from ffhquv.server import build_server, channel
from services.exporter import core
from services.exporter.blend import BPY_MISSING, bpy_available
from services.exporter.obj import OutputDir, mtl_text, obj_text, read_obj, write_obj
from services.eyeball.mesh import eyeball_mesh
from services.eyeball.texture import eyeball_texture

OBJ_FILES_ORDER = ["stage3_mesh_id.obj", "stage3_mesh_exp.obj", "stage3_mesh.mtl",
                   "stage3_uv.png", "L_ball.obj", "R_ball.obj", "eye_ball_tex.mtl",
                   "eye_ball_tex.png"]
OBJ_FILES = set(OBJ_FILES_ORDER)


def _texture(size: int = 128) -> np.ndarray:
    """A texture where every texel differs from its neighbours (a UV flip shows at once)."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def parts():
    head = eyeball_mesh(1.4, n_rings=16, n_segments=24)  # a closed mesh with a UV seam
    head_exp = MeshData(head.vertices * np.array([1.0, 1.05, 1.0]), head.faces, head.uvs,
                        head.uv_faces)
    left = eyeball_mesh(0.12, 12, 16)
    left.vertices += np.array([0.32, 0.35, 0.9], np.float32)
    right = eyeball_mesh(0.12, 12, 16)
    right.vertices += np.array([-0.32, 0.35, 0.9], np.float32)
    return dict(head_neutral=head, head_expression=head_exp, head_texture=_texture(),
                left_eye=left, right_eye=right, eye_texture=eyeball_texture(size=64))


def _sample(tex: np.ndarray, u: np.ndarray, v_down: np.ndarray) -> np.ndarray:
    """Nearest texel at texture-memory coordinates (u right, v_down from the top row)."""
    h, w = tex.shape[:2]
    col = np.clip(np.floor(u * w), 0, w - 1).astype(int)
    row = np.clip(np.floor(v_down * h), 0, h - 1).astype(int)
    return tex[row, col]


def _corners(mesh: MeshData) -> np.ndarray:
    """``[3T, 5]`` (position, OBJ uv) of every face corner."""
    return np.concatenate([mesh.vertices[mesh.faces.ravel()], mesh.uvs[mesh.uv_faces.ravel()]],
                          1).astype(np.float64)


def _match_corners(pos: np.ndarray, uv_up: np.ndarray, mesh: MeshData) -> np.ndarray:
    """Assert each read-back (position, uv) pair is an original face corner (to 1e-4);
    returns the matched original uv per read-back vertex."""
    from scipy.spatial import cKDTree

    c = _corners(mesh)
    d, i = cKDTree(c).query(np.concatenate([pos, uv_up], 1).astype(np.float64))
    assert d.max() < 1e-4, f"a read-back vertex / uv is not an original corner ({d.max():.2g})"
    return c[i, 3:]


def test_obj_text_format(parts):
    m = parts["left_eye"]
    text = obj_text(m, mtllib="eye_ball_tex.mtl", material="eye_ball_tex")
    lines = text.splitlines()
    assert lines[0] == "mtllib eye_ball_tex.mtl"
    assert sum(ln.startswith("v ") for ln in lines) == len(m.vertices)
    assert sum(ln.startswith("vt ") for ln in lines) == len(m.uvs)
    assert sum(ln.startswith("f ") for ln in lines) == len(m.faces)
    assert "usemtl eye_ball_tex" in lines
    f0 = next(ln for ln in lines if ln.startswith("f "))
    a = [tuple(int(x) for x in c.split("/")) for c in f0.split()[1:]]
    assert a == [(int(m.faces[0, i]) + 1, int(m.uv_faces[0, i]) + 1) for i in range(3)]
    with_n = obj_text(m, mtllib=None, material=None, with_normals=True)
    assert "vn " in with_n and "mtllib" not in with_n
    assert mtl_text("x", "t.png").splitlines()[-1] == "map_Kd t.png"
    for bad in ("/abs/x.mtl", "../x.mtl", "sub/x.mtl", ""):
        with pytest.raises(InvalidInput):
            obj_text(m, mtllib=bad, material="m")
    broken = MeshData(m.vertices, m.faces + 10**6, m.uvs, m.uv_faces)
    with pytest.raises(InvalidInput):
        obj_text(broken, mtllib=None, material=None)


def test_obj_text_of_a_kept_topology_is_the_text_formatted_afresh(parts, monkeypatch):
    """The face and texture-coordinate lines are kept per topology (``objfile``): a second
    mesh of the same topology, and one whose faces differ, read exactly as formatted anew."""
    from ffhquv import objfile

    kept_rows = objfile._topology_rows
    m = parts["left_eye"]
    moved = MeshData(m.vertices * 1.5 + 0.25, m.faces, m.uvs, m.uv_faces)
    flipped = MeshData(m.vertices, m.faces[:, ::-1].copy(), m.uvs * 0.5, m.uv_faces[:, ::-1])
    kept = [obj_text(x, mtllib=None, material=None, with_normals=n)
            for x in (m, moved, flipped, m) for n in (False, True)]
    monkeypatch.setattr(objfile, "_topology_rows", objfile._rows)  # nothing kept
    afresh = [obj_text(x, mtllib=None, material=None, with_normals=n)
              for x in (m, moved, flipped, m) for n in (False, True)]
    assert kept == afresh
    assert kept[0] != kept[2] and kept[0] != kept[4]
    assert kept_rows.cache_info().currsize <= objfile.TOPOLOGY_TEXT_KEPT


def test_obj_files_read_back_by_trimesh(tmp_path, parts):
    out = tmp_path / "000007"
    res = core.export_to_dir("000007", **parts, out_dir=out, formats={"obj"})
    assert set(res.files) == OBJ_FILES
    assert {p.name for p in out.iterdir()} == OBJ_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["000007"]  # no temp folder left
    for obj, mtl, png in [("stage3_mesh_id.obj", "stage3_mesh.mtl", "stage3_uv.png"),
                          ("stage3_mesh_exp.obj", "stage3_mesh.mtl", "stage3_uv.png"),
                          ("L_ball.obj", "eye_ball_tex.mtl", "eye_ball_tex.png"),
                          ("R_ball.obj", "eye_ball_tex.mtl", "eye_ball_tex.png")]:
        text = (out / obj).read_text()
        assert f"mtllib {mtl}\n" in text
        assert f"map_Kd {png}\n" in (out / mtl).read_text()
        loaded = trimesh.load(out / obj, process=False)
        assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
        img = np.asarray(loaded.visual.material.image.convert("RGB"))
        src = parts["head_texture"] if png == "stage3_uv.png" else parts["eye_texture"]
        np.testing.assert_array_equal(img, src)
        key = {"stage3_mesh_id.obj": "head_neutral", "stage3_mesh_exp.obj": "head_expression",
               "L_ball.obj": "left_eye", "R_ball.obj": "right_eye"}[obj]
        mesh = parts[key]
        assert len(loaded.faces) == len(mesh.faces)
        _match_corners(loaded.vertices, loaded.visual.uv, mesh)


def test_glb_read_back_by_trimesh_and_pygltflib(parts):
    res = core.export("face", **parts, formats={"glb"}, units="model")
    assert set(res.files) == {"face.glb"}
    data = res.files["face.glb"]
    # pygltflib: nodes, embedded PNGs, glTF texture coordinates (t down)
    g = pygltflib.GLTF2.load_from_bytes(data)
    blob = g.binary_blob()
    assert [n.name for n in g.nodes] == ["head", "eye_left", "eye_right"]
    assert g.nodes[0].children == [1, 2] and g.scenes[0].nodes == [0]  # eyes under the head
    assert len(g.images) == 2  # the eyeballs share one image

    def accessor(i):
        a = g.accessors[i]
        bv = g.bufferViews[a.bufferView]
        n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[a.type]
        dt = np.uint32 if a.componentType == pygltflib.UNSIGNED_INT else np.float32
        raw = blob[bv.byteOffset + (a.byteOffset or 0):][: a.count * n * 4]
        return np.frombuffer(raw, dt).reshape(a.count, n)

    for node, key, tex_key in [(0, "head_neutral", "head_texture"),
                               (1, "left_eye", "eye_texture"), (2, "right_eye", "eye_texture")]:
        prim = g.meshes[g.nodes[node].mesh].primitives[0]
        pos = accessor(prim.attributes.POSITION) + np.asarray(g.nodes[node].translation or 0.0)
        st = accessor(prim.attributes.TEXCOORD_0)
        nrm = accessor(prim.attributes.NORMAL)
        np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-4)
        mat = g.materials[prim.material]
        tex = g.textures[mat.pbrMetallicRoughness.baseColorTexture.index]
        im = g.images[tex.source]
        assert im.mimeType == "image/png"
        bv = g.bufferViews[im.bufferView]
        img = np.asarray(Image.open(io.BytesIO(
            blob[bv.byteOffset: bv.byteOffset + bv.byteLength])).convert("RGB"))
        np.testing.assert_array_equal(img, parts[tex_key])
        mesh = parts[key]
        # sample the texture at each vertex's UV in the file and at the original corner's UV
        ouv = _match_corners(pos, np.stack([st[:, 0], 1 - st[:, 1]], -1), mesh)
        glb_col = _sample(img, st[:, 0], st[:, 1])
        orig_col = _sample(parts[tex_key], ouv[:, 0], 1 - ouv[:, 1])
        assert (glb_col == orig_col).all(-1).mean() > 0.99

    # trimesh: an independent GLB reader (converts UVs back to v up)
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    assert set(scene.geometry) == {"head", "eye_left", "eye_right"}
    for name, key, tex_key in [("head", "head_neutral", "head_texture"),
                               ("eye_left", "left_eye", "eye_texture")]:
        geo = scene.geometry[name]
        img = np.asarray(geo.visual.material.baseColorTexture.convert("RGB"))
        np.testing.assert_array_equal(img, parts[tex_key])
        world = trimesh.transform_points(geo.vertices, scene.graph.get(name)[0])
        _match_corners(world, geo.visual.uv, parts[key])
        col_trimesh = _sample(img, geo.visual.uv[:, 0], 1 - geo.visual.uv[:, 1])
        prim = g.meshes[[n.name for n in g.nodes].index(name)].primitives[0]
        st = accessor(prim.attributes.TEXCOORD_0)
        np.testing.assert_array_equal(col_trimesh, _sample(img, st[:, 0], st[:, 1]))


def test_zip_bundle_and_extra_files(parts):
    extra = {"report.json": json.dumps({"ok": True}).encode(), "stage1/coeffs.npy": b"\x93NUMPY"}
    res = core.export("p1", **parts, formats={"obj", "glb", "zip"}, extra_files=extra)
    assert set(res.files) == OBJ_FILES | {"p1.glb", "p1.zip", *extra}
    with zipfile.ZipFile(io.BytesIO(res.files["p1.zip"])) as zf:
        names = set(zf.namelist())
        assert names == {f"p1/{n}" for n in res.files if n != "p1.zip"}
        assert zf.read("p1/report.json") == extra["report.json"]
        assert zf.read("p1/stage3_uv.png") == res.files["stage3_uv.png"]
    with pytest.raises(InvalidInput, match="collides"):
        core.export("p1", **parts, formats={"obj"}, extra_files={"stage3_uv.png": b"x"})
    with pytest.raises(InvalidInput):
        core.export("p1", **parts, formats={"obj"}, extra_files={"../evil": b"x"})
    with pytest.raises(InvalidInput, match="unknown export formats"):
        core.export("p1", **parts, formats={"fbx"})


@pytest.mark.skipif(bpy_available(), reason="bpy is installed: the warning path is not taken")
def test_blend_skipped_with_warning_without_bpy(parts):
    res = core.export("p2", **parts, formats={"obj", "blend"})
    assert res.warnings == [BPY_MISSING.format(name="p2")]
    assert res.warnings[0].startswith("bpy is not installed: p2.blend skipped")
    assert "Blender export" in res.warnings[0]
    assert set(res.files) == OBJ_FILES


@pytest.mark.skipif(not bpy_available(), reason="bpy is not installed (it has its own venv: "
                    "./run test-blender)")
def test_blend_read_back_by_bpy(tmp_path, parts):
    import bpy

    out = tmp_path / "p3"
    res = core.export_to_dir("p3", **parts, out_dir=out, formats={"obj", "blend"})
    assert res.warnings == []
    path = out / "p3.blend"
    assert path.is_file()
    bpy.ops.wm.open_mainfile(filepath=str(path))
    try:
        assert len(bpy.data.libraries) == 0
        assert all(i.filepath.startswith("//") and i.packed_file is not None
                   for i in bpy.data.images)
        objs = {o.name: o for o in bpy.data.objects if o.type == "MESH"}
        assert set(objs) == {"head", "eye_left", "eye_right"}
        assert len(objs["head"].data.polygons) == len(parts["head_neutral"].faces)
        for name, tex_key in [("head", "head_texture"), ("eye_left", "eye_texture")]:
            o = objs[name]
            assert all(p.use_smooth for p in o.data.polygons)
            mat = o.data.materials[0]
            bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
            link = bsdf.inputs["Base Color"].links[0]
            img = link.from_node.image
            assert img.packed_file is not None and img.filepath.startswith("//")
            w, h = img.size
            px = np.array(img.pixels[:]).reshape(h, w, 4)[::-1, :, :3]  # bottom-up in Blender
            src = parts[tex_key].astype(np.float64) / 255
            # packed PNG pixels come back as sRGB bytes / 255
            np.testing.assert_allclose(px, src, atol=1 / 255 + 1e-6)
            uv = np.array([d.uv[:] for d in o.data.uv_layers.active.data])
            assert uv.min() >= 0 and uv.max() <= 1
    finally:
        bpy.ops.wm.read_factory_settings(use_empty=True)


@pytest.mark.skipif(not bpy_available(), reason="bpy is not installed (it has its own venv: "
                    "./run test-blender)")
def test_glb_read_back_by_blender(tmp_path, parts):
    import bpy

    path = tmp_path / "g.glb"
    path.write_bytes(core.export("g", **parts, formats={"glb"}).files["g.glb"])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    try:
        bpy.ops.import_scene.gltf(filepath=str(path))
        objs = {o.name: o for o in bpy.data.objects if o.type == "MESH"}
        assert set(objs) == {"head", "eye_left", "eye_right"}
        assert len(objs["head"].data.polygons) == len(parts["head_neutral"].faces)
        for o in objs.values():
            bsdf = next(n for n in o.data.materials[0].node_tree.nodes
                        if n.type == "BSDF_PRINCIPLED")
            assert bsdf.inputs["Base Color"].links[0].from_node.image is not None
    finally:
        bpy.ops.wm.read_factory_settings(use_empty=True)


def test_preview_renders(parts):
    from services.exporter.preview import render_views, turntable_gif

    views = render_views(parts["head_neutral"], parts["head_texture"], parts["left_eye"],
                         parts["right_eye"], parts["eye_texture"], size=96)
    assert len(views) == 3
    for v in views:
        assert v.shape == (96, 96, 3) and v.dtype == np.uint8
        covered = (v < 250).any(-1).mean()
        assert 0.2 < covered < 0.95, covered
    assert np.abs(views[0].astype(int) - views[2].astype(int)).mean() > 1
    gif = turntable_gif(parts["head_neutral"], parts["head_texture"], parts["left_eye"],
                        parts["right_eye"], parts["eye_texture"], size=48, frames=4)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.n_frames == 4


def test_previews_show_the_head_as_the_glb_opens(parts):
    """The preview PNGs are the head with its fitted expression (the GLB's initial morph
    weights, the .blend's shape keys), not the neutral head."""
    from services.exporter.preview import render_views

    exp = parts["head_expression"]
    wide = MeshData(exp.vertices * np.array([1.3, 1.0, 1.0], np.float32), exp.faces, exp.uvs,
                    exp.uv_faces)
    res = core.export("p", parts["head_neutral"], wide, parts["head_texture"],
                      parts["left_eye"], parts["right_eye"], parts["eye_texture"],
                      formats={"preview"}, preview_size=96)
    front = np.asarray(Image.open(io.BytesIO(res.files["preview_front.png"])).convert("RGB"))
    args = (parts["head_texture"], parts["left_eye"], parts["right_eye"], parts["eye_texture"])
    assert np.array_equal(front, render_views(wide, *args, size=96)[0])
    assert not np.array_equal(front, render_views(parts["head_neutral"], *args, size=96)[0])


def test_previews_on_their_own_thread_change_nothing(parts, monkeypatch):
    """The previews render on a thread of their own while the OBJ and GLB are written: the
    files and their order are those of one thread, a preview's error reaches the caller, and
    no thread outlives the call (a thread that ran torch's CPU ops keeps an OpenMP team)."""
    import threading

    from services.exporter import preview

    fmts = {"obj", "glb", "preview", "zip"}
    res = core.export("p", **parts, formats=fmts, preview_size=64)
    assert list(res.files) == [*OBJ_FILES_ORDER, "p.glb", *core.PREVIEW_FILES, "p.zip"]
    # the same bytes as each part made alone
    alone = core.export("p", **parts, formats={"preview"}, preview_size=64).files
    for f in core.PREVIEW_FILES:
        assert res.files[f] == alone[f]
    assert res.files["p.glb"] == core.export("p", **parts, formats={"glb"}).files["p.glb"]

    def broken(*a, **k):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(preview, "render_views", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        core.export("p", **parts, formats=fmts, preview_size=64)
    assert not [t for t in threading.enumerate() if t.name.startswith("export-previews")]


def test_output_dir_is_atomic(tmp_path, parts):
    final = tmp_path / "photo"
    with pytest.raises(RuntimeError), OutputDir(final) as od:
        write_obj(od / "a.obj", parts["left_eye"])
        assert (od / "a.obj").is_file()
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its hidden temp sibling

    with OutputDir(final) as od:
        od.write_text("x.txt", "one")
    assert (final / "x.txt").read_text() == "one"
    assert oct((final / "x.txt").stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(PreconditionFailed), OutputDir(final) as od:
        od.write_text("x.txt", "two")
    assert (final / "x.txt").read_text() == "one"
    with pytest.raises(ValueError), OutputDir(final, replace=True) as od:
        od.write_text("x.txt", "two")
        raise ValueError
    assert (final / "x.txt").read_text() == "one"  # a failed replace keeps the old folder
    with OutputDir(final, replace=True) as od:
        od.write_text("y.txt", "three")
    assert sorted(p.name for p in final.iterdir()) == ["y.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["photo"]
    with OutputDir(final, overwrite=True) as od:  # alias; od is os.PathLike (the temp folder)
        (Path(od) / "z.txt").write_text("z")
        assert Path(od).parent == tmp_path and Path(od).name.startswith(".photo.tmp-")
    assert sorted(p.name for p in final.iterdir()) == ["z.txt"]

    bad = dict(parts, left_eye=MeshData(parts["left_eye"].vertices * np.nan,
                                        parts["left_eye"].faces, parts["left_eye"].uvs,
                                        parts["left_eye"].uv_faces))
    with pytest.raises(InvalidInput, match="left_eye"):
        core.export_to_dir("q", **bad, out_dir=tmp_path / "q", formats={"obj"})
    assert not (tmp_path / "q").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["photo"]


def _request(parts, **kw):
    from ffhquv.pb import exporter_pb2

    return exporter_pb2.ExportRequest(
        name=kw.get("name", "grpc"),
        head_neutral=kw.get("head", parts["head_neutral"]).to_proto(),
        head_expression=parts["head_expression"].to_proto(),
        head_texture_png=png_bytes(parts["head_texture"]),
        left_eye=parts["left_eye"].to_proto(), right_eye=parts["right_eye"].to_proto(),
        eye_texture_png=kw.get("eye_png", png_bytes(parts["eye_texture"])),
        formats=kw.get("formats", [exporter_pb2.EXPORT_FORMAT_OBJ, exporter_pb2.EXPORT_FORMAT_GLB,
                                   exporter_pb2.EXPORT_FORMAT_ZIP]),
        extra_files=kw.get("extra", []))


def test_grpc_export_round_trip(parts, tmp_path):
    from ffhquv.pb import common_pb2, exporter_pb2, exporter_pb2_grpc
    from services.exporter.servicer import register

    server = build_server(register, port=0)
    try:
        stub = exporter_pb2_grpc.ExporterStub(channel(server.address))
        extra = [common_pb2.NamedFile(name="report.json", media_type="application/json",
                                      data=b"{}")]
        resp = stub.Export(_request(parts, extra=extra), timeout=60)
        names = {f.name: f for f in resp.files}
        assert set(names) == OBJ_FILES | {"grpc.glb", "grpc.zip", "report.json"}
        assert names["grpc.glb"].media_type == "model/gltf-binary"
        assert names["stage3_mesh_id.obj"].media_type == "model/obj"
        for f in resp.files:
            (tmp_path / f.name).write_bytes(f.data)
        loaded = trimesh.load(tmp_path / "stage3_mesh_id.obj", process=False)
        np.testing.assert_array_equal(np.asarray(loaded.visual.material.image.convert("RGB")),
                                      parts["head_texture"])

        bad_head = MeshData(parts["head_neutral"].vertices, parts["head_neutral"].faces + 10**5,
                            parts["head_neutral"].uvs, parts["head_neutral"].uv_faces)
        with pytest.raises(grpc.RpcError) as ei:
            stub.Export(_request(parts, head=bad_head), timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "head_neutral" in ei.value.details()
        # a malformed hair mesh: INVALID_ARGUMENT naming the field
        req = _request(parts)
        req.hair.CopyFrom(bad_head.to_proto())
        with pytest.raises(grpc.RpcError) as ei:
            stub.Export(req, timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ei.value.details().startswith("hair:")
        with pytest.raises(grpc.RpcError) as ei:
            stub.Export(_request(parts, eye_png=b"not a png"), timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:
            stub.Export(_request(parts, formats=[exporter_pb2.EXPORT_FORMAT_UNSPECIFIED]),
                        timeout=60)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the server still serves the next request
        resp = stub.Export(_request(parts, formats=[exporter_pb2.EXPORT_FORMAT_GLB]), timeout=60)
        assert [f.name for f in resp.files] == ["grpc.glb"]
        # the same servicer in-process (the gateway's local backend)
        from services.exporter.servicer import ExporterServicer

        local = ExporterServicer().handle(_request(parts, formats=[exporter_pb2.EXPORT_FORMAT_GLB]))
        assert local.files[0].data == resp.files[0].data
        with pytest.raises(InvalidInput):
            ExporterServicer().handle(_request(parts, head=bad_head))
    finally:
        server.stop(0)


def test_reference_head_exports(ref_dir: Path, tmp_path):
    """The real HiFi3D++ head and eyeballs through OBJ and GLB, read back by trimesh."""
    d = ref_dir / "teaser_1"
    mesh = read_obj(d / "mesh_head.obj")
    assert (len(mesh.vertices), len(mesh.uvs), len(mesh.faces)) == (20481, 20792, 40832)
    tex = np.asarray(Image.open(d / "tex_uv.png").convert("RGB"))
    eyes = [read_obj(d / f"mesh_eye_ball_{s}.obj") for s in "LR"]
    etex = np.asarray(Image.open(d / "tex_eye_ball.png").convert("RGB"))
    res = core.export_to_dir("teaser_1", mesh, None, tex, eyes[0], eyes[1], etex,
                             out_dir=tmp_path / "teaser_1", formats={"obj", "glb"})
    back = trimesh.load(tmp_path / "teaser_1" / "stage3_mesh_id.obj", process=False)
    assert len(back.faces) == len(mesh.faces)
    np.testing.assert_array_equal(np.asarray(back.visual.material.image.convert("RGB")), tex)
    _match_corners(back.vertices, back.visual.uv, mesh)
    again = read_obj(tmp_path / "teaser_1" / "stage3_mesh_id.obj")
    np.testing.assert_array_equal(again.faces, mesh.faces)
    np.testing.assert_allclose(again.uvs, mesh.uvs, atol=1e-6)
    scene = trimesh.load(io.BytesIO(res.files["teaser_1.glb"]), file_type="glb")
    assert len(scene.geometry["head"].faces) == len(mesh.faces)


def test_preview_device_choice(monkeypatch):
    """The exporter's previews render where it is told: cpu by default, the GPU for "auto" on
    a machine with one; a CUDA device asked for on a machine without one is refused at start."""
    import torch

    from services.exporter.servicer import ExporterServicer, preview_device

    assert preview_device(None) == "cpu" and ExporterServicer().device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert preview_device("auto") == "cpu"
    with pytest.raises(ValueError, match="no CUDA"):
        preview_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert preview_device("auto") == "cuda" and preview_device("cuda:0") == "cuda:0"


def test_the_exporter_service_warms_before_it_serves(monkeypatch, tmp_path):
    """``register`` exports a small square once before the server is built (the previews'
    rasteriser and the writers' first use: ~2 s of a GPU exporter's first photo), in memory:
    nothing is written (requests after it: ``test_grpc_export_round_trip``)."""
    from services.exporter import servicer as exp_servicer

    calls = []
    real = exp_servicer.ExporterServicer.warm
    monkeypatch.setattr(exp_servicer.ExporterServicer, "warm",
                        lambda self: calls.append(real(self)) or calls[-1])
    monkeypatch.chdir(tmp_path)
    server = build_server(exp_servicer.register, port=0)
    try:
        assert len(calls) == 1 and calls[0] > 0
        assert list(tmp_path.iterdir()) == []
    finally:
        server.stop(0)
