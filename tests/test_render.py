"""High-level rendering (ffhquv/render/renderer.py): orientation, lighting, UV space, previews."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ffhquv.errors import InvalidInput
from ffhquv.render.camera import Camera, project
from ffhquv.render.renderer import (
    PREVIEW_GAMMA,
    MeshRenderer,
    PreviewOptions,
    RasterOptions,
    Surface,
    obj_uv_to_texture,
    render_preview,
    uv_overlap_count,
    uv_space_interpolate,
    uv_triangle_ids,
)
from ffhquv.render.shapes import uv_sphere

torch.set_num_threads(min(2, torch.get_num_threads()))


def quad():
    """A 2 x 2 world-space quad facing the camera (+z), OBJ uv (0, 0) at bottom-left."""
    v = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return v, tri, uv


def test_textured_quad_orientation(tmp_path):
    """The PNG's top row appears at the top of the render, its left at the left (the model's
    -x side), and the mesh lands where camera.project puts its corners."""
    png = np.zeros((64, 64, 3), np.uint8)
    png[:, :] = (128, 128, 128)
    png[:16] = (255, 0, 0)  # top of the PNG = v near 1
    png[-16:] = (0, 0, 255)  # bottom of the PNG = v near 0
    png[16:-16, :16] = (0, 255, 0)  # left of the PNG = u near 0
    path = tmp_path / "tex.png"
    Image.fromarray(png).save(path)
    tex = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float()[None] / 255

    v, tri, uv = quad()
    cam = Camera()
    out = MeshRenderer(cam).render(v[None], tri, Surface(uv=uv, texture=tex),
                                   options=RasterOptions(antialias=False))
    img = out.image[0]
    Image.fromarray((img.numpy() * 255).astype(np.uint8)).save("/tmp/ffhquv_render_quad.png")
    c = cam.center
    r = cam.focal * 1.0 / cam.distance  # half-size in pixels
    top, bottom = int(c - r + 5), int(c + r - 5)
    left, right = int(c - r + 5), int(c + r - 5)
    mid = int(c)
    assert img[top, mid].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.02)
    assert img[bottom, mid].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.02)
    assert img[mid, left].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=0.02)
    assert img[mid, right].tolist() == pytest.approx([0.5, 0.5, 0.5], abs=0.02)
    # coverage matches the projected corners (pixel centres at integers)
    corners = project(v[None], cam)[0]
    cov = out.mask[0, ..., 0] > 0
    rows = cov.any(1).nonzero()
    cols = cov.any(0).nonzero()
    assert int(cols.min()) == math.ceil(float(corners[:, 0].min()))
    assert int(cols.max()) == math.floor(float(corners[:, 0].max()))
    assert int(rows.min()) == math.ceil(float(corners[:, 1].min()))
    assert int(rows.max()) == math.floor(float(corners[:, 1].max()))
    # +x of the model is on the image right, +y at the top
    assert float(corners[1, 0]) > c and float(corners[2, 1]) < c
    # depth is the camera distance d = 10 - z
    assert torch.allclose(out.depth[0][cov], torch.tensor(10.0))
    # the per-pixel normal faces the camera
    assert torch.allclose(out.normal[0][cov], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)


def test_obj_uv_to_texture():
    uv = torch.tensor([[0.25, 1.0], [0.75, 0.0]])
    assert obj_uv_to_texture(uv).tolist() == [[0.25, 0.0], [0.75, 1.0]]


def test_lit_sphere_png(tmp_path):
    v, tri, uv, uv_tri = uv_sphere(48, 96)
    gamma = torch.zeros(1, 27)
    gamma[:, [1, 10, 19]] = -0.4  # light from above (+y)
    gamma[:, [2, 11, 20]] = 0.3  # and from the front
    albedo = torch.tensor([0.8, 0.6, 0.5]).expand(1, v.shape[0], 3)
    out = MeshRenderer(Camera()).render(v[None], tri, Surface(vertex_albedo=albedo), gamma=gamma)
    img = (out.image[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    path = tmp_path / "sphere.png"
    Image.fromarray(img).save(path)
    Image.fromarray(img).save("/tmp/ffhquv_render_sphere.png")
    back = np.asarray(Image.open(path))
    assert back.shape == (224, 224, 3)
    mask = out.mask[0, ..., 0].numpy()
    # silhouette of a unit sphere at distance 10: radius f * R / sqrt(d^2 - R^2) pixels
    r = 1015 / math.sqrt(99)
    assert abs(mask.sum() - math.pi * r * r) < 0.01 * math.pi * r * r
    lum = back.astype(float).mean(-1)
    assert lum[60:100, 90:134].mean() > lum[124:164, 90:134].mean() + 20  # top brighter
    assert back[0, 0].tolist() == [0, 0, 0]
    # antialiased silhouettes have intermediate coverage (only where the edge crossing between
    # two pixel centres is a true silhouette edge: near the rim of a finely tessellated sphere
    # many crossings are inner edges of foreshortened slivers, as in nvdiffrast)
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 20


def test_render_gradients_reach_every_input():
    v, tri, uv, uv_tri = uv_sphere(16, 32)
    verts = v[None].clone().requires_grad_(True)
    tex = torch.rand(1, 32, 64, 3, requires_grad=True)
    gamma = (PREVIEW_GAMMA[None] * 1.0).requires_grad_(True)
    out = MeshRenderer(Camera()).render(verts, tri, Surface(uv=uv, uv_tri=uv_tri, texture=tex),
                                        gamma=gamma, options=RasterOptions(size=96))
    target = torch.rand_like(out.image)
    ((out.image - target) ** 2).mean().backward()
    for t in (verts, tex, gamma):
        assert t.grad is not None and float(t.grad.abs().sum()) > 0
    assert torch.isfinite(verts.grad).all()


def test_size_scales_the_camera():
    v, tri, _, _ = uv_sphere(16, 32)
    r = MeshRenderer(Camera())
    a = r.render(v[None], tri, options=RasterOptions(antialias=False)).mask.sum() / 224**2
    b = r.render(v[None], tri, options=RasterOptions(antialias=False, size=448)).mask.sum() / 448**2
    assert abs(float(a - b)) < 0.005


def test_uv_space_interpolate_unwraps_positions():
    v, tri, uv, uv_tri = uv_sphere(48, 96)
    s = 128
    vals, mask = uv_space_interpolate(torch.stack([v, 2 * v]), tri, uv, uv_tri, s)
    assert vals.shape == (2, s, s, 3) and mask.shape == (2, s, s, 1)
    cov = mask[0, ..., 0] > 0
    assert cov.float().mean() > 0.97
    # texel (i, j) centre is OBJ (u, v) = ((j + .5) / S, 1 - (i + .5) / S): latitude from +y
    ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    theta = (ii + 0.5) / s * math.pi
    phi = (jj + 0.5) / s * 2 * math.pi - math.pi
    expect = torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], -1)
    err = (vals[0] - expect).norm(dim=-1)[cov]
    assert float(err.max()) < 0.01
    assert torch.allclose(vals[1], 2 * vals[0], atol=1e-5)
    ids = uv_triangle_ids(uv, uv_tri, s)
    assert ids.shape == (s, s) and torch.equal(ids >= 0, cov)
    count = uv_overlap_count(uv, uv_tri, s)
    assert int(count.max()) == 1
    # an overlapping layout: squash the second half of the triangles onto the first half
    uv2 = uv.clone()
    uv2[:, 0] = (uv2[:, 0] * 2) % 1.0 + (uv2[:, 0] == 1.0).float() * 0.0
    assert int(uv_overlap_count(uv2, uv_tri, s).max()) >= 2


def test_preview_turns_the_face_toward_the_right():
    v, tri, uv, uv_tri = uv_sphere(32, 64)
    albedo = torch.where(v[:, 2:3] > 0.9, torch.tensor([1.0, 0.0, 0.0]), torch.tensor(0.6))
    img0 = render_preview(v, tri, Surface(vertex_albedo=albedo), PreviewOptions(size=128))
    img = render_preview(v, tri, Surface(vertex_albedo=albedo),
                         PreviewOptions(yaw_deg=40, size=128))
    Image.fromarray(img).save("/tmp/ffhquv_render_preview_yaw40.png")
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert img[0, 0].tolist() == [255, 255, 255]

    def red_col(im):
        red = (im[..., 0] > 150) & (im[..., 1] < 80)
        return np.nonzero(red)[1].mean()

    assert abs(red_col(img0) - 63.5) < 2
    assert red_col(img) > 63.5 + 20


def test_render_errors():
    v, tri, uv = quad()
    r = MeshRenderer(Camera())
    with pytest.raises(InvalidInput, match="vertices"):
        r.render(v, tri)
    with pytest.raises(InvalidInput, match="texture given without uv"):
        r.render(v[None], tri, Surface(texture=torch.zeros(1, 4, 4, 3)))
    with pytest.raises(InvalidInput, match="gamma"):
        r.render(v[None], tri, gamma=torch.zeros(27))
    with pytest.raises(InvalidInput, match="uv_tri"):
        uv_space_interpolate(v, tri, uv, tri[:1], 8)


def test_head_sized_mesh_forward_backward():
    """~4.5k vertices / 9k triangles at 224 x 224, forward + backward (the fitter's inner loop)
    gives finite gradients everywhere. Its speed is measured in bench/render.py, not here (no
    test depends on the machine's load)."""
    v, tri, uv, uv_tri = uv_sphere(48, 96)
    assert 8500 < tri.shape[0] < 9500
    r = MeshRenderer(Camera())
    tex = torch.rand(1, 256, 256, 3, requires_grad=True)
    verts = v[None].clone().requires_grad_(True)
    gamma = PREVIEW_GAMMA[None].clone().requires_grad_(True)
    out = r.render(verts, tri, Surface(uv=uv, uv_tri=uv_tri, texture=tex), gamma=gamma)
    out.image.square().mean().backward()
    for g in (verts.grad, tex.grad, gamma.grad):
        assert g is not None and torch.isfinite(g).all()
    assert verts.grad.abs().sum() > 0 and tex.grad.abs().sum() > 0


def test_two_sided_lights_the_inside_of_an_open_mesh():
    """A sphere with its camera-facing cap cut off: through the opening the camera sees the
    inside of the far wall, whose outward normals point away from it. One-sided shading
    draws it dark (like the black neck opening seen from behind); ``two_sided`` lights it
    like a front face, and leaves the outside (the rim) as it was."""
    v, tri, _, _ = uv_sphere(24, 48)
    centre_z = v[tri].mean(1)[:, 2]
    tri = tri[centre_z < 0.5]  # the cap toward the camera (+z) removed
    r = MeshRenderer(Camera())
    verts = v[None]
    lit = {}
    for two in (False, True):
        out = r.render(verts, tri, Surface(), gamma=PREVIEW_GAMMA[None],
                       options=RasterOptions(antialias=False, two_sided=two))
        lit[two] = out.image[0].mean(-1)
    s = lit[True].shape[0]
    inside = lit[True][s // 2 - 4:s // 2 + 4, s // 2 - 4:s // 2 + 4]
    before = lit[False][s // 2 - 4:s // 2 + 4, s // 2 - 4:s // 2 + 4]
    assert inside.mean() > 2 * before.mean() + 0.05
    # the outside of the sphere (the band around the opening) is lit the same either way
    cover = lit[True] > 0
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    d = ((yy - (s - 1) / 2) ** 2 + (xx - (s - 1) / 2) ** 2).sqrt()
    rim = cover & (d > 0.95 * d[cover].max())
    assert rim.sum() > 20 and torch.allclose(lit[True][rim], lit[False][rim])


def test_back_albedo_paints_the_inside_not_the_outsides_texture():
    """With ``back_albedo`` the inside of an open mesh seen through its opening takes that one
    colour instead of the texture (a beard under the chin showed through the neck's opening
    from behind), and the outside keeps its texture; previews draw the inside so."""
    v, tri, uv, uv_tri = uv_sphere(24, 48)
    centre_z = v[tri].mean(1)[:, 2]
    keep = centre_z < 0.5
    tri, uv_tri = tri[keep], uv_tri[keep]
    tex = torch.zeros(1, 16, 16, 3)
    tex[..., 1] = 1.0  # all green
    r = MeshRenderer(Camera())
    sf = Surface(uv=uv, uv_tri=uv_tri, texture=tex)
    out = {}
    for inside in (None, (1.0, 0.0, 0.0)):
        out[inside] = r.render(v[None], tri, sf, options=RasterOptions(
            antialias=False, two_sided=True, back_albedo=inside)).image[0]
    s = out[None].shape[0]
    c = slice(s // 2 - 4, s // 2 + 4)
    assert torch.allclose(out[None][c, c], torch.tensor([0.0, 1.0, 0.0]).expand(8, 8, 3))
    assert torch.allclose(out[(1.0, 0.0, 0.0)][c, c], torch.tensor([1.0, 0.0, 0.0]).expand(8, 8, 3))
    # the outside (the band around the opening) keeps its texture
    cover = out[None].sum(-1) > 0
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    d = ((yy - (s - 1) / 2) ** 2 + (xx - (s - 1) / 2) ** 2).sqrt()
    rim = cover & (d > 0.95 * d[cover].max())
    assert rim.sum() > 20 and torch.equal(out[None][rim], out[(1.0, 0.0, 0.0)][rim])
    # only the triangles named take it (a head's, not its hair's): none named, none changed
    none = r.render(v[None], tri, sf, options=RasterOptions(
        antialias=False, two_sided=True, back_albedo=(1.0, 0.0, 0.0),
        back_albedo_faces=torch.zeros(len(tri), dtype=torch.bool))).image[0]
    assert torch.equal(none, out[None])


def test_scale_light_scales_the_irradiance_ambient_included():
    """``sh.scale_light(gamma, k)`` is the same light ``k`` times as bright at every normal and
    channel (the fitter dims a side-lit face's light by the factor its albedo is raised)."""
    from ffhquv.render.sh import irradiance, scale_light, uniform_gamma

    g = torch.Generator().manual_seed(1)
    n = torch.nn.functional.normalize(torch.randn(2, 300, 3, generator=g), dim=-1)
    gamma = 0.3 * torch.randn(2, 27, generator=g)
    k = torch.tensor([1.3, 0.6])
    got = irradiance(n, scale_light(gamma, k))
    assert torch.allclose(got, k[:, None, None] * irradiance(n, gamma), atol=1e-5)
    # the neutral light dimmed by 1 / k is the uniform light of irradiance 1 / k
    half = scale_light(uniform_gamma(1.0)[None], torch.tensor([0.5]))
    assert torch.allclose(half, uniform_gamma(0.5)[None], atol=1e-6)


def test_uniform_gamma_is_a_uniform_white_light():
    """``sh.uniform_gamma(level)`` lights every normal, every channel, at ``level`` (the
    neutral light of the albedo convention at 1); ``gamma = 0`` is the ambient alone."""
    from ffhquv.render.sh import AMBIENT, irradiance, uniform_gamma

    n = torch.nn.functional.normalize(torch.randn(1, 500, 3, generator=torch.Generator()
                                                  .manual_seed(0)), dim=-1)
    for level in (1.0, 0.5):
        got = irradiance(n, uniform_gamma(level)[None])
        assert torch.allclose(got, torch.full_like(got, level), atol=1e-6)
    zero = irradiance(n, torch.zeros(1, 27))
    assert torch.allclose(zero, torch.full_like(zero, AMBIENT * math.sqrt(math.pi) / 2),
                          atol=1e-6)
