"""Exporter core: the fitted head and eyeballs of one photo to files (plain Python).

Output names (the design card's; MeshLab and Blender load the three OBJs with their textures):

=====================  ==========================================================
``stage3_mesh_id.obj``  head, neutral expression (``mtllib stage3_mesh.mtl``)
``stage3_mesh_exp.obj`` head, fitted expression (same material)
``stage3_mesh.mtl``     ``map_Kd stage3_uv.png``
``stage3_uv.png``       head UV texture
``L_ball.obj``          subject's left eyeball (``mtllib eye_ball_tex.mtl``)
``R_ball.obj``          subject's right eyeball
``eye_ball_tex.mtl``    ``map_Kd eye_ball_tex.png``
``eye_ball_tex.png``    shared eyeball texture
``hair_id.obj``         the hair (a shell over the scalp, a curtain for long hair) on the
                        neutral head; ``hair_exp.obj`` on the fitted expression; both use
                        the head's material and texture (no hair: neither)
``<name>.glb``          head + hair + both eyeballs (children of the head), textures
                        embedded, the head's (and hair's) expressions as named morph targets
                        at the fitted weights
``<name>.blend``        the same in Blender with shape keys (needs ``bpy``)
``preview_front.png``, ``preview_34.png``, ``preview_profile.png``, ``preview_turntable.gif``
                        the head as the GLB opens (fitted expression) with its hair and
                        eyeballs
``<name>.zip``          everything else in one file
=====================  ==========================================================

Units (``units``): by default the GLB and the ``.blend`` are in metres (glTF's and Blender's
unit; ``metres_per_unit`` converts the face model's units) and the OBJ files keep the face
model's units (the paper's ``stage3_mesh_id.obj`` convention), each OBJ saying so in a comment
line. ``"m"``, ``"cm"`` or ``"model"`` puts every format in that unit. The OBJ files carry
smooth vertex normals (``vn``, ``s 1``) equal across UV seams.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ffhquv import vocab
from ffhquv.errors import InvalidInput
from ffhquv.imaging import png_bytes
from ffhquv.mesh import MeshData
from services.exporter import blend as blend_mod
from services.exporter.bundle import zip_bytes
from services.exporter.glb import GlbPart, glb_bytes, sphere_centre
from services.exporter.obj import OutputDir, check_relative_name, check_texture, mtl_text, obj_text

log = logging.getLogger(__name__)

HEAD_OBJ_NEUTRAL = "stage3_mesh_id.obj"
HEAD_OBJ_EXPRESSION = "stage3_mesh_exp.obj"
HEAD_MTL = "stage3_mesh.mtl"
HEAD_PNG = "stage3_uv.png"
HEAD_MATERIAL = "stage3_mesh"
EYE_OBJ_LEFT = "L_ball.obj"
EYE_OBJ_RIGHT = "R_ball.obj"
EYE_MTL = "eye_ball_tex.mtl"
EYE_PNG = "eye_ball_tex.png"
EYE_MATERIAL = "eye_ball_tex"
HAIR_OBJ_NEUTRAL = "hair_id.obj"
HAIR_OBJ_EXPRESSION = "hair_exp.obj"
PREVIEW_FILES = ("preview_front.png", "preview_34.png", "preview_profile.png")
TURNTABLE_FILE = "preview_turntable.gif"

FORMATS = frozenset(vocab.EXPORT_FORMATS)
DEFAULT_FORMATS = vocab.DEFAULT_EXPORT_FORMATS

MEDIA_TYPES = vocab.MEDIA_TYPES
media_type = vocab.media_type


UNITS = ("", *vocab.EXPORT_UNITS)
DEFAULT_METRES_PER_UNIT = 0.1


@dataclass(frozen=True)
class UnitChoice:
    """Scale factors from model units and the unit's description, per file family."""

    obj_scale: float
    obj_unit: str
    asset_scale: float
    asset_unit: str


def resolve_units(units: str, metres_per_unit: float) -> UnitChoice:
    """``units`` ("" | "m" | "cm" | "model") to the scale of the OBJ files and of the
    GLB / ``.blend`` (from model units). Raises InvalidInput for another value or a
    non-positive ``metres_per_unit``."""
    u = (units or "").strip().lower()
    if u not in UNITS:
        raise InvalidInput(f"unknown units {units!r}; use 'm', 'cm' or 'model' (empty = GLB "
                           "and .blend in metres, OBJ in model units)")
    mpu = float(metres_per_unit) if metres_per_unit else DEFAULT_METRES_PER_UNIT
    if not np.isfinite(mpu) or mpu <= 0:
        raise InvalidInput(f"metres_per_unit must be positive, got {metres_per_unit}")
    model = (1.0, f"face-model units (1 unit = {mpu:.6g} m)")
    metres = (mpu, "metres")
    cm = (mpu * 100.0, "centimetres")
    obj, asset = {"": (model, metres), "m": (metres, metres), "cm": (cm, cm),
                  "model": (model, model)}[u]
    return UnitChoice(obj[0], obj[1], asset[0], asset[1])


def _scaled(mesh: MeshData, scale: float) -> MeshData:
    """A copy of ``mesh`` with positions (and morph offsets) times ``scale`` and no stored
    normals (the writers compute seam-consistent ones)."""
    from ffhquv.mesh import MorphTargets

    morphs = None
    if mesh.morphs is not None:
        morphs = MorphTargets(mesh.morphs.names, mesh.morphs.offsets * np.float32(scale),
                              mesh.morphs.weights)
    return MeshData(mesh.vertices * np.float32(scale), mesh.faces, mesh.uvs, mesh.uv_faces,
                    morphs=morphs)


@dataclass
class ExportResult:
    """Files of one photo (relative name -> bytes, in writing order) and what was skipped."""

    files: dict[str, bytes] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _check_mesh(mesh: MeshData, what: str, need_uv: bool = True) -> MeshData:
    try:
        mesh.validate()
    except InvalidInput as e:
        raise InvalidInput(f"{what}: {e}") from None
    if need_uv and mesh.uvs is None:
        raise InvalidInput(f"{what}: mesh has no texture coordinates")
    return mesh


def export(
    name: str,
    head_neutral: MeshData,
    head_expression: MeshData | None,
    head_texture: np.ndarray,
    left_eye: MeshData,
    right_eye: MeshData,
    eye_texture: np.ndarray,
    formats: set[str] | frozenset[str] | None = None,
    extra_files: dict[str, bytes] | None = None,
    *,
    preview_size: int = 512,
    head_texture_png: bytes | None = None,
    eye_texture_png: bytes | None = None,
    metres_per_unit: float = DEFAULT_METRES_PER_UNIT,
    units: str = "",
    preview_device: str = "cpu",
    hair: MeshData | None = None,
    subdivision: int = 0,
) -> ExportResult:
    """Produce the requested output files in memory.

    Args:
        name: the photo stem, used for ``<name>.glb`` / ``.blend`` / ``.zip``.
        head_neutral: fitted head without expression, model space, with UVs.
        head_expression: the same topology with the fitted expression (None = the neutral one).
        head_texture: ``uint8 [S, S, 3]`` head UV texture, row 0 = ``v = 1``.
        left_eye / right_eye: eyeball meshes of the subject's left / right eye, with UVs.
        eye_texture: ``uint8 [E, E, 3]`` shared eyeball texture.
        formats: subset of :data:`FORMATS`; None = :data:`DEFAULT_FORMATS`.
        extra_files: pass-through files (``report.json``, stage files), put in the output and
            the bundle unchanged.
        preview_size: side of the preview renders in pixels.
        head_texture_png / eye_texture_png: the textures as the PNG bytes they arrived in
            (encoded once, where they were made); written as they are instead of encoding the
            arrays again. They must encode ``head_texture`` / ``eye_texture``.
        metres_per_unit: metres per model unit of the meshes (0 = 0.1).
        units: "" (GLB / .blend in metres, OBJ in model units), "m", "cm" or "model".
        preview_device: where the previews render ("cpu", "cuda": the GPU rasteriser).
        hair: the hair mesh (model space, neutral head; UVs into ``head_texture``; its morph
            targets, when present, some of ``head_neutral``'s, by name, in its order) or None.
        subdivision: 0 = the head as fitted; 1 = the head after one level of Loop subdivision
            (:mod:`services.exporter.subdivide`: 4x the triangles, its morph targets and UVs
            subdivided with it) in every format. The eyeballs and the hair stay as they are.
    Returns:
        :class:`ExportResult`. A format that cannot be produced here (``blend`` without bpy,
        previews without the renderer) is skipped with a warning; the others are produced.
    Raises:
        InvalidInput: bad name, unknown format, malformed mesh or texture, reserved or
            invalid extra file names.
    """
    if not name or "/" in name or name in (".", ".."):
        raise InvalidInput(f"invalid output name {name!r}")
    check_relative_name(name)
    fmts = set(DEFAULT_FORMATS if not formats else formats)
    unknown = fmts - FORMATS
    if unknown:
        raise InvalidInput(f"unknown export formats {sorted(unknown)}; known: {sorted(FORMATS)}")
    _check_mesh(head_neutral, "head_neutral")
    if head_expression is None:
        head_expression = head_neutral
    _check_mesh(head_expression, "head_expression")
    if head_expression.vertices.shape != head_neutral.vertices.shape:
        raise InvalidInput("head_expression must have the same vertex count as head_neutral")
    _check_mesh(left_eye, "left_eye")
    if hair is not None:
        _check_mesh(hair, "hair")
        if hair.morphs is not None:
            names = [] if head_neutral.morphs is None else head_neutral.morphs.names
            pos = [names.index(n) if n in names else -1 for n in hair.morphs.names]
            if -1 in pos or pos != sorted(pos):
                raise InvalidInput("hair: its morph targets must be the head's (names the head "
                                   "has, in the head's order)")
    _check_mesh(right_eye, "right_eye")
    if subdivision not in vocab.SUBDIVISION_LEVELS:
        raise InvalidInput(f"subdivision must be one of {list(vocab.SUBDIVISION_LEVELS)}, got "
                           f"{subdivision}", field="subdivision")
    check_texture(head_texture, "head texture")
    check_texture(eye_texture, "eye texture")
    if subdivision:  # once every input is checked
        from services.exporter.subdivide import subdivided

        same = head_expression is head_neutral
        head_neutral = subdivided(head_neutral)
        head_expression = head_neutral if same else subdivided(head_expression)
    extra = dict(extra_files or {})
    uc = resolve_units(units, metres_per_unit)
    # the hair as the head opens (its morph targets at the fitted weights), for the
    # expression OBJ and the previews
    posed_hair = (hair.posed() if hair is not None and fmts & {"obj", "preview", "turntable"}
                  else None)

    res = ExportResult()
    files = res.files
    # the previews (a render, on the GPU when there is one, and PNG encodes that let the GIL
    # go) on a thread of their own while the OBJ and GLB are written here; the thread ends
    # with the call (a thread that ran torch's CPU ops keeps an OpenMP team while it lives)
    views_pool = views_job = preview_missing = None
    if fmts & {"preview", "turntable"}:
        try:
            from services.exporter import preview
        except ImportError as e:
            preview_missing = f"previews skipped: the renderer is not available ({e})"
        else:
            views_pool = ThreadPoolExecutor(1, thread_name_prefix="export-previews")
            views_job = views_pool.submit(_preview_files, preview, fmts, head_expression,
                                          head_texture, left_eye, right_eye, eye_texture,
                                          preview_size, preview_device, posed_hair)
    try:
        _write_assets(res, name, fmts, head_neutral, head_expression, head_texture, left_eye,
                      right_eye, eye_texture, head_texture_png, eye_texture_png, uc,
                      metres_per_unit, hair, posed_hair)
    finally:
        if views_pool is not None:
            views_pool.shutdown(wait=True)
    if preview_missing:
        res.warnings.append(preview_missing)
    if views_job is not None:
        files.update(views_job.result())

    for fname, data in extra.items():
        check_relative_name(fname, allow_subdir=True)
        if fname in files or fname == f"{name}.zip":
            raise InvalidInput(f"extra file {fname!r} collides with an exported file")
        files[fname] = bytes(data)

    if "zip" in fmts:
        files[f"{name}.zip"] = zip_bytes(files, folder=name)
    return res


def _preview_files(preview, fmts: set[str], head_expression: MeshData,
                   head_texture: np.ndarray, left_eye: MeshData, right_eye: MeshData,
                   eye_texture: np.ndarray, preview_size: int, preview_device: str,
                   posed_hair: MeshData | None) -> dict[str, bytes]:
    """The preview PNGs and the turntable GIF that ``fmts`` asks for, by file name."""
    files: dict[str, bytes] = {}
    # the head as a viewer opens the GLB / .blend: the fitted expression on
    views = preview.render_views(head_expression, head_texture, left_eye, right_eye,
                                 eye_texture, size=preview_size, device=preview_device,
                                 hair=posed_hair)
    if "preview" in fmts:
        for fname, img in zip(PREVIEW_FILES, views, strict=True):
            files[fname] = png_bytes(img)
    if "turntable" in fmts:
        files[TURNTABLE_FILE] = preview.turntable_gif(
            head_expression, head_texture, left_eye, right_eye, eye_texture,
            size=min(preview_size, 256), device=preview_device, hair=posed_hair)
    return files


def _write_assets(res: ExportResult, name: str, fmts: set[str], head_neutral: MeshData,
                  head_expression: MeshData, head_texture: np.ndarray, left_eye: MeshData,
                  right_eye: MeshData, eye_texture: np.ndarray, head_texture_png: bytes | None,
                  eye_texture_png: bytes | None, uc, metres_per_unit: float,
                  hair: MeshData | None, posed_hair: MeshData | None) -> None:
    """:func:`export`'s OBJ, GLB and .blend files into ``res`` (the caller's thread)."""
    files = res.files
    obj_files: dict[str, bytes] = {}
    frame = "y up, face toward +z"
    # each texture is PNG-encoded once, for the OBJ files and the GLB (encoding a 1024 texture
    # is the slowest part of an export)
    textured = bool(fmts & {"obj", "blend", "glb"})
    head_png = (head_texture_png or png_bytes(head_texture)) if textured else b""
    eye_png = (eye_texture_png or png_bytes(eye_texture)) if textured else b""
    if "obj" in fmts:
        units_line = f"units: {uc.obj_unit}; {frame}"

        def obj(mesh: MeshData, what: str, mtl: str, mat: str) -> bytes:
            return obj_text(_scaled(mesh, uc.obj_scale), mtllib=mtl, material=mat,
                            with_normals=True,
                            header=f"ffhq-uv {name}: {what}\n{units_line}").encode()

        obj_files[HEAD_OBJ_NEUTRAL] = obj(head_neutral, "head, neutral expression", HEAD_MTL,
                                          HEAD_MATERIAL)
        obj_files[HEAD_OBJ_EXPRESSION] = obj(head_expression, "head, fitted expression",
                                             HEAD_MTL, HEAD_MATERIAL)
        obj_files[HEAD_MTL] = mtl_text(HEAD_MATERIAL, HEAD_PNG).encode()
        obj_files[HEAD_PNG] = head_png
        obj_files[EYE_OBJ_LEFT] = obj(left_eye, "left eyeball", EYE_MTL, EYE_MATERIAL)
        obj_files[EYE_OBJ_RIGHT] = obj(right_eye, "right eyeball", EYE_MTL, EYE_MATERIAL)
        obj_files[EYE_MTL] = mtl_text(EYE_MATERIAL, EYE_PNG, specular=0.5,
                                      shininess=80.0).encode()
        obj_files[EYE_PNG] = eye_png
        if hair is not None:
            obj_files[HAIR_OBJ_NEUTRAL] = obj(hair, "hair, neutral expression", HEAD_MTL,
                                              HEAD_MATERIAL)
            obj_files[HAIR_OBJ_EXPRESSION] = obj(posed_hair, "hair, fitted expression",
                                                 HEAD_MTL, HEAD_MATERIAL)
        files.update(obj_files)

    if fmts & {"glb", "blend"}:
        head_a = _scaled(head_neutral, uc.asset_scale)
        hair_a = None if hair is None else _scaled(hair, uc.asset_scale)
        eyes_a = [_scaled(e, uc.asset_scale) for e in (left_eye, right_eye)]
        pivots = [sphere_centre(e.vertices) for e in eyes_a]
    if "glb" in fmts:
        extras = {"metres_per_model_unit": float(metres_per_unit or DEFAULT_METRES_PER_UNIT)}
        if head_a.morphs is not None:
            extras["morph_targets"] = (
                "the head mesh's targets are the face model's expressions (ARKit blendshape "
                "names in mesh.extras.targetNames); mesh.weights = the fitted expression, "
                "all zero = the neutral head")
        hair_part = [] if hair_a is None else [
            GlbPart("hair", hair_a, head_texture, roughness=0.8, texture_key="head",
                    texture_png=head_png, parent="head")]
        files[f"{name}.glb"] = glb_bytes([
            GlbPart("head", head_a, head_texture, roughness=0.6, texture_key="head",
                    texture_png=head_png), *hair_part,
            GlbPart("eye_left", eyes_a[0], eye_texture, roughness=0.1, texture_key="eye",
                    texture_png=eye_png, parent="head", pivot=pivots[0]),
            GlbPart("eye_right", eyes_a[1], eye_texture, roughness=0.1, texture_key="eye",
                    texture_png=eye_png, parent="head", pivot=pivots[1]),
        ], unit=uc.asset_unit, extras=extras)

    if "blend" in fmts:
        if not blend_mod.bpy_available():
            res.warnings.append(blend_mod.BPY_MISSING.format(name=name))
        else:
            files[f"{name}.blend"] = _blend(name, head_a, eyes_a, pivots,
                                            {HEAD_PNG: head_png, EYE_PNG: eye_png}, hair_a)


def _blend(name: str, head: MeshData, eyes: list[MeshData], pivots: list[np.ndarray],
           pngs: dict[str, bytes], hair: MeshData | None = None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ffhquv-blend-") as td:
        for fname, data in pngs.items():
            (Path(td) / fname).write_bytes(data)
        path = blend_mod.write_blend(Path(td), name, [
            blend_mod.BlendPart("head", head, HEAD_PNG, 0.6),
            blend_mod.BlendPart("eye_left", eyes[0], EYE_PNG, 0.1, "head", pivots[0]),
            blend_mod.BlendPart("eye_right", eyes[1], EYE_PNG, 0.1, "head", pivots[1]),
        ] + ([] if hair is None else [blend_mod.BlendPart("hair", hair, HEAD_PNG, 0.8,
                                                           "head")]))
        return path.read_bytes()


def export_to_dir(
    name: str,
    head_neutral: MeshData,
    head_expression: MeshData | None,
    head_texture: np.ndarray,
    left_eye: MeshData,
    right_eye: MeshData,
    eye_texture: np.ndarray,
    out_dir: str | os.PathLike,
    formats: set[str] | frozenset[str] | None = None,
    extra_files: dict[str, bytes] | None = None,
    *,
    replace: bool = True,
    preview_size: int = 512,
    metres_per_unit: float = DEFAULT_METRES_PER_UNIT,
    units: str = "",
    hair: MeshData | None = None,
    subdivision: int = 0,
) -> ExportResult:
    """:func:`export`, then write every file into ``out_dir`` (the folder of this photo, e.g.
    ``OUT/<name>``) atomically through :class:`OutputDir`: on any error no folder is left.

    ``replace`` allows replacing an existing ``out_dir``. Returns the same result as
    :func:`export`.
    """
    res = export(name, head_neutral, head_expression, head_texture, left_eye, right_eye,
                 eye_texture, formats, extra_files, preview_size=preview_size,
                 metres_per_unit=metres_per_unit, units=units, hair=hair,
                 subdivision=subdivision)
    with OutputDir(out_dir, replace=replace) as od:
        for fname, data in res.files.items():
            od.write_bytes(fname, data)
    for w in res.warnings:
        log.warning(w)
    return res
