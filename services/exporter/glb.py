"""Binary glTF 2.0 (``.glb``) of the head and the two eyeballs, textures embedded.

Layout: one root node ``head`` (the head mesh, identity transform) with two children
``eye_left`` / ``eye_right``, each translated to its eyeball's centre with the eyeball mesh
around its own origin (rotate the node to turn the eye). Positions are written in the unit the
caller chooses (the exporter writes metres by default, glTF's own unit), frame y up, face
toward +z (glTF's +y up, +z front).

glTF stores one texture coordinate per vertex, so every mesh is split at its UV seams:
each distinct (vertex, uv) corner pair becomes one glTF vertex. The normals of the split
copies are the same smooth normal (:func:`services.exporter.obj.smooth_normals`), so no crease
shows where UV islands meet. Texture coordinates are converted from the OBJ convention (v up)
to glTF's (t down from the top of the image): ``s = u``, ``t = 1 - v``.

Morph targets: a head mesh with :class:`ffhquv.mesh.MorphTargets` (the face model's 52 ARKit
expressions) gets one glTF morph target per entry with POSITION and NORMAL deltas, the names in
``mesh.extras.targetNames`` (read by three.js, Babylon.js, Blender and Unity's glTF importers)
and the fitted weights as ``mesh.weights``; all-zero weights give the neutral head. A target
moves a part of the head only (a fifth of its vertices on average): its deltas are written as
glTF sparse accessors (the moved vertices' indices and values, the rest zero), which cuts the
default head's GLB from 7.3 to about 3 MB.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import pygltflib as gl

from ffhquv.bykeep import kept_by_content
from ffhquv.imaging import png_bytes
from ffhquv.mesh import MeshData, unique_rows
from services.exporter.obj import check_texture, morph_normal_deltas, smooth_normals


@dataclass
class GlbPart:
    """One node of the scene.

    Attributes:
        name: node / mesh name ("head", "eye_left", "eye_right").
        mesh: the mesh with ``uvs`` / ``uv_faces`` (OBJ convention), in the file's unit;
            ``mesh.morphs`` become morph targets.
        texture: ``uint8 [H, W, 3]`` base colour, row 0 at the top (``v = 1``).
        roughness: PBR roughness in [0, 1].
        texture_key: parts with the same key share one embedded image.
        texture_png: ``texture`` already encoded as PNG (the exporter encodes each texture once
            for the OBJ files and the GLB); None encodes it here.
        parent: name of an earlier part this node is a child of (None = a root node).
        pivot: ``[3]`` node translation; the mesh is written relative to it (None = origin).
    """

    name: str
    mesh: MeshData
    texture: np.ndarray
    roughness: float = 0.6
    texture_key: str | None = None
    texture_png: bytes | None = None
    parent: str | None = None
    pivot: np.ndarray | None = None


def split_seams(mesh: MeshData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                         np.ndarray]:
    """Per-corner unique (vertex, uv) pairs.

    Args:
        mesh: validated mesh with UVs.
    Returns:
        ``positions [K, 3]`` float32, ``uvs [K, 2]`` float32 (OBJ convention),
        ``normals [K, 3]`` float32 (seam-consistent smooth normals), ``indices [T, 3]``
        uint32 into the K split vertices, ``source [K]`` int64 mesh vertex of each.
    """
    if mesh.uvs is None:
        raise ValueError("split_seams needs a mesh with uvs")
    normals = smooth_normals(mesh.vertices, mesh.faces)
    uniq, idx = _corner_pairs(np.asarray(mesh.faces, np.int64),
                              np.asarray(mesh.uv_faces, np.int64))
    return (mesh.vertices[uniq[:, 0]], mesh.uvs[uniq[:, 1]], normals[uniq[:, 0]], idx,
            uniq[:, 0])


#: the split of the last few topologies (every head of a face model has the same faces and
#: UV faces: the split is made once per process; 2.7 ms a head on cpu2, 21 ms a photo in the
#: loaded exporters of BENCHMARKS.md's thirtieth session)
SEAM_SPLITS_KEPT = 8


@kept_by_content(SEAM_SPLITS_KEPT)
def _corner_pairs(faces: np.ndarray, uv_faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique (vertex, uv) pairs [K, 2] int64, corner indices [T, 3] uint32)`` of int64
    ``faces`` and ``uv_faces`` ``[T, 3]``, read-only."""
    pairs = np.stack([faces.ravel(), uv_faces.ravel()], -1)
    uniq, inverse = unique_rows(pairs, return_inverse=True)
    idx = inverse.reshape(-1, 3).astype(np.uint32)
    uniq.flags.writeable = idx.flags.writeable = False
    return uniq, idx


def sphere_centre(vertices: np.ndarray) -> np.ndarray:
    """``[3]`` least-squares centre of the sphere through ``vertices [N, 3]`` (an eyeball's
    pivot; its corneal bulge moves it by a small fraction of the radius)."""
    v = vertices.astype(np.float64)
    a = np.concatenate([2 * v, np.ones((len(v), 1))], 1)
    sol, *_ = np.linalg.lstsq(a, (v**2).sum(1), rcond=None)
    return sol[:3]


class _Builder:
    def __init__(self) -> None:
        self.blob = bytearray()
        self.g = gl.GLTF2(asset=gl.Asset(generator="ffhq-uv exporter", version="2.0"))
        self.g.scenes = [gl.Scene(nodes=[])]
        self.g.scene = 0

    def _view(self, data: bytes, target: int | None = None) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        self.g.bufferViews.append(gl.BufferView(buffer=0, byteOffset=len(self.blob),
                                                byteLength=len(data), target=target))
        self.blob.extend(data)
        return len(self.g.bufferViews) - 1

    def accessor(self, arr: np.ndarray, kind: str, target: int, minmax: bool = False) -> int:
        comp = gl.UNSIGNED_INT if arr.dtype == np.uint32 else gl.FLOAT
        view = self._view(np.ascontiguousarray(arr).tobytes(), target)
        acc = gl.Accessor(bufferView=view, componentType=comp, count=int(arr.shape[0]),
                          type=kind)
        if minmax:
            acc.min = arr.min(0).astype(float).tolist()
            acc.max = arr.max(0).astype(float).tolist()
        self.g.accessors.append(acc)
        return len(self.g.accessors) - 1

    def delta_accessor(self, arr: np.ndarray, kind: str, rows: np.ndarray,
                       bounds: tuple[np.ndarray, np.ndarray] | None = None) -> int:
        """A float32 morph-target delta ``arr [K, C]`` whose rows ``rows`` (ascending) are
        the ones not zero: glTF's sparse form (no base buffer, those rows listed with their
        indices) when that is smaller, a plain accessor otherwise, and no buffer at all for
        an all-zero target (read as zeros). ``bounds``: its ``(min, max)`` over every row,
        written as the accessor's (a POSITION delta needs them)."""
        arr = np.ascontiguousarray(arr, np.float32)
        n, c = arr.shape
        small = n <= 65535
        acc = gl.Accessor(componentType=gl.FLOAT, count=int(n), type=kind, byteOffset=None)
        if bounds is not None:
            acc.min, acc.max = (b.astype(float).tolist() for b in bounds)
        if len(rows) * (c * 4 + (2 if small else 4)) >= n * c * 4:
            acc.bufferView = self._view(arr.tobytes(), gl.ARRAY_BUFFER)
            acc.byteOffset = 0
        elif len(rows):
            acc.sparse = gl.Sparse(
                count=int(len(rows)),
                indices=gl.AccessorSparseIndices(
                    bufferView=self._view(rows.astype(np.uint16 if small else np.uint32)
                                          .tobytes()),
                    componentType=gl.UNSIGNED_SHORT if small else gl.UNSIGNED_INT),
                values=gl.AccessorSparseValues(bufferView=self._view(arr[rows].tobytes())))
        self.g.accessors.append(acc)
        return len(self.g.accessors) - 1

    def texture(self, rgb: np.ndarray, png: bytes | None = None) -> int:
        view = self._view(png if png is not None else png_bytes(rgb))
        self.g.images.append(gl.Image(bufferView=view, mimeType="image/png"))
        if not self.g.samplers:
            self.g.samplers.append(gl.Sampler(magFilter=gl.LINEAR,
                                              minFilter=gl.LINEAR_MIPMAP_LINEAR,
                                              wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE))
        self.g.textures.append(gl.Texture(sampler=0, source=len(self.g.images) - 1))
        return len(self.g.textures) - 1

    def part(self, part: GlbPart, tex_index: int, node_of: dict[str, int]) -> None:
        mesh = part.mesh
        pivot = (np.zeros(3) if part.pivot is None
                 else np.asarray(part.pivot, np.float64).reshape(3))
        pos, uv, nrm, idx, src = split_seams(mesh)
        pos = (pos.astype(np.float64) - pivot).astype(np.float32)
        st = np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1).astype(np.float32)
        f32 = np.float32
        attrs = gl.Attributes(
            POSITION=self.accessor(pos, gl.VEC3, gl.ARRAY_BUFFER, True),
            NORMAL=self.accessor(nrm.astype(f32), gl.VEC3, gl.ARRAY_BUFFER),
            TEXCOORD_0=self.accessor(st, gl.VEC2, gl.ARRAY_BUFFER),
        )
        targets, names, weights = [], None, None
        if mesh.morphs is not None and len(mesh.morphs.names):
            mt = mesh.morphs
            # each target's change of the normals, on the faces it moves
            dn = morph_normal_deltas(mesh.vertices, mt.offsets, mesh.faces)[:, src]
            dn[np.abs(dn) < 1e-7] = 0.0  # float noise away from the target's region
            dp = mt.offsets[:, src].astype(f32)
            moved_p, moved_n = np.any(dp != 0, axis=2), np.any(dn != 0, axis=2)
            lo, hi = dp.min(1), dp.max(1)  # [targets, 3]
            for k in range(len(dp)):
                targets.append(gl.Attributes(
                    POSITION=self.delta_accessor(dp[k], gl.VEC3, np.flatnonzero(moved_p[k]),
                                                 (lo[k], hi[k])),
                    NORMAL=self.delta_accessor(dn[k], gl.VEC3, np.flatnonzero(moved_n[k]))))
            names = list(mt.names)
            weights = [float(w) for w in mt.weights]
        ind = self.accessor(idx.reshape(-1, 1), gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER)
        self.g.materials.append(gl.Material(
            name=f"{part.name}_material",
            pbrMetallicRoughness=gl.PbrMetallicRoughness(
                baseColorTexture=gl.TextureInfo(index=tex_index), metallicFactor=0.0,
                roughnessFactor=float(part.roughness)),
            doubleSided=False))
        prim = gl.Primitive(attributes=attrs, indices=ind, material=len(self.g.materials) - 1,
                            mode=gl.TRIANGLES)
        if targets:
            prim.targets = targets
        gmesh = gl.Mesh(name=part.name, primitives=[prim])
        if names is not None:
            gmesh.weights = weights
            gmesh.extras = {"targetNames": names}
        self.g.meshes.append(gmesh)
        node = gl.Node(name=part.name, mesh=len(self.g.meshes) - 1)
        if part.pivot is not None:
            node.translation = pivot.tolist()
        self.g.nodes.append(node)
        ni = len(self.g.nodes) - 1
        node_of[part.name] = ni
        if part.parent is None:
            self.g.scenes[0].nodes.append(ni)
        else:
            self.g.nodes[node_of[part.parent]].children.append(ni)

    def finish(self) -> bytes:
        while len(self.blob) % 4:
            self.blob.append(0)
        self.g.buffers = [gl.Buffer(byteLength=len(self.blob))]
        return glb_container(self.g, bytes(self.blob))


_FIELDS: dict[type, tuple[str, ...]] = {}


def _plain(obj):
    """pygltflib's ``gltf_asdict`` of a glTF object without its deep copy of every value (the
    objects are serialised at once and not kept)."""
    t = type(obj)
    if t is gl.Attributes:
        return dict(obj.__dict__)
    names = _FIELDS.get(t)
    if names is None and is_dataclass(t):
        names = _FIELDS[t] = tuple(f.name for f in fields(t))
    if names is not None:
        return {n: _plain(getattr(obj, n)) for n in names}
    if t is list or t is tuple:
        return [_plain(v) for v in obj]
    if t is dict:
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def glb_container(g: gl.GLTF2, blob: bytes) -> bytes:
    """The binary glTF of ``g`` (its one buffer, ``blob``, 4-byte aligned, its buffer views in
    order and aligned): the bytes of pygltflib's ``save_to_bytes`` (the same JSON, by
    pygltflib's own rules for empty values and its encoder; tested byte for byte), without
    its copies of the buffer views and the JSON walk that copies every value: 10 ms for the
    head's 52 morph targets instead of 50 (cpu2)."""
    text = json.dumps(gl.delete_empty_keys(_plain(g)), cls=gl.JsonEncoder,
                      default=gl.json_serial, allow_nan=False, skipkeys=True,
                      separators=(",", ":"), indent=None).encode("utf-8")
    text += b" " * (-len(text) % 4)
    blob += b"\0" * (-len(blob) % 4)
    length = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([b"glTF", struct.pack("<II", 2, length), struct.pack("<I", len(text)),
                     b"JSON", text, struct.pack("<I", len(blob)), b"BIN\0", blob])


def glb_bytes(parts: list[GlbPart], *, unit: str = "metres", extras: dict | None = None
              ) -> bytes:
    """Build a ``.glb`` with one node per part.

    Args:
        parts: the meshes with their textures (each mesh must have UVs); a part's ``parent``
            must come earlier in the list.
        unit: what one position unit is, recorded in ``asset.extras.unit``.
        extras: more ``asset.extras`` entries.
    Returns:
        The GLB file bytes.
    Raises:
        InvalidInput: a malformed mesh (see ``MeshData.validate``), a mesh without UVs, an
            unknown parent or a texture that is not ``uint8 [H, W, 3]``.
    """
    from ffhquv.errors import InvalidInput

    b = _Builder()
    b.g.asset.extras = {"unit": unit, "frame": "y up, face toward +z", **(extras or {})}
    shared: dict[str, int] = {}
    node_of: dict[str, int] = {}
    for p in parts:
        p.mesh.validate()
        if p.mesh.uvs is None:
            raise InvalidInput(f"{p.name}: mesh has no texture coordinates")
        if p.parent is not None and p.parent not in node_of:
            raise InvalidInput(f"{p.name}: parent {p.parent!r} is not an earlier part")
        tex = check_texture(p.texture, f"{p.name} texture")
        if p.texture_key is not None and p.texture_key in shared:
            ti = shared[p.texture_key]
        else:
            ti = b.texture(tex, p.texture_png)
            if p.texture_key is not None:
                shared[p.texture_key] = ti
        b.part(p, ti, node_of)
    return b.finish()
