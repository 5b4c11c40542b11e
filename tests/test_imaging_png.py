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


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P"])
def test_read_png_bytes_gives_pillows_pixels(mode):
    """8-bit PNGs of every colour type decode (OpenCV's path) to what Pillow's convert("RGB")
    gives; a 16-bit one takes Pillow's path."""
    img = Image.fromarray(np.ascontiguousarray(data.astronaut()[::4, ::4])).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(read_png_bytes(buf.getvalue()), np.asarray(img.convert("RGB")))
    deep = io.BytesIO()
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(deep, "PNG")
    assert read_png_bytes(deep.getvalue()).shape == (64, 64, 3)


@pytest.mark.parametrize("cut", [20, 40, 200, 3000])
def test_read_png_bytes_rejects_broken_files(cut):
    from ffhquv.errors import InvalidInput

    good = png_bytes(np.ascontiguousarray(data.astronaut()[::4, ::4]))
    with pytest.raises(InvalidInput, match="not a readable PNG"):
        read_png_bytes(good[:cut])
    with pytest.raises(InvalidInput, match="not a readable PNG"):
        read_png_bytes(b"GIF89a" + good[6:])
