"""``ffhquv.imaging.png_bytes``: lossless for every image kind the services encode, read back by
Pillow (another decoder than the encoder's), and the one-filter option where OpenCV has it."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from ffhquv.imaging import _png_params, png_bytes, read_png_bytes


@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray", "gray1", "bool"])
def test_lossless_through_pillow(kind):
    rgb = np.ascontiguousarray(data.astronaut()[::2, ::2])
    img = {"rgb": rgb, "rgba": np.dstack([rgb, rgb[..., :1]]), "gray": rgb[..., 0],
           "gray1": rgb[..., :1], "bool": rgb[..., 0] > 128}[kind]
    back = np.asarray(Image.open(io.BytesIO(png_bytes(img))))
    want = img.astype(np.uint8) * 255 if img.dtype == np.bool_ else img
    np.testing.assert_array_equal(back, want.reshape(back.shape))
    if kind == "rgb":
        np.testing.assert_array_equal(read_png_bytes(png_bytes(img)), img)


def test_one_row_filter_where_opencv_has_it():
    params = _png_params(1)
    assert params[:2] == [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        assert params[2:] == [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def test_rejects_what_it_cannot_encode():
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))
