"""The one OBJ / MTL / PNG writer of ffhq-uv, atomic file writes and atomic output folders.

Every service that writes a mesh or a texture uses this module. Conventions:

* Meshes are :class:`ffhquv.mesh.MeshData` in model space; texture coordinates in the OBJ
  convention (u right, v up), written unchanged.
* Textures are ``uint8 [H, W, 3]`` RGB arrays, row 0 = top of the PNG = ``v = 1``.
* An OBJ names its material library (``mtllib``) and an MTL names its texture (``map_Kd``) by a
  bare relative file name, so MeshLab and Blender find them next to the OBJ.
* Every file is written to a temporary sibling and moved into place with ``os.replace``, and
  :class:`OutputDir` builds the whole folder of one photo in a hidden temporary sibling folder
  that is renamed to its final name only on success: a reader never sees a half-written file
  or folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from ffhquv.bykeep import kept_by_content
from ffhquv.errors import InvalidInput, PreconditionFailed
from ffhquv.mesh import MeshData, unique_rows

__all__ = [
    "OutputDir",
    "atomic_write",
    "atomic_write_bytes",
    "check_relative_name",
    "morph_normal_deltas",
    "mtl_text",
    "obj_text",
    "read_obj",
    "smooth_normals",
    "write_mtl",
    "write_obj",
    "write_png",
]


def check_relative_name(name: str, *, allow_subdir: bool = False) -> str:
    """Validate a file name that will be written into an output folder or referenced by name.

    Args:
        name: the name; ``"a.png"`` (or ``"sub/a.png"`` when ``allow_subdir``).
        allow_subdir: accept ``/``-separated relative paths without ``..``.
    Returns:
        The name unchanged.
    Raises:
        InvalidInput: empty, absolute, with ``..``, backslashes, whitespace at the ends or line
            breaks, or with a folder part when ``allow_subdir`` is False.
    """
    if not name or name != name.strip() or any(c in name for c in "\\\n\r\t\0"):
        raise InvalidInput(f"invalid file name {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "." in p.parts or name.endswith("/"):
        raise InvalidInput(f"file name {name!r} must be a relative path inside the output folder")
    if not allow_subdir and len(p.parts) != 1:
        raise InvalidInput(f"file name {name!r} must not contain a folder")
    return name


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write the file ``path`` whole or not at all: ``write(tmp)`` fills a temporary sibling
    (mode 0644) that ``os.replace`` then moves into place; on any error the sibling is removed
    and the error raised, ``path`` untouched.

    The parent folder must exist. Returns the path.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _rows(fmt: str, arr: np.ndarray) -> str:
    if len(arr) == 0:
        return ""
    return (fmt * len(arr)) % tuple(arr.ravel().tolist())


#: the topology's lines (``vt`` and ``f``) of the last :data:`TOPOLOGY_TEXT_KEPT` arrays
#: formatted, by (format, the array's bytes): every head of a face model has the same faces
#: and texture coordinates, so they are formatted once per process (these lines are half of
#: a head OBJ's text time, 6.5 of 14 ms on cpu2); only the vertices and normals each time
TOPOLOGY_TEXT_KEPT = 8


@kept_by_content(TOPOLOGY_TEXT_KEPT)
def _topology_rows(fmt: str, arr: np.ndarray) -> str:
    """:func:`_rows` of a topology array (``uvs``, face corners), kept for the next mesh."""
    return _rows(fmt, arr)


def obj_text(mesh: MeshData, *, mtllib: str | None = None, material: str | None = None,
             with_normals: bool = False, header: str | None = None) -> str:
    """Wavefront OBJ text of one mesh.

    Args:
        mesh: the mesh; ``vertices [N, 3]``, ``faces [T, 3]`` (0-based, written 1-based),
            optional ``uvs [M, 2]`` with ``uv_faces [T, 3]`` (OBJ convention, v up) and
            ``normals [N, 3]`` (per vertex, same indices as the vertices).
        mtllib: bare name of the material library (``"stage3_mesh.mtl"``), or None.
        material: material name used for all faces (``usemtl``), or None.
        with_normals: write ``vn`` lines (``mesh.normals`` or :func:`smooth_normals`), ``v/vt/vn``
            face corners and ``s 1`` (smooth shading).
        header: optional comment line(s) written first.
    Returns:
        The file text (``\\n`` line ends). Face corners are ``v/vt`` with UVs, ``v//vn``
        with normals but no UVs, ``v`` otherwise.
    """
    mesh.validate()
    if mtllib is not None:
        check_relative_name(mtllib)
    if material is not None and (not material or any(c.isspace() for c in material)):
        raise InvalidInput(f"invalid material name {material!r}")
    parts: list[str] = []
    if header:
        parts.append("".join(f"# {line}\n" for line in header.splitlines()))
    if mtllib is not None:
        parts.append(f"mtllib {mtllib}\n")
    parts.append(_rows("v %.6f %.6f %.6f\n", mesh.vertices.astype(np.float64)))
    has_uv = mesh.uvs is not None
    if has_uv:
        parts.append(_topology_rows("vt %.6f %.6f\n", mesh.uvs.astype(np.float64)))
    if with_normals:
        n = mesh.normals if mesh.normals is not None else smooth_normals(mesh.vertices,
                                                                          mesh.faces)
        parts.append(_rows("vn %.6f %.6f %.6f\n", n.astype(np.float64)))
    if material is not None:
        parts.append(f"usemtl {material}\n")
    if with_normals:
        parts.append("s 1\n")
    f = mesh.faces + 1
    if has_uv and with_normals:
        cols = np.stack([f, mesh.uv_faces + 1, f], -1).reshape(-1, 9)
        parts.append(_topology_rows("f %d/%d/%d %d/%d/%d %d/%d/%d\n", cols))
    elif has_uv:
        cols = np.stack([f, mesh.uv_faces + 1], -1).reshape(-1, 6)
        parts.append(_topology_rows("f %d/%d %d/%d %d/%d\n", cols))
    elif with_normals:
        cols = np.stack([f, f], -1).reshape(-1, 6)
        parts.append(_topology_rows("f %d//%d %d//%d %d//%d\n", cols))
    else:
        parts.append(_topology_rows("f %d %d %d\n", f))
    return "".join(parts)


def vertex_normals(mesh: MeshData) -> np.ndarray:
    """``float32 [N, 3]`` area-weighted unit vertex normals (outward for CCW faces; +z for
    isolated vertices). numpy twin of :func:`ffhquv.render.renderer.vertex_normals`."""
    v = mesh.vertices.astype(np.float64)
    f = mesh.faces
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for i in range(3):
        np.add.at(n, f[:, i], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))
    return out.astype(np.float32)


def _weld_groups(v0: np.ndarray, weld: float) -> tuple[np.ndarray, int]:
    """``(group [N], count)``: vertices of ``v0 [N, 3]`` closer than ``weld`` times the
    bounding-box diagonal share a group."""
    diag = float(np.linalg.norm(v0.max(0) - v0.min(0))) if len(v0) else 0.0
    q = np.round((v0 - v0.min(0)) / max(diag * weld, 1e-30)).astype(np.int64)
    _, group = unique_rows(q, return_inverse=True)
    return group, (int(group.max()) + 1 if len(group) else 0)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.cross`` of ``[M, 3]`` rows, written out: the same numbers in under half its time
    on a head's 87 000 moved faces (it moves its axes and checks its shapes first)."""
    out = np.empty_like(a)
    out[:, 0] = a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1]
    out[:, 1] = a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]
    out[:, 2] = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return out


def _unit(n: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 1e-30, n / np.maximum(norm, 1e-30), np.array([0.0, 0.0, 1.0]))


def smooth_normals(vertices: np.ndarray, faces: np.ndarray, *, weld: float = 1e-6
                   ) -> np.ndarray:
    """Area-weighted unit vertex normals that are equal on coincident vertices.

    Vertices at the same position (a mesh split at UV seams or at material borders) get the
    average over all their faces, so no crease shows where UV islands meet.

    Args:
        vertices: ``[N, 3]``, or ``[K, N, 3]`` for K poses of one mesh (one pass for all,
            welded where the first pose's vertices coincide; for a head's morph targets
            :func:`morph_normal_deltas` is cheaper).
        faces: ``[T, 3]`` counter-clockwise seen from outside.
        weld: positions closer than ``weld`` times the bounding-box diagonal count as one.
    Returns:
        ``float32 [N, 3]`` (``[K, N, 3]``) unit normals (+z for vertices without area).
    """
    v = np.asarray(vertices, np.float64)
    vb = v if v.ndim == 3 else v[None]
    f = np.asarray(faces, np.int64)
    k = vb.shape[0]
    fn = np.cross(vb[:, f[:, 1]] - vb[:, f[:, 0]], vb[:, f[:, 2]] - vb[:, f[:, 0]])  # [K, T, 3]
    group, g = _weld_groups(vb[0], weld)
    # each face's normal onto its three corners' groups, all poses in one bincount per axis
    slot = (np.arange(k)[:, None, None] * g + group[f][None]).reshape(-1)  # [K * T * 3]
    n = np.stack([np.bincount(slot, weights=np.broadcast_to(
        fn[:, :, None, c], (k, len(f), 3)).reshape(-1), minlength=k * g) for c in range(3)],
        -1).reshape(k, g, 3)[:, group]
    out = _unit(n).astype(np.float32)
    return out if v.ndim == 3 else out[0]


#: the morph targets' own part of :func:`morph_normal_deltas` (which faces each target moves
#: and how it moves their edges), by the offsets' and faces' bytes: a face model's targets are
#: the same for every head, only the neutral pose changes; the few most recent (about 10 MB
#: each for the default head's 52 targets)
MORPH_MOVES_KEPT = 4


class _Moves(NamedTuple):
    """The (target, face) pairs that a set of morph targets moves: ``target``, ``face``
    ``[M]``, ``face_vertices`` ``[M, 3]``, the two edges' offsets
    ``d1 = o1 - o0``, ``d2 = o2 - o0`` and ``cross(d1, d2)``, float64 ``[M, 3]``."""

    target: np.ndarray
    face: np.ndarray
    face_vertices: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    d12: np.ndarray


@kept_by_content(MORPH_MOVES_KEPT)
def _moves(offsets: np.ndarray, f: np.ndarray) -> _Moves:
    """:class:`_Moves` of ``offsets [K, N, 3]`` on the faces ``f [T, 3]`` (int64)."""
    off = offsets.astype(np.float64)
    # every (target, face) pair the target moves, target by target, faces ascending: the
    # sums of morph_normal_deltas add their corners in the order a loop over the targets would
    kk, tf = np.nonzero(np.any(off != 0, axis=2)[:, f].any(2))
    ft = f[tf]
    # the moved corners' offsets, one flat gather (a two-array fancy index is slower)
    o = off.reshape(-1, 3)[kk[:, None] * off.shape[1] + ft]  # [M, 3 corners, 3]
    d1, d2 = o[:, 1] - o[:, 0], o[:, 2] - o[:, 0]
    moves = _Moves(kk, tf, ft, d1, d2, _cross(d1, d2))
    for a in moves:
        a.flags.writeable = False
    return moves


def morph_normal_deltas(vertices: np.ndarray, offsets: np.ndarray, faces: np.ndarray, *,
                        weld: float = 1e-6) -> np.ndarray:
    """How each morph target changes the :func:`smooth_normals` of a mesh.

    ``smooth_normals(vertices + offsets[k]) - smooth_normals(vertices)`` for every target k,
    computed on the faces the target moves only (a face-rig target moves a part of the head;
    elsewhere the change is exactly 0): the welded sums of the neutral pose are kept and each
    target adds its faces' change to the few groups they touch. A face's normal (the cross
    product of its edges) changes by ``cross(e1, d2) + cross(d1, e2) + cross(d1, d2)`` for
    edges ``e`` of the neutral pose and their offsets ``d``: the targets' part is worked out
    once per set of targets and faces (:data:`MORPH_MOVES_KEPT`), only the pose's each call.

    Args:
        vertices: ``[N, 3]`` the neutral pose; offsets: ``[K, N, 3]``; faces: ``[T, 3]``.
        weld: as :func:`smooth_normals` (groups of the neutral pose).
    Returns:
        ``float32 [K, N, 3]``, each the difference of the two float32 unit normals.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    k_all = len(offsets)
    out = np.zeros((k_all, len(v), 3), np.float32)
    if not len(f) or not k_all:
        return out
    group, g = _weld_groups(v, weld)
    corners = group[f].reshape(-1)  # [T * 3]
    e1, e2 = v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]
    fn0 = np.cross(e1, e2)
    acc0 = np.stack([np.bincount(corners, weights=np.repeat(fn0[:, c], 3), minlength=g)
                     for c in range(3)], -1)  # [G, 3] the neutral pose's sums
    n0 = _unit(acc0).astype(np.float32)
    mv = _moves(np.asarray(offsets), f)
    if not len(mv.face):
        return out
    d = _cross(e1[mv.face], mv.d2) + _cross(mv.d1, e2[mv.face]) + mv.d12
    # the (target, group) slot of each moved corner
    slot = (mv.target[:, None] * g + group[mv.face_vertices]).reshape(-1)
    # only the (target, group) slots a target touches: elsewhere the change is exactly 0
    hit = np.flatnonzero(np.bincount(slot, minlength=k_all * g))
    sums = np.stack([np.bincount(slot, weights=np.repeat(d[:, c], 3), minlength=k_all * g)[hit]
                     for c in range(3)], -1)
    diff = np.zeros((k_all * g, 3), np.float32)
    hit_group = hit % g
    diff[hit] = _unit(acc0[hit_group] + sums).astype(np.float32) - n0[hit_group]
    out[:] = diff.reshape(k_all, g, 3)[:, group]
    return out


def mtl_text(material: str, texture_name: str, *, specular: float = 0.0,
             shininess: float = 10.0) -> str:
    """MTL text with one material whose diffuse colour is the texture ``texture_name``.

    Args:
        material: material name (no whitespace), as used by ``usemtl``.
        texture_name: bare relative PNG name for ``map_Kd``.
        specular: grey specular colour ``Ks`` in [0, 1] (0 for skin, ~0.5 for wet eyes).
        shininess: ``Ns`` exponent.
    """
    if not material or any(c.isspace() for c in material):
        raise InvalidInput(f"invalid material name {material!r}")
    check_relative_name(texture_name)
    s = float(np.clip(specular, 0.0, 1.0))
    illum = 2 if s > 0 else 1
    return (f"newmtl {material}\n"
            "Ka 1.000000 1.000000 1.000000\n"
            "Kd 1.000000 1.000000 1.000000\n"
            f"Ks {s:.6f} {s:.6f} {s:.6f}\n"
            f"Ns {shininess:.6f}\n"
            "d 1.000000\n"
            f"illum {illum}\n"
            f"map_Kd {texture_name}\n")


def write_obj(path: str | os.PathLike, mesh: MeshData, *, mtllib: str | None = None,
              material: str | None = None, with_normals: bool = False) -> Path:
    """Write :func:`obj_text` atomically to ``path``; returns the path."""
    return atomic_write_bytes(path, obj_text(mesh, mtllib=mtllib, material=material,
                                             with_normals=with_normals).encode("ascii"))


def write_mtl(path: str | os.PathLike, material: str, texture_name: str, **kw) -> Path:
    """Write :func:`mtl_text` atomically to ``path``; returns the path."""
    return atomic_write_bytes(path, mtl_text(material, texture_name, **kw).encode("ascii"))


def check_texture(rgb: np.ndarray, what: str = "texture") -> np.ndarray:
    """Validate a ``uint8 [H, W, 3]`` RGB image (H, W >= 1); raises InvalidInput otherwise."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidInput(f"{what} must be uint8 [H, W, 3] RGB, got {a.dtype} {a.shape}")
    return a


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write ``uint8 [H, W, 3]`` RGB (row 0 at the top) as PNG, atomically; returns the path."""
    from ffhquv.imaging import png_bytes

    return atomic_write_bytes(path, png_bytes(check_texture(rgb)))


class OutputDir:
    """The output folder of one photo, written atomically as a whole.

    Usage::

        with OutputDir(out / "000007", replace=True) as od:
            write_obj(od / "stage3_mesh_id.obj", mesh, mtllib=..., material=...)
            od.write_bytes("report.json", data)
            (Path(od) / "notes.txt").write_text("...")  # od is os.PathLike: the temp folder
        # here out/000007 exists with every file; on an exception nothing new exists

    Files are written into a hidden temporary sibling ``.<name>.tmp-XXXX``; on a clean exit it
    is renamed to the final path (an existing folder is replaced only when ``replace`` is
    True -- ``overwrite`` is an alias --, otherwise :class:`ffhquv.errors.PreconditionFailed`
    is raised on entry). On any exception the temporary folder is deleted and the exception
    propagates.
    """

    def __init__(self, final: str | os.PathLike, *, replace: bool = False,
                 overwrite: bool | None = None):
        self.final = Path(final)
        self.replace = replace if overwrite is None else bool(overwrite)  # alias
        self.tmp: Path | None = None

    def __fspath__(self) -> str:
        """The temporary folder being written (valid inside the ``with`` block)."""
        if self.tmp is None:
            raise RuntimeError("OutputDir used outside its 'with' block")
        return str(self.tmp)

    def __enter__(self) -> OutputDir:
        parent = self.final.parent
        parent.mkdir(parents=True, exist_ok=True)
        if self.final.exists() and not self.replace:
            raise PreconditionFailed(
                f"output folder {self.final} already exists (pass replace=True to overwrite)")
        self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.final.name}.tmp-"))
        os.chmod(self.tmp, 0o755)  # mkdtemp makes 0700 folders
        return self

    def __truediv__(self, name: str) -> Path:
        return self.path(name)

    def path(self, name: str) -> Path:
        """Path of ``name`` inside the temporary folder (sub-folders are created)."""
        if self.tmp is None:
            raise RuntimeError("OutputDir used outside its 'with' block")
        p = self.tmp / check_relative_name(name, allow_subdir=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, name: str, data: bytes) -> Path:
        return atomic_write_bytes(self.path(name), data)

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def __exit__(self, exc_type, exc, tb) -> None:
        tmp, self.tmp = self.tmp, None
        if tmp is None:
            return
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            if self.final.exists():
                if not self.replace:
                    raise PreconditionFailed(f"output folder {self.final} appeared meanwhile")
                old = Path(tempfile.mkdtemp(dir=self.final.parent,
                                            prefix=f".{self.final.name}.old-"))
                os.rename(self.final, old / "d")
                try:
                    os.rename(tmp, self.final)
                except BaseException:
                    os.rename(old / "d", self.final)  # put the previous folder back
                    shutil.rmtree(old, ignore_errors=True)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, self.final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def read_obj(path: str | os.PathLike) -> MeshData:
    """Read a triangle / polygon OBJ keeping the file's vertex order (for inputs such as the
    reference meshes; trimesh reorders or merges vertices at UV seams).

    Polygons are fanned into triangles; ``vt`` indices are kept per corner when every face has
    them; normals and materials are ignored.

    Returns:
        :class:`MeshData` with ``vertices [N, 3]``, ``faces [T, 3]`` and, when present,
        ``uvs [M, 2]`` / ``uv_faces [T, 3]`` (OBJ convention, v up).
    Raises:
        InvalidInput: a malformed line or an index out of range.
    """
    v: list[list[float]] = []
    vt: list[list[float]] = []
    f: list[list[int]] = []
    ft: list[list[int]] = []
    all_vt = True
    with open(path, encoding="utf-8", errors="replace") as fh:
        for ln, line in enumerate(fh, 1):
            try:
                if line.startswith("v "):
                    v.append([float(x) for x in line.split()[1:4]])
                elif line.startswith("vt "):
                    vt.append([float(x) for x in line.split()[1:3]])
                elif line.startswith("f "):
                    c = [x.split("/") for x in line.split()[1:]]
                    idx = [int(a[0]) for a in c]
                    idx = [i - 1 if i > 0 else len(v) + i for i in idx]
                    has_t = all(len(a) > 1 and a[1] for a in c)
                    all_vt &= has_t
                    tix = ([int(a[1]) for a in c] if has_t else [])
                    tix = [i - 1 if i > 0 else len(vt) + i for i in tix]
                    for k in range(1, len(idx) - 1):
                        f.append([idx[0], idx[k], idx[k + 1]])
                        if has_t:
                            ft.append([tix[0], tix[k], tix[k + 1]])
            except (ValueError, IndexError) as e:
                raise InvalidInput(f"{path}:{ln}: malformed OBJ line: {e}") from None
    use_uv = all_vt and bool(vt) and len(ft) == len(f)
    mesh = MeshData(np.array(v, np.float64), np.array(f, np.int64),
                    np.array(vt, np.float64) if use_uv else None,
                    np.array(ft, np.int64) if use_uv else None)
    mesh.validate()
    return mesh
