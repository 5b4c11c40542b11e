"""Re-export of :mod:`ffhquv.objfile` (OBJ / MTL / PNG writing, atomic output folders), which
moved to the base package so the fitter and the eyeball service need not import the exporter.
New code imports :mod:`ffhquv.objfile`."""

from ffhquv.objfile import (  # noqa: F401
    OutputDir,
    atomic_write_bytes,
    check_relative_name,
    check_texture,
    morph_normal_deltas,
    mtl_text,
    obj_text,
    read_obj,
    smooth_normals,
    vertex_normals,
    write_mtl,
    write_obj,
    write_png,
)

__all__ = [
    "OutputDir",
    "atomic_write_bytes",
    "check_relative_name",
    "check_texture",
    "morph_normal_deltas",
    "mtl_text",
    "obj_text",
    "read_obj",
    "smooth_normals",
    "vertex_normals",
    "write_mtl",
    "write_obj",
    "write_png",
]
