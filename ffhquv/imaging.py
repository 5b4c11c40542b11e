"""Small image helpers shared by every service: PNG bytes and RawImage protos.

Decoding *uploaded* photos (EXIF, modes, limits) is the detector's job
(:mod:`services.detector.decode`); this module only handles images the services made.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# zlib level of every PNG the services make. Level 1 encodes a 1024 texture about 5 times
# faster than Pillow's default 6 for files about 15 % larger (bench/png.py, BENCHMARKS.md);
# OpenCV's encoder was not faster at equal size.
PNG_LEVEL = 1


def png_bytes(img: np.ndarray, compress_level: int = PNG_LEVEL) -> bytes:
    """Encode ``uint8 [H, W, 3]`` RGB or ``[H, W]`` gray to PNG bytes (once: pass the bytes
    on rather than decoding and encoding again)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG",
                                                    compress_level=compress_level)
    return buf.getvalue()


def read_png_bytes(data: bytes) -> np.ndarray:
    """Decode PNG bytes made by a service to ``uint8 [H, W, 3]`` RGB."""
    from ffhquv.errors import InvalidInput

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
