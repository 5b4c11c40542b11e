"""One geometry convention from the photo to the texture (docs/conventions.md, "Geometry").

Pixel centres at integers everywhere; a 224-crop position ``x`` is ``k (x + 0.5) - 0.5`` in the
hi-res crop (``k = S / 224``, :func:`ffhquv.aligned.crop_to_hires`); ``Camera.scaled`` maps the
principal point the same way, so renders at ``S`` line up with the hi-res crop. Known-answer
tests in the style of kornia's convention tests: a dot at a known photo position, its position
in both crops; a 3D point, its projection at both sizes; a rendered square, its centroid at
both sizes. The other conventions (``k x`` or ``k x + (k - 1) / 2`` read the wrong way) miss by
``(k - 1) / 2`` = 1.8 hi-res pixels at ``S`` = 1024, far outside the tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffhquv.aligned import CROP_SIZE, crop_to_hires, eye_photo, eye_region
from ffhquv.render.camera import Camera, project, to_clip
from ffhquv.render.renderer import MeshRenderer, RasterOptions
from services.detector.align import TEMPLATE_224, align_face, transform_points


def _landmarks_for(scale: float, shift: np.ndarray) -> np.ndarray:
    """68 landmarks whose five alignment points map onto the template exactly by
    ``crop = scale * photo + shift`` (so ``image_to_crop`` is known in advance)."""
    five = (TEMPLATE_224 - shift) / scale
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = five
    return lm


def _centroid(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid ``(x, y)`` of a single-channel image, pixel centres at
    integers."""
    w = img.astype(np.float64)
    w = np.where(w > 2, w, 0.0)  # the grey / black floor and rounding noise
    ys, xs = np.mgrid[0:w.shape[0], 0:w.shape[1]]
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


def _dot_photo(h: int, w: int, at: tuple[float, float], sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    g = np.exp(-((xs - at[0]) ** 2 + (ys - at[1]) ** 2) / (2 * sigma ** 2))
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.round(250 * g).astype(np.uint8)
    return img


@pytest.mark.parametrize("scale", [0.45, 1.3])  # photo shrunk (area prefilter) / enlarged
@pytest.mark.parametrize("size", [512, 1024])
def test_dot_lands_at_crop_to_hires_in_both_crops(scale, size):
    shift = np.array([-40.3, -21.7]) if scale < 1 else np.array([-80.6, -95.2])
    lm = _landmarks_for(scale, shift)
    # a dot near the nose tip, off the pixel grid
    at = ((TEMPLATE_224[2] + [7.37, -11.61]) - shift) / scale
    photo = _dot_photo(int(420 / scale), int(400 / scale), tuple(at), sigma=4.0 / scale)
    crop, crop_lm, a, hires = align_face(photo, lm, hires_size=size)

    np.testing.assert_allclose(a, [[scale, 0, shift[0]], [0, scale, shift[1]]], atol=1e-9)
    want_224 = transform_points(a, at[None])[0]
    np.testing.assert_allclose(_centroid(crop[..., 0]), want_224, atol=0.03)
    want_hi = crop_to_hires(want_224, size)
    got_hi = _centroid(hires[..., 0])
    np.testing.assert_allclose(got_hi, want_hi, atol=0.03 * size / CROP_SIZE)
    # the landmarks travel the same way (crop pixels, then crop_to_hires)
    np.testing.assert_allclose(crop_lm, transform_points(a, lm), atol=1e-4)
    # and the naive k * x is measurably wrong
    assert np.abs(got_hi - want_224 * size / CROP_SIZE).min() > 0.5


def test_crop_to_hires_formula():
    pts = np.array([[0.0, 0.0], [-0.5, -0.5], [223.5, 111.0]])
    np.testing.assert_allclose(crop_to_hires(pts, 448), [[0.5, 0.5], [-0.5, -0.5],
                                                         [447.5, 222.5]])
    np.testing.assert_allclose(crop_to_hires(pts, 224), pts)


@pytest.mark.parametrize("size", [448, 512, 1024])
def test_camera_scaled_projects_like_the_crop(size):
    g = torch.Generator().manual_seed(0)
    world = torch.rand(1, 50, 3, generator=g) * torch.tensor([3.0, 3.0, 2.0]) - 1.0
    cam = Camera()
    p224 = project(world, cam)[0].numpy()
    p_s = project(world, cam.scaled(size))[0].numpy()
    np.testing.assert_allclose(p_s, crop_to_hires(p224, size), atol=1e-3)
    # clip coordinates do not depend on the raster size
    np.testing.assert_allclose(to_clip(world, cam.scaled(size)).numpy(),
                               to_clip(world, cam).numpy(), atol=1e-4)
    assert cam.scaled(224) == cam


def test_renders_at_two_sizes_line_up_like_the_crops():
    """A disc rendered at 224 and at 1024: its centroid moves by ``crop_to_hires``."""
    cam = Camera()
    # a disc of radius 0.5 model units (~ 50 px at 224) off the pixel grid; a disc, not an
    # axis-aligned square, so that the rasterised centroid has no half-pixel quantisation
    ang = torch.linspace(0, 2 * np.pi, 97)[:-1]
    rim = torch.stack([0.5 * ang.cos(), 0.5 * ang.sin(), torch.zeros_like(ang)], -1)
    world = (torch.cat([torch.zeros(1, 3), rim]) + torch.tensor([0.37, -0.21, 0.0]))[None]
    tri = torch.tensor([[0, i + 1, (i + 1) % 96 + 1] for i in range(96)])
    r = MeshRenderer(cam)

    def centroid(size: int) -> np.ndarray:
        opt = RasterOptions(size=size, antialias=False)
        mask = r.render(world, tri, options=opt).mask[0, ..., 0].numpy()
        return _centroid(mask * 255)

    c224, c1024 = centroid(224), centroid(1024)
    centre = project(world[:, :1], cam)[0, 0].numpy()
    np.testing.assert_allclose(c224, centre, atol=0.03)
    np.testing.assert_allclose(c1024, crop_to_hires(centre, 1024), atol=0.03)


def test_eye_region_keeps_the_eyes_and_shifts_the_landmarks():
    lm = _landmarks_for(1.0, np.zeros(2))
    # spread the eye points over an eye width, as dlib's six points are
    lm[36:42] += np.array([[-15, 0], [-8, -4], [8, -4], [15, 0], [8, 4], [-8, 4]])
    lm[42:48] += np.array([[-15, 0], [-8, -4], [8, -4], [15, 0], [8, 4], [-8, 4]])
    hires = np.arange(1024 * 1024 * 3, dtype=np.int64).reshape(1024, 1024, 3).astype(np.uint8)
    lm_hi = crop_to_hires(lm, 1024)
    patch, lm_patch = eye_region(hires, lm_hi)
    x0, y0 = np.round(lm_hi[0] - lm_patch[0]).astype(int)
    np.testing.assert_array_equal(patch, hires[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]])
    eyes = lm_patch[36:48]
    width = np.linalg.norm(lm_hi[36] - lm_hi[39])
    assert (eyes >= 0.25 * width).all()
    assert (eyes <= np.array(patch.shape[1::-1]) - 1 - 0.25 * width).all()
    assert patch.size < hires.size / 8


def test_eye_photo_of_an_aligned_face():
    from ffhquv.aligned import AlignedFace

    lm = _landmarks_for(1.0, np.zeros(2))
    lm[36:48] += np.tile(np.array([[-15, 0], [-8, -4], [8, -4], [15, 0], [8, 4], [-8, 4]]),
                         (2, 1))
    rng = np.random.default_rng(0)
    hires = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    face = AlignedFace(crop=np.zeros((224, 224, 3), np.uint8), crop_landmarks=lm.astype(
        np.float32), image_to_crop=np.eye(2, 3), crop_hires=hires,
        skin_mask=np.zeros((224, 224), np.uint8), parse_mask=np.zeros((224, 224), np.uint8))
    img, lms = eye_photo(face.to_proto())
    patch, lm_patch = eye_region(hires, crop_to_hires(lm.astype(np.float32), 512))
    assert (img.height, img.width, img.channels) == (*patch.shape[:2], 3)
    assert img.pixels == patch.tobytes()
    got = np.array([[p.x, p.y] for p in lms.points])
    np.testing.assert_allclose(got, lm_patch, atol=1e-4)
    # no hi-res crop: nothing to send (the eyeball service uses its default colour)
    p = face.to_proto()
    p.ClearField("crop_hires")
    img, lms = eye_photo(p)
    assert not img.width and not lms.points
