"""Blender ``.blend`` export through the optional ``bpy`` package.

``bpy`` (Blender as a module) pins ``numpy<2`` while opencv needs ``numpy>=2``, so it is not a
pip extra: it lives in its own venv that sees the main one's packages after its own (README,
"Blender export"; ``./run test-blender`` builds that venv).

The scene holds the head and the two eyeballs built straight from the meshes: Blender's own
axes (z up, the face looking toward -y, as Blender's glTF and OBJ importers place a y-up,
+z-facing model), the unit the caller chose (metres by default, Blender's unit), smooth
shading, one material per object whose Image Texture node feeds the Principled BSDF base
colour, the textures packed into the file (paths relative, ``//stage3_uv.png``) so the
``.blend`` opens anywhere on its own. The eyeballs are children of the head, each with its
origin at the eyeball's centre. A head mesh with morph targets gets one shape key per target
(after ``Basis``, the neutral head), set to the fitted weight; a key's slider range is [0, 1]
widened to hold its weight. No environment variable or absolute path is stored.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffhquv.mesh import MeshData

BPY_MISSING = ("bpy is not installed: {name}.blend skipped (bpy needs numpy<2, so it runs "
               "from its own venv: see the README, 'Blender export')")

# bpy holds one global Blender session per process: one export at a time.
_LOCK = threading.Lock()


@dataclass
class BlendPart:
    """One object of the scene.

    Attributes:
        name: object / mesh name.
        mesh: vertices in the file's unit, model frame (y up, face +z), with UVs.
        png_file: bare name of its texture inside the folder given to :func:`write_blend`.
        roughness: Principled BSDF roughness.
        parent: name of an earlier part to parent this object to (None = a root object).
        pivot: ``[3]`` object origin (model frame); the mesh is stored relative to it.
    """

    name: str
    mesh: MeshData
    png_file: str
    roughness: float = 0.6
    parent: str | None = None
    pivot: np.ndarray | None = None


def bpy_available() -> bool:
    """True when ``import bpy`` can work (checked without importing it)."""
    return importlib.util.find_spec("bpy") is not None


def to_blender(xyz: np.ndarray) -> np.ndarray:
    """``[..., 3]`` model frame (y up, face +z) to Blender's (z up, face -y): (x, -z, y)."""
    a = np.asarray(xyz, np.float64)
    return np.stack([a[..., 0], -a[..., 2], a[..., 1]], -1)


def write_blend(folder: Path, name: str, parts: list[BlendPart]) -> Path:
    """Build ``folder/<name>.blend`` from meshes and PNG files already in ``folder``.

    Args:
        folder: a folder holding the parts' PNG files (they stay there).
        name: the output stem; the file is ``folder/<name>.blend``.
        parts: the objects, parents before their children.
    Returns:
        The path of the saved ``.blend``.
    Raises:
        ImportError: bpy is not installed.
    """
    import bpy  # noqa: PLC0415 - optional dependency

    folder = Path(folder).resolve()
    out = folder / f"{name}.blend"
    with _LOCK:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        try:
            _build(bpy, folder, parts)
            bpy.ops.wm.save_as_mainfile(filepath=str(out), check_existing=False,
                                        compress=True, relative_remap=True)
        finally:
            bpy.ops.wm.read_factory_settings(use_empty=True)
    return out


def _build(bpy, folder: Path, parts: list[BlendPart]) -> None:
    scene = bpy.context.scene
    images: dict[str, object] = {}
    objects: dict[str, object] = {}
    for p in parts:
        m = p.mesh
        pivot = np.zeros(3) if p.pivot is None else np.asarray(p.pivot, np.float64)
        base = to_blender(m.vertices.astype(np.float64) - pivot)
        me = bpy.data.meshes.new(p.name)
        me.from_pydata(base.tolist(), [], m.faces.tolist())
        uv_layer = me.uv_layers.new(name="UVMap")
        # from_pydata keeps each face's corner order: loop i of face t is corner (t, i)
        uv_layer.data.foreach_set("uv", m.uvs[m.uv_faces.ravel()].astype(np.float32).ravel())
        me.shade_smooth()
        me.validate()
        me.update()
        if p.png_file not in images:
            img = bpy.data.images.load(str(folder / p.png_file), check_existing=True)
            img.pack()
            img.filepath = f"//{p.png_file}"
            images[p.png_file] = img
        mat = bpy.data.materials.new(f"{p.name}_material")
        mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
        bsdf.inputs["Roughness"].default_value = float(p.roughness)
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = images[p.png_file]
        tex.location = (-400, 300)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        me.materials.append(mat)
        ob = bpy.data.objects.new(p.name, me)
        scene.collection.objects.link(ob)
        ob.location = to_blender(pivot).tolist()
        if p.parent is not None:
            par = objects[p.parent]
            ob.parent = par
            ob.location = (to_blender(pivot) - np.asarray(par.location)).tolist()
        objects[p.name] = ob
        if m.morphs is not None and len(m.morphs.names):
            ob.shape_key_add(name="Basis", from_mix=False)
            for kname, off, w in zip(m.morphs.names, m.morphs.offsets, m.morphs.weights,
                                     strict=True):
                kb = ob.shape_key_add(name=kname, from_mix=False)
                co = base + to_blender(off.astype(np.float64))
                kb.data.foreach_set("co", co.astype(np.float32).ravel())
                kb.slider_min = max(-10.0, min(0.0, math.floor(float(w))))
                kb.slider_max = min(10.0, max(1.0, math.ceil(float(w))))
                kb.value = float(w)
