"""The texture's image filters agree with OpenCV where they run as operator matrices (the GPU
formulation, forced here on the CPU), and are OpenCV itself on the host."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from services.fitter.texture import imageops
from services.fitter.texture.imageops import Interp


def _img(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _close(t, a, tol=2e-6):
    assert t.dtype == torch.float32 and tuple(t.shape) == a.shape
    np.testing.assert_allclose(t.numpy(), a, atol=tol, rtol=0)


@pytest.mark.parametrize("shape", [(96, 96, 3), (96, 96), (64, 48, 1)])
@pytest.mark.parametrize("forced", [False, True])
def test_filters_equal_opencv(shape, forced, monkeypatch):
    monkeypatch.setattr(imageops, "FORCE_MATRICES", forced)
    a = _img(shape)
    x = torch.from_numpy(a)
    keep = (lambda r: r[..., None]) if len(shape) == 3 and shape[2] == 1 else (lambda r: r)
    for sigma in (1.0, 2.0, 4.5):
        ref = cv2.GaussianBlur(a, (0, 0), sigmaX=sigma, sigmaY=sigma,
                               borderType=cv2.BORDER_REFLECT)
        _close(imageops.gaussian_blur(x, sigma), keep(ref))
    h, w = shape[0], shape[1]
    for f in (2, 5, 6):  # 96 / 5, 96 / 6: fractional INTER_AREA cells too
        size = (h // f, w // f)
        small = cv2.resize(a, size[::-1], interpolation=cv2.INTER_AREA)
        _close(imageops.resize(x, size, Interp.AREA), keep(small))
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        _close(imageops.resize(torch.from_numpy(np.ascontiguousarray(keep(small))), (h, w),
                               Interp.LINEAR), keep(big))
    down = cv2.pyrDown(a)
    _close(imageops.pyr_down(x), keep(down))
    up = cv2.pyrUp(down, dstsize=(down.shape[1] * 2, down.shape[0] * 2))
    _close(imageops.pyr_up(torch.from_numpy(np.ascontiguousarray(keep(down)))), keep(up))
    if len(shape) == 2:
        _close(imageops.erode3(x), cv2.erode(a, np.ones((3, 3), np.uint8)), tol=0)


def test_host_path_is_opencv_to_the_bit():
    a = _img((64, 64, 3), 1)
    np.testing.assert_array_equal(
        imageops.gaussian_blur(torch.from_numpy(a), 2.0).numpy(),
        cv2.GaussianBlur(a, (0, 0), sigmaX=2.0, sigmaY=2.0, borderType=cv2.BORDER_REFLECT))


def test_distance_inside():
    m = np.zeros((40, 40), bool)
    m[5:30, 8:35] = True
    d = imageops.distance_inside(torch.from_numpy(m))
    np.testing.assert_array_equal(d.numpy(), cv2.distanceTransform(
        m.astype(np.uint8), cv2.DIST_L2, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the "
                    "device tool)")
def test_gpu_filters_equal_opencv():
    a = _img((256, 256, 3), 2)
    x = torch.from_numpy(a).cuda()
    ref = cv2.GaussianBlur(a, (0, 0), sigmaX=3.0, sigmaY=3.0, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(imageops.gaussian_blur(x, 3.0).cpu().numpy(), ref, atol=2e-6)
    small = cv2.resize(a, (42, 42), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(imageops.resize(x, (42, 42), Interp.AREA).cpu().numpy(), small,
                               atol=2e-6)


def test_median_is_numpys():
    rng = np.random.default_rng(3)
    for shape in ((7, 3), (8, 3), (1, 3), (10,)):
        a = rng.random(shape).astype(np.float32)
        np.testing.assert_array_equal(imageops.median(torch.from_numpy(a), 0).numpy(),
                                      np.median(a, axis=0))


def test_square_max_and_box_mean_are_the_squares_ones():
    """``square_max`` is OpenCV's dilation by a ``(2 r + 1)`` square (the border does not
    grow); ``box_mean`` the mean over the square's texels inside the image."""
    x = _img((37, 29), seed=3)
    for r in (1, 4):
        k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        got = imageops.square_max(torch.from_numpy(x), r).numpy()
        assert np.array_equal(got, cv2.dilate(x, k, borderType=cv2.BORDER_REPLICATE))
        mean = imageops.box_mean(torch.from_numpy(x), r).numpy()
        want = np.array([[x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean()
                          for j in range(x.shape[1])] for i in range(x.shape[0])])
        assert np.abs(mean - want).max() < 1e-5
