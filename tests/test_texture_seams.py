"""Stage-2 texture completion does not print the atlas's seams on the head.

The default head's atlas cuts the surface into islands (face, sides of the head, ears, ...).
Texels on the two sides of a cut are neighbours on the head but far apart in the atlas, so
they must carry the same colour whatever the photo covered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffhquv.render.raster import get_backend
from services.fitter.core import lr_asymmetry
from services.fitter.facemodel import load_face_model
from services.fitter.facemodel.topology import (
    laplacian_ordering,
    screened_factor,
    screened_smooth,
    screened_solve,
    uv_seams,
)
from services.fitter.texture import (
    complete_texture,
    mesh_lowpass,
    seam_step,
    seam_texel_pairs,
    symmetrize_lowfreq,
    to_texels,
    to_vertices,
    uv_maps,
)

S = 512


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return load_face_model("default")


@pytest.fixture(scope="module")
def maps(model):
    return uv_maps(model, S, get_backend("cpu"))


@pytest.fixture(scope="module")
def seam_pairs(maps):
    a, b = seam_texel_pairs(maps)
    assert len(a) > 200, len(a)
    return a, b


def _photo_like(maps, seed=0):
    """A made-up unwrap: a smooth skin-like colour field with texture noise, seen only on the
    front of the face island (as in a frontal photo), zero elsewhere."""
    rng = np.random.default_rng(seed)
    pos = maps.pos_mean.numpy()
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    base = np.stack([0.75 + 0.1 * np.tanh(x), 0.55 + 0.08 * np.tanh(y), 0.45 + 0.05 * z], -1)
    albedo = (base + 0.04 * rng.standard_normal(base.shape)).astype(np.float32)
    face = maps.face.numpy()
    weight = (face * np.clip((z + 0.2) / 0.4, 0, 1)).astype(np.float32) * maps.mask.numpy()
    return np.clip(albedo, 0, 1) * (weight[..., None] > 0), weight


def test_uv_seams_are_edges_of_two_islands(model):
    tri, uvt = model.tri.numpy(), model.uv_tri.numpy()
    seams = uv_seams(tri, uvt)
    assert len(seams) > 50 and len(seams) % 2 == 0
    uv = model.uv.numpy()
    # the two sides of a seam edge are the same 3D edge at two places of the atlas
    sides = seams.reshape(-1, 2, 2)
    assert (np.abs(uv[sides[:, 0]] - uv[sides[:, 1]]).max(axis=(1, 2)) > 1e-4).all()


def test_vertex_texel_round_trip(maps, model):
    """A per-vertex field read into the atlas and gathered back is that field."""
    v = model.mean_shape.numpy().astype(np.float64)
    tex = to_texels(maps, v)
    back, w = to_vertices(maps, tex, maps.mask.numpy().astype(np.float32))
    seen = w > 0.5
    assert seen.mean() > 0.8
    assert np.abs(back[seen] - v[seen]).max() < 0.05 * np.ptp(v, axis=0).max()


def test_screened_smooth_keeps_constants_and_relaxes_to_prior(maps):
    n = maps.laplacian.shape[0]
    const = np.full((n, 3), 0.4)
    out = screened_smooth(maps.laplacian, const, np.ones(n), length=0.1, prior=[0.4] * 3)
    np.testing.assert_allclose(out, const, atol=1e-9)
    w = np.zeros(n)
    out = screened_smooth(maps.laplacian, const, w, length=0.1, prior=[0.7, 0.6, 0.5])
    np.testing.assert_allclose(out, np.tile([0.7, 0.6, 0.5], (n, 1)), atol=1e-9)


def test_screened_factor_in_the_kept_order_solves_the_system(maps):
    """The factor taken in the Laplacian's kept fill-reducing order solves the same system as
    SuperLU's own ordering of it, to float noise, and the order is found once per Laplacian."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    lap = maps.laplacian
    n = lap.shape[0]
    rng = np.random.default_rng(3)
    w = rng.random(n) * (rng.random(n) > 0.4)
    data = rng.random((n, 3))
    length, reach = 0.05, 0.2
    eps = (length / reach) ** 2
    a = (sp.diags(w + eps) + length**2 * lap).tocsc()
    want = splu(a).solve(w[:, None] * data + eps * 0.5)
    got = screened_solve(screened_factor(lap, w, length, reach), data, prior=[0.5] * 3)
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert laplacian_ordering(lap) is laplacian_ordering(lap)
    order = laplacian_ordering(lap).order
    assert sorted(order.tolist()) == list(range(n))


def test_lowpass_is_continuous_across_seams(maps, seam_pairs):
    albedo, weight = _photo_like(maps)
    low, _ = mesh_lowpass(maps, albedo, weight, sigma=S / 24)
    a, b = seam_pairs
    flat = low.reshape(-1, 3)
    assert np.abs(flat[a] - flat[b]).mean() < 2.0 / 255


def test_completed_texture_has_no_seam_steps(maps, seam_pairs):
    """The texture on the two sides of every cut matches to about the texture's own noise
    between two neighbouring texels, also where the photo reached the cut."""
    albedo, weight = _photo_like(maps, seed=1)
    done = complete_texture(albedo, weight, maps)
    tex = done.texture.reshape(-1, 3)
    step = seam_step(done.texture, maps)
    # the same measure between texels 1 px apart inside the islands (not near any seam)
    inner = np.flatnonzero((maps.mask.numpy() & (maps.seam_fade > 0.99)).reshape(-1))
    inner = inner[np.isin(inner + 1, inner)]
    neigh = np.abs(tex[inner] - tex[inner + 1]).mean()
    assert step < max(3.0 / 255, 2 * neigh), (step, neigh)
    assert np.isfinite(done.texture).all() and done.texture.min() > 0
    # nothing of the photo is trusted on a seam itself
    assert done.observed[maps.seam_fade == 0].max() == 0


def test_symmetrize_lowfreq_evens_out_one_sided_light(maps):
    albedo, weight = _photo_like(maps, seed=2)
    tex = complete_texture(albedo, weight, maps, symmetric_lowfreq=False).texture
    x = maps.pos_mean[..., 0].numpy()
    lit = (tex * (1 + 0.3 * np.tanh(x / 0.3))[..., None]).astype(np.float32)
    u8 = lambda t: (np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    before = lr_asymmetry(u8(lit), maps)
    after = lr_asymmetry(u8(symmetrize_lowfreq(lit, maps, sigma=S / 16)), maps)
    assert before > 0.2
    assert after < 0.1 * before, (before, after)


def test_dark_hair_over_the_forehead_is_not_trusted(maps):
    """A fringe of dark strands over the forehead gets no weight; the same darkening on the
    cheeks (not the forehead) and the skin itself keep theirs."""
    from services.fitter.texture import hair_weight

    albedo, weight = _photo_like(maps, seed=3)
    rows, cols = np.nonzero(maps.forehead & (weight > 0.5) & (maps.skin.numpy() > 0.5))
    assert len(rows) > 500
    strands = np.zeros(weight.shape, bool)
    strands[rows[cols % 12 < 4], cols[cols % 12 < 4]] = True  # vertical strands
    dark = albedo.copy()
    dark[strands] *= 0.45
    w = hair_weight(dark, weight, maps)
    assert w[strands].max() == 0.0
    skin = w[maps.forehead & ~strands & (weight > 0.5)]
    assert skin.min() > 0.5 and skin.mean() > 0.99
    cheek = maps.central_face & (weight > 0.5)
    assert hair_weight(albedo, weight, maps)[cheek].min() == 1.0
    # a completed texture built from the fringe shows skin there, not the strands
    done = complete_texture(dark, weight, maps)
    lum = done.texture @ np.array([0.299, 0.587, 0.114])
    assert lum[strands].mean() > 0.9 * lum[maps.forehead & ~strands & (weight > 0.5)].mean()


def test_skin_glimpsed_through_a_fringe_is_dropped(maps):
    """A fringe that hides the forehead but for a few small windows: the windows get no
    weight (lit unlike the face, they printed as bright patches on the filled forehead) and
    the completed forehead does not show them; a forehead seen whole, or in one wide piece,
    keeps every weight."""
    from services.fitter.texture.hair import fringe_gap_weight

    albedo, weight = _photo_like(maps, seed=4)
    t = torch.from_numpy
    assert torch.equal(fringe_gap_weight(t(weight), maps), torch.ones_like(t(weight)))
    fh = maps.forehead & (weight > 0.5)
    rows, cols = np.nonzero(fh)
    # the fringe: the forehead hidden, but for three windows a few texels wide
    hidden = weight.copy()
    hidden[fh] = 0.0
    windows = np.zeros(weight.shape, bool)
    for k in (len(rows) // 4, len(rows) // 2, 3 * len(rows) // 4):
        windows[rows[k] - 3:rows[k] + 3, cols[k] - 3:cols[k] + 3] = True
    windows &= fh
    hidden[windows] = weight[windows]
    bright = albedo.copy()
    bright[windows] = np.clip(bright[windows] * 1.4, 0, 1)
    g = fringe_gap_weight(t(hidden), maps).numpy()
    assert g[windows].max() == 0.0
    assert g[~maps.forehead].min() == 1.0
    lum = complete_texture(bright, hidden * g, maps).texture @ np.array([0.299, 0.587, 0.114])
    around = fh & ~windows
    assert lum[windows].mean() < 1.03 * lum[around].mean()
    # one wide piece (a side parting: half the forehead) is kept whole
    half = weight.copy()
    left = cols < np.median(cols)
    half[rows[left], cols[left]] = 0.0
    assert fringe_gap_weight(t(half), maps).numpy().min() == 1.0


def test_atlas_disk_cache_gives_the_built_maps(model, tmp_path, monkeypatch):
    """A new process reads the atlas from ``<FFHQUV_CACHE_DIR>/atlas/`` instead of building it
    (most of a second of a cold ``ffhquv fit``): what it reads equals what was built, field by
    field and dtype by dtype; another size or rasteriser is another file; an unreadable file
    is built again and replaced."""
    import dataclasses

    from services.fitter.texture import atlas

    monkeypatch.setenv("FFHQUV_CACHE_DIR", str(tmp_path))
    be, size = get_backend("cpu"), 128
    monkeypatch.setattr(atlas, "_UV_CACHE", {})
    built = uv_maps(model, size, be)
    (path,) = (tmp_path / "atlas").glob("*.npz")
    assert not list((tmp_path / "atlas").glob(".*.tmp"))
    monkeypatch.setattr(atlas, "_UV_CACHE", {})
    read = uv_maps(model, size, be)
    assert read is not built
    for f in dataclasses.fields(built):
        a, b = getattr(built, f.name), getattr(read, f.name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b), f.name
        elif hasattr(a, "tocsr"):
            assert a.dtype == b.dtype and a.shape == b.shape and (a != b).nnz == 0, f.name
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        else:
            assert a == b, f.name
    assert atlas._disk_key(model, 64, be) != path.stem
    other = type("OtherRasteriser", (type(be),), {})  # another backend class, same module
    assert atlas._disk_key(model, size, object.__new__(other)) != path.stem
    path.write_bytes(b"not an npz")
    monkeypatch.setattr(atlas, "_UV_CACHE", {})
    again = uv_maps(model, size, be)
    assert torch.equal(again.pos_mean, built.pos_mean)
    with np.load(path) as z:  # replaced by a good one
        assert "pos_mean" in z.files


def test_atlas_derived_arrays_kept_beside_it(model, tmp_path, monkeypatch):
    """What the texture code derives from an atlas alone (the hair's strand noise) is made
    once: a new process reads it from beside the atlas; other code is another file; maps
    outside the disk cache keep it in memory only."""
    from services.fitter.texture import atlas, hair

    monkeypatch.setenv("FFHQUV_CACHE_DIR", str(tmp_path))
    be, size = get_backend("cpu"), 64
    monkeypatch.setattr(atlas, "_UV_CACHE", {})
    first = uv_maps(model, size, be)
    strands = hair._atlas_strands(first)
    want = hair.strand_noise(first.pos_mean.cpu().numpy(), first.head_centre)
    np.testing.assert_array_equal(strands, want)
    assert not strands.flags.writeable and hair._atlas_strands(first) is strands
    (saved,) = (tmp_path / "atlas").glob(f"{first.disk_key}-hair-strands-*.npz")
    monkeypatch.setattr(atlas, "_UV_CACHE", {})  # as a new process

    def no_build():
        raise AssertionError("built again")

    second = uv_maps(model, size, be)
    assert second is not first and second.disk_key == first.disk_key
    (read,) = atlas.derived_arrays(second, "hair-strands", no_build, (hair.__file__,))
    np.testing.assert_array_equal(read, want)
    built = []
    atlas.derived_arrays(second, "x", lambda: built.append(1) or (want,), (atlas.__file__,))
    atlas.derived_arrays(second, "x", no_build, (atlas.__file__,))  # memory
    assert built == [1] and len(list((tmp_path / "atlas").glob("*-x-*.npz"))) == 1
    saved.write_bytes(b"damaged")
    third = atlas.UVMaps(**{f: getattr(second, f) for f in (
        "size", "mask", "pos_mean", "skin", "face", "mirror", "has_mirror", "to_texel",
        "to_vertex", "footprint", "laplacian", "vertex_mirror", "texel_len", "seam_fade",
        "forehead", "central_face", "under_chin", "beard_zone", "beard_part", "hair_zone",
        "hair_zone_long", "head_centre", "iod")})
    assert third.disk_key == ""
    np.testing.assert_array_equal(hair._atlas_strands(third), want)  # memory only
    assert saved.read_bytes() == b"damaged"
    second.derived.clear()
    np.testing.assert_array_equal(hair._atlas_strands(second), want)  # built, file replaced
    with np.load(saved) as z:
        np.testing.assert_array_equal(z["a0"], want)
    assert not list((tmp_path / "atlas").glob(".*.tmp"))


def test_atlas_builds_when_its_cache_cannot_be_written(model, tmp_path, monkeypatch):
    """A cache folder that cannot take the atlas (a read-only image in k8s; here ``atlas`` is
    a file) costs the build, not the fit."""
    from services.fitter.texture import atlas

    (tmp_path / "atlas").write_text("in the way")
    monkeypatch.setenv("FFHQUV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(atlas, "_UV_CACHE", {})
    maps = uv_maps(model, 64, get_backend("cpu"))
    assert maps.size == 64 and bool(maps.mask.any())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas"]


def test_device_path_equals_the_host_path(maps, monkeypatch):
    """The low-pass family's torch path (taken where the atlas lives on a GPU: sparse CSR
    products) gives the host path's results (scipy) to float32 rounding: run here on the CPU
    by pointing the dispatch at it. The whole completion too, its image filters as the GPU
    runs them (operator matrices, ``imageops.FORCE_MATRICES``)."""
    import services.fitter.texture.lowpass as lp
    from services.fitter.texture import imageops

    albedo, weight = _photo_like(maps, seed=3)
    prior = np.array([0.6, 0.5, 0.4])
    host = [lp.mesh_lowpass(maps, albedo, weight, sigma=S / 24),
            lp.mesh_lowpass(maps, albedo, weight, sigma=S / 32, prior=prior, reach=S / 6)]
    host_sym = symmetrize_lowfreq(albedo, maps, sigma=S / 16)
    host_done = complete_texture(albedo, weight, maps).texture
    monkeypatch.setattr(lp, "ops_device", lambda m: torch.device("cpu"))
    dev = [lp.mesh_lowpass(maps, albedo, weight, sigma=S / 24),
           lp.mesh_lowpass(maps, albedo, weight, sigma=S / 32, prior=prior, reach=S / 6)]
    for (t_h, x_h), (t_d, x_d) in zip(host, dev, strict=True):
        assert t_d.dtype == np.float32 and t_d.shape == t_h.shape and x_d.shape == x_h.shape
        np.testing.assert_allclose(x_d, x_h, atol=2e-5)
        np.testing.assert_allclose(t_d, t_h, atol=2e-5)
    np.testing.assert_allclose(symmetrize_lowfreq(albedo, maps, sigma=S / 16), host_sym,
                               atol=5e-5)
    skin = (weight * (maps.skin.numpy() > 0.5)).astype(np.float32)
    host_skin = complete_texture(albedo, weight, maps, skin=skin)
    monkeypatch.setattr(imageops, "FORCE_MATRICES", True)
    done = complete_texture(torch.from_numpy(albedo), torch.from_numpy(weight), maps)
    assert isinstance(done.texture, np.ndarray) and done.texture.dtype == np.float32
    assert np.abs(done.texture - host_done).max() < 1e-4
    done = complete_texture(torch.from_numpy(albedo), torch.from_numpy(weight), maps,
                            skin=torch.from_numpy(skin))
    for f in ("texture", "observed", "combined", "skin_color"):
        assert np.abs(getattr(done, f) - getattr(host_skin, f)).max() < 1e-4, f


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU (run through the device tool)")
def test_gpu_path_equals_the_host_path(maps):
    """On a real GPU (an atlas whose tensors live there), the low-pass family gives the host
    path's results to float32 rounding."""
    import dataclasses

    import services.fitter.texture.lowpass as lp

    gmaps = dataclasses.replace(maps, mask=maps.mask.cuda())
    assert lp.ops_device(gmaps) is not None
    albedo, weight = _photo_like(maps, seed=5)
    for kw in ({"sigma": S / 24}, {"sigma": S / 32, "prior": np.array([0.6, 0.5, 0.4]),
                                   "reach": S / 6}):
        t_h, x_h = lp.mesh_lowpass(maps, albedo, weight, **kw)
        t_d, x_d = lp.mesh_lowpass(gmaps, albedo, weight, **kw)
        np.testing.assert_allclose(x_d, x_h, atol=2e-5)
        np.testing.assert_allclose(t_d, t_h, atol=2e-5)
    np.testing.assert_allclose(symmetrize_lowfreq(albedo, gmaps, sigma=S / 16),
                               symmetrize_lowfreq(albedo, maps, sigma=S / 16), atol=5e-5)
    off = (albedo - 0.5) * weight[..., None]
    np.testing.assert_allclose(lp.spread_offsets(off, weight, gmaps),
                               lp.spread_offsets(off, weight, maps), atol=5e-5)
    # the whole completion on the GPU (its filters as matmuls), from tensors there
    skin = (weight * (maps.skin.numpy() > 0.5)).astype(np.float32)
    on_gpu = complete_texture(torch.from_numpy(albedo).cuda(), torch.from_numpy(weight).cuda(),
                              gmaps, skin=torch.from_numpy(skin).cuda())
    on_host = complete_texture(albedo, weight, maps, skin=skin)
    for f in ("texture", "observed", "combined", "skin_color"):
        assert np.abs(getattr(on_gpu, f) - getattr(on_host, f)).max() < 1e-3, f


def test_beard_detail_is_laid_on_the_head_without_seams(maps, seam_pairs):
    """A full beard's detail continued over the jaw is tiled by position on the head: on the
    two sides of every cut through the beard zone it matches as neighbouring texels do
    (tiled by texel, as the skin's detail is, each cut showed as a line across the beard)."""
    import cv2

    from services.fitter.texture.beard import _detail_on_head
    from services.fitter.texture.completion import tile_patch

    p = 64  # a smooth pattern: the pairs' few texels apart change it little
    rng = np.random.default_rng(5)
    patch = cv2.GaussianBlur(rng.standard_normal((p, p, 3)).astype(np.float32), (0, 0), 8)
    patch /= patch.std()
    detail = _detail_on_head(patch, maps).reshape(-1, 3)
    zone = (np.asarray(maps.beard_zone) > 0.5).reshape(-1)
    a, b = seam_pairs
    keep = zone[a] & zone[b]
    assert keep.sum() > 20, keep.sum()
    a, b = a[keep], b[keep]
    # the pairs lie a few texels either side of their cut (their points ~4.5 texels apart):
    # against texels as far apart inside the islands
    inner = np.flatnonzero(zone & (np.asarray(maps.seam_fade) > 0.99).reshape(-1))
    inner = inner[np.isin(inner + 5, inner)]
    neigh = np.abs(detail[inner] - detail[inner + 5]).mean()
    across = np.abs(detail[a] - detail[b]).mean()
    assert across < 1.5 * neigh, (across, neigh)
    by_texel = tile_patch(torch.from_numpy(patch), maps, seed=1).numpy().reshape(-1, 3)
    assert np.abs(by_texel[a] - by_texel[b]).mean() > 1.5 * across  # what it was
