"""Blender ``.blend`` export through the optional ``bpy`` package.

``bpy`` (Blender as a module) pins ``numpy<2`` while opencv needs ``numpy>=2``, so it is not a
pip extra: it lives in its own venv that sees the main one's packages after its own (README,
"Blender export"; ``./run test-blender`` builds that venv).

The scene holds the three OBJs of one photo (neutral head, left and right eyeball) imported
with Blender's own OBJ importer (Y up in the files, Z up in Blender), each with a material
whose Image Texture node feeds the Principled BSDF base colour, smooth shading, and the
textures packed into the file (their paths are relative, ``//stage3_uv.png``), so the
``.blend`` opens anywhere on its own. No environment variable or absolute path is stored.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

BPY_MISSING = ("bpy is not installed: {name}.blend skipped (bpy needs numpy<2, so it runs "
               "from its own venv: see the README, 'Blender export')")

# bpy holds one global Blender session per process: one export at a time.
_LOCK = threading.Lock()


def bpy_available() -> bool:
    """True when ``import bpy`` can work (checked without importing it)."""
    return importlib.util.find_spec("bpy") is not None


def write_blend(folder: Path, name: str, objects: list[tuple[str, str, str, float]]) -> Path:
    """Build ``folder/<name>.blend`` from OBJ / PNG files already in ``folder``.

    Args:
        folder: a folder holding the OBJ, MTL and PNG files (they stay there).
        name: the output stem; the file is ``folder/<name>.blend``.
        objects: ``(obj_file, png_file, object_name, roughness)`` per object, bare names
            inside ``folder``.
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
        images: dict[str, object] = {}
        for obj_file, png_file, obj_name, roughness in objects:
            before = set(bpy.data.objects)
            bpy.ops.wm.obj_import(filepath=str(folder / obj_file), forward_axis="NEGATIVE_Z",
                                  up_axis="Y")
            new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
            if png_file not in images:
                img = bpy.data.images.load(str(folder / png_file), check_existing=True)
                img.pack()
                img.filepath = f"//{png_file}"
                images[png_file] = img
            mat = bpy.data.materials.new(f"{obj_name}_material")
            mat.use_nodes = True
            nodes, links = mat.node_tree.nodes, mat.node_tree.links
            bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
            bsdf.inputs["Roughness"].default_value = float(roughness)
            tex = nodes.new("ShaderNodeTexImage")
            tex.image = images[png_file]
            tex.location = (-400, 300)
            links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
            for o in new:
                o.name = obj_name if len(new) == 1 else f"{obj_name}.{o.name}"
                o.data.name = o.name
                o.data.materials.clear()
                o.data.materials.append(mat)
                for poly in o.data.polygons:
                    poly.use_smooth = True
        # The importer's own materials are unused now; drop them so the file stays tidy.
        for m in list(bpy.data.materials):
            if m.users == 0:
                bpy.data.materials.remove(m)
        bpy.ops.wm.save_as_mainfile(filepath=str(out), check_existing=False, compress=True,
                                    relative_remap=True)
        bpy.ops.wm.read_factory_settings(use_empty=True)
    return out
