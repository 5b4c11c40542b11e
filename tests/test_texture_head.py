"""The whole head's appearance: zones of the head, hair on the scalp, beards kept, the skin's
shadows lifted, the neutral-light albedo convention.

Synthetic checks always run; the photo checks use ``../shared/data/faces-dev`` and skip when
it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ffhquv.render.raster import get_backend
from services.fitter.facemodel import load_face_model
from services.fitter.texture import (
    complete_texture,
    flatten_shading,
    hair_layer,
    hair_swatch,
    head_zones,
    strand_noise,
    swatch_on_head,
    uv_maps,
)

S = 256


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(2)
    return load_face_model("default")


@pytest.fixture(scope="module")
def maps(model):
    return uv_maps(model, S, get_backend("cpu"))


def test_head_zones_sit_where_a_head_has_them(model):
    z = head_zones(model)
    v = model.mean_shape.numpy()
    lm = model.landmarks(model.mean_shape[None])[0].numpy()
    brow, chin = lm[17:27, 1].mean(), lm[8, 1]
    hair, ear, neck = z["hair"] > 0.5, z["ear"] > 0.5, z["neck"] > 0.5
    assert hair.sum() > 300 and ear.sum() > 20 and neck.sum() > 50
    # hair well above the brows at the front (down to the nape at the back), never on the
    # face; the crown is hair
    front = v[:, 2] > lm[[0, 16], 2].mean() + 0.3
    assert (v[hair & front, 1] > brow + 0.3).all()
    assert v[hair, 1].min() > chin
    assert z["hair"][np.argmax(v[:, 1])] > 0.99
    assert z["hair"][model.tri[model.face_tri_mask].reshape(-1).numpy()].max() < 0.5
    # ears on both sides, between brow and chin; the neck below the chin at the front
    assert (v[ear, 0] > 0).any() and (v[ear, 0] < 0).any()
    assert ((v[ear, 1] < brow + 0.2) & (v[ear, 1] > chin)).all()
    assert (v[neck, 1] < lm[57, 1]).all()
    under_chin = neck & (np.abs(v[:, 0]) < 0.1) & (v[:, 2] > lm[8, 2] - 0.3)
    assert under_chin.any() and (v[under_chin, 1] < chin + 0.1).all()
    # left / right symmetric through the model's vertex mirror
    mi = model.mirror.numpy()
    assert np.abs(z["hair"] - z["hair"][mi]).mean() < 0.02
    # each ear is one piece (a skull vertex beside the ear box once passed the box test
    # alone: a skin speck in every head's hair above the ear)
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    tri = model.tri.numpy()
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    for side in (v[:, 0] < 0, v[:, 0] >= 0):
        sel = ear & side
        ee = e[sel[e[:, 0]] & sel[e[:, 1]]]
        adj = sp.coo_matrix((np.ones(len(ee)), (ee[:, 0], ee[:, 1])), shape=(len(v),) * 2)
        comp = connected_components(adj, directed=False)[1][sel]
        assert len(np.unique(comp)) == 1, np.bincount(np.unique(comp, return_inverse=True)[1])


def test_strand_noise_is_deterministic_and_seamless(maps):
    pos = maps.pos_mean.numpy()
    a = strand_noise(pos, maps.head_centre)
    assert np.array_equal(a, strand_noise(pos, maps.head_centre))
    m = maps.mask.numpy() & (maps.hair_zone > 0.5)
    assert abs(float(a[m].mean())) < 0.15 and 0.2 < float(a[m].std()) < 1.0
    # a continuous function of the 3D position, so texels that meet across a UV seam (the
    # same point of the head) get the same value: nearby points differ little
    pts = pos[m]
    nudged = strand_noise(pts + 1e-4, maps.head_centre)
    assert np.abs(nudged - a[m]).mean() < 0.05 * a[m].std()


def _stats(has_hair: bool) -> dict:
    return {"has_hair": has_hair, "hair_px": 1000.0 if has_hair else 0.0, "skin_px": 10.0,
            "hair_rgb": np.array([0.25, 0.18, 0.12], np.float32), "hair_amp": 0.2}


def test_hair_layer_covers_the_scalp_not_the_face(maps):
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    colour = np.full((S, S, 3), 0.3, np.float32)
    # the photo saw the front of the scalp as hair and the face as skin
    seen = mask & (pos[..., 2] > 0.0)
    w_hair = (seen & (maps.hair_zone > 0.5)).astype(np.float32)
    w_skin = (seen & (maps.hair_zone < 0.1)).astype(np.float32)
    assert hair_layer(colour, w_hair, w_skin, maps, _stats(False)) is None
    got = hair_layer(colour, w_hair, w_skin, maps, _stats(True))
    assert got is not None and got.info["has_hair"]
    crown = mask & (maps.hair_zone > 0.99)
    face = mask & (maps.face.numpy() > 0.5)
    assert got.matte[crown].mean() > 0.9  # unseen back of the head included
    assert got.matte[face].max() < 0.05
    # the colour: the photo's hair colour with strands, not a flat fill
    lum = got.color[crown] @ np.array([0.299, 0.587, 0.114])
    assert 0.12 < np.median(lum) < 0.4 and lum.std() > 0.01


def test_dense_bangs_are_hair_a_few_strands_over_the_forehead_are_not(maps):
    """The photo shows hair over most of the seen forehead (bangs): the matte covers the
    forehead up to the hairline, in the hair's colour; hair over a third of it (strands over
    one side, wispy bangs) leaves the forehead to the skin, as before."""
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    colour = np.full((S, S, 3), 0.6, np.float32)  # the photo's own pixels: skin-like
    seen = mask & (pos[..., 2] > 0.0)
    fore = np.asarray(maps.forehead) & (maps.hair_zone < 0.5)
    for share, bangs in ((1.0, True), (0.35, False)):
        strands = fore & (pos[..., 0] < np.quantile(pos[fore][:, 0], share) + 1e-6)
        w_hair = (seen & ((maps.hair_zone > 0.5) | strands)).astype(np.float32)
        w_skin = (seen & (maps.hair_zone < 0.1) & ~strands).astype(np.float32)
        got = hair_layer(colour, w_hair, w_skin, maps, _stats(True))
        covered = got.matte[fore & seen]
        if bangs:
            assert np.median(covered) > 0.9, np.median(covered)
            # up to the hairline, through the hair zone's soft lower edge (a band of skin
            # showed there between the bangs and the hair)
            edge = (np.asarray(maps.forehead) & seen & (maps.hair_zone > 0.5)
                    & (maps.hair_zone < 0.9))
            assert edge.sum() > 20, edge.sum()
            assert np.percentile(got.matte[edge], 10) > 0.9, np.percentile(got.matte[edge], 10)
            # the synthesised hair colour there, not the photo's skin-like pixels
            lum = got.color[fore & seen & (got.matte > 0.9)] @ np.array([0.299, 0.587, 0.114])
            assert np.median(lum) < 0.4, np.median(lum)
        else:  # no bangs: the matte is the hair zone's alone
            from services.fitter.texture.hair import _bangs

            frac = w_hair / np.maximum(w_hair + w_skin, 1e-6)
            assert not _bangs(frac, np.clip(w_hair + w_skin, 0, 1), maps.hair_zone * mask,
                              maps).any()


def test_long_hair_hangs_over_the_neck_behind_the_ears(model, maps):
    """Long hair covers the back of the neck below the short hairline, whatever the photo saw
    there, with a smooth edge; never the face, the ears or their hollows; short hair leaves
    the neck skin."""
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    colour = np.full((S, S, 3), 0.3, np.float32)
    # the photo saw the face and the side of the neck as skin
    w_skin = (mask & (pos[..., 2] > -0.2) & (maps.hair_zone < 0.1)).astype(np.float32)
    w_hair = (mask & (pos[..., 2] > 0.0) & (maps.hair_zone > 0.5)).astype(np.float32)
    short = hair_layer(colour, w_hair, w_skin, maps, _stats(True))
    long = hair_layer(colour, w_hair, w_skin, maps, {**_stats(True), "long_hair": True})
    assert long.info["long_hair"] and not short.info["long_hair"]
    nape = mask & (maps.hair_zone < 0.01) & (maps.hair_zone_long > 0.99)
    assert nape.sum() > 100
    assert short.matte[nape].max() < 0.05 and long.matte[nape].min() > 0.95
    face = mask & (maps.face.numpy() > 0.5)
    assert long.matte[face].max() < 0.05
    # the ears and the skin just around them (the hollows) keep the short line
    zones = head_zones(model)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(zones["ear_points"]).query(pos[mask], k=1)
    near = np.zeros_like(mask)
    near[mask] = d < 0.05 * zones["frame"][1]
    assert long.matte[near & (maps.hair_zone < 0.01)].max() < 0.05
    # both sides alike (the zone is symmetric)
    left, right = nape & (pos[..., 0] < 0), nape & (pos[..., 0] > 0)
    assert abs(int(left.sum()) - int(right.sum())) < 0.1 * nape.sum()


def test_spare_rect_is_the_largest_free_rectangle_or_none():
    """spare_rect on synthetic atlases: a free corner gives a rectangle inside it, its
    margin off the islands kept and its sides at least SPARE_MIN of the atlas; an atlas with
    no room that large gives None (the curtain then walks the scalp's UVs)."""
    from types import SimpleNamespace

    from services.fitter.texture.atlas import SPARE_MARGIN, SPARE_MIN, spare_rect

    s = 256
    mask = torch.ones((s, s), dtype=torch.bool)
    mask[160:, 64:] = False  # a free band along the bottom, from column 64 on
    got = spare_rect(SimpleNamespace(size=s, mask=mask, derived={}))
    assert got is not None
    r0, r1, c0, c1 = got
    m = round(SPARE_MARGIN * s)
    assert r0 >= 160 + m and c0 >= 64 + m and r1 <= s and c1 <= s
    assert (r1 - r0) * (c1 - c0) >= 0.8 * (s - 160 - m) * (s - 64 - m)  # most of the band
    full = torch.ones((s, s), dtype=torch.bool)
    full[:, ::16] = False  # thin free lines: no room for a strip
    assert spare_rect(SimpleNamespace(size=s, mask=full, derived={})) is None
    small = torch.ones((s, s), dtype=torch.bool)
    small[:int(SPARE_MIN * s) - 1, :int(SPARE_MIN * s) - 1] = False
    assert spare_rect(SimpleNamespace(size=s, mask=small, derived={})) is None


def test_long_hair_paints_its_curtain_strip_outside_the_islands(maps):
    """Long hair (only) gets a curtain strip for the hair mesh's curtain: in a rectangle no
    UV island covers nor reads, of the back of the head's hair colour, its strands running
    down (across its columns the texture changes much faster than down its rows); painted
    into the texture, it leaves every island's texel as it was."""
    from services.fitter.texture.atlas import SPARE_MARGIN, SPARE_MIN, spare_rect
    from services.fitter.texture.hair import paint_curtain

    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    colour = np.full((S, S, 3), 0.3, np.float32)
    w_hair = (mask & (pos[..., 2] > 0.0) & (maps.hair_zone > 0.5)).astype(np.float32)
    w_skin = (mask & (pos[..., 2] > -0.2) & (maps.hair_zone < 0.1)).astype(np.float32)
    short = hair_layer(colour, w_hair, w_skin, maps, _stats(True))
    long = hair_layer(colour, w_hair, w_skin, maps, {**_stats(True), "long_hair": True})
    assert short.curtain is None and long.curtain is not None
    strip = long.curtain
    r0, r1, c0, c1 = strip.rect
    assert strip.rect == spare_rect(maps) and strip.rgb.shape == (r1 - r0, c1 - c0, 3)
    assert min(r1 - r0, c1 - c0) >= SPARE_MIN * S
    # nothing of an island within the margin (bilinear and mip-mapped lookups read past it)
    m = round(SPARE_MARGIN * S)
    assert not mask[max(r0 - m, 0):r1 + m, max(c0 - m, 0):c1 + m].any()
    # the colour of the hair over the back of the head, with strands running down
    back = (long.matte > 0.8) & (pos[..., 2] < -0.3 * np.abs(pos[..., 2]).max())
    ref = np.median(long.color[back], 0)
    assert np.abs(np.median(strip.rgb.reshape(-1, 3), 0) - ref).max() < 0.03
    lum = np.log(strip.rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    assert lum.std() > 0.05 and _anisotropy(lum) > 3.0
    tex = np.random.default_rng(0).random((S, S, 3)).astype(np.float32)
    painted = paint_curtain(tex, strip)
    assert np.array_equal(painted[mask], tex[mask])
    assert np.array_equal(painted[r0:r1, c0:c1], strip.rgb)
    assert paint_curtain(tex, None) is tex


def _hair_photo(kind: str, angle_deg: float = 0.0) -> np.ndarray:
    """``float32 [1024, 1024, 3]``: straight strands running at ``angle_deg`` from the x axis
    (``kind="straight"``), or curls (small dark rings, no direction)."""
    yy, xx = np.mgrid[0:1024, 0:1024].astype(np.float32)
    if kind == "straight":
        t = np.radians(angle_deg)
        lum = 0.4 + 0.2 * np.sin((-np.sin(t) * xx + np.cos(t) * yy) / 6.0)
    else:
        rng = np.random.default_rng(1)
        lum = np.full((1024, 1024), 0.45, np.float32)
        for cy, cx in rng.integers(0, 1024, (1500, 2)):
            d = np.hypot(yy[cy - 20: cy + 20, cx - 20: cx + 20] - cy,
                         xx[cy - 20: cy + 20, cx - 20: cx + 20] - cx)
            lum[cy - 20: cy + 20, cx - 20: cx + 20] -= 0.25 * np.exp(-((d - 8) / 2) ** 2)
    return np.repeat(np.clip(lum, 0.02, 1)[..., None], 3, -1).astype(np.float32)


def _anisotropy(img: np.ndarray) -> float:
    """Mean squared x-gradient over y-gradient: large for strands running down the rows."""
    gx, gy = np.gradient(img.astype(np.float64), axis=1), np.gradient(img.astype(np.float64),
                                                                        axis=0)
    return float((gx ** 2).mean() / (gy ** 2).mean())


def test_hair_swatch_turns_strands_down_and_keeps_curls():
    """The photo's own hair, quilted: straight strands at any angle in the photo run down the
    swatch's rows (down the head's meridians); curls stay without a direction; a photo with
    too little hair gives none; the same photo and seed give the same swatch."""
    hair = np.zeros((224, 224), bool)
    hair[10:100, 20:200] = True
    for angle in (0.0, 35.0, 100.0):
        sw = hair_swatch(_hair_photo("straight", angle), hair, 60.0)
        assert sw is not None and sw.shape == (256, 256)
        assert _anisotropy(sw) > 4, angle
        assert abs(float(sw.mean())) < 1e-3 and 0.04 <= float(sw.std()) <= 0.3 + 1e-6
    curls = hair_swatch(_hair_photo("curls"), hair, 60.0)
    assert 0.5 < _anisotropy(curls) < 2.0
    assert np.array_equal(curls, hair_swatch(_hair_photo("curls"), hair, 60.0))
    few = np.zeros((224, 224), bool)
    few[50:56, 50:60] = True
    assert hair_swatch(_hair_photo("curls"), few, 60.0) is None


def test_hair_swatch_takes_patches_partly_off_the_hair_when_it_must():
    """Hair seen through thin gaps of something else (a non-hair row every 6 rows: too few
    patches 85 % on hair) still gives the photo's own texture, from patches 70 % on hair
    whose other pixels add no detail; with the first share alone it would give none (and the
    synthetic strands would replace the photo's hair when the mask moves by a pixel)."""
    from services.fitter.texture import hair as hair_mod

    hair = np.zeros((224, 224), bool)
    hair[10:100, 20:200] = True
    hair[10:100:6, 20:200] = False
    photo = _hair_photo("curls")
    sw = hair_swatch(photo, hair, 60.0)
    assert sw is not None and sw.shape == (256, 256)
    assert abs(float(sw.mean())) < 1e-3 and 0.04 <= float(sw.std()) <= 0.3 + 1e-6
    assert 0.5 < _anisotropy(sw) < 2.0  # still curls
    first = hair_mod.SWATCH_COVERS[:1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hair_mod, "SWATCH_COVERS", first)
        assert hair_swatch(photo, hair, 60.0) is None


def test_hair_from_the_photo_covers_the_head_without_a_seam(maps):
    """The swatch laid over the head is a function of each texel's place on the head: the
    two sides of the back of the head (where the angle around wraps) match; the hair layer
    carries it over the unseen scalp and says so in the report."""
    sw = hair_swatch(_hair_photo("curls"), np.pad(np.ones((90, 180), bool), ((10, 124), (20, 24))),
                     60.0)
    # a smooth tileable swatch for the seam check (neighbouring texels must agree with it)
    rng = np.random.default_rng(3)
    smooth = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((256, 256)))
                                  * np.exp(-(np.fft.fftfreq(256)[:, None] ** 2
                                             + np.fft.fftfreq(256)[None, :] ** 2) * 2000)))
    on = swatch_on_head(smooth.astype(np.float32), maps)
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy().astype(np.float64)
    scalp = mask & (maps.hair_zone > 0.5)
    d = pos - maps.head_centre
    around = np.arctan2(d[..., 0], d[..., 2])
    from scipy.spatial import cKDTree

    def step(left: np.ndarray, right: np.ndarray) -> float:
        """Mean difference between texels of ``left`` and their nearest of ``right``."""
        dist, nn = cKDTree(pos[right]).query(pos[left], k=1)
        close = dist < 2 * maps.texel_len
        assert close.sum() > 5
        return float(np.abs(on[left][close] - on[right][nn[close]]).mean())

    # across the back, where the angle around wraps: neighbours agree (a whole number of
    # tiles goes round; a fraction more would put unrelated swatch columns side by side there,
    # a step of about the field's own spread)
    back_step = step(scalp & (around > np.pi - 0.12), scalp & (around < -np.pi + 0.12))
    assert back_step < 0.5 * float(on[scalp].std()), back_step
    colour = np.full((S, S, 3), 0.3, np.float32)
    w_hair = (mask & (pos[..., 2] > 0.0) & (maps.hair_zone > 0.5)).astype(np.float32)
    got = hair_layer(colour, w_hair, np.zeros((S, S), np.float32), maps,
                     {**_stats(True), "hair_swatch": sw})
    assert got.info["texture"] == "photo"
    back = scalp & (pos[..., 2] < -0.3)
    ratio = np.log(got.color[back].mean(-1) / np.median(got.color[back].mean(-1)))
    assert 0.5 * sw.std() < ratio.std() < 2 * sw.std()
    assert hair_layer(colour, w_hair, np.zeros((S, S), np.float32), maps,
                      _stats(True)).info["texture"] == "strands"


def test_hair_layer_keeps_a_seen_bald_scalp_skin(maps):
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    seen = mask & (pos[..., 2] > -0.3)
    w_skin = seen.astype(np.float32)
    got = hair_layer(np.full((S, S, 3), 0.6, np.float32), np.zeros((S, S), np.float32), w_skin,
                     maps, _stats(True))
    front_scalp = seen & (maps.hair_zone > 0.9) & (pos[..., 2] > 0.1)
    assert got is not None and got.matte[front_scalp].mean() < 0.2


def test_flatten_shading_lifts_shadows_of_skin_only(maps):
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    albedo = np.full((S, S, 3), 0.6, np.float32)
    shadow = face & (np.hypot(pos[..., 0] - 0.3, pos[..., 1] + 0.2) < 0.06)
    albedo[shadow] *= 0.6
    skin = face.astype(np.float32)
    out = flatten_shading(albedo, skin, maps)
    assert out[shadow].mean() > albedo[shadow].mean() * 1.2  # the shadow is lifted
    far = face & ~shadow & (np.hypot(pos[..., 0] - 0.3, pos[..., 1] + 0.2) > 0.4)
    assert np.allclose(out[far], albedo[far], atol=2e-3)  # even skin is left alone
    # a constant albedo does not change; non-skin texels (brows, beard) do not change
    flat = np.full((S, S, 3), 0.5, np.float32)
    assert np.allclose(flatten_shading(flat, skin, maps)[face], 0.5, atol=1e-3)
    assert np.array_equal(flatten_shading(albedo, np.zeros_like(skin), maps), albedo)


# ------------------------------------------------------------------------------- photos
def _faces_dev() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev"


PHOTOS = {  # photo: (has a head of hair, has a beard)
    "fd14_light_m_fullbeard_fringe_man4.jpg": (True, True),
    "fd13_light_m_bald_img20.jpg": (False, False),
    "fd01_dark_f_woman_portrait.jpg": (True, False),
}


@pytest.fixture(scope="module")
def photo_fits():
    d = _faces_dev()
    if not d.is_dir():
        pytest.skip(f"faces-dev photos not found at {d}")
    from services.detector.core import Detector
    from services.fitter.core import FitterCore

    det, fitter = Detector(), FitterCore("default", device="cpu", threads=2)
    out = {}
    for name in PHOTOS:
        face = det.detect((d / name).read_bytes(), unwrap_size=512).aligned
        out[name] = (face, fitter.fit(face, preset="fast", texture_size=512,
                                      want_intermediates=False))
    return out, fitter


@pytest.mark.slow
def test_photos_hair_beard_and_skin_tone(photo_fits):
    fits, fitter = photo_fits
    maps = uv_maps(fitter.model, 512, fitter.backend)
    mask = maps.mask.cpu().numpy()
    crown = mask & (maps.hair_zone > 0.99)
    lw = np.array([0.299, 0.587, 0.114])
    for name, (hair, beard) in PHOTOS.items():
        face, fit = fits[name]
        assert fit.report["hair"]["has_hair"] is hair, (name, fit.report["hair"])
        tex = fit.uv_texture.astype(np.float64) / 255
        skin = mask & maps.central_face & (maps.skin.cpu().numpy() > 0.5)
        skin_lum = np.median(tex[skin] @ lw)
        crown_lum = np.median(tex[crown] @ lw)
        if hair:  # dark hair on the scalp, darker than the face
            assert crown_lum < 0.8 * skin_lum, (name, crown_lum, skin_lum)
        else:  # a bald crown in the person's skin tone
            assert abs(crown_lum - skin_lum) < 0.15 * skin_lum, (name, crown_lum, skin_lum)
        # the neutral-light convention: the seen face skin's albedo is the photo's skin colour
        lab = face.parse_mask == 1
        photo_skin = np.median(face.crop[lab & (face.skin_mask > 200)].astype(np.float64) / 255,
                               0)
        tex_skin = np.median(tex[skin], 0)
        assert np.all(np.abs(tex_skin - photo_skin) < 0.12), (name, tex_skin, photo_skin)
        if beard:  # the chin below the mouth is dark beard, not bare skin
            pos = maps.pos_mean.cpu().numpy()
            lm = fitter.model.landmarks(fitter.model.mean_shape[None])[0].cpu().numpy()
            chin = (mask & (np.abs(pos[..., 0]) < 0.15) & (pos[..., 1] < lm[57, 1] - 0.05)
                    & (pos[..., 1] > lm[8, 1] + 0.05) & (pos[..., 2] > 0))
            assert np.median(tex[chin] @ lw) < 0.6 * skin_lum, name
        # a full beard continued round the jaw's unseen sides (beard_layer); none on the
        # bald shaven head or the woman's
        assert fit.report["hair"]["beard"] is beard, (name, fit.report["hair"])
        if beard:
            pos = maps.pos_mean.cpu().numpy()
            side = (np.asarray(maps.beard_zone) > 0.9) & (np.abs(pos[..., 0]) > 0.55)
            assert np.median(tex[side] @ lw) < 0.7 * skin_lum, name


@pytest.mark.slow
def test_photos_eyes_keep_their_rims(photo_fits):
    """The eyes' rims (lashes, lid margins) come from the photo, not from completion's skin:
    the texels within 0.06 inter-ocular distances of each eye opening are darker than the face
    skin (their lower quartile under 0.88 of the skin's median luma; 0.90-0.93 when the colour
    test took them out and completion painted skin there: fd14 0.79, fd13 0.84-0.86, fd01
    0.70 now)."""
    from scipy.spatial import cKDTree

    fits, fitter = photo_fits
    m = fitter.model
    maps = uv_maps(m, 512, fitter.backend)
    mask = maps.mask.cpu().numpy()
    skin = mask & maps.central_face & (maps.skin.cpu().numpy() > 0.5)
    mean = m.mean_shape.cpu().numpy()
    lm = m.landmarks(m.mean_shape[None])[0].cpu().numpy()
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    pos = maps.pos_mean.cpu().numpy()[mask]
    lw = np.array([0.299, 0.587, 0.114])
    for name, (_, fit) in fits.items():
        tex = fit.uv_texture.astype(np.float64) / 255
        skin_lum = np.median(tex[skin] @ lw)
        for ring in (fit.eye_ring_left, fit.eye_ring_right):
            near = cKDTree(mean[ring]).query(pos)[0] < 0.06 * iod
            rim = np.percentile(tex[mask][near] @ lw, 25) / skin_lum
            assert near.sum() > 300 and rim < 0.88, (name, rim)


def test_features_are_the_eyes_rims_and_the_brows_bodies():
    """:func:`~services.fitter.texture.masks.features`: each eye grown by a rim and each
    brow's band, mostly below its landmarks (dlib's brow points run along the brow's upper
    edge)."""
    import cv2

    from services.fitter.texture.masks import BROW_BODY_IOD, EYE_RIM_IOD, features

    lm = np.zeros((68, 2))
    for c, a in ((70.0, 36), (150.0, 42)):  # eyes: 6 points round (c, 100), 40 x 16 px
        t = np.linspace(np.pi, -np.pi, 6, endpoint=False)
        lm[a:a + 6] = np.stack([c + 20 * np.cos(t), 100 + 8 * np.sin(t)], 1)
    lm[17:22] = np.stack([np.linspace(45, 95, 5), np.full(5, 75.0)], 1)
    lm[22:27] = np.stack([np.linspace(125, 175, 5), np.full(5, 75.0)], 1)
    f = features(lm, (224, 224))
    iod = float(np.linalg.norm(lm[36] - lm[45]))
    eye = np.zeros((224, 224), np.uint8)
    cv2.fillPoly(eye, [np.round(lm[36:42]).astype(np.int32)], 1)
    assert f[eye > 0].all()  # (head_masks' parse labels take the eye out)
    assert f[100, 70 + 20 + 3] and f[100 - 8 - 3, 70]  # just outside the corner, above the lid
    assert not f[100, 70 + 20 + round(EYE_RIM_IOD * iod) + 3]
    col = f[:, 70]  # the brow's band at x = 70: from above its landmarks to well below
    top, bottom = 75 - BROW_BODY_IOD[0] * iod, 75 + BROW_BODY_IOD[1] * iod
    assert col[round(top) + 1:round(bottom) - 1].all() and not col[round(top) - 2]
    assert bottom - 75 > 2 * (75 - top)


def test_lens_glints_are_found_on_the_sharp_crop_not_brows_liner_or_skin():
    """:func:`~services.fitter.texture.masks.lens_glints`: behind glasses, a grey-blue line of
    light under a brow (a lens's lit bevel, thinner than a mask pixel) and a green glint by
    the eye are taken out of the texture mask; the brown brow above, black liner on the lid
    and the skin are not, nor is a blue line far from the eyes."""
    import cv2

    from services.fitter.texture.masks import PARSE_SKIN, lens_glints

    lm = np.zeros((68, 2))
    for c, a in ((70.0, 36), (150.0, 42)):  # the same layout as the test above
        t = np.linspace(np.pi, -np.pi, 6, endpoint=False)
        lm[a:a + 6] = np.stack([c + 20 * np.cos(t), 100 + 8 * np.sin(t)], 1)
    lm[17:22] = np.stack([np.linspace(45, 95, 5), np.full(5, 75.0)], 1)
    lm[22:27] = np.stack([np.linspace(125, 175, 5), np.full(5, 75.0)], 1)
    k = 4  # the sharp crop: 896 px
    sharp = np.empty((224 * k, 224 * k, 3), np.float32)
    sharp[:] = (0.80, 0.60, 0.48)  # skin
    sharp[75 * k:80 * k, 45 * k:96 * k] = (0.35, 0.25, 0.20)  # a brown brow
    sharp[84 * k:84 * k + 2, 45 * k:96 * k] = (0.70, 0.72, 0.78)  # the bevel: 2 of 4 rows
    sharp[88 * k:89 * k, 130 * k:140 * k] = (0.40, 0.85, 0.60)  # a green glint by the eye
    sharp[92 * k:93 * k, 60 * k:80 * k] = (0.05, 0.05, 0.07)  # black liner on the lid
    sharp[180 * k:181 * k, 40 * k:180 * k] = (0.5, 0.6, 0.9)  # blue, far below the eyes
    photo = (cv2.resize(sharp, (224, 224), interpolation=cv2.INTER_AREA) * 255 + 0.5
             ).astype(np.uint8)
    parse = np.full((224, 224), PARSE_SKIN, np.uint8)
    g = lens_glints(sharp, photo, parse, lm)
    assert g[84, 50:90].all() and g[88, 132:138].all()
    assert not g[76:80, 45:96].any()  # the brow
    assert not g[92, 62:78].any()  # the liner
    assert not g[150:200].any() and not g[:70].any()  # far from the eyes; the forehead
    assert g.sum() < 120


def test_completion_keeps_the_photos_skin_level(maps):
    """Lifting shadows and trusting the brighter mirror side make a half-shadowed face
    brighter; the completed albedo keeps the seen skin's confidence-weighted level (the
    neutral-light convention: under a light of irradiance 1 the skin shows the photo's
    average brightness) while the shadow side is still lifted toward the lit side."""
    from services.fitter.texture.completion import skin_level

    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    rng = np.random.default_rng(1)
    albedo = np.full((S, S, 3), 0.55, np.float32) * (1 + 0.05 * rng.standard_normal((S, S, 1)))
    shadow = face & (pos[..., 0] > 0.05)
    albedo[shadow] *= 0.55
    albedo = albedo.astype(np.float32)
    weight = face.astype(np.float32)
    skin = weight.copy()
    done = complete_texture(albedo, weight, maps, skin=skin)
    lv_in, lv_out = skin_level(albedo, skin), skin_level(done.texture, skin)
    assert abs(lv_out / lv_in - 1) < 0.03, (lv_in, lv_out)
    lit = face & (pos[..., 0] < -0.05)
    lum = done.texture @ np.array([0.299, 0.587, 0.114], np.float32)
    # the shadow side is still lifted toward the lit side (0.55 of it in the input)
    assert lum[shadow].mean() / lum[lit].mean() > 0.7
    # no skin given: no rescaling
    plain = complete_texture(albedo, weight, maps)
    assert skin_level(plain.texture, skin) > 0


def test_a_shadowed_cheek_keeps_its_own_detail(maps):
    """Shadows only darken, so a skin texel much darker than its seen mirror is lifted; it is
    lifted toward the mirror's low frequencies with its own detail kept, not replaced by the
    mirror texel (which printed the lit cheek's light, edges and all, as an island on the
    shadowed one)."""
    from services.fitter.texture.completion import lift_to_mirror

    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    rng = np.random.default_rng(3)
    detail = 0.06 * rng.standard_normal((S, S, 1)).astype(np.float32)
    albedo = np.clip(0.5 + detail, 0, 1).repeat(3, -1).astype(np.float32)
    shadow = face & (pos[..., 0] > 0.05)
    albedo[shadow] *= 0.5
    weight = face.astype(np.float32)
    out = lift_to_mirror(albedo, weight, np.ones_like(weight), maps)
    lum_in, lum_out = albedo.mean(-1), out.mean(-1)
    lit = face & (pos[..., 0] < -0.05)
    inner = shadow & (pos[..., 0] > 0.15)  # away from the shadow's edge
    assert lum_out[inner].mean() > 1.6 * lum_in[inner].mean()  # lifted toward the lit side
    assert abs(lum_out[lit].mean() / lum_in[lit].mean() - 1) < 0.02  # the lit side stays
    # the shadowed texels keep their own fine detail: it correlates with the input's, not with
    # the mirror texels' detail
    mirror = maps.mirror.numpy().reshape(S, S)
    own = detail[..., 0][inner]
    theirs = detail[..., 0].reshape(-1)[mirror[inner]]
    got = lum_out[inner] - lum_out[inner].mean()
    assert np.corrcoef(got, own)[0, 1] > 0.8
    assert abs(np.corrcoef(got, theirs)[0, 1]) < 0.2


def test_unseen_skin_takes_the_seen_skins_fine_detail(maps):
    """The skin the photo did not show (the neck, the head's sides, a bald scalp) is filled by
    a smooth template; it takes the seen skin's fine detail (pores, freckles, stubble), a
    square of it tiled (:func:`skin_detail`), so that it does not read as plastic beside the
    face. Zero-mean (the level stays), the same for the same photo, none without a skin mask."""
    import cv2

    mask = maps.mask.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    rng = np.random.default_rng(5)
    albedo = np.clip(0.55 + 0.06 * rng.standard_normal((S, S, 1)), 0, 1).repeat(3, -1)
    albedo = albedo.astype(np.float32)
    weight = face.astype(np.float32)

    def fine(t):  # the detail the eye sees: the texels against their 3x3 mean
        lum = t.mean(-1)
        return lum - cv2.blur(lum, (3, 3))

    done = complete_texture(albedo, weight, maps, skin=weight.copy())
    again = complete_texture(albedo, weight, maps, skin=weight.copy())
    np.testing.assert_array_equal(done.texture, again.texture)
    far = cv2.distanceTransform((~face).astype(np.uint8), cv2.DIST_L2, 3) > S / 16
    unseen = mask & far & (maps.seam_fade > 0.99) & (cv2.erode(mask.astype(np.uint8),
                                                              np.ones((5, 5))) > 0)
    assert unseen.sum() > 2000
    inner = cv2.erode(face.astype(np.uint8), np.ones((9, 9))) > 0
    seen_sd = fine(done.texture)[inner].std()
    got = fine(done.texture)[unseen].std()
    assert got > 0.3 * seen_sd, (got, seen_sd)
    plain = complete_texture(albedo, weight, maps)
    assert fine(plain.texture)[unseen].std() < 0.1 * seen_sd
    # zero-mean: the unseen skin's level is the template's
    assert abs(done.texture[unseen].mean() - plain.texture[unseen].mean()) < 0.02


def test_unseen_skin_does_not_continue_the_shadow_under_the_jaw(model, maps):
    """The unseen neck takes the person's skin tone, not the dark shadow (or clothing, or
    hair) the photo shows along the face's lower edge: dark texels count little in the skin
    template that fills what the photo did not see."""
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    lm = model.landmarks(model.mean_shape[None])[0].numpy()
    albedo = np.full((S, S, 3), [0.45, 0.32, 0.26], np.float32)
    jaw = face & (pos[..., 1] < lm[57, 1])  # below the lower lip: in the jaw's shadow
    albedo[jaw] *= 0.3
    weight = face.astype(np.float32)
    done = complete_texture(albedo, weight, maps, skin=weight.copy())
    neck = mask & (np.asarray(maps.to_texel @ head_zones(model)["neck"]).reshape(S, S) > 0.5)
    lum = done.texture @ np.array([0.299, 0.587, 0.114], np.float32)
    skin_lum = float(np.median(lum[face & ~jaw]))
    assert neck.sum() > 50
    assert np.median(lum[neck]) > 0.75 * skin_lum, (np.median(lum[neck]), skin_lum)


def test_completion_keeps_brows_that_are_off_the_mirror_line(maps):
    """A brow (dark, not skin in the photo's labels) whose mirror texels are skin (the
    person's brows are not where the mean shape's mirror map puts them) stays dark: only
    skin darker than its mirror is a shadow to replace with the mirror side."""
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    albedo = np.full((S, S, 3), 0.6, np.float32)
    ys = pos[face][:, 1]
    brow = face & (pos[..., 0] > 0.15) & (pos[..., 0] < 0.45) & (
        np.abs(pos[..., 1] - np.percentile(ys, 75)) < 0.04)
    assert brow.sum() > 30
    albedo[brow] = [0.15, 0.1, 0.08]
    weight = face.astype(np.float32)
    skin = (face & ~brow).astype(np.float32)
    tex = complete_texture(albedo, weight, maps, skin=skin).texture
    core = brow & (cv2_erode(brow) > 0)
    lw = np.array([0.299, 0.587, 0.114], np.float32)
    assert np.median(tex[core] @ lw) < 0.5 * 0.6, np.median(tex[core] @ lw)


def cv2_erode(m: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8))


def test_flatten_shading_lifts_thin_dark_marks(maps):
    """A strand remnant or a crease (a thin dark line on even skin) is lifted toward the
    skin around it, not left as a scratch."""
    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    albedo = np.full((S, S, 3), 0.6, np.float32)
    line = face & (np.abs(pos[..., 1] - pos[face][:, 1].mean()) < 0.012)  # ~3 texels
    assert line.sum() > 20
    albedo[line] *= 0.6
    out = flatten_shading(albedo, face.astype(np.float32), maps)
    # lifted by more than the broad lift alone gives such a thin mark (about 1.15x here)
    assert out[line].mean() > 1.2 * 0.36, out[line].mean()
    assert (out[line] <= 0.6 + 1e-4).all()  # never brighter than the skin around it


def test_hair_colour_ignores_highlights_and_shadow_casts():
    """Brown hair whose shadows take a green cast and whose sheen is sky blue: the colour
    is the brown of its lit body, as dark as the darker half."""
    from services.fitter.texture.masks import hair_colour

    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.float32)
    img[:] = [0.30, 0.20, 0.12]  # brown body
    img *= rng.uniform(0.8, 1.2, (64, 64, 1)).astype(np.float32)
    img[:, :16] = [0.08, 0.12, 0.06]  # shadow, green cast
    img[:8, 16:] = [0.75, 0.85, 0.95]  # sky-blue sheen
    got = hair_colour((img * 255).astype(np.uint8), np.ones((64, 64), bool))
    assert got[0] > got[1] > got[2], got  # brown: red > green > blue
    assert 0.12 < got.mean() < 0.3, got


def test_skin_shine_leaves_the_hair_colour_and_light_hair_alone():
    """Short black hair whose band takes in a patch of lit, colourless, smooth forehead
    skin (fd04): the patch is skin shine, out of the hair's colour; the same patch with
    strands (light hair) stays; so does the patch when it is most of the band."""
    import cv2

    from services.fitter.texture.masks import skin_shine

    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), 0.08, np.float32)  # black hair ...
    fine = np.full((64, 64), 3.0, np.float32)  # ... with strand texture (skin: 1)
    img[40:, :] = [0.72, 0.70, 0.69]  # lit, colourless skin below it
    fine[40:, :] = rng.uniform(0.5, 1.2, (24, 64))
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
    hair = np.ones((64, 64), bool)
    shine = skin_shine(lab, hair, fine, 1.0)
    assert shine[40:].all() and not shine[:40].any()
    streaky = fine.copy()
    streaky[40:] = 4.0  # light strands
    assert not skin_shine(lab, hair, streaky, 1.0).any()
    most = hair.copy()
    most[:30] = False  # the shine would be 24 of 34 rows
    assert not skin_shine(lab, most, fine, 1.0).any()


def test_hair_colour_blond_with_roots_casts_and_dye():
    """Blond hair whose parting and roots (a third of the pixels) are darker and pinker stays
    blond; dark hair with an olive cast of foliage comes out brown (red >= green); strongly
    dyed hair keeps its hue."""
    import cv2

    from services.fitter.texture.masks import hair_colour

    rng = np.random.default_rng(0)
    ones = np.ones((60, 60), bool)
    blond = np.zeros((60, 60, 3), np.float32)
    blond[:] = [0.86, 0.78, 0.66]
    blond *= rng.uniform(0.9, 1.1, (60, 60, 1)).astype(np.float32)
    blond[:, :20] = [0.6, 0.42, 0.38]  # parting and roots
    got = hair_colour((np.clip(blond, 0, 1) * 255).astype(np.uint8), ones)
    lab = cv2.cvtColor(got[None, None], cv2.COLOR_RGB2Lab)[0, 0]
    assert lab[0] > 72 and got[1] > 0.6, got  # light, not the roots' salmon

    olive = np.zeros((60, 60, 3), np.float32)
    olive[:] = [0.25, 0.26, 0.17]
    olive *= rng.uniform(0.85, 1.15, (60, 60, 1)).astype(np.float32)
    got = hair_colour((olive * 255).astype(np.uint8), ones)
    assert got[0] >= got[1] > got[2], got

    blue = np.full((60, 60, 3), [0.1, 0.3, 0.8], np.float32)
    got = hair_colour((blue * 255).astype(np.uint8), ones)
    assert got[2] > got[1] > got[0], got


def test_long_hairs_lit_lengths_lift_its_shaded_roots():
    """Long hair: a brunette's crown band shows her shaded roots (nearly black); her lit
    lengths beside the cheeks are medium brown: the colour moves most of the way to them,
    brown. Black hair whose lengths show only grey sheen, lengths lighter but too few, or
    lengths darker than the band (a blonde's shaded underside) leave it as it was."""
    import cv2

    from services.fitter.texture.masks import LENGTHS_WEIGHT, lengths_colour

    def lab_of(rgb):
        return cv2.cvtColor(np.asarray(rgb, np.float32)[None, None], cv2.COLOR_RGB2Lab)[0, 0]

    def srgb(lab):
        return cv2.cvtColor(np.asarray(lab, np.float32)[None, None], cv2.COLOR_Lab2RGB)[0, 0]

    rng = np.random.default_rng(0)
    strips = np.zeros((80, 80), bool)
    strips[20:60, :15] = strips[20:60, 65:] = True
    hairlike = np.ones((80, 80), bool)
    roots = srgb([10.0, 2.0, 3.0])

    def photo(lab, share=1.0):  # the crop in CIELAB, as _head_masks_one converts it
        img = np.zeros((80, 80, 3), np.float32)
        img[:] = srgb(lab)
        img *= rng.uniform(0.92, 1.08, (80, 80, 1)).astype(np.float32)
        keep = rng.random((80, 80)) < share
        img[~keep] = roots
        u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        return cv2.cvtColor(u8.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)

    got = lab_of(lengths_colour(photo([28.0, 6.0, 12.0]), strips, hairlike, roots))
    assert got[0] > 10 + 0.8 * LENGTHS_WEIGHT * 18, got  # most of the way to the lengths
    assert np.hypot(got[1], got[2]) > 6 and got[2] > 0, got  # brown, not grey
    for img in (photo([28.0, 0.5, 1.0]),  # grey sheen of black hair
                photo([28.0, 6.0, 12.0], share=0.05),  # too few lengths
                photo([6.0, 2.0, 3.0])):  # darker than the band
        np.testing.assert_allclose(lengths_colour(img, strips, hairlike, roots), roots)
    # only the strips count, only hair-like pixels in them
    none = np.zeros_like(hairlike)
    np.testing.assert_allclose(lengths_colour(photo([28.0, 6.0, 12.0]), strips, none, roots),
                               roots)


def test_hair_colour_black_hair_is_not_dark_red():
    """Black hair in a thin band above a warm forehead (000055, fd10: half the band's
    pixels are the warm sheen and the hairline's mixed pixels): the colour is a dark,
    barely saturated brown, not the lit body's chroma at black's lightness (out of sRGB,
    clipped to dark red with blue 0)."""
    import cv2

    from services.fitter.texture.masks import hair_colour

    rng = np.random.default_rng(0)
    img = np.zeros((60, 60, 3), np.float32)
    img[:] = [0.07, 0.06, 0.05]
    img[:, 30:] = [0.45, 0.27, 0.18]  # warm sheen / hairline
    img *= rng.uniform(0.85, 1.15, (60, 60, 1)).astype(np.float32)
    got = hair_colour((np.clip(img, 0, 1) * 255).astype(np.uint8), np.ones((60, 60), bool))
    lab = cv2.cvtColor(got[None, None], cv2.COLOR_RGB2Lab)[0, 0]
    assert lab[0] < 30, got
    assert np.hypot(lab[1], lab[2]) < lab[0], (got, lab)  # chroma of a dark brown (was 4x L*)
    assert got[2] > 0.4 * got[0], got  # blue not clipped away


def test_hair_colour_of_shaded_ginger_hair_is_its_median_black_hairs_its_darker_half():
    """Strawberry-blonde hair of which the band over the forehead shows two fifths in shade
    (fd20): the shade is still ginger, so the colour is the median, as light as the lit hair,
    not a dark brown. Black hair under the same share of grey sheen keeps its darker half."""
    import cv2

    from services.fitter.texture.masks import hair_colour

    def srgb(lab):
        return cv2.cvtColor(np.asarray(lab, np.float32)[None, None], cv2.COLOR_Lab2RGB)[0, 0]

    rng = np.random.default_rng(0)
    ones = np.ones((60, 60), bool)

    def photo(lit, shade):
        img = np.zeros((60, 60, 3), np.float32)
        img[:] = srgb(lit)
        img[:, :24] = srgb(shade)
        img *= rng.uniform(0.95, 1.05, (60, 60, 1)).astype(np.float32)
        return (np.clip(img, 0, 1) * 255).astype(np.uint8)

    got = hair_colour(photo([45.0, 15.0, 30.0], [25.0, 9.0, 17.0]), ones)
    lab = cv2.cvtColor(got[None, None], cv2.COLOR_RGB2Lab)[0, 0]
    assert lab[0] > 40 and lab[2] > 20, lab  # the lit ginger (was L* 25: the shade's)
    # black hair, three fifths grey sheen: the darker half
    got = hair_colour(photo([30.0, 1.0, 2.0], [8.0, 1.0, 1.5]), ones)
    lab = cv2.cvtColor(got[None, None], cv2.COLOR_RGB2Lab)[0, 0]
    assert lab[0] < 15, lab


def test_hair_colour_of_underexposed_black_hair_is_the_darkest_albedo():
    """Hair the photo shows near black (L* 1-3) is given the darkest hair albedo, so its
    strands can show; hair at or above it keeps its lightness."""
    import cv2

    from services.fitter.texture.masks import HAIR_MIN_L, hair_colour

    rng = np.random.default_rng(1)
    for rgb, lifted in (([0.012, 0.010, 0.009], True), ([0.30, 0.22, 0.15], False)):
        img = np.clip(np.array(rgb, np.float32) * rng.uniform(0.8, 1.2, (40, 40, 1)), 0, 1)
        got = hair_colour((img * 255 + 0.5).astype(np.uint8), np.ones((40, 40), bool))
        lab = cv2.cvtColor(got[None, None], cv2.COLOR_RGB2Lab)[0, 0]
        if lifted:
            assert abs(lab[0] - HAIR_MIN_L) < 1.0 and np.hypot(lab[1], lab[2]) < 8, lab
        else:
            assert lab[0] > HAIR_MIN_L + 10, lab


# --------------------------------------------------------------- photo masks (faces-dev)
GLASSES = {"fd18_light_f_glasses_detection1.jpg": True,
           "fd07_medium_m_glasses_goatee_FACE_2.jpg": True,
           "fd12_light_m_shaved_glasses_beard_asj.jpg": True,
           "fd14_light_m_fullbeard_fringe_man4.jpg": False,
           "fd13_light_m_bald_img20.jpg": False,
           "fd09_medium_m_elderly_moustache_Family2-Man2.jpg": False}
# glasses whose black top rim runs just under the brows (dlib's brow points on it)
TOP_RIM_ON_BROWS = {"fd18_light_f_glasses_detection1.jpg",
                    "fd07_medium_m_glasses_goatee_FACE_2.jpg"}
HEADS = {  # photo: has a head of hair (head_masks' test)
    "fd11_light_m_sidelit_src_man1.jpg": True,  # side-lit: hair the skin model tolerates
    "fd02_dark_f_face_paint.png": True,  # short dark hair labelled skin by the parse
    "fd14_light_m_fullbeard_fringe_man4.jpg": True,
    "fd13_light_m_bald_img20.jpg": False,
    "fd21_light_f_wavyblonde_hand_model_face.jpg": True,  # blond: passes the colour test
    "fd06_medium_f_longcurly_img_1696.png": True,  # bushy brows, hair at the temples
    # receding white hair: forehead skin fills the band's lower part (crown_hair_share)
    "fd09_medium_m_elderly_moustache_Family2-Man2.jpg": True,
    "fd12_light_m_shaved_glasses_beard_asj.jpg": False,  # shaved: a shiny, stubbly scalp
}

LONG_HAIR = {  # photo: hair hangs beside the cheeks (head_masks' long_hair)
    "fd17_light_f_longhair_face.png": True,
    "fd21_light_f_wavyblonde_hand_model_face.jpg": True,
    "fd06_medium_f_longcurly_img_1696.png": True,
    "fd14_light_m_fullbeard_fringe_man4.jpg": False,  # short hair, beard beside the jaw
    "fd11_light_m_sidelit_src_man1.jpg": False,
    "fd02_dark_f_face_paint.png": False,
}

HAIR_TEXTURE = {  # photo: the texture its hair swatch must have (head_masks' hair_swatch)
    "fd05_medium_m_curly_src_man2.jpg": "coils",  # no direction
    "fd16_light_f_bangs_img_1585.png": "straight",  # strands down the head
}


@pytest.fixture(scope="module")
def detected():
    d = _faces_dev()
    if not d.is_dir():
        pytest.skip(f"faces-dev photos not found at {d}")
    from services.detector.core import Detector

    det = Detector()
    names = sorted(set(GLASSES) | set(HEADS) | set(LONG_HAIR) | set(HAIR_TEXTURE))
    return {n: det.detect((d / n).read_bytes(), unwrap_size=512).aligned
            for n in names if (d / n).is_file()}


def test_eyeglass_frames_found_on_glasses_only(detected):
    from services.fitter.texture.masks import dark_marks, eyeglass_frames

    for name, glasses in GLASSES.items():
        if name not in detected:
            continue
        a = detected[name]
        marks = dark_marks(torch.tensor(a.crop_hires[None]).float() / 255, 224)[0]
        frames, on_brows, st = eyeglass_frames(marks, a.crop_landmarks, a.parse_mask)
        assert st["has_glasses"] is glasses, (name, st)
        assert not (on_brows & (frames == 0)).any()  # the top rim on the brows is frame
        # ... found where a black top rim runs just under the brows (inside their label:
        # fd07, fd18), not where a thin rim runs apart from them (fd12)
        lm = a.crop_landmarks
        cols = [on_brows[:, int(np.ceil(lm[s:s + 6, 0].min())):int(lm[s:s + 6, 0].max()) + 1]
                .any(0).mean() for s in (36, 42)]
        if name in TOP_RIM_ON_BROWS:
            assert min(cols) > 0.5, (name, cols)
        else:
            assert max(cols) < 0.1, (name, cols)
        if glasses:  # the frames around both eyes, never the eyes themselves
            eyes = a.parse_mask == 3
            assert frames.sum() > 150 and frames[eyes].mean() < 0.2, (name, frames.sum())
            # ... and the whole lower rims, a thin metal one too (fd12's: 0.29 and 0.04 of
            # the columns under the eyes before the faint pixels were joined, now 1.0)
            lm = a.crop_landmarks
            iod = float(np.linalg.norm(lm[36] - lm[45]))
            for s in (36, 42):
                e = lm[s:s + 6]
                x0, x1 = int(np.ceil(e[:, 0].min())), int(e[:, 0].max())
                y0, y1 = int(e[:, 1].max() + 0.05 * iod), int(e[:, 1].max() + 0.45 * iod)
                assert frames[y0:y1, x0:x1 + 1].any(0).mean() > 0.9, (name, s)
        else:
            assert frames.sum() == 0


@pytest.mark.slow
def test_head_masks_hair_strands_and_bald(detected):
    """Hair found on side-lit, parse-mislabelled, blond and receding white heads, not on bald
    or shaved ones (each far from the decision's line), with a
    texture swatch of its own (coils without a direction, straight hair in strands:
    :data:`HAIR_TEXTURE`); long hair told from short (:data:`LONG_HAIR`); a blond
    head's colour is light; strands over the forehead (fd14's fringe) stay out of the skin
    texture with their edges."""
    from ffhquv.render.renderer import MeshRenderer
    from services.fitter.core import DefaultStages, FitterCore, _photo_batch
    from services.fitter.pipeline import FitContext
    from services.fitter.presets import get_preset
    from services.fitter.texture.masks import HAS_HAIR_SHARE, STRAND_CONTRAST, dark_marks

    fitter = FitterCore("default", device="cpu", threads=2)
    m = fitter.model
    rend = MeshRenderer(fitter.camera, fitter.backend)
    ctx = FitContext(model=m, cam=fitter.camera, backend=fitter.backend, renderer=rend,
                     preset=get_preset("fast"), tex_size=256, progress=lambda *a: None,
                     cancel=None)
    for name in sorted(set(HEADS) | set(LONG_HAIR) | set(HAIR_TEXTURE)):
        hair = HEADS.get(name, True)
        if name not in detected:
            continue
        a = detected[name]
        pb = _photo_batch([a], fitter.device)
        torch.manual_seed(0)
        _, c = fitter._stage1(ctx, pb)
        with torch.no_grad():
            hm = DefaultStages._head_masks(ctx, pb, c)
        st = hm.hair_stats[0]
        assert st["has_hair"] is hair, (name, st)
        # far from the line either way (bald 0.1-0.23, hair 0.68 up on the 24 photos)
        assert abs(st["crown_hair_share"] - HAS_HAIR_SHARE) > 0.15, (name, st)
        # the scalp's hair texture from the photo's own hair whenever there is hair (fd09's
        # white hair shows in strips too thin for the swatch's patches: strand noise)
        if not name.startswith("fd09"):
            assert (st.get("hair_swatch") is not None) is hair, name
        if name in HAIR_TEXTURE:
            a_ = _anisotropy(st["hair_swatch"])
            assert (a_ < 3) if HAIR_TEXTURE[name] == "coils" else (a_ > 10), (name, a_)
        if name in LONG_HAIR:
            assert bool(st.get("long_hair")) is LONG_HAIR[name], (name, st)
        if name.startswith("fd21"):  # blond, not the salmon of its parting and roots
            import cv2

            rgb = np.asarray(st["hair_rgb"], np.float32)[None, None]
            assert cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[0, 0, 0] > 65, st["hair_rgb"]
        if name.startswith("fd06"):  # the brows stay in the texture, not taken for strands
            from services.fitter.texture.masks import PARSE_BROWS

            brows = a.parse_mask == PARSE_BROWS
            tex = hm.texture[0, ..., 0].numpy()
            # 0.39 (the label's thin ends go with the outline erosion); 0.01 when the brows
            # were taken for strands hanging from the hair at the temples
            assert (tex[brows] > 0).mean() > 0.3, (tex[brows] > 0).mean()
            import cv2

            from services.fitter.texture.masks import features

            # the eyes' rims (lashes, lid shadow: the colour test fails them) stay too
            # (beyond the eyes' one-pixel border, which the texture leaves out)
            eyes = cv2.dilate((a.parse_mask == 3).astype(np.uint8), np.ones((5, 5), np.uint8))
            rims = features(a.crop_landmarks, brows.shape) & (a.parse_mask == 1) & (eyes == 0)
            rims[: int(a.crop_landmarks[17:27, 1].max()) + 3] = False  # below the brows
            assert rims.sum() > 100 and (tex[rims] > 0).mean() > 0.8, (tex[rims] > 0).mean()
            # the shiny forehead is skin, not strands: 0.56 of its skin label in the texture
            # (0.20 when the shine failed the colour test and the strand test took it)
            fore = ((np.arange(224)[:, None] < a.crop_landmarks[17:27, 1].min() - 3)
                    & (a.parse_mask == 1))
            assert (tex[fore] > 0.5).mean() > 0.45, (tex[fore] > 0.5).mean()
        if name.startswith("fd11"):  # the shadowed side's hair is hair, not forehead skin
            lm = a.crop_landmarks
            iod = float(np.linalg.norm(lm[36] - lm[45]))
            x0, y1 = int(lm[27, 0]), int(lm[17:27, 1].min() - 0.6 * iod)
            tex = hm.texture[0, ..., 0].numpy()[:y1, x0:]
            hair_ = hm.hair[0, ..., 0].numpy()[:y1, x0:] > 0.5
            taken = (tex > 0) | hair_
            # the texture's share of what either mask takes there: 0.83 of 1549 px before
            # the saturation test, 0.03 of 1081 px now
            assert taken.sum() > 800 and (tex[taken] > 0.5).mean() < 0.1, (
                taken.sum(), (tex[taken] > 0.5).mean())
        if name.startswith("fd14"):
            marks = dark_marks(pb.hires, 224)[0]
            lm = a.crop_landmarks
            small = (cv2_area(marks > STRAND_CONTRAST) > 0.3)
            rows = np.arange(224)[:, None] < lm[17:27, 1].mean()
            fore = rows & (a.parse_mask == 1) & small
            tex = hm.texture[0, ..., 0].numpy()
            assert fore.sum() > 30 and (tex[fore] > 0).mean() < 0.1, (fore.sum(),
                                                                       (tex[fore] > 0).mean())


def test_unsaturated_hair_in_a_side_lights_shadow_is_told_from_the_skin():
    """Grey hair and skin in a side light's shadow, as dark as each other: the hair (without
    the skin's saturation) is told, the shadowed skin and the lit side are not; black hair over
    an evenly lit dark skin (no column in shadow) is left to the darkness test."""
    from services.fitter.texture.masks import LUMA, _neutral, _shadowed

    skin = np.array([200, 150, 120], np.float32)
    img = np.tile(skin, (64, 64, 1))
    img[:, 32:] *= 0.4  # the right half in shadow
    img[:16, 40:] = 0.4 * skin @ LUMA  # grey hair, as dark as the shadowed skin
    img = img.astype(np.uint8)
    lum = img.astype(np.float32) @ LUMA / 255
    ref = np.zeros((64, 64), bool)
    ref[24:, :] = True
    col = np.array([np.median(lum[24:, x]) for x in range(64)], np.float32)
    level = float(np.median(lum[ref]))
    told = _neutral(img, lum, ref, level) & _shadowed(col, level)
    assert told[2:14, 42:62].all()  # the hair (off the smoothing's reach of its edges)
    assert not told[24:].any() and not told[:, :30].any()
    # dark skin lit evenly: no column in shadow, the black hair is not told this way
    even = np.tile(np.array([90, 60, 45], np.float32), (64, 64, 1))
    even[:16] = 25
    lum = even @ LUMA / 255
    col = np.array([np.median(lum[24:, x]) for x in range(64)], np.float32)
    assert not _shadowed(col, float(np.median(lum[ref]))).any()


def cv2_area(m: np.ndarray, size: int = 224) -> np.ndarray:
    import cv2

    return cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def test_skin_colour_weight_takes_the_skins_shine_when_asked():
    """A shine (brighter than the skin, its chroma the skin's scaled down: the same hue,
    paler) fails the plain colour test and passes with ``highlights``; a pale pixel of
    another hue, a shine's chroma at the skin's darkness and a darker one fail both."""
    from services.fitter.texture.masks import _ycbcr, skin_colour_weight

    rng = np.random.default_rng(0)
    skin = np.array([0.80, 0.58, 0.45], np.float32)
    img = np.clip(skin + 0.01 * rng.standard_normal((64, 64, 3)), 0, 1).astype(np.float32)
    lm = np.zeros((68, 2), np.float32)
    lm[36], lm[45] = (8, 20), (56, 20)
    lm[37:45, 1] = 20
    lm[48], lm[54] = (20, 50), (44, 50)
    ph = torch.from_numpy(img)[None]
    ycc = _ycbcr(ph)[0, 30, 30]

    def rgb(y, cb, cr):  # the inverse of _ycbcr (BT.601, [0, 1] luma, chroma about 0)
        r = y + 1.402 * cr
        b = y + 1.772 * cb
        return [r, (y - 0.299 * r - 0.114 * b) / 0.587, b]

    med = _ycbcr(torch.from_numpy(skin)[None, None, None])[0, 0, 0]
    shine = rgb(float(med[0]) + 0.15, 0.6 * float(med[1]), 0.6 * float(med[2]))
    other = rgb(float(med[0]) + 0.15, 0.6 * float(med[2]), 0.6 * float(med[1]))  # hue swapped
    flat = rgb(float(med[0]), 0.6 * float(med[1]), 0.6 * float(med[2]))  # pale, not brighter
    dark = (skin * 0.3).tolist()
    for k, c in enumerate((shine, other, flat, dark)):
        img[2:8, 4 + 14 * k: 12 + 14 * k] = np.clip(c, 0, 1)
    ph = torch.from_numpy(img)[None]
    ref = torch.zeros(1, 64, 64, dtype=torch.bool)
    ref[0, 20:50, 8:56] = True
    ref[0, :10] = False
    plain = skin_colour_weight(ph, ref, torch.from_numpy(lm)[None])[0]
    shiny = skin_colour_weight(ph, ref, torch.from_numpy(lm)[None], highlights=True)[0]
    assert abs(float(ycc[0]) - float(med[0])) < 0.05
    assert plain[3:7, 5:11].max() == 0 and shiny[3:7, 5:11].min() == 1
    for k in (1, 2, 3):
        box = (slice(3, 7), slice(5 + 14 * k, 11 + 14 * k))
        assert plain[box].max() == 0 and shiny[box].max() == 0, k
    # the skin itself is unchanged
    assert torch.equal(plain[20:50, 8:56], shiny[20:50, 8:56])


def test_fit_range_keeps_the_detail_of_bright_skin(maps):
    """A fair face's albedo over the knee keeps its freckles: the knee reads an atlas
    texture's level over ``KNEE_SIGMA`` texels within the islands, not each texel's own
    (which took a sixth of the contrast of small dark spots on skin at 0.97, more where it
    is brighter); toward the seams it is each texel's own (both sides alike); a bright speck
    that the detail lifts over 1 is scaled as a whole (its hue kept); a texture under the
    knee is unchanged."""
    import cv2

    from services.fitter.texture.completion import fit_range

    s = maps.size
    skin = np.array([0.97, 0.82, 0.72], np.float32)
    img = np.broadcast_to(skin, (s, s, 3)).copy()
    inner = (maps.mask.numpy() > 0.5) & (np.asarray(maps.seam_fade) > 0.999)
    inner = cv2.erode(inner.astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
    ys, xs = np.nonzero(inner)
    pick = np.random.default_rng(3).choice(len(ys), 4, replace=False)
    spots = np.zeros((s, s), bool)
    for y, x in zip(ys[pick], xs[pick], strict=True):
        spots[y, x] = True
    img[spots] *= 0.8
    y0, x0 = ys[pick[0]], xs[pick[0]]
    sy, sx = ys[pick[1]] + 6, xs[pick[1]]
    img[sy, sx] = skin * 1.15  # a speck over 1
    out = fit_range(img, maps)
    ring = np.zeros((s, s), bool)
    ring[y0 - 6:y0 + 7, x0 - 6:x0 + 7] = True
    ring &= ~spots
    contrast = 1 - out[y0, x0, 0] / np.median(out[ring][:, 0])
    own = 1 - fit_range(img)[y0, x0, 0] / np.median(fit_range(img)[ring][:, 0])
    assert contrast > 0.185 and own < 0.17, (contrast, own)  # 0.20 in: 0.197 and 0.168
    speck = out[sy, sx]
    assert speck.max() <= 1.0 and np.abs(speck / speck[0] - skin / skin[0]).max() < 1e-5
    # on a seam, each texel's own level
    seam = (maps.mask.numpy() > 0.5) & (np.asarray(maps.seam_fade) == 0)
    np.testing.assert_allclose(out[seam], fit_range(img)[seam], atol=1e-6)
    dim = (img * 0.8).astype(np.float32)
    np.testing.assert_array_equal(fit_range(dim, maps), dim)


def test_fit_range_keeps_the_hue_of_bright_skin(maps):
    """Over-bright albedo (a bright photo divided by its light, shadows lifted) comes back
    into [1/255, 1] with each texel's channel ratios kept, not clipped channel by channel
    (red at its limit while green and blue rise printed yellow-green patches); texels below
    the knee are unchanged; numpy and torch agree; brighter stays brighter."""
    from services.fitter.texture.completion import HIGHLIGHT_KNEE, fit_range

    rng = np.random.default_rng(5)
    skin = np.array([0.95, 0.72, 0.6], np.float32)
    rgb = (skin * rng.uniform(0.5, 1.5, (4096, 1))).astype(np.float32)  # max up to 1.43
    out = fit_range(rgb)
    assert out.dtype == np.float32 and out.shape == rgb.shape
    assert out.min() >= 1 / 255 and out.max() <= 1.0
    ratio = out / out[:, :1]
    assert np.abs(ratio - skin / skin[0]).max() < 1e-5  # hue kept everywhere
    low = rgb.max(-1) <= HIGHLIGHT_KNEE
    assert low.any() and np.array_equal(out[low], rgb[low])
    order = np.argsort(rgb[:, 0])
    assert (np.diff(out[order, 0]) >= -1e-7).all()  # monotone
    got = fit_range(torch.from_numpy(rgb)).numpy()
    assert np.abs(got - out).max() < 1e-6
    # the whole completion goes through it: a texture above 1 keeps its skin hue
    mask = maps.mask.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    albedo = np.broadcast_to(skin * 1.25, (S, S, 3)).astype(np.float32).copy()
    done = complete_texture(albedo, face.astype(np.float32), maps).texture
    seen = done[face]
    assert seen[:, 0].max() < 1.0
    assert np.abs(seen[:, 1] / seen[:, 0] - skin[1] / skin[0]).mean() < 0.01


def test_a_hole_filled_from_the_mirror_takes_its_surroundings_colour(maps):
    """A small hole in what the photo showed (a strand, a mark) is filled from the mirror
    texel, whose side is lit and coloured differently: the fill takes the colour of the hole's
    own surroundings (no lighter or more orange island), the mirror's detail with it; a whole
    unseen side still takes the mirror's colour."""
    from services.fitter.texture.completion import match_mirror

    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    right = face & (pos[..., 0] > 0.03)
    left = face & (pos[..., 0] < -0.03)
    albedo = np.zeros((S, S, 3), np.float32)
    albedo[left] = (0.7, 0.5, 0.4)  # a lit, warmer side
    albedo[right] = (0.45, 0.35, 0.3)
    weight = (left | right).astype(np.float32)
    # a hole on the right side, a few texels across, away from the face's edges
    cx = float(np.median(pos[right][:, 0]))
    cy = float(np.median(pos[right][:, 1]))
    r = np.hypot(pos[..., 0] - cx, pos[..., 1] - cy)
    hole = right & (r < np.quantile(r[right], 0.02))
    ring = right & ~hole & (r < np.quantile(r[right], 0.08))
    weight[hole] = 0.0
    got = match_mirror(albedo, weight, maps).reshape(S, S, 3)
    assert np.abs(got[hole].mean(0) - albedo[ring].mean(0)).max() < 0.03
    done = complete_texture(albedo, weight, maps).texture
    assert np.abs(done[hole].mean(0) - done[ring].mean(0)).max() < 0.03
    # nothing seen on this side: the mirror's own colour
    unseen = weight.copy()
    unseen[right] = 0.0
    far = match_mirror(albedo, unseen, maps).reshape(S, S, 3)
    inner = right & (pos[..., 0] > 0.25)
    assert np.abs(far[inner].mean(0) - np.array([0.7, 0.5, 0.4])).max() < 0.02


def test_unseen_skin_takes_the_persons_skin_hue(maps):
    """The skin template over what the photo did not show keeps the person's skin hue: a
    few seen texels of another cast (a neck in shadow under a blue sky, a collar's edge) tint
    neither the unseen neck nor the rest of the head; the template's brightness still follows
    what was seen."""
    from services.fitter.texture.completion import skin_hue

    mask = maps.mask.numpy()
    pos = maps.pos_mean.numpy()
    face = mask & (maps.face.numpy() > 0.5)
    brown = np.array([0.62, 0.42, 0.32], np.float32)
    mauve = np.array([0.50, 0.42, 0.42], np.float32)
    albedo = np.zeros((S, S, 3), np.float32)
    albedo[face] = brown
    height = pos[mask][:, 1]
    lowest = mask & ~face & (pos[..., 1] < np.quantile(height, 0.06))
    albedo[lowest] = mauve
    weight = (face | lowest).astype(np.float32)
    done = complete_texture(albedo, weight, maps).texture
    # the unseen neck just above the mauve texels (without the skin hue: red / blue 1.66
    # there, 1.41 at its 5th percentile, against the skin's 1.94)
    near = (mask & ~face & (pos[..., 1] >= np.quantile(height, 0.1))
            & (pos[..., 1] < np.quantile(height, 0.2)))
    rb = done[near][:, 0] / done[near][:, 2]
    assert np.abs(np.percentile(rb, [5, 50, 95]) - brown[0] / brown[2]).max() < 0.05, rb
    # skin_hue itself: luma kept, chromaticity the skin's
    t = np.random.default_rng(0).uniform(0.2, 0.8, (8, 8, 3)).astype(np.float32)
    out = skin_hue(t, brown)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(out @ luma, t @ luma, atol=1e-5)
    assert np.allclose(out / out[..., :1], brown / brown[0], atol=1e-5)


@pytest.mark.slow
def test_photos_hair_as_geometry(photo_fits):
    """The hair mesh of real photos: none for the bald head, a shell for short hair, a curtain
    for fd01's long hair (pulled to one side, it hangs beside her neck past the frame) whose
    every face reads hair-coloured texels, not an ear's or a temple's skin."""
    from services.fitter.hair_mesh import _sample

    fits, fitter = photo_fits
    lm_y = {}
    for name, (_, fit) in fits.items():
        lm = fitter.model.landmarks(torch.from_numpy(fit.mesh_neutral.vertices)[None])[0]
        lm_y[name] = float(lm[8, 1])
    assert fits["fd13_light_m_bald_img20.jpg"][1].hair is None
    short = fits["fd14_light_m_fullbeard_fringe_man4.jpg"][1]
    assert short.hair is not None and short.hair.vertices[:, 1].min() > lm_y[
        "fd14_light_m_fullbeard_fringe_man4.jpg"]
    name = "fd01_dark_f_woman_portrait.jpg"
    fit = fits[name][1]
    assert fit.report["hair"]["long_hair"] and fit.report["hair"]["hair_cut"], fit.report["hair"]
    low = fit.hair.vertices[:, 1] < lm_y[name]
    assert low.any()
    faces = low[fit.hair.faces].any(1)
    mid = fit.hair.uvs[fit.hair.uv_faces[faces]].mean(1)
    tex = fit.uv_texture.astype(np.float32) / 255
    far = np.abs(_sample(tex, mid) - np.asarray(fit.report["hair"]["hair_rgb"])).max(-1)
    assert np.mean(far < 0.3) > 0.97, np.percentile(far, [50, 90, 99])


def test_head_masks_of_a_batch_are_each_photos_own(astronaut_rgb, astronaut_jpg_bytes):
    """The photos of a batch get their head masks on per_photo's threads (GrabCut, strand
    energy, dark marks, hair swatch): each exactly as that photo alone, whatever ran beside it
    (OpenCV's random state is per thread and seeded per photo)."""
    import io

    from PIL import Image

    from ffhquv.render.renderer import MeshRenderer
    from services.detector.core import Detector
    from services.fitter.core import DefaultStages, FitterCore, _photo_batch
    from services.fitter.pipeline import FitContext
    from services.fitter.presets import get_preset

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[:, ::-1])).save(buf, format="PNG")
    det = Detector()
    faces = [det.detect(astronaut_jpg_bytes, unwrap_size=512).aligned,
             det.detect(buf.getvalue(), unwrap_size=512).aligned]
    fitter = FitterCore("default", device="cpu", threads=2)
    ctx = FitContext(model=fitter.model, cam=fitter.camera, backend=fitter.backend,
                     renderer=MeshRenderer(fitter.camera, fitter.backend),
                     preset=get_preset("fast"), tex_size=256, progress=lambda *a: None,
                     cancel=None)
    pb = _photo_batch(faces, fitter.device)
    torch.manual_seed(0)
    _, c = fitter._stage1(ctx, pb)
    with torch.no_grad():
        both = DefaultStages._head_masks(ctx, pb, c)
        for i in range(2):
            alone = DefaultStages._head_masks(ctx, _photo_batch(faces[i: i + 1], fitter.device),
                                              {k: v[i: i + 1] for k, v in c.items()})
            for part in ("texture", "hair", "skin"):
                assert torch.equal(getattr(both, part)[i], getattr(alone, part)[0]), (i, part)
            a, b = alone.hair_stats[0], both.hair_stats[i]
            assert a.keys() == b.keys()
            for k in a:
                assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), (i, k)
    assert not torch.equal(both.texture[0], both.texture[1])  # two photos, not one twice


def test_host_array_is_one_read_only_copy(maps):
    """The atlas's maps on the host (``host_array``): the tensor's values, made once per atlas
    and read-only (every caller shares it: none may write into it)."""
    from services.fitter.texture import host_array

    got = host_array(maps, "mask")
    assert got is host_array(maps, "mask")
    np.testing.assert_array_equal(got, maps.mask.cpu().numpy())
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0, 0] = True
    np.testing.assert_array_equal(host_array(maps, "pos_mean"), maps.pos_mean.cpu().numpy())


@pytest.mark.slow
def test_a_light_collar_below_the_jaw_is_not_neck_skin():
    """fd18 (white collar under the chin): with the detector's quick look GrabCut keeps the
    collar in the head; below the jaw only what is darker than the face skin or streaky
    (beards, stubble, the neck's shadow) joins the skin texture, so the collar stays out
    (BEARD_DARK): no texture pixel below the chin 15 % brighter than the face skin (the
    test before took 841 such pixels of the collar, at the standard preset's pose)."""
    d = _faces_dev() / "fd18_light_f_glasses_detection1.jpg"
    if not d.is_file():
        pytest.skip(f"faces-dev photo not found: {d}")
    from ffhquv.imaging import LUMA
    from ffhquv.render.renderer import MeshRenderer
    from services.detector.core import Detector
    from services.fitter.core import DefaultStages, FitterCore, _photo_batch
    from services.fitter.pipeline import FitContext
    from services.fitter.presets import get_preset

    a = Detector(quick_side=640).detect(d.read_bytes(), unwrap_size=512).aligned
    fitter = FitterCore("default", device="cpu", threads=2)
    ctx = FitContext(model=fitter.model, cam=fitter.camera, backend=fitter.backend,
                     renderer=MeshRenderer(fitter.camera, fitter.backend),
                     preset=get_preset("standard"), tex_size=256, progress=lambda *a: None,
                     cancel=None)
    pb = _photo_batch([a], fitter.device)
    torch.manual_seed(0)
    _, c = fitter._stage1(ctx, pb)
    with torch.no_grad():
        hm = DefaultStages._head_masks(ctx, pb, c)
    tex = hm.texture[0, ..., 0].numpy()
    lum = a.crop.astype(np.float32) @ LUMA / 255
    lm = a.crop_landmarks
    cheeks = np.zeros_like(tex, bool)
    cheeks[int(lm[29, 1]):int(lm[33, 1]), int(lm[3, 0]):int(lm[13, 0])] = True
    skin = float(np.median(lum[cheeks & (tex > 0.5)]))
    below = np.zeros_like(tex, bool)
    below[int(lm[8, 1]) + 2:] = True
    bright = below & (tex > 0.5) & (lum > 1.15 * skin)
    assert bright.sum() < 20, (int(bright.sum()), skin)


def _bearded(maps, kind: str, seed: int = 0):
    """A completed texture of skin (faint detail) seen from the front (|x| < 0.45 of the mean
    shape), with ``kind`` of facial hair where the photo saw it: ``"full"`` (chin and jaw
    sides, strand texture), ``"goatee"`` (the chin only), ``"shadow"`` (the full beard's
    place, as dark but smooth). Returns texture, observed weight and skin share."""
    from services.fitter.texture.atlas import BeardPart

    rng = np.random.default_rng(seed)
    s = maps.size
    x = maps.pos_mean[..., 0].numpy()
    cov = maps.mask.numpy() > 0.5
    tex = np.full((s, s, 3), [0.75, 0.58, 0.5], np.float32)
    tex += rng.normal(0, 0.01, (s, s, 1)).astype(np.float32)
    observed = (cov & (np.abs(x) < 0.45)).astype(np.float32)
    share = observed.copy()
    zone = np.asarray(maps.beard_zone) > 0.5
    part = np.asarray(maps.beard_part)
    hair = zone & (observed > 0) & (part != BeardPart.REST)
    if kind == "goatee":
        hair &= part == BeardPart.CHIN
    strands = rng.normal(0, 0 if kind == "shadow" else 0.08, (s, s, 1)).astype(np.float32)
    tex[hair] = (np.array([0.22, 0.17, 0.14], np.float32) + strands[hair]).clip(0.02, 1)
    share[hair] = 0.0
    return tex.clip(0, 1), observed, share


def test_a_full_beard_continues_round_the_jaw_a_goatee_or_a_shadow_does_not(maps):
    """The photo shows a full beard on the chin and the jaw's front: the unseen jaw sides
    take the beard's colour and detail. A goatee (the chin only) or a smooth shadow in the
    beard's place leave the texture as it is."""
    from services.fitter.texture.beard import beard_layer

    tex, observed, share = _bearded(maps, "full")
    out, info = beard_layer(tex, observed, share, maps)
    assert info.beard and info.chin > 0.9 and min(info.sides) > 0.9 and info.detail > 5, info
    x = maps.pos_mean[..., 0].numpy()
    unseen = (np.asarray(maps.beard_zone) > 0.9) & (observed == 0) & (np.abs(x) > 0.5)
    assert unseen.sum() > 200
    lum = out @ np.array([0.299, 0.587, 0.114], np.float32)
    # dark as the beard (0.18), with its strands
    assert np.median(lum[unseen]) < 0.3 and lum[unseen].std() > 0.02, np.median(lum[unseen])
    # the seen texels keep the photo's colour; off the zone nothing changes
    np.testing.assert_array_equal(out[observed > 0.5], tex[observed > 0.5])
    off = np.asarray(maps.beard_zone) == 0
    np.testing.assert_array_equal(out[off], tex[off])
    info_d = info.as_dict()
    assert info_d["beard"] is True and len(info_d["beard_sides"]) == 2
    for kind in ("goatee", "shadow"):
        tex, observed, share = _bearded(maps, kind)
        out, info = beard_layer(tex, observed, share, maps)
        assert not info.beard and out is tex, (kind, info)


def _mean_shape_frame(model, maps):
    """Texel positions ``x, y, z`` on the mean shape, the covered texels, and the landmarks'
    chin height, brow-to-chin height ``h``, ears' depth and jaw-angle height."""
    pos = maps.pos_mean.numpy()
    lm = model.landmarks(model.mean_shape[None])[0].numpy()
    chin = float(lm[8, 1])
    h = float(lm[17:27, 1].mean()) - chin
    return (pos[..., 0], pos[..., 1], pos[..., 2], maps.mask.numpy() > 0.5, lm, chin, h,
            float(lm[[0, 16], 2].mean()), float(lm[[4, 12], 1].mean()))


def test_the_beard_zone_follows_the_jaw_not_a_level_cut(model, maps):
    """A full beard's lower edge rises from under the chin to below the jaw's angle: the
    neck's sides under the ears are not beard (a level cut at the chin's height took them in,
    a square patch in profile: zone 1.0 there before), the chin's underside is."""
    x, y, z, cov, lm, chin, h, z_ear, jaw = _mean_shape_frame(model, maps)
    zone = np.asarray(maps.beard_zone)
    neck_side = cov & (y > chin) & (y < jaw - 0.2 * h) & (z > z_ear) & (z < z_ear + 0.15 * h)
    under_chin = cov & (np.abs(x) < 0.1 * h) & (y < chin) & (y > chin - 0.05 * h)
    assert neck_side.sum() > 20 and under_chin.sum() > 100
    assert np.median(zone[neck_side]) == 0.0
    assert np.median(zone[under_chin]) == 1.0
    # the jaw's side above the angle stays beard
    jaw_side = cov & (y > jaw) & (y < jaw + 0.1 * h) & (z > z_ear + 0.1 * h) & (
        np.abs(x) > 0.3 * h)
    assert jaw_side.sum() > 20 and np.median(zone[jaw_side]) == 1.0


def test_a_seen_strip_under_the_jaw_cut_off_from_the_face_is_not_trusted(model, maps):
    """The photo's face seen, and a thin strip of the neck under the jaw seen at a grazing
    angle apart from it (what a beard hanging below the fitted jaw, or the shadow under it,
    gives): the strip is cut (its dark pixels do not reach the texture), a seen ear is not;
    seen as one piece with the face (a head tilted back) nothing is cut."""
    from services.fitter.texture.completion import complete_texture, cut_off_under_chin

    x, y, z, cov, lm, chin, h, z_ear, _ = _mean_shape_frame(model, maps)
    front = z > float(lm[:, 2].min())
    face = cov & front & (y > chin + 0.05 * h) & (np.abs(x) < 0.45)
    strip = cov & (y < chin - 0.03 * h) & (y > chin - 0.12 * h) & (np.abs(x) < 0.5)
    ear = cov & (np.abs(x) > np.abs(lm[[0, 16], 0]).mean()) & (y > chin + 0.3 * h) & (
        z < z_ear + 0.05 * h) & (z > z_ear - 0.2 * h)
    assert strip.sum() > 50 and ear.sum() > 50 and not (face & strip).any()
    w = np.zeros(cov.shape, np.float32)
    w[face], w[strip], w[ear] = 0.8, 0.2, 0.5
    cut = cut_off_under_chin(torch.from_numpy(w), maps).numpy()
    np.testing.assert_array_equal(cut, strip)
    # the gap between them seen too: one piece
    gap = cov & front & (y >= chin - 0.03 * h) & (y <= chin + 0.05 * h) & (np.abs(x) < 0.45)
    joined = w.copy()
    joined[gap] = 0.5
    assert not cut_off_under_chin(torch.from_numpy(joined), maps).any()
    # through the completion: the strip's dark pixels are not the neck's colour
    albedo = np.zeros(cov.shape + (3,), np.float32)
    albedo[w > 0] = [0.75, 0.58, 0.5]
    albedo[strip] = [0.12, 0.1, 0.09]
    out = complete_texture(albedo, w, maps, skin=(w * (~strip)).astype(np.float32)).texture
    lum = out @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.median(lum[strip]) > 0.8 * (np.array([0.75, 0.58, 0.5]) @ [0.299, 0.587, 0.114])
