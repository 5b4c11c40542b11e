"""Drive an ffhq-uv head with ARKit weights in Blender and render it.

Imports ``<name>.glb`` with Blender's own glTF importer (the 52 ARKit expressions arrive as
shape keys on ``head``, the eyeballs as its children), sets a few shape keys and renders one
picture. Runs with Blender's Python module (``pip install bpy==4.5.4``; ``./run test-blender``
makes ``.venv-blender``) or inside Blender::

    .venv-blender/bin/python examples/blender_arkit.py OUT/000007/000007.glb smile.png \\
        jawOpen=0.35 mouthSmileLeft=0.9 mouthSmileRight=0.9 eyeBlinkLeft=1 browInnerUp=0.6

Unnamed shape keys keep the fitted expression (the GLB's default weights); ``--neutral`` sets
them to 0 first. ``--obj FILE`` imports an OBJ instead (Blender's default OBJ import), and
``--clay`` renders without textures, to judge the shading.
"""

from __future__ import annotations

import argparse
import math
import sys

import bpy
from mathutils import Vector


def load(path: str, obj: bool, scale: float) -> bpy.types.Object:
    """Import ``path`` (GLB, or OBJ with ``obj``) with default settings; returns the head."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if obj:
        bpy.ops.wm.obj_import(filepath=path)
    else:
        bpy.ops.import_scene.gltf(filepath=path)
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    head = next((o for o in meshes if o.name.startswith("head")), max(
        meshes, key=lambda o: len(o.data.vertices)))
    if scale != 1.0:  # an OBJ in face-model units
        for o in meshes:
            o.scale = (scale, scale, scale)
    bpy.context.view_layer.update()
    return head


def set_weights(head: bpy.types.Object, weights: dict[str, float], neutral: bool) -> None:
    keys = head.data.shape_keys.key_blocks if head.data.shape_keys else {}
    if neutral:
        for kb in keys:
            kb.value = 0.0
    for name, w in weights.items():
        if name not in keys:
            raise SystemExit(f"no shape key {name!r}; have: {', '.join(k.name for k in keys)}")
        keys[name].slider_min = min(keys[name].slider_min, w)
        keys[name].slider_max = max(keys[name].slider_max, w)
        keys[name].value = w


def render(head: bpy.types.Object, out: str, size: int, clay: bool) -> None:
    scene = bpy.context.scene
    deps = bpy.context.evaluated_depsgraph_get()
    pts = [head.matrix_world @ v.co for v in head.evaluated_get(deps).data.vertices]
    lo = Vector([min(p[i] for p in pts) for i in range(3)])
    hi = Vector([max(p[i] for p in pts) for i in range(3)])
    centre, height = (lo + hi) / 2, hi.z - lo.z
    cam_data = bpy.data.cameras.new("camera")
    cam_data.lens = 85
    cam = bpy.data.objects.new("camera", cam_data)
    scene.collection.objects.link(cam)
    yaw = math.radians(25)  # a three-quarter view of the face (it looks toward -y)
    dist = height * 2.9
    cam.location = centre + Vector((dist * math.sin(yaw), -dist * math.cos(yaw), 0.1 * height))
    cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    for name, energy, loc in [("key", 350.0, (1.0, -1.2, 1.0)), ("fill", 110.0, (-1.2, -0.8, 0.2))]:
        light = bpy.data.objects.new(name, bpy.data.lights.new(name, "AREA"))
        light.data.energy = energy * height**2
        light.data.size = height
        light.location = centre + Vector(loc) * height * 2.5
        light.rotation_euler = (centre - light.location).to_track_quat("-Z", "Y").to_euler()
        scene.collection.objects.link(light)
    world = bpy.data.worlds.new("world")
    world.color = (0.05, 0.05, 0.06)
    scene.world = world
    if clay:
        clay_mat = bpy.data.materials.new("clay")
        clay_mat.diffuse_color = (0.75, 0.72, 0.7, 1.0)
        for o in scene.objects:
            if o.type == "MESH":
                o.data.materials.clear()
                o.data.materials.append(clay_mat)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 24
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.filepath = out
    bpy.ops.render.render(write_still=True)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="<name>.glb (or an OBJ with --obj)")
    ap.add_argument("out", help="PNG to render")
    ap.add_argument("weights", nargs="*", help="ARKit shape key weights, NAME=VALUE")
    ap.add_argument("--neutral", action="store_true", help="start from the neutral face")
    ap.add_argument("--obj", action="store_true", help="the model is an OBJ")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="scale the imported objects (an OBJ in model units: its metres/unit)")
    ap.add_argument("--clay", action="store_true", help="no textures: judge the shading")
    ap.add_argument("--size", type=int, default=480)
    a = ap.parse_intermixed_args(argv)
    weights = {k: float(v) for k, v in (w.split("=", 1) for w in a.weights)}
    head = load(a.model, a.obj, a.scale)
    if weights or a.neutral:
        set_weights(head, weights, a.neutral)
    render(head, a.out, a.size, a.clay)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])
