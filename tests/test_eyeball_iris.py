"""Iris colour sampled from the iris itself: synthetic eyes with a known iris (always run) and
real photos of the shared data (skip when absent). Contact images of the real eyes next to the
sampled colour go to /tmp/eyeball_previews/ to look at."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from ffhquv.aligned import crop_to_hires, eye_region
from services.eyeball.iris import (
    DEFAULT_IRIS_RGB,
    LEFT_EYE,
    RIGHT_EYE,
    iris_colour,
    iris_word,
    sample_eye,
    srgb_to_lab,
)

PREVIEWS = Path("/tmp/eyeball_previews")

# iris colours as a photo shows them (sRGB), by class
IRISES = {
    "blue": (72, 112, 165),
    "green": (84, 120, 72),
    "grey": (122, 126, 128),
    "hazel": (128, 102, 52),
    "brown": (92, 56, 30),
}


def render_eyes(iris_rgb, gaze_px: float = 0.0, exposure: float = 0.8, seed: int = 0,
                pupil: float = 0.33) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A photo of two open almond eyes: skin, sclera, an iris disc with radial fibres and a dark
    limbal ring, a black pupil (radius ``pupil`` iris radii), a specular glint, dark upper
    lashes and a shadow under the upper lid, everything scaled by ``exposure``.

    Returns:
        ``(image uint8 [H, W, 3], landmarks [68, 2], iris centres [(x, y)] per eye)``.
    """
    rng = np.random.default_rng(seed)
    h, w = 240, 400
    img = np.empty((h, w, 3), np.float64)
    img[:] = (205, 158, 136)
    lm = np.zeros((68, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    centres = []
    for k, cx in ((36, 120.0), (42, 280.0)):
        cy, half_w, half_h = 120.0, 50.0, 19.0
        # dlib order: outer/inner corner, two upper lid points, corner, two lower lid points
        pts = np.array([[cx - half_w, cy], [cx - 18, cy - half_h], [cx + 18, cy - half_h],
                        [cx + half_w, cy], [cx + 18, cy + half_h * 0.9],
                        [cx - 18, cy + half_h * 0.9]])
        lm[k:k + 6] = pts
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        eye = np.empty((h, w, 3))
        eye[:] = (228, 222, 214)
        eye *= (1 - 0.12 * (np.abs(xx - cx) / half_w) ** 2)[..., None]  # sclera shading
        ix, iy, r = cx + gaze_px, cy - 3.0, 21.0
        centres.append(np.array([ix, iy]))
        d = np.hypot(xx - ix, yy - iy)
        ang = np.arctan2(yy - iy, xx - ix)
        fib = np.zeros_like(d)
        for n in (23, 41, 67):
            fib += np.cos(n * ang + rng.uniform(0, 2 * math.pi)) / 3
        shade = 1 + 0.15 * fib - 0.35 * np.clip((d / r - 0.8) / 0.2, 0, 1)  # dark limbal ring
        iris = np.asarray(iris_rgb, np.float64) * shade[..., None]
        inside = d <= r
        eye[inside] = iris[inside]
        eye[d <= pupil * r] = (12, 10, 10)  # pupil
        eye[np.hypot(xx - ix - 6, yy - iy + 6) <= 3.5] = (252, 252, 250)  # glint
        # shadow of the upper lid and a band of dark lashes along it
        top = np.interp(xx, pts[[0, 1, 2, 3], 0], pts[[0, 1, 2, 3], 1])
        depth = yy - top
        eye *= (1 - 0.45 * np.exp(-np.clip(depth, 0, None) / 7.0))[..., None]
        lashes = (depth < 4.0) & (np.cos(xx * 1.7) > -0.3)
        eye[lashes] = (25, 20, 20)
        img[mask > 0] = eye[mask > 0]
    img = np.clip(img * exposure + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8)
    return img, lm, centres


def lab_class(rgb) -> tuple[float, float, float, float]:
    """``(L*, a*, b*, hue degrees)`` of an sRGB colour."""
    lightness, a, b = (float(v) for v in srgb_to_lab(np.asarray(rgb, np.float64)))
    return lightness, a, b, math.degrees(math.atan2(b, a)) % 360


def check_class(name: str, rgb) -> None:
    lightness, a, b, hue = lab_class(rgb)
    chroma = math.hypot(a, b)
    msg = f"{name}: sampled {tuple(round(v) for v in rgb)} Lab ({lightness:.0f}, {a:.0f}, {b:.0f})"
    if name == "blue":
        assert b < -8 and 200 < hue < 300 and lightness > 35, msg
    elif name == "green":
        assert a < -5 and b > 3 and 100 < hue < 170, msg
    elif name == "grey":
        assert chroma < 6 and lightness > 40, msg
    elif name == "hazel":
        assert b > 20 and 65 < hue < 100 and lightness > 35, msg
    elif name == "brown":
        assert a > 5 and b > 10 and 30 < hue < 75 and lightness < 45, msg


@pytest.mark.parametrize("name", list(IRISES))
@pytest.mark.parametrize("gaze", [0.0, 14.0])
def test_synthetic_iris_classes(name, gaze):
    img, lm, centres = render_eyes(IRISES[name], gaze_px=gaze)
    rgb, src = iris_colour(img, lm)
    assert src == "photo"
    check_class(name, rgb)
    assert iris_word(rgb).replace("dark ", "").replace("light ", "").startswith(
        {"grey": "grey"}.get(name, name)), (name, iris_word(rgb))
    for idx, c in zip((RIGHT_EYE, LEFT_EYE), centres, strict=True):
        s = sample_eye(img, lm[idx])
        assert s is not None and np.linalg.norm(s.centre - c) < 6, (s and s.centre, c)
        assert 14 < s.radius < 28


def test_iris_albedo_is_brighter_than_the_shadowed_photo():
    """The lid-shadowed, under-exposed iris of a photo is brightened toward an albedo, and a
    darker exposure of the same eye gives about the same colour."""
    bright = iris_colour(*render_eyes(IRISES["blue"], exposure=0.9)[:2])[0]
    dark = iris_colour(*render_eyes(IRISES["blue"], exposure=0.55)[:2])[0]
    lb, ld = lab_class(bright)[0], lab_class(dark)[0]
    assert lb >= lab_class(IRISES["blue"])[0] * 0.9 * 0.95
    assert abs(lb - ld) < 8, (bright, dark)
    light = [lab_class(iris_colour(*render_eyes(IRISES[n])[:2])[0])[0] for n in ("blue", "grey")]
    brown = lab_class(iris_colour(*render_eyes(IRISES["brown"])[:2])[0])[0]
    assert min(light) > brown + 10, (light, brown)


def test_dilated_pupil_is_left_out():
    """A wide pupil (60 % of the iris) does not darken the sampled colour."""
    for name in ("blue", "hazel"):
        normal = lab_class(iris_colour(*render_eyes(IRISES[name])[:2])[0])
        rgb = iris_colour(*render_eyes(IRISES[name], pupil=0.6)[:2])[0]
        check_class(name, rgb)
        assert abs(lab_class(rgb)[0] - normal[0]) < 5, (name, rgb, normal)


def test_no_iris_gives_the_default():
    img, lm, _ = render_eyes(IRISES["blue"])
    closed = lm.copy()
    for k in (36, 42):
        closed[[k + 1, k + 2], 1] = closed[k, 1] - 1
        closed[[k + 4, k + 5], 1] = closed[k, 1] + 1
    assert iris_colour(img, closed) == (DEFAULT_IRIS_RGB, "default")
    # eye contours over plain skin (no sclera, no iris): nothing darker than its surround
    skin = np.full_like(img, (190, 150, 130))
    assert iris_colour(skin, lm) == (DEFAULT_IRIS_RGB, "default")
    # a squint: a darker fold of skin in the contour (darker than its surround, but the
    # surround is skin, not sclera)
    fold = skin.copy()
    for cx in (120, 280):
        cv2.ellipse(fold, (cx, 120), (26, 12), 0, 0, 360, (150, 112, 96), -1)
    fold = cv2.GaussianBlur(fold, (0, 0), 3)
    assert iris_colour(fold, lm) == (DEFAULT_IRIS_RGB, "default")
    assert iris_colour(img, None) == (DEFAULT_IRIS_RGB, "default")
    assert iris_colour(img, lm * np.nan)[1] == "default"


# photos of the shared data whose eye colour is clear (judged by eye), with the expected class
REAL = {
    ("ffhq-uv-reference", "01223.png"): "light",  # blue-grey
    ("ffhq-uv-reference", "015309.jpg"): "light",  # grey-green
    ("ffhq-uv-reference", "000007.jpg"): "brown",
    ("faces-dev", "fd11_light_m_sidelit_src_man1.jpg"): "light",  # blue-grey
    ("faces-dev", "fd21_light_f_wavyblonde_hand_model_face.jpg"): "light",  # grey-blue
    ("faces-dev", "fd16_light_f_bangs_img_1585.png"): "hazel",  # green-hazel
    ("faces-dev", "fd06_medium_f_longcurly_img_1696.png"): "brown",
    ("faces-dev", "fd13_light_m_bald_img20.jpg"): "brown",
}


@pytest.fixture(scope="module")
def detector():
    from services.detector.core import Detector

    return Detector()


@pytest.mark.parametrize("folder,name", list(REAL))
def test_real_photo_iris(ref_dir, detector, folder, name):
    from PIL import Image

    path = (ref_dir if folder == "ffhq-uv-reference" else ref_dir.parent / folder) / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    det = detector.detect(path.read_bytes(), unwrap_size=1024)
    a = det.aligned
    lm = crop_to_hires(a.crop_landmarks, a.crop_hires.shape[0])
    rgb, src = iris_colour(a.crop_hires, lm)
    assert src == "photo"
    # the eye region the gateway sends the eyeball service gives the same colour
    patch, lm_patch = eye_region(a.crop_hires, lm)
    assert patch.size < a.crop_hires.size / 6
    rgb_eye, src_eye = iris_colour(np.ascontiguousarray(patch), lm_patch)
    assert src_eye == "photo" and rgb_eye == pytest.approx(rgb, abs=1e-6)
    lightness, a_, b, hue = lab_class(rgb)
    msg = f"{name}: {tuple(round(v) for v in rgb)} Lab ({lightness:.0f}, {a_:.0f}, {b:.0f})"
    want = REAL[(folder, name)]
    if want == "light":  # blue / grey / green-grey: light and not warm
        assert lightness > 38 and b < 5 and a_ < 3, msg
    elif want == "hazel":
        assert lightness > 35 and b > 18 and 65 < hue < 110, msg
    else:
        assert lightness < 40 and a_ > 4 and b > 4, msg
    # the eye crops next to the sampled colour, to look at
    tiles = []
    for idx in (RIGHT_EYE, LEFT_EYE):
        e = lm[idx]
        c, w = e.mean(0), float(np.linalg.norm(e[0] - e[3]))
        x0, y0 = int(c[0] - 0.8 * w), int(c[1] - 0.4 * w)
        crop = a.crop_hires[max(y0, 0):int(c[1] + 0.4 * w), max(x0, 0):int(c[0] + 0.8 * w)]
        tiles.append(cv2.resize(crop, (240, 120), interpolation=cv2.INTER_AREA))
    tiles.append(np.full((120, 120, 3), np.round(rgb), np.uint8))
    PREVIEWS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, 1)).save(PREVIEWS / f"iris_{Path(name).stem}.png")
