"""Binary glTF 2.0 (``.glb``) of the head and the two eyeballs, textures embedded.

glTF stores one texture coordinate per vertex, so every mesh is split at its UV seams:
each distinct (vertex, uv) corner pair becomes one glTF vertex. Texture coordinates are
converted from the OBJ convention (v up) to glTF's (t down from the top of the image):
``s = u``, ``t = 1 - v``. Positions stay in model space (y up, face toward +z, as glTF's
+y up / +z front); units are the face model's (about decimetres), stated in ``asset.extras``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pygltflib as gl

from ffhquv.imaging import png_bytes
from ffhquv.mesh import MeshData
from services.exporter.obj import check_texture, vertex_normals


@dataclass
class GlbPart:
    """One node of the scene.

    Attributes:
        name: node / mesh name ("head", "eye_left", "eye_right").
        mesh: the mesh with ``uvs`` / ``uv_faces`` (OBJ convention).
        texture: ``uint8 [H, W, 3]`` base colour, row 0 at the top (``v = 1``).
        roughness: PBR roughness in [0, 1].
        texture_key: parts with the same key share one embedded image.
        texture_png: ``texture`` already encoded as PNG (the exporter encodes each texture once
            for the OBJ files and the GLB); None encodes it here.
    """

    name: str
    mesh: MeshData
    texture: np.ndarray
    roughness: float = 0.6
    texture_key: str | None = None
    texture_png: bytes | None = None


def split_seams(mesh: MeshData) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-corner unique (vertex, uv) pairs.

    Args:
        mesh: validated mesh with UVs.
    Returns:
        ``positions [K, 3]`` float32, ``uvs [K, 2]`` float32 (OBJ convention),
        ``normals [K, 3]`` float32 (from ``mesh.normals`` or area-weighted), ``indices [T, 3]``
        uint32 into the K split vertices.
    """
    normals = mesh.normals if mesh.normals is not None else vertex_normals(mesh)
    if mesh.uvs is None:
        raise ValueError("split_seams needs a mesh with uvs")
    pairs = np.stack([mesh.faces.ravel(), mesh.uv_faces.ravel()], -1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return (mesh.vertices[uniq[:, 0]], mesh.uvs[uniq[:, 1]], normals[uniq[:, 0]],
            inverse.reshape(-1, 3).astype(np.uint32))


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

    def texture(self, rgb: np.ndarray, png: bytes | None = None) -> int:
        view = self._view(png if png is not None else png_bytes(rgb))
        self.g.images.append(gl.Image(bufferView=view, mimeType="image/png"))
        if not self.g.samplers:
            self.g.samplers.append(gl.Sampler(magFilter=gl.LINEAR,
                                              minFilter=gl.LINEAR_MIPMAP_LINEAR,
                                              wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE))
        self.g.textures.append(gl.Texture(sampler=0, source=len(self.g.images) - 1))
        return len(self.g.textures) - 1

    def part(self, part: GlbPart, tex_index: int) -> None:
        pos, uv, nrm, idx = split_seams(part.mesh)
        st = np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1).astype(np.float32)
        attrs = gl.Attributes(
            POSITION=self.accessor(pos.astype(np.float32), gl.VEC3, gl.ARRAY_BUFFER, True),
            NORMAL=self.accessor(nrm.astype(np.float32), gl.VEC3, gl.ARRAY_BUFFER),
            TEXCOORD_0=self.accessor(st, gl.VEC2, gl.ARRAY_BUFFER),
        )
        ind = self.accessor(idx.reshape(-1, 1), gl.SCALAR, gl.ELEMENT_ARRAY_BUFFER)
        self.g.materials.append(gl.Material(
            name=f"{part.name}_material",
            pbrMetallicRoughness=gl.PbrMetallicRoughness(
                baseColorTexture=gl.TextureInfo(index=tex_index), metallicFactor=0.0,
                roughnessFactor=float(part.roughness)),
            doubleSided=False))
        self.g.meshes.append(gl.Mesh(name=part.name, primitives=[gl.Primitive(
            attributes=attrs, indices=ind, material=len(self.g.materials) - 1,
            mode=gl.TRIANGLES)]))
        self.g.nodes.append(gl.Node(name=part.name, mesh=len(self.g.meshes) - 1))
        self.g.scenes[0].nodes.append(len(self.g.nodes) - 1)

    def finish(self) -> bytes:
        while len(self.blob) % 4:
            self.blob.append(0)
        self.g.buffers = [gl.Buffer(byteLength=len(self.blob))]
        self.g.set_binary_blob(bytes(self.blob))
        return b"".join(self.g.save_to_bytes())


def glb_bytes(parts: list[GlbPart], *, unit: str = "face-model units (about decimetres)"
              ) -> bytes:
    """Build a ``.glb`` with one node per part.

    Args:
        parts: the meshes with their textures (each mesh must have UVs).
        unit: recorded in ``asset.extras.unit``.
    Returns:
        The GLB file bytes.
    Raises:
        InvalidInput: a malformed mesh (see ``MeshData.validate``), a mesh without UVs or a
            texture that is not ``uint8 [H, W, 3]``.
    """
    from ffhquv.errors import InvalidInput

    b = _Builder()
    b.g.asset.extras = {"unit": unit, "frame": "y up, face toward +z"}
    shared: dict[str, int] = {}
    for p in parts:
        p.mesh.validate()
        if p.mesh.uvs is None:
            raise InvalidInput(f"{p.name}: mesh has no texture coordinates")
        tex = check_texture(p.texture, f"{p.name} texture")
        if p.texture_key is not None and p.texture_key in shared:
            ti = shared[p.texture_key]
        else:
            ti = b.texture(tex, p.texture_png)
            if p.texture_key is not None:
                shared[p.texture_key] = ti
        b.part(p, ti)
    return b.finish()
