"""The hair as geometry: a shell over the scalp and, for long hair, a curtain hanging from it.

The texture paints the hair on the scalp (:func:`services.fitter.texture.hair_layer`); seen
from the side that is a bald head painted dark, and long hair ends at the nape. The hair mesh
gives it its volume and its length, textured from the same head texture (no image of its
own):

- **shell**: the head's faces where the hair matte covers the scalp, lifted along the vertex
  normals by the photo's hair volume (``hair_volume``, how far the hair rises above the fitted
  head in the photo), thinning to nothing at the hairline over the face and ears; its UVs are
  the head's, so it shows exactly the painted hair.
- **curtain** (long hair): round the back of the head, from behind one ear to behind the
  other, a closed slab whose top follows the hairline's lowest point at each angle about the
  head's axis (toward the back, the skull's widest point above it: hair falls from the back
  of the head, not the nape), tucked up under the
  shell, hanging straight down to the length the photo shows (``hair_below``: how far below
  the chin the hair hangs beside the neck; :data:`CUT_LENGTH` when the photo cuts it off),
  flaring out a little, waving round the head and down its length, its tips ragged (a fixed
  pattern); its UVs read the texture's curtain strip
  (:class:`~services.fitter.texture.hair.CurtainStrip`: the back of the head's hair drawn
  down in strands, in a rectangle of the atlas no island covers), each column at its angle
  about the head, each row at its way down from the column's top: the strands keep the
  scalp's scale and run down the whole length. Without a strip (an atlas with no spare room)
  each column's UVs run from its hairline texels up the scalp toward the crown, stretched
  over its length, on the painted hair only, all in one UV island (one half of the scalp;
  the other half's columns at their mirror angle: no seam down the back); a quad whose two
  columns' walks lie far apart in UV reads one of them (between them lies an ear's skin).

Each hair vertex follows one head vertex (its root): the hair carries the head's morph
targets that move its roots (the brows' and the jaw's), on its roots' offsets, so it moves
with the brows and keeps to the head at every expression weight. Units are the head's (model
space, y up, face toward +z).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from ffhquv.mesh import MeshData, MorphTargets
from services.fitter.facemodel.topology import (
    boundary_loops,
    vertex_adjacency,
    vertex_normals,
)
from services.fitter.texture.hair import CurtainStrip

# the matte's level that is hair (vertices), and the share of its neighbours that closes a
# pinhole; the curtain's columns (degrees about the axis), its least length below the hairline
# and how far its top tucks under the shell (face heights); the least shell thickness (face
# heights); the taper over so many edge rings from the hairline; the curtain's rows; how far it
# flares out at its tips (face heights, beyond the shell's thickness); how far up the scalp its
# texture may reach (of the way from the edge to the crown), the matte it reads there at least
# and how much farther apart than usual two neighbouring columns' walks may lie in UV
HAIR_LEVEL = 0.6
HOLE_SHARE = 0.75
COLUMN_DEG = 4.0
MIN_HANG = 0.2
TUCK = 0.12
MIN_THICKNESS = 0.04
TAPER_RINGS = 3.0
CURTAIN_ROWS = 14
CURTAIN_FLARE = 0.18
UV_REACH = 0.8
HAIR_SOLID = 0.85
UV_GAP = 3.0
# the curtain's locks: radial waves (face heights) every WAVE_DEG degrees round the head, tips
# ragged by up to RAGGED face heights (in waves of 0.9 and 0.55 WAVE_DEG: four columns or more
# a wave; at 0.37 and 0.23, under three, the tips were a saw's teeth)
WAVE = 0.04
WAVE_DEG = 30.0
RAGGED = 0.12
_STEPS = np.linspace(0.0, UV_REACH, 33)
# long hair whose end the photo does not show hangs this far below the chin (face heights)
CUT_LENGTH = 1.2
# the curtain hangs from the shell's edge this far behind the jaw's back (face heights)
BEHIND_EARS = 0.0
# within BACK_DEG[0] degrees of the back (0) the curtain's top rises to the skull's widest
# point above the hairline (looked for up to WIDE_REACH face heights above it), and back to
# the hairline's level by BACK_DEG[1] (the ears' side). A bob or short curls too: hung from
# the nape's hairline they followed the head in to the neck and flared out below it like a
# ruffled collar (fd03, fd10, fd20). Easing from 40 to 80 degrees the curtain's top stepped
# down toward the sides: from behind, a narrower curtain under the head's widest outline
# (BENCHMARKS.md, twenty-fourth session)
BACK_DEG = (60.0, 95.0)
WIDE_REACH = 0.8
# ... where its slab starts at this share of the shell's thickness off the head (just under
# the shell's surface; at 1 or more its top edge showed as a lip)
TOP_DEPTH = 0.97


def padded_matte(matte: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
    """``matte`` continued past its UV islands' borders (``covered``: ``[S, S]`` texels inside
    the islands) from the nearest texels inside: a UV corner on an island's border reads the
    empty texels outside it half-way, and the seams down the scalp would open as slits in the
    hair. Inside the islands the matte is unchanged."""
    matte = np.ascontiguousarray(matte, np.float32)
    if covered is None:
        return matte
    k = max(3, 2 * (matte.shape[0] // 256) + 1)
    grown = cv2.dilate(matte, np.ones((k, k), np.uint8))
    return np.where(np.asarray(covered) > 0.5, matte, grown).astype(np.float32)


def _sample(matte: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """``matte`` (``float32 [S, S]`` or ``[S, S, C]``) bilinear at UVs ``[..., 2]`` (row 0 =
    ``v = 1``): ``[...]`` or ``[..., C]``."""
    s = matte.shape[0]
    flat = uv.reshape(-1, 2).astype(np.float32)
    mx = (flat[:, 0] * s - 0.5).reshape(1, -1)
    my = ((1.0 - flat[:, 1]) * s - 0.5).reshape(1, -1)
    out = cv2.remap(matte, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
    return out.reshape(uv.shape[:-1] + matte.shape[2:])


def vertex_hair(matte: np.ndarray, head: MeshData) -> np.ndarray:
    """``float32 [N]`` the hair matte (:func:`padded_matte`) at each head vertex: the most of
    its UV corners, the matte bilinear at the UV, row 0 = ``v = 1``."""
    per_uv = _sample(np.ascontiguousarray(matte, np.float32), head.uvs)
    out = np.zeros(len(head.vertices), np.float32)
    np.maximum.at(out, head.faces.ravel(), per_uv[head.uv_faces.ravel()])
    return out


def _rings_from(seeds: np.ndarray, adj: sp.csr_matrix) -> np.ndarray:
    """Edge rings (hops over the mesh's edges, ``adj``: ``topology.vertex_adjacency``) from
    the nearest of the ``seeds`` vertex ids; ``inf`` where none reaches."""
    return csgraph.dijkstra(adj, indices=np.asarray(seeds), unweighted=True, min_only=True)


def _uv_islands(uv_faces: np.ndarray, n_uv: int) -> np.ndarray:
    """``int [n_uv]`` the UV island (connected over ``uv_faces``) of each UV vertex."""
    return csgraph.connected_components(vertex_adjacency(uv_faces, n_uv), directed=False)[1]


def _close_holes(on: np.ndarray, adj: sp.csr_matrix, rounds: int = 2) -> np.ndarray:
    """``on`` with each vertex that is off but has at least :data:`HOLE_SHARE` of its
    neighbours on turned on (``rounds`` times): no pinholes or one-vertex notches in the
    shell (each would hang a tube of curtain)."""
    on = on.copy()
    deg = np.maximum(np.asarray(adj.sum(1)).ravel(), 1)
    for _ in range(rounds):
        on |= (adj @ on.astype(np.float64)) / deg >= HOLE_SHARE
    return on


def hair_mesh(head: MeshData, matte: np.ndarray, info: dict, landmarks: np.ndarray,
              covered: np.ndarray | None = None, strip: CurtainStrip | None = None
              ) -> MeshData | None:
    """The hair of one fitted head as a mesh textured by the head texture.

    Args:
        head: the neutral head (model space, with ``uvs`` / ``uv_faces``; its ``morphs``, when
            present, are carried to the hair).
        matte: ``float32 [S, S]`` where the hair covers the scalp in the head texture
            (``CompletedTexture.hair_matte``).
        info: the report's hair entry (``hair_info``): ``long_hair``, ``hair_volume``,
            ``hair_below``, ``hair_cut``.
        landmarks: ``[68, 3]`` the 68 landmarks on ``head`` (model space).
        covered: ``[S, S]`` the texels inside the UV islands (``UVMaps.mask``), to read the
            matte past the islands' borders (:func:`padded_matte`); None = as it is.
        strip: the texture's curtain strip (``CompletedTexture.hair_curtain``): the curtain
            reads its strands there; None: it reads the scalp's hair, walked up from its
            hairline (an atlas without spare room).
    Returns:
        :class:`MeshData` with UVs into the head texture (and those of the head's morph targets
        that move it, same names and weights), or None when the matte covers too little of the
        head (bald, shaved).
    """
    v = head.vertices.astype(np.float64)
    f = head.faces
    n = len(v)
    matte = padded_matte(matte, covered)
    adj = vertex_adjacency(f, n)
    on = _close_holes(vertex_hair(matte, head) > HAIR_LEVEL, adj)
    keep = on[f].all(1)
    if keep.sum() < 40:
        return None
    sf, suf = f[keep], head.uv_faces[keep]
    hf = float(np.linalg.norm(landmarks[27] - landmarks[8]))
    thick = hf * max(float(info.get("hair_volume") or 0.0), MIN_THICKNESS)
    nrm = vertex_normals(v, f)

    # the curtain hangs from the run of the shell's outer edge behind the ears
    loops = boundary_loops(sf)  # longest first: the shell's outer edge
    chain = [int(x) for x in loops[0]] if loops else []
    below = float(info.get("hair_below") or 0.0)
    if info.get("hair_cut"):
        below = max(below, CUT_LENGTH)
    y_tip = float(landmarks[8, 1]) - below * hf
    z_jaw = float(landmarks[[0, 16], 2].mean())
    run = _hanging_run(chain, v, z_jaw - BEHIND_EARS * hf) if info.get("long_hair") else []
    # full thickness a few rings in from the hairline; where the curtain hangs, all of it
    edge_v = np.unique(chain) if chain else np.zeros(0, np.int64)
    free = np.setdiff1d(edge_v, run)
    sub = np.unique(sf)
    rings = (_rings_from(free, vertex_adjacency(sf, n)) if len(free) else np.full(n, np.inf))
    t = thick * np.clip((rings + 0.5) / TAPER_RINGS, 0.15, 1.0)
    # the shell's vertices: the head's hair vertices, lifted
    idx = np.full(n, -1)
    idx[sub] = np.arange(len(sub))
    pos = [v[sub] + nrm[sub] * t[sub, None]]
    root = [sub]
    faces = [idx[sf]]
    uvs = [head.uvs]
    uv_faces = [suf]
    got = None if len(run) < 2 else _curtain(
        _Shell(head, v, on, sf, suf, matte, thick, hf), np.asarray(run), y_tip, len(sub),
        len(head.uvs), strip)
    if got is not None:
        cp, cr, cf, cu, cuf = got
        pos.append(cp)
        root.append(cr)
        faces.append(cf)
        uvs.append(cu)
        uv_faces.append(cuf)
    roots_all = np.concatenate(root)
    morphs = None
    if head.morphs is not None:
        # the head's targets that move the hair at all (most move only the face: as targets
        # of the hair they would be megabytes of zeros in a GLB)
        off = head.morphs.offsets[:, roots_all]
        moves = np.nonzero(np.abs(off).max(axis=(1, 2)) > 0)[0]
        if len(moves):
            morphs = MorphTargets([head.morphs.names[k] for k in moves], off[moves],
                                  head.morphs.weights[moves])
    # only the UV vertices used
    uv_all = np.concatenate(uvs)
    uvf_all = np.concatenate(uv_faces)
    used, uvf_new = np.unique(uvf_all, return_inverse=True)
    return MeshData(vertices=np.concatenate(pos).astype(np.float32),
                    faces=np.concatenate(faces), uvs=uv_all[used],
                    uv_faces=uvf_new.reshape(-1, 3), morphs=morphs)


def _hanging_run(chain: list[int], v: np.ndarray, z_max: float) -> list[int]:
    """The longest run of the closed ``chain`` (the shell's outer edge) behind ``z_max``: the
    hairline behind the ears and over the nape, where the curtain hangs."""
    if not chain:
        return []
    ok = [bool(v[x, 2] < z_max) for x in chain]
    if all(ok) or not any(ok):
        return []  # no front to the loop (not a hairline), or nothing behind the ears
    k0 = ok.index(False)
    order = chain[k0:] + chain[:k0]
    flags = ok[k0:] + ok[:k0]
    best: list[int] = []
    run: list[int] = []
    for x, good in zip(order + [order[0]], flags + [False], strict=True):
        if good:
            run.append(x)
        else:
            if len(run) > len(best):
                best = run
            run = []
    return best if len(best) >= 2 else []


@dataclass
class _Shell:
    """What the curtain hangs from: the head (``v`` its vertices as float64, ``on`` its hair
    vertices), the shell's faces ``sf`` and their UV faces ``suf``, the padded matte, the
    shell's full thickness and the face height ``hf`` (model units)."""

    head: MeshData
    v: np.ndarray
    on: np.ndarray
    sf: np.ndarray
    suf: np.ndarray
    matte: np.ndarray
    thick: float
    hf: float


def _window5(x: np.ndarray) -> np.ndarray:
    """``[5, n]``: each entry of ``x`` ``[n]`` with its two neighbours on each side (the ends
    repeated), for a 5-wide median or mean along the curtain's columns."""
    pad = np.pad(x, 2, mode="edge")
    return np.stack([pad[i:i + len(x)] for i in range(5)])


def _curtain(shell: _Shell, run: np.ndarray, y_tip: float, base: int, nu: int,
             strip: CurtainStrip | None = None):
    """The curtain: a closed slab round the back of the head, its columns every
    :data:`COLUMN_DEG` of angle about the hair's vertical axis over the angles of ``run`` (the
    hairline behind the ears). Its top follows the hairline's lowest point at each angle,
    rising toward the back to the skull's widest point above it (:data:`BACK_DEG`),
    smoothed, and is tucked :data:`TUCK` face heights up under the shell (no seam to show);
    it hangs straight down to ``y_tip`` (at least :data:`MIN_HANG` below the hairline),
    flaring out by :data:`CURTAIN_FLARE`; its inner sheet lies ``thick`` inside the outer.
    Each column follows the hairline vertex nearest its angle (its root: morph offsets) and
    reads ``strip`` at its angle, down from its top; without a strip, the painted hair of its
    root, walked up toward the crown of that vertex's UV island.

    Returns positions ``[M, 3]``, root head vertex ids ``[M]``, faces ``[F, 3]`` (ids from
    ``base``), UVs ``[U, 2]`` (ids from ``nu``) and UV faces ``[F, 3]``, every face turned
    outward; None when the run spans too small an angle."""
    head, v, on, sf, suf = shell.head, shell.v, shell.on, shell.sf, shell.suf
    matte, thick, hf = shell.matte, shell.thick, shell.hf
    c = v[on].mean(0)

    def angle(p: np.ndarray) -> np.ndarray:  # degrees about the axis, 0 at the back
        return np.degrees(np.arctan2(-(p[..., 0] - c[0]), -(p[..., 2] - c[2])))

    a_run = angle(v[run])
    lo_a, hi_a = float(a_run.min()), float(a_run.max())
    n_cols = int(np.floor((hi_a - lo_a) / COLUMN_DEG)) + 1
    if n_cols < 3:
        return None
    angs = lo_a + COLUMN_DEG * np.arange(n_cols) + 0.5 * ((hi_a - lo_a) - COLUMN_DEG * (n_cols - 1))
    # the hairline's lowest point near each column's angle, smoothed along the angle
    y_edge = np.empty(n_cols)
    for k, a in enumerate(angs):
        near = np.abs(a_run - a) <= 1.5 * COLUMN_DEG
        y_edge[k] = v[run[near], 1].min() if near.any() else np.nan
    ok = np.isfinite(y_edge)
    y_edge = np.interp(np.arange(n_cols), np.nonzero(ok)[0], y_edge[ok])
    y_edge = np.median(_window5(y_edge), 0)
    y_top = y_edge + TUCK * hf
    a_all = angle(v)
    r_all = np.hypot(v[:, 0] - c[0], v[:, 2] - c[2])
    # toward the back, long hair falls from the back of the skull's widest point, not from
    # the nape: hung from the nape's hairline, the shell narrowed into the neck above the
    # curtain's top (from the back, a neck of hair with the curtain flaring below it)
    y_wide = y_top.copy()
    for k in range(n_cols):
        near = ((np.abs(a_all - angs[k]) < 2 * COLUMN_DEG) & on & (v[:, 1] > y_top[k])
                & (v[:, 1] < y_edge[k] + WIDE_REACH * hf))
        if near.any():
            y_wide[k] = max(y_top[k], float(v[near, 1][np.argmax(r_all[near])]))
    back = np.clip((BACK_DEG[1] - np.abs(angs)) / (BACK_DEG[1] - BACK_DEG[0]), 0, 1)
    y_top = y_top + back * (y_wide - y_top)
    y_top = np.mean(_window5(y_top), 0)
    # the head's horizontal radius at each column's top: its outermost hair vertex nearby (an
    # ear beside an end column is not hair: the curtain stood out over it like a flap)
    r_top = np.empty(n_cols)
    for k in range(n_cols):
        near = (on & (np.abs(a_all - angs[k]) < 2 * COLUMN_DEG)
                & (np.abs(v[:, 1] - y_top[k]) < 0.08 * hf))
        r_top[k] = r_all[near].max() if near.any() else np.nan
    ok = np.isfinite(r_top)
    r_top = np.interp(np.arange(n_cols), np.nonzero(ok)[0], r_top[ok])
    tips = np.minimum(y_tip, y_edge - MIN_HANG * hf)
    rows = CURTAIN_ROWS
    s = np.arange(rows + 1) / rows
    d = np.stack([-np.sin(np.radians(angs)), np.zeros(n_cols), -np.cos(np.radians(angs))], 1)
    # the flare grows with the length (a short curtain does not stand out like a collar); the
    # slab thins toward the tips
    flare = CURTAIN_FLARE * np.minimum(y_top - tips, hf)
    # locks: the slab waves round the head and down its length, more toward the tips, and its
    # tips are ragged (a fixed pattern: the same head gets the same hair)
    a_rad = np.radians(angs)[:, None]
    wave = (np.sin(a_rad * 360.0 / WAVE_DEG + 2.2 * np.pi * s[None])
            + 0.5 * np.sin(a_rad * 720.0 / WAVE_DEG + 1.3 + 3.1 * np.pi * s[None]))
    # toward the back (hung from the skull's widest point, where the shell is vertical) the
    # slab starts just under the shell's surface, not 0.4 of its thickness in: it came out
    # from under the shell a fifth of a face height lower, where the shell had turned under,
    # and a dark crease ran across the back of every long-haired head
    r_out = (r_top[:, None] + thick * np.maximum((0.6 + 0.4 * np.minimum(s * 4, 1))[None],
                                                 TOP_DEPTH * back[:, None])
             + flare[:, None] * s[None] ** 0.7 + WAVE * hf * wave * s[None] ** 0.8)
    ragged = RAGGED * hf * (0.5 + 0.3 * np.sin(np.radians(angs) * 360.0 / (0.9 * WAVE_DEG))
                            + 0.2 * np.sin(np.radians(angs) * 360.0 / (0.55 * WAVE_DEG) + 0.9))
    tips = tips - ragged * np.clip((y_top - tips) / hf, 0, 1)
    y = y_top[:, None] + (tips - y_top)[:, None] * s[None]
    axis = np.stack([np.full_like(y, c[0]), y, np.full_like(y, c[2])], -1)
    outer = axis + d[:, None] * r_out[..., None]
    # and toward its two ends (a thick end would face the viewer as a lit strip)
    k = np.arange(n_cols)
    ends = np.clip(np.minimum(k, n_cols - 1 - k) / 3.0, 0.1, 1.0)
    slab = thick * ends[:, None] * (1.0 - 0.6 * s)[None]
    inner = axis + d[:, None] * np.maximum(r_out - slab, r_top[:, None] * 0.98)[..., None]
    pos = np.concatenate([outer.reshape(-1, 3), inner.reshape(-1, 3)])
    o_id = base + np.arange(n_cols * (rows + 1)).reshape(n_cols, rows + 1)
    i_id = o_id + n_cols * (rows + 1)
    # roots: the hairline vertex nearest in angle (texture and morph offsets)
    roots = run[np.argmin(np.abs(a_run[None, :] - angs[:, None]), 1)]
    root = np.concatenate([np.repeat(roots, rows + 1)] * 2)
    uvs: list[np.ndarray] = []
    if strip is not None:  # the strip: each column at its angle, each row at its way down
        uvs.append(strip.uv(angs[:, None], y_top[:, None] - y).reshape(-1, 2))
        col_ids = [nu + k * (rows + 1) + np.arange(rows + 1) for k in range(n_cols)]
        wide = np.zeros(n_cols - 1, bool)  # the strip's columns are all hair
    else:  # each column walks up the scalp's painted hair from its root
        isl = _uv_islands(head.uv_faces, len(head.uvs))
        corners: dict[int, dict[int, int]] = {int(x): {} for x in run}
        for fv, fu in zip(sf.ravel(), suf.ravel(), strict=True):
            if int(fv) in corners:
                corners[int(fv)].setdefault(int(isl[fu]), int(fu))
        uv_vert = np.full(len(head.uvs), -1)
        uv_vert[head.uv_faces.ravel()] = head.faces.ravel()
        hair_uv = (uv_vert >= 0) & on[np.maximum(uv_vert, 0)]
        crown: dict[int, np.ndarray] = {}
        in_island: dict[int, np.ndarray] = {}  # the island's hair UV ids

        def column_uv(k: int, il: int) -> np.ndarray:
            """UV ids of column ``k``'s rows in island ``il``: from its root's texels up toward
            the island's crown and back down, as far as the curtain is long against the way up
            the scalp, on the painted hair only (matte above HAIR_SOLID: no ear or temple)."""
            if il not in crown:
                in_island[il] = cand = np.nonzero(hair_uv & (isl == il))[0]
                crown[il] = head.uvs[cand[np.argmax(v[uv_vert[cand], 1])]]
            x = int(roots[k])
            ux = corners[x].get(il)
            if ux is None:  # the root lies in the other half's island: the hairline vertex of
                # this island nearest its mirror angle (the head is left/right symmetric)
                cands = [(abs(float(a_run[j]) + float(angs[k])), int(run[j]))
                         for j in range(len(run)) if il in corners[int(run[j])]]
                x = min(cands)[1]
                ux = corners[x][il]
            if back[k] > 0:  # hung from above the hairline: the walk starts where it hangs (the
                # island's hair texel nearest the top, or its mirror), as the shell shows there
                top = c + d[k] * r_top[k]
                top[1] = y_top[k]
                if (v[uv_vert[ux], 0] - c[0]) * (top[0] - c[0]) < 0:  # ux on the other side
                    top[0] = 2 * c[0] - top[0]
                cand = in_island[il]
                ux = int(cand[np.argmin(np.linalg.norm(v[uv_vert[cand]] - top, axis=1))])
            cr = crown[il]
            line = head.uvs[ux][None] + (cr - head.uvs[ux])[None] * _STEPS[:, None]
            solid = _sample(matte, line) >= HAIR_SOLID
            lo = int(np.argmax(solid)) if solid.any() else 0
            hi = lo + (int(np.argmin(solid[lo:])) if not solid[lo:].all() else len(solid) - lo)
            t0, t1 = _STEPS[lo], _STEPS[max(hi - 1, lo)]
            span = max(t1 - t0, 1e-6)
            # the whole length over the way up (strands drawn out along the curtain; a way there
            # and back would mirror the texture half-way down)
            tri = t0 + span * s
            ids = nu + sum(len(u) for u in uvs) + np.arange(rows + 1)
            uvs.append(head.uvs[ux][None] + (cr - head.uvs[ux])[None] * tri[:, None])
            return ids

        # every column reads one island, the first root's half of the scalp; the other half's
        # columns read it at their mirror angle. Each half reading its own island split the
        # curtain down the back into two differently lit and streaked halves (8 of the 24 photos'
        # long hair); of the two islands this one's walks run along its strands on the 6 long-
        # haired faces-dev heads looked at (the other's printed zigzag bands on fd21, fd01, fd17)
        one = next(iter(corners[int(roots[0])]))
        col_ids = [column_uv(k, one) for k in range(n_cols)]
        # a quad reads the texels between its two columns' walks: where those lie far apart
        # in UV (roots far apart on the hairline) that is an ear or a temple, not hair: such
        # a quad reads one column's walk on both sides
        coords = np.concatenate(uvs)
        gap = np.array([np.linalg.norm(coords[a - nu] - coords[b - nu], axis=1).max()
                        for a, b in zip(col_ids[:-1], col_ids[1:], strict=True)])
        wide = gap > UV_GAP * max(float(np.median(gap)), 1e-6)
    pairs = list(zip(col_ids[:-1], col_ids[1:], strict=True))
    faces, uvf, want = [], [], []
    down = np.array([0.0, -1.0, 0.0])
    for ka in range(n_cols - 1):
        kb = ka + 1
        ua_id, ub_id = pairs[ka]
        if wide[ka]:
            ub_id = ua_id
        rad = d[ka] + d[kb]
        for r in range(rows):
            oa0, oa1, ob0, ob1 = o_id[ka, r], o_id[ka, r + 1], o_id[kb, r], o_id[kb, r + 1]
            na0, na1, nb0, nb1 = i_id[ka, r], i_id[ka, r + 1], i_id[kb, r], i_id[kb, r + 1]
            quad_uv = [(ua_id[r], ua_id[r + 1], ub_id[r]), (ua_id[r + 1], ub_id[r + 1], ub_id[r])]
            faces += [(oa0, oa1, ob0), (oa1, ob1, ob0), (na0, na1, nb0), (na1, nb1, nb0)]
            uvf += quad_uv + quad_uv
            want += [rad, rad, -rad, -rad]
        oa, ob, na, nb = o_id[ka, -1], o_id[kb, -1], i_id[ka, -1], i_id[kb, -1]
        faces += [(oa, na, ob), (na, nb, ob)]
        uvf += [(ua_id[-1], ua_id[-1], ub_id[-1]), (ua_id[-1], ub_id[-1], ub_id[-1])]
        want += [down, down]
    # the two ends: outer and inner joined down the side, facing away from the next column
    for k, kn in ((0, 1), (n_cols - 1, n_cols - 2)):
        ids = col_ids[k]
        away = outer[k, 0] - outer[kn, 0]
        for r in range(rows):
            a0, a1, b0, b1 = o_id[k, r], o_id[k, r + 1], i_id[k, r], i_id[k, r + 1]
            faces += [(a0, a1, b0), (a1, b1, b0)]
            uvf += [(ids[r], ids[r + 1], ids[r]), (ids[r + 1], ids[r + 1], ids[r])]
            want += [away, away]
    faces = np.asarray(faces, np.int64)
    uvf = np.asarray(uvf, np.int64)
    p = pos[faces - base]
    fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    flip = np.einsum("ij,ij->i", fn, np.asarray(want)) < 0
    faces[flip] = faces[flip][:, ::-1]
    uvf[flip] = uvf[flip][:, ::-1]
    return pos, root, faces, np.concatenate(uvs), uvf
