"""Small image helpers shared by every service: PNG bytes and RawImage protos.

Decoding *uploaded* photos (EXIF, modes, limits) is the detector's job
(:mod:`services.detector.decode`); this module only handles images the services made.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Rec. 601 luma weights of sRGB (``rgb @ LUMA``): the one brightness the services compare
LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# Every PNG the services make: OpenCV's encoder at zlib level 1. On a real 1024 texture it is
# about 5 times faster than level 6 for a file about 14 % larger, and faster than Pillow at the
# same level and size (bench/png.py; BENCHMARKS.md "PNG encoding").
PNG_LEVEL = 1


def _png_params(level: int) -> list[int]:
    """``cv2.imencode`` parameters: zlib ``level`` and, where OpenCV has the option (4.11+),
    the "up" row filter for every row. libpng's default tries each of its filters on each row
    and keeps the best: on the textures, renders and previews the services make one filter
    gives files within 2 % of that size in about half the time (bench/png.py)."""
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level)]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return params


def png_bytes(img: np.ndarray, compress_level: int = PNG_LEVEL) -> bytes:
    """Encode ``uint8 [H, W, 3]`` RGB, ``[H, W, 4]`` RGBA or ``[H, W]`` gray to PNG bytes.

    Encode once, where the image is made; pass the bytes on rather than decoding and encoding
    again."""
    import cv2

    a = np.ascontiguousarray(img)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        raise ValueError(f"png_bytes needs uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA)
    elif a.ndim != 2 and not (a.ndim == 3 and a.shape[2] == 1):
        raise ValueError(f"png_bytes needs [H, W], [H, W, 3] or [H, W, 4], got {a.shape}")
    ok, buf = cv2.imencode(".png", a, _png_params(compress_level))
    if not ok:
        raise ValueError(f"PNG encoding of a {a.shape} image failed")
    return buf.tobytes()


#: the eight bytes every PNG file starts with
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png_bytes(data: bytes) -> np.ndarray:
    """Decode PNG bytes made by a service to ``uint8 [H, W, 3]`` RGB (grey replicated, alpha
    dropped, a palette looked up).

    8-bit PNGs through OpenCV (about 40 % faster than Pillow on a 1024 texture, the same
    pixels); other bit depths, and anything OpenCV cannot read, through Pillow, whose errors
    become :class:`~ffhquv.errors.InvalidInput`."""
    from ffhquv.errors import InvalidInput

    # IHDR follows the signature: length, type, width, height, then the bit depth (byte 24)
    if data[:8] == PNG_SIGNATURE and len(data) > 33 and data[12:16] == b"IHDR" and data[24] == 8:
        import cv2

        a = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if a is not None:
            return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise InvalidInput(f"texture is not a readable PNG: {e}") from e


def to_raw(img: np.ndarray):
    """``uint8 [H, W]`` or ``[H, W, C]`` to a ``common.v1.RawImage``."""
    from ffhquv.pb import common_pb2

    a = np.ascontiguousarray(img, dtype=np.uint8)
    c = 1 if a.ndim == 2 else a.shape[2]
    return common_pb2.RawImage(width=a.shape[1], height=a.shape[0], channels=c,
                               pixels=a.tobytes())


def from_raw(raw) -> np.ndarray:
    """``common.v1.RawImage`` to ``uint8 [H, W]`` (1 channel) or ``[H, W, C]``."""
    from ffhquv.errors import InvalidInput

    n = raw.width * raw.height * raw.channels
    if raw.channels not in (1, 3) or n == 0 or len(raw.pixels) != n:
        raise InvalidInput(
            f"raw image {raw.width}x{raw.height}x{raw.channels} has {len(raw.pixels)} bytes")
    a = np.frombuffer(raw.pixels, np.uint8)
    return a.reshape(raw.height, raw.width) if raw.channels == 1 else a.reshape(
        raw.height, raw.width, raw.channels)
