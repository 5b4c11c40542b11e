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
``<name>.glb``          neutral head + both eyeballs, textures embedded
``<name>.blend``        the same in Blender (needs ``bpy``)
``preview_front.png``, ``preview_34.png``, ``preview_profile.png``, ``preview_turntable.gif``
``<name>.zip``          everything else in one file
=====================  ==========================================================
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ffhquv import vocab
from ffhquv.errors import InvalidInput
from ffhquv.imaging import png_bytes
from ffhquv.mesh import MeshData
from services.exporter import blend as blend_mod
from services.exporter.bundle import zip_bytes
from services.exporter.glb import GlbPart, glb_bytes
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
PREVIEW_FILES = ("preview_front.png", "preview_34.png", "preview_profile.png")
TURNTABLE_FILE = "preview_turntable.gif"

FORMATS = frozenset(vocab.EXPORT_FORMATS)
DEFAULT_FORMATS = vocab.DEFAULT_EXPORT_FORMATS

MEDIA_TYPES = vocab.MEDIA_TYPES
media_type = vocab.media_type


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
    _check_mesh(right_eye, "right_eye")
    check_texture(head_texture, "head texture")
    check_texture(eye_texture, "eye texture")
    extra = dict(extra_files or {})

    res = ExportResult()
    files = res.files
    obj_files: dict[str, bytes] = {}
    # each texture is PNG-encoded once, for the OBJ files and the GLB (encoding a 1024 texture
    # is the slowest part of an export)
    textured = bool(fmts & {"obj", "blend", "glb"})
    head_png = (head_texture_png or png_bytes(head_texture)) if textured else b""
    eye_png = (eye_texture_png or png_bytes(eye_texture)) if textured else b""
    if "obj" in fmts or "blend" in fmts:
        obj_files[HEAD_OBJ_NEUTRAL] = obj_text(
            head_neutral, mtllib=HEAD_MTL, material=HEAD_MATERIAL,
            header=f"ffhq-uv {name}: head, neutral expression").encode()
        obj_files[HEAD_OBJ_EXPRESSION] = obj_text(
            head_expression, mtllib=HEAD_MTL, material=HEAD_MATERIAL,
            header=f"ffhq-uv {name}: head, fitted expression").encode()
        obj_files[HEAD_MTL] = mtl_text(HEAD_MATERIAL, HEAD_PNG).encode()
        obj_files[HEAD_PNG] = head_png
        obj_files[EYE_OBJ_LEFT] = obj_text(left_eye, mtllib=EYE_MTL, material=EYE_MATERIAL,
                                           header=f"ffhq-uv {name}: left eyeball").encode()
        obj_files[EYE_OBJ_RIGHT] = obj_text(right_eye, mtllib=EYE_MTL, material=EYE_MATERIAL,
                                            header=f"ffhq-uv {name}: right eyeball").encode()
        obj_files[EYE_MTL] = mtl_text(EYE_MATERIAL, EYE_PNG, specular=0.5,
                                      shininess=80.0).encode()
        obj_files[EYE_PNG] = eye_png
    if "obj" in fmts:
        files.update(obj_files)

    if "glb" in fmts:
        files[f"{name}.glb"] = glb_bytes([
            GlbPart("head", head_neutral, head_texture, roughness=0.6, texture_png=head_png),
            GlbPart("eye_left", left_eye, eye_texture, roughness=0.1, texture_key="eye",
                    texture_png=eye_png),
            GlbPart("eye_right", right_eye, eye_texture, roughness=0.1, texture_key="eye",
                    texture_png=eye_png),
        ])

    if "blend" in fmts:
        if not blend_mod.bpy_available():
            res.warnings.append(blend_mod.BPY_MISSING.format(name=name))
        else:
            files[f"{name}.blend"] = _blend(name, obj_files)

    if fmts & {"preview", "turntable"}:
        try:
            from services.exporter import preview
        except ImportError as e:
            res.warnings.append(f"previews skipped: the renderer is not available ({e})")
        else:
            views = preview.render_views(head_neutral, head_texture, left_eye, right_eye,
                                         eye_texture, size=preview_size)
            if "preview" in fmts:
                for fname, img in zip(PREVIEW_FILES, views, strict=True):
                    files[fname] = png_bytes(img)
            if "turntable" in fmts:
                files[TURNTABLE_FILE] = preview.turntable_gif(
                    head_neutral, head_texture, left_eye, right_eye, eye_texture,
                    size=min(preview_size, 256))

    for fname, data in extra.items():
        check_relative_name(fname, allow_subdir=True)
        if fname in files or fname == f"{name}.zip":
            raise InvalidInput(f"extra file {fname!r} collides with an exported file")
        files[fname] = bytes(data)

    if "zip" in fmts:
        files[f"{name}.zip"] = zip_bytes(files, folder=name)
    return res


def _blend(name: str, obj_files: dict[str, bytes]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="ffhquv-blend-") as td:
        for fname, data in obj_files.items():
            (Path(td) / fname).write_bytes(data)
        path = blend_mod.write_blend(Path(td), name, [
            (HEAD_OBJ_NEUTRAL, HEAD_PNG, "head", 0.6),
            (EYE_OBJ_LEFT, EYE_PNG, "eye_left", 0.1),
            (EYE_OBJ_RIGHT, EYE_PNG, "eye_right", 0.1),
        ])
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
) -> ExportResult:
    """:func:`export`, then write every file into ``out_dir`` (the folder of this photo, e.g.
    ``OUT/<name>``) atomically through :class:`OutputDir`: on any error no folder is left.

    ``replace`` allows replacing an existing ``out_dir``. Returns the same result as
    :func:`export`.
    """
    res = export(name, head_neutral, head_expression, head_texture, left_eye, right_eye,
                 eye_texture, formats, extra_files, preview_size=preview_size)
    with OutputDir(out_dir, replace=replace) as od:
        for fname, data in res.files.items():
            od.write_bytes(fname, data)
    for w in res.warnings:
        log.warning(w)
    return res
