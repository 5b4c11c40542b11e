"""One level of Loop subdivision of an export mesh, its morph targets with it.

The fitted head has 3 640 vertices: up close its silhouettes (ears, lids, jaw) show straight
segments. :func:`subdivided` gives the same head with four times the triangles on Loop's
smooth surface. Loop subdivision is linear in the vertex positions, one sparse matrix ``S``
of the topology alone, so the morph targets are subdivided with the same ``S`` and stay
consistent: ``S (v + sum_k w_k d_k) = S v + sum_k w_k S d_k`` (the subdivided head at any
expression is the subdivision of the head at that expression). The rules are Loop's as
``trimesh.remesh.subdivide_loop`` has them (``tests/test_subdivide.py`` checks the positions
against it; trimesh itself takes one ``[N, 3]`` array at a time, 0.1 s each, 53 times here):

* a new vertex on an interior edge ``(a, b)`` with opposite vertices ``c``, ``d``:
  ``3/8 (a + b) + 1/8 (c + d)``; on a boundary (or non-manifold) edge, the midpoint;
* an old interior vertex of valence ``k``: ``(1 - k beta) v + beta * sum(neighbours)`` with
  ``beta = (40 - (3 + 2 cos(2 pi / k))^2) / (64 k)``; an old boundary vertex:
  ``3/4 v + 1/8 (its two boundary neighbours)`` (the eyes' and the neck's openings stay
  smooth curves); a vertex on a non-manifold edge, or a boundary vertex without exactly two
  boundary neighbours, stays where it is.

UVs are split at their own edges' midpoints (the UV topology has seams the positions do not);
each triangle ``(a, b, c)`` becomes ``(a, ab, ca)``, ``(ab, b, bc)``, ``(ca, bc, c)``,
``(ab, bc, ca)`` in both, so the UV triangles stay aligned with the position triangles.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ffhquv.mesh import MeshData, MorphTargets, unique_rows


def _edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges [E, 2] sorted pairs, face_edge [T, 3] edge ids of (ab, bc, ca), count [E])``."""
    corner = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    key = np.sort(corner, axis=1)
    edges, inverse, count = unique_rows(key, return_inverse=True, return_counts=True)
    return edges, inverse.reshape(-1, 3), count


def _split_faces(faces: np.ndarray, face_edge: np.ndarray, n: int) -> np.ndarray:
    """``[4T, 3]``: each triangle into four, the new vertex of edge ``e`` being ``n + e``."""
    a, b, c = faces.T
    ab, bc, ca = (face_edge + n).T
    return np.stack([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1),
                     np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)], 1).reshape(-1, 3)


def loop_operator(faces: np.ndarray, n: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Loop subdivision of a triangle topology as a sparse matrix.

    Args:
        faces: ``int [T, 3]`` vertex indices; n: the vertex count (every vertex in a face).
    Returns:
        ``(S, new_faces)``: ``S`` ``float64 [n + E, n]`` (new vertex positions ``= S @ v``,
        the old vertices first, then one per edge in :func:`_edges`' order) and
        ``int64 [4T, 3]`` the new triangles.
    """
    faces = np.asarray(faces, np.int64)
    edges, face_edge, count = _edges(faces)
    ne = len(edges)
    rows, cols, vals = [], [], []

    def add(r, c, v) -> None:
        rows.append(np.asarray(r).ravel())
        cols.append(np.asarray(c).ravel())
        vals.append(np.broadcast_to(np.asarray(v, np.float64), np.shape(r)).ravel())

    # odd vertices: interior edges take their two opposite vertices
    interior = count == 2
    opposite = np.full((ne, 2), -1, np.int64)
    third = faces[:, [2, 0, 1]]  # the vertex opposite each of (ab, bc, ca)
    fe, th = face_edge.ravel(), third.ravel()
    order = np.argsort(fe, kind="stable")
    fe, th = fe[order], th[order]
    first = np.r_[True, fe[1:] != fe[:-1]]
    opposite[fe[first], 0] = th[first]
    second = ~first
    opposite[fe[second], 1] = th[second]  # (only edges with 2+ faces have a second)
    e_int = np.flatnonzero(interior)
    e_mid = np.flatnonzero(~interior)
    add(np.repeat(n + e_int, 2), edges[e_int], 0.375)
    add(np.repeat(n + e_int, 2), opposite[e_int], 0.125)
    add(np.repeat(n + e_mid, 2), edges[e_mid], 0.5)

    # even vertices
    nb = sp.coo_matrix((np.ones(2 * ne), (edges.ravel(), edges[:, ::-1].ravel())),
                       shape=(n, n)).tocsr()
    k = np.diff(nb.indptr).astype(np.float64)
    bnd_edges = edges[count == 1]
    bnb = sp.coo_matrix((np.ones(2 * len(bnd_edges)),
                         (bnd_edges.ravel(), bnd_edges[:, ::-1].ravel())), shape=(n, n)).tocsr()
    kb = np.diff(bnb.indptr)
    fixed = np.zeros(n, bool)
    fixed[edges[count > 2].ravel()] = True
    boundary = (kb > 0) & ~fixed
    fixed |= boundary & (kb != 2)
    boundary &= ~fixed
    inner = ~boundary & ~fixed & (k > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = (40.0 - (3.0 + 2.0 * np.cos(2 * np.pi / k)) ** 2) / (64.0 * k)
    beta = np.where(inner, beta, 0.0)
    vi = np.flatnonzero(inner)
    add(vi, vi, 1.0 - k[vi] * beta[vi])
    nbc = nb.tocoo()
    keep = inner[nbc.row]
    add(nbc.row[keep], nbc.col[keep], beta[nbc.row[keep]])
    vb = np.flatnonzero(boundary)
    add(vb, vb, 0.75)
    bc = bnb.tocoo()
    keep = boundary[bc.row]
    add(bc.row[keep], bc.col[keep], 0.125)
    vf = np.flatnonzero(fixed | (k == 0))
    add(vf, vf, 1.0)
    s = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n + ne, n)).tocsr()
    return s, _split_faces(faces, face_edge, n)


def subdivided(mesh: MeshData) -> MeshData:
    """``mesh`` after one level of Loop subdivision (the module's rules): positions and morph
    offsets through the same operator, UVs split at their edges' midpoints, normals left to
    the writers (they compute smooth ones).

    Args:
        mesh: :class:`~ffhquv.mesh.MeshData` with ``N`` vertices, ``T`` triangles, optional
            UVs and morph targets ``[K, N, 3]``.
    Returns:
        :class:`~ffhquv.mesh.MeshData` with ``N + E`` vertices (``E`` edges), ``4T``
        triangles, ``M + E_uv`` UVs and morph targets ``[K, N + E, 3]`` (same names and
        weights).
    """
    n = len(mesh.vertices)
    s, faces = loop_operator(mesh.faces, n)
    verts = (s @ mesh.vertices.astype(np.float64)).astype(np.float32)
    uvs = uv_faces = None
    if mesh.uvs is not None:
        m = len(mesh.uvs)
        uv_edges, uv_face_edge, _ = _edges(mesh.uv_faces)
        uv = mesh.uvs.astype(np.float64)
        uvs = np.concatenate([uv, uv[uv_edges].mean(1)]).astype(np.float32)
        uv_faces = _split_faces(np.asarray(mesh.uv_faces, np.int64), uv_face_edge, m)
    morphs = None
    if mesh.morphs is not None:
        off = mesh.morphs.offsets.astype(np.float64)  # [K, N, 3]
        k = off.shape[0]
        flat = off.transpose(1, 0, 2).reshape(n, 3 * k)
        new = (s @ flat).reshape(-1, k, 3).transpose(1, 0, 2)
        morphs = MorphTargets(mesh.morphs.names, new.astype(np.float32), mesh.morphs.weights)
    return MeshData(verts, faces, uvs, uv_faces, morphs=morphs)
