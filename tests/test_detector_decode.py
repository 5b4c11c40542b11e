"""services.detector.decode: every kind of bad upload, every mode conversion, EXIF orientation."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from ffhquv.errors import InvalidInput
from services.detector.decode import apply_orientation, decode_image


def encode(img, fmt: str = "PNG", **kw) -> bytes:
    """``uint8`` array or PIL image -> file bytes."""
    im = img if isinstance(img, Image.Image) else Image.fromarray(img)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def with_orientation(stored: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return encode(im, fmt, exif=exif.tobytes(), **kw)


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` pixels of one colour: a few tens of kB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A 96x128 RGB test picture with distinct rows and columns."""
    y, x = np.mgrid[0:96, 0:128]
    return np.stack([x * 2, y * 2, (x + y) % 256], -1).astype(np.uint8)


def expect_invalid(data: bytes, match: str, **kw) -> InvalidInput:
    with pytest.raises(InvalidInput, match=match) as ei:
        decode_image(data, **kw)
    return ei.value


# ----------------------------------------------------------------------------- rejected input

def test_empty_bytes():
    expect_invalid(b"", r"^empty image: 0 bytes received; send JPEG or PNG$")


def test_random_bytes_are_not_an_image():
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    err = expect_invalid(data, r"^not an image: unrecognised data of 5000 bytes starting with ")
    assert "send JPEG or PNG" in str(err)


def test_text_is_not_an_image():
    expect_invalid(b"hello, this is not a photo\n", r"^not an image: .* bytes of text")


@pytest.mark.parametrize("fmt,name", [("GIF", "GIF"), ("BMP", "BMP"), ("WEBP", "WebP"),
                                      ("TIFF", "TIFF")])
def test_other_formats_are_named(face, fmt, name):
    expect_invalid(encode(face, fmt), rf"^unsupported image format {name}; send JPEG or PNG$")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(fmt):
    img = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    data = encode(img, fmt)
    for cut in (len(data) // 2, len(data) - 40):
        expect_invalid(data[:cut], rf"^truncated or corrupt {fmt}: ")


def test_header_only_png_is_corrupt():
    expect_invalid(b"\x89PNG\r\n\x1a\n\x00\x00", r"^truncated or corrupt PNG: missing IHDR")


def test_decompression_bomb_rejected_from_header():
    data = bomb_png(20000)
    assert len(data) < 200_000
    expect_invalid(data, r"^image has too many pixels: 20000x20000 = 400\.0 MP, limit is "
                         r"50\.0 MP$")


def test_jpeg_bomb_rejected_from_header(face):
    data = bytearray(encode(face, "JPEG"))
    i = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[i + 5:i + 9] = struct.pack(">HH", 30000, 40000)
    expect_invalid(bytes(data), r"^image has too many pixels: 40000x30000 = 1200\.0 MP")


def test_jpeg_without_frame_header(face):
    data = encode(face, "JPEG")
    expect_invalid(data[:data.index(b"\xff\xc0")],
                   r"^truncated or corrupt JPEG: no frame header \(SOF\) found$")


def test_pixel_limit_is_configurable(face):
    expect_invalid(encode(face, "JPEG"), r"too many pixels: 128x96", max_pixels=10_000)


def test_oversized_bytes():
    data = b"\xff\xd8\xff" + bytes(31 * 1024 * 1024)
    expect_invalid(data, r"^image file too large: 31\.0 MiB, limit is 30\.0 MiB$")


def test_tiny_image():
    expect_invalid(encode(np.zeros((40, 300, 3), np.uint8)),
                   r"^image too small: 300x40 pixels, each side must be at least 64 pixels$")


# ----------------------------------------------------------------------------- conversions

def test_rgb_png_roundtrip_exact(face):
    d = decode_image(encode(face))
    assert d.format == "PNG" and d.exif_orientation == 1 and d.notes == []
    np.testing.assert_array_equal(d.rgb, face)


def test_rgba_flattened_on_white(face):
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:, :64, 3] = 0
    rgba[:, 64:96, 3] = 128
    d = decode_image(encode(rgba))
    assert d.notes == ["RGBA flattened on white"]
    assert (d.rgb[:, :64] == 255).all()
    np.testing.assert_array_equal(d.rgb[:, 96:], face[:, 96:])
    half = np.rint(face[:, 64:96] * (128 / 255) + 255 * (127 / 255))
    assert np.abs(d.rgb[:, 64:96] - half).max() <= 1


def test_la_flattened_on_white():
    la = np.zeros((80, 80, 2), np.uint8)
    la[..., 0] = 50
    la[:, 40:, 1] = 255
    d = decode_image(encode(Image.fromarray(la, "LA")))
    assert d.notes == ["LA (grayscale+alpha) flattened on white"]
    assert (d.rgb[:, :40] == 255).all() and (d.rgb[:, 40:] == 50).all()


def test_16bit_grayscale_png_scaled():
    g = (np.arange(80 * 80).reshape(80, 80) * 10).astype(np.uint16)
    d = decode_image(cv2.imencode(".png", g)[1].tobytes())
    assert d.notes == ["16-bit grayscale PNG reduced to 8-bit RGB"]
    want = np.rint(g / 65535 * 255)
    assert np.abs(d.rgb[..., 0] - want).max() <= 0.5 + 1e-9
    assert (d.rgb[..., 0] == d.rgb[..., 2]).all()
    assert d.rgb.max() == round(g.max() / 257)


def test_48bit_png_scaled():
    rgb16 = np.zeros((70, 90, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 32768
    rgb16[..., 2] = 257 * 7 + 200  # between two 8-bit levels: rounding, not truncation
    d = decode_image(cv2.imencode(".png", rgb16[..., ::-1])[1].tobytes())
    assert d.notes == ["48-bit RGB PNG reduced to 8-bit RGB"]
    assert tuple(d.rgb[0, 0]) == (255, 128, 8)


def test_grayscale(face):
    d = decode_image(encode(face[..., 0]))
    assert d.notes == ["grayscale converted to RGB"]
    np.testing.assert_array_equal(d.rgb, np.repeat(face[..., :1], 3, 2))


def test_palette_with_transparency():
    p = Image.new("P", (80, 80), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.paste(1, (40, 0, 80, 80))
    d = decode_image(encode(p, transparency=0))
    assert d.notes == ["palette image with transparency flattened on white"]
    assert (d.rgb[:, :40] == 255).all()
    assert tuple(d.rgb[0, 60]) == (200, 100, 50)


def test_palette_opaque():
    p = Image.new("P", (80, 80), 1)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    d = decode_image(encode(p))
    assert d.notes == ["palette image converted to RGB"]
    assert tuple(d.rgb[5, 5]) == (200, 100, 50)


def test_cmyk_jpeg():
    rgb = np.full((80, 80, 3), (200, 120, 80), np.uint8)
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    d = decode_image(data)
    assert d.notes == ["CMYK JPEG converted to RGB (no colour management)"]
    assert np.abs(d.rgb.astype(int) - rgb).max() <= 4


# ----------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_orientations_match_pillow(face, orientation):
    data = with_orientation(face, orientation)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    d = decode_image(data)
    assert d.exif_orientation == orientation
    np.testing.assert_array_equal(d.rgb, want)
    np.testing.assert_array_equal(apply_orientation(face, orientation), want)
    if orientation > 1:
        assert d.notes[-1].startswith(f"EXIF orientation {orientation} applied")


def test_invalid_orientation_ignored(face):
    d = decode_image(with_orientation(face, 9))
    assert d.exif_orientation == 1 and "invalid EXIF orientation 9 ignored" in d.notes
    np.testing.assert_array_equal(d.rgb, face)


# ----------------------------------------------------------------------------- with detection

@pytest.fixture(scope="module")
def detector():
    from services.detector.core import Detector

    return Detector()


@pytest.mark.parametrize("orientation,fmt", [(3, "PNG"), (6, "PNG"), (8, "PNG"), (6, "JPEG")])
def test_exif_rotated_astronaut_landmarks_in_oriented_image(detector, astronaut_rgb,
                                                            orientation, fmt):
    # Store the pixels so that applying the tag shows the upright astronaut.
    undo = {3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, 1),
            8: lambda a: np.rot90(a, -1)}[orientation]
    stored = np.ascontiguousarray(undo(astronaut_rgb))
    assert not np.array_equal(stored, astronaut_rgb)
    res = detector.detect(with_orientation(stored, orientation, fmt))
    assert res.exif_orientation == orientation
    assert res.image_size == (512, 512)
    upright = detector.detect(encode(astronaut_rgb, fmt, **({"quality": 95} if fmt == "JPEG"
                                                            else {})))
    got, want = res.faces[0].landmarks, upright.faces[0].landmarks
    if fmt == "PNG":  # lossless: the very same pixels, the very same landmarks
        np.testing.assert_array_equal(got, want)
    else:
        assert np.abs(got - want).mean() < 2.0
    # and on the upright picture the face is where the astronaut's face is
    x0, y0, x1, y1 = res.faces[0].box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200


# -- damage that decoders would paper over (grey or black pixels) ----------------------------------

def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """``[(offset, type, length)]`` of the chunks of a PNG."""
    out, i = [], 8
    while i < len(data):
        length, kind = struct.unpack(">I4s", data[i:i + 8])
        out.append((i, kind, length))
        i += 12 + length
    return out


def _noise(side: int = 256) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)


def test_png_flipped_idat_byte_is_rejected():
    data = bytearray(encode(_noise()))
    off, _, length = next(c for c in _png_chunks(bytes(data)) if c[1] == b"IDAT")
    data[off + 8 + length // 2] ^= 0x01
    err = expect_invalid(bytes(data), "^truncated or corrupt PNG: CRC mismatch in the IDAT")
    assert len(str(err)) < 200


def test_png_flipped_idat_byte_with_fixed_crc_is_rejected():
    """The chunk CRC recomputed after the damage: zlib's Adler-32 still notices."""
    data = bytearray(encode(_noise()))
    off, _, length = next(c for c in _png_chunks(bytes(data)) if c[1] == b"IDAT")
    data[off + 8 + length // 2] ^= 0x01
    body = bytes(data[off + 4:off + 8 + length])
    data[off + 8 + length:off + 12 + length] = struct.pack(">I", zlib.crc32(body))
    expect_invalid(bytes(data), "^truncated or corrupt PNG: ")


def test_png_header_larger_than_its_data_is_rejected():
    """A valid stream of 64x64 under an IHDR that says 64x4000 (CRC fixed)."""
    data = bytearray(encode(_noise(64)))
    data[20:24] = struct.pack(">I", 4000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    expect_invalid(bytes(data), "^truncated or corrupt PNG: ")


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_header_claiming_far_more_pixels_than_data(progressive):
    """256x256 of JPEG data under a frame header that claims 7000x7000."""
    data = bytearray(encode(_noise(), "JPEG", quality=90, progressive=progressive))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    assert sof > 0
    data[sof + 5:sof + 9] = struct.pack(">HH", 7000, 7000)
    err = expect_invalid(bytes(data), "^truncated or corrupt JPEG: the header declares 7000x7000")
    assert len(str(err)) < 200


@pytest.mark.parametrize("progressive", [False, True])
def test_plain_flat_jpeg_still_decodes(progressive):
    """A one-colour image compresses to very few bytes per block and stays accepted."""
    flat = np.full((2048, 2048, 3), 200, np.uint8)
    data = encode(flat, "JPEG", quality=50, progressive=progressive, optimize=True)
    assert decode_image(data).rgb.shape == (2048, 2048, 3)
