"""The mesh container passed between the cores of every service, and its proto conversion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ffhquv.bykeep import KeptByIdentity

#: ``Mesh`` messages of the parts that meshes share, by their read-only arrays (topology, UVs,
#: morph-target offsets: a face model's, the same for every photo); the few most recent
_PARTS: KeptByIdentity = KeptByIdentity(8)


def _shared(a: np.ndarray | None) -> bool:
    return a is None or (isinstance(a, np.ndarray) and not a.flags.writeable)


def _rows(a, dtype, cols: int) -> np.ndarray:
    """``a`` as a ``[n, cols]`` array of ``dtype``: ``a`` itself when it is one already (a
    face model's shared read-only arrays stay the same objects, which
    :meth:`MeshData.to_proto` finds its built parts by), else a converted view or copy."""
    if isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == 2 and a.shape[1] == cols:
        return a
    return np.asarray(a, dtype=dtype).reshape(-1, cols)


@dataclass
class MorphTargets:
    """Morph targets (blend shapes) of a mesh: ``vertices + weights . offsets`` is the mesh with
    every target at its weight.

    Attributes:
        names: ``K`` target names (the default face model's are the 52 ARKit blendshapes).
        offsets: ``[K, N, 3]`` float32 position offsets per target, model space.
        weights: ``[K]`` float32 weights of the fitted shape (zeros = the mesh itself).
    """

    names: list[str]
    offsets: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.offsets = np.asarray(self.offsets, dtype=np.float32)
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)

    def validate(self, n_vertices: int) -> None:
        """Raise :class:`ffhquv.errors.InvalidInput` for mismatched sizes, NaNs or bad names."""
        from ffhquv.errors import InvalidInput

        k = len(self.names)
        if self.offsets.shape != (k, n_vertices, 3) or self.weights.shape != (k,):
            raise InvalidInput(f"morph targets: {k} names need offsets [{k}, {n_vertices}, 3] "
                               f"and weights [{k}], got {self.offsets.shape} and "
                               f"{self.weights.shape}")
        if not (np.isfinite(self.offsets).all() and np.isfinite(self.weights).all()):
            raise InvalidInput("morph targets contain NaN or infinite values")
        if len(set(self.names)) != k or any(not n or n != n.strip() for n in self.names):
            raise InvalidInput("morph target names must be unique and non-empty")

    def applied(self, vertices: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """``[N, 3]`` ``vertices + sum_k w_k offsets_k`` (``weights`` None = the fitted ones)."""
        w = self.weights if weights is None else np.asarray(weights, np.float64)
        return (vertices.astype(np.float64)
                + np.einsum("k,knc->nc", w.astype(np.float64), self.offsets.astype(np.float64)))


@dataclass
class MeshData:
    """A triangle mesh in model space.

    Attributes:
        vertices: ``[N, 3]`` float32.
        faces: ``[T, 3]`` int64 vertex indices (0-based, counter-clockwise seen from outside).
        uvs: optional ``[M, 2]`` float32 texture coordinates, OBJ convention (v up).
        uv_faces: optional ``[T, 3]`` int64 indices into ``uvs``, aligned with ``faces``.
        normals: optional ``[N, 3]`` float32 unit vertex normals.
        morphs: optional :class:`MorphTargets` on these vertices.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    uv_faces: np.ndarray | None = None
    normals: np.ndarray | None = None
    morphs: MorphTargets | None = None

    def __post_init__(self) -> None:
        self.vertices = _rows(self.vertices, np.float32, 3)
        self.faces = _rows(self.faces, np.int64, 3)
        if self.uvs is not None:
            self.uvs = _rows(self.uvs, np.float32, 2)
            self.uv_faces = _rows(self.uv_faces, np.int64, 3)
        if self.normals is not None:
            self.normals = _rows(self.normals, np.float32, 3)

    def validate(self) -> None:
        """Raise :class:`ffhquv.errors.InvalidInput` for NaNs or out-of-range indices."""
        from ffhquv.errors import InvalidInput

        if self.vertices.size == 0 or self.faces.size == 0:
            raise InvalidInput("mesh has no vertices or no faces")
        if not np.isfinite(self.vertices).all():
            raise InvalidInput("mesh vertices contain NaN or infinite values")
        if self.faces.min() < 0 or self.faces.max() >= len(self.vertices):
            raise InvalidInput("mesh face index out of range")
        if self.uvs is not None:
            if self.uv_faces is None or self.uv_faces.shape != self.faces.shape:
                raise InvalidInput("mesh uv_faces must match faces")
            if self.uv_faces.min() < 0 or self.uv_faces.max() >= len(self.uvs):
                raise InvalidInput("mesh uv index out of range")
            if not np.isfinite(self.uvs).all():
                raise InvalidInput("mesh uvs contain NaN or infinite values")
        if self.morphs is not None:
            self.morphs.validate(len(self.vertices))

    def posed(self, weights: np.ndarray | None = None) -> MeshData:
        """This mesh with its morph targets applied (``weights`` None = the fitted ones) and
        no morphs: what a viewer shows when it opens the mesh. Without morphs, ``self``."""
        if self.morphs is None:
            return self
        return MeshData(self.morphs.applied(self.vertices, weights).astype(np.float32),
                        self.faces, self.uvs, self.uv_faces)

    def to_proto(self):
        """A ``common.v1.Mesh``. Morph targets list only the vertices each moves (exactly-zero
        rows are left out). The parts made of read-only arrays (a face model's topology, UVs
        and morph-target offsets, the same for every photo) are built once and copied."""
        from ffhquv.pb import common_pb2

        m = common_pb2.Mesh()
        parts = self._parts()
        if parts is not None:
            m.CopyFrom(parts)
        else:
            self._fill_parts(m)
        m.vertices.extend(self.vertices.ravel().tolist())
        if self.normals is not None:
            m.normals.extend(self.normals.ravel().tolist())
        if self.morphs is not None:
            for t, w in zip(m.morph_targets, self.morphs.weights, strict=True):
                t.weight = float(w)
        return m

    def _fill_parts(self, m) -> None:
        """Faces, UVs and morph targets (weights 0) into the ``Mesh`` message ``m``."""
        m.faces.extend(self.faces.ravel().tolist())
        if self.uvs is not None:
            m.uvs.extend(self.uvs.ravel().tolist())
            m.uv_faces.extend(self.uv_faces.ravel().tolist())
        if self.morphs is not None:
            for name, off in zip(self.morphs.names, self.morphs.offsets, strict=True):
                idx = np.nonzero(np.any(off != 0, axis=1))[0]
                m.morph_targets.add(name=name, indices=idx.tolist(),
                                    offsets=off[idx].ravel().tolist())

    def _parts(self):
        """The cached ``Mesh`` of :meth:`_fill_parts` when its arrays are read-only, else
        None."""
        from ffhquv.pb import common_pb2

        off = self.morphs.offsets if self.morphs is not None else None
        arrays = (self.faces, self.uvs, self.uv_faces, off)
        if not all(_shared(a) for a in arrays):
            return None

        def build():
            parts = common_pb2.Mesh()
            self._fill_parts(parts)
            return parts

        return _PARTS.get(arrays, tuple(self.morphs.names) if self.morphs is not None else (),
                          build)

    @classmethod
    def from_proto(cls, m) -> MeshData:
        """Build from a ``common.v1.Mesh``; raises InvalidInput for malformed lengths."""
        from ffhquv.errors import InvalidInput

        if len(m.vertices) % 3 or len(m.faces) % 3 or len(m.uvs) % 2:
            raise InvalidInput("mesh arrays have lengths that are not multiples of 3 / 2")
        if len(m.uv_faces) != (len(m.faces) if len(m.uvs) else 0):
            raise InvalidInput("mesh uv_faces must have the same length as faces when uvs "
                               "are given, and be empty otherwise")
        if len(m.normals) and len(m.normals) != len(m.vertices):
            raise InvalidInput("mesh normals must have the same length as vertices")
        v = np.frombuffer(np.asarray(m.vertices, np.float32).tobytes(), np.float32)
        out = cls(
            vertices=v.reshape(-1, 3),
            faces=np.asarray(m.faces, np.int64).reshape(-1, 3),
            uvs=np.asarray(m.uvs, np.float32).reshape(-1, 2) if len(m.uvs) else None,
            uv_faces=np.asarray(m.uv_faces, np.int64).reshape(-1, 3) if len(m.uv_faces) else None,
            normals=np.asarray(m.normals, np.float32).reshape(-1, 3) if len(m.normals) else None,
        )
        if len(m.morph_targets):
            out.morphs = _morphs_from_proto(m.morph_targets, len(out.vertices))
        return out

    @classmethod
    def from_request(cls, m, what: str) -> MeshData:
        """A request's ``common.v1.Mesh`` as a validated :class:`MeshData`; every malformation
        is :class:`ffhquv.errors.InvalidInput` with ``what`` (the field name) in front."""
        from ffhquv.errors import InvalidInput

        if len(m.uvs) and not len(m.uv_faces):
            raise InvalidInput(f"{what}: mesh has uvs but no uv_faces")
        try:
            mesh = cls.from_proto(m)
            mesh.validate()
        except InvalidInput as e:
            raise InvalidInput(f"{what}: {e}") from None
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"{what}: malformed mesh: {e}") from None
        return mesh


def _morphs_from_proto(targets, n_vertices: int) -> MorphTargets:
    """Repeated ``common.v1.MorphTarget`` to :class:`MorphTargets` (dense offsets)."""
    from ffhquv.errors import InvalidInput

    k = len(targets)
    offsets = np.zeros((k, n_vertices, 3), np.float32)
    for i, t in enumerate(targets):
        off = np.asarray(t.offsets, np.float32)
        idx = np.asarray(t.indices, np.int64) if len(t.indices) or not off.size else None
        n = n_vertices if idx is None else len(idx)
        if off.size != 3 * n:
            raise InvalidInput(f"morph target {t.name!r}: {off.size} offsets for {n} vertices")
        if idx is None:
            offsets[i] = off.reshape(-1, 3)
            continue
        if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
            raise InvalidInput(f"morph target {t.name!r}: vertex index out of range")
        offsets[i, idx] = off.reshape(-1, 3)
    return MorphTargets(names=[t.name for t in targets], offsets=offsets,
                        weights=np.array([t.weight for t in targets], np.float32))


def unique_rows(a: np.ndarray, *, return_inverse: bool = False, return_counts: bool = False):
    """``np.unique(a, axis=0, ...)`` of an integer index array, the same results ~10x faster.

    Mesh index rows (edges as vertex pairs, (vertex, uv) corners, quantised positions) are
    packed into one int64 key per row and sorted as a flat array: the order of the keys is
    the rows' lexicographic order, so the unique rows, their order, the inverse and the counts
    are exactly numpy's. Arrays with negative entries, or whose ranges overflow int64, take
    numpy's own path.

    Args:
        a: ``int [N, C]``.
        return_inverse: also return ``int64 [N]``, the unique row of each input row.
        return_counts: also return ``int64 [U]``, how many input rows each unique row has.
    Returns:
        ``[U, C]`` unique rows in lexicographic order (dtype of ``a``), then the inverse and the
        counts when asked, as a tuple when anything but the rows is returned.
    """
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise ValueError(f"unique_rows needs an integer [N, C] array, got {a.dtype} {a.shape}")
    span = a.max(0).astype(np.float64) + 1 if len(a) else np.ones(a.shape[1])
    if len(a) and (a.min() < 0 or float(np.prod(span)) >= 2.0**62):
        res = np.unique(a, axis=0, return_inverse=return_inverse, return_counts=return_counts)
        if return_inverse:
            res = (res[0], res[1].reshape(-1), *res[2:])
        return res
    key = np.zeros(len(a), np.int64)
    for c in range(a.shape[1]):
        key = key * np.int64(span[c]) + a[:, c].astype(np.int64)
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True,
                                          return_counts=True)
    out = [a[first]]
    if return_inverse:
        out.append(inverse.reshape(-1).astype(np.int64))
    if return_counts:
        out.append(counts.astype(np.int64))
    return out[0] if len(out) == 1 else tuple(out)
