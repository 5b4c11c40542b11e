"""THE one place where uploaded photos are decoded: bytes -> oriented 8-bit RGB.

Only JPEG and PNG are accepted (recognised by their magic bytes, not by a file name). Every
other input is rejected with :class:`ffhquv.errors.InvalidInput` and a message that names what
was received. The checks run cheapest first:

1. size in bytes (``max_bytes``),
2. magic bytes (format),
3. pixel count read from the file header, BEFORE any pixel is decoded (``max_pixels``; a
   decompression bomb is a small file with a huge header size),
3b. structure against the header (:func:`check_structure`, no pixel decoded): every PNG chunk's
   CRC-32, the zlib stream of the IDAT chunks (its Adler-32, and its length against the header
   size), and for JPEG the entropy-coded data against the least a Huffman coder needs for the
   declared number of blocks (a header that claims 7000x7000 over 256x256 of data, which
   decoders would pad with grey),
4. full decode, with truncation treated as an error (no partially loaded images),
5. conversion of any mode (16-bit, grayscale, alpha, palette, CMYK) to 8-bit RGB, with a note,
6. EXIF orientation (all 8 values),
7. minimum side (``min_side``, after orientation).

Output convention: ``uint8 [H, W, 3]`` RGB, row 0 at the top of the *displayed* (oriented)
picture; pixel centres at integer coordinates (docs/conventions.md).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile

from ffhquv.errors import InvalidInput
from ffhquv.imaging import PNG_SIGNATURE

DEFAULT_MAX_BYTES = 30 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 64

_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION_TAG = 0x0112

# What each EXIF orientation value means for the stored pixels, and how it is undone.
ORIENTATION_NAMES = {
    1: "normal",
    2: "mirrored horizontally",
    3: "rotated 180",
    4: "mirrored vertically",
    5: "transposed",
    6: "rotated 90 clockwise",
    7: "transversed",
    8: "rotated 90 counter-clockwise",
}


@dataclass
class DecodedImage:
    """A decoded upload.

    Attributes:
        rgb: ``uint8 [H, W, 3]`` RGB after EXIF orientation (H, W of the displayed picture).
        exif_orientation: the EXIF orientation tag of the file (1 when absent or invalid).
        format: ``"JPEG"`` or ``"PNG"``.
        notes: human-readable notes on every conversion applied.
    """

    rgb: np.ndarray
    exif_orientation: int = 1
    format: str = "JPEG"
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` after orientation."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


# ----------------------------------------------------------------------------- format sniffing

def sniff_format(data: bytes) -> str | None:
    """Name of the image format in ``data`` from its magic bytes, or None if unknown.

    Returns ``"JPEG"`` / ``"PNG"`` for accepted formats and a descriptive name (``"GIF"``,
    ``"BMP"``, ``"WebP"``, ``"TIFF"``, ``"HEIC"``, ...) for recognised but rejected ones.
    """
    h = data[:32]
    if h.startswith(_JPEG_MAGIC):
        return "JPEG"
    if h.startswith(PNG_SIGNATURE):
        return "PNG"
    if h[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if h[:2] == b"BM":
        return "BMP"
    if h[:4] == b"RIFF" and h[8:12] == b"WEBP":
        return "WebP"
    if h[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if h[4:8] == b"ftyp":
        brand = h[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIC/HEIF"
        return "an ISO-BMFF container (MP4/MOV/HEIF)"
    if h.startswith(b"\x00\x00\x00\x0cjP  ") or h.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    if h.startswith(b"\xff\x0a") or h.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL"
    if h[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if h[:4] == b"8BPS":
        return "PSD"
    if h[:4] == b"%PDF":
        return "PDF"
    if h[:4] == b"qoif":
        return "QOI"
    if h[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6") and h[2:3] in (b"\n", b" ", b"\r"):
        return "PNM"
    if h[:4] == b"\x76\x2f\x31\x01":
        return "OpenEXR"
    if h[:10] == b"#?RADIANCE":
        return "Radiance HDR"
    if h.lstrip()[:5].lower() in (b"<?xml", b"<svg ") or h.lstrip()[:4].lower() == b"<svg":
        return "SVG"
    return None


def _describe_unknown(data: bytes) -> str:
    head = data[:16]
    try:
        text = data[:200].decode("utf-8")
        if text and all(c.isprintable() or c in "\r\n\t" for c in text):
            snippet = text[:40].replace("\n", " ")
            return f"not an image: {len(data)} bytes of text ({snippet!r}); send JPEG or PNG"
    except UnicodeDecodeError:
        pass
    return (f"not an image: unrecognised data of {len(data)} bytes starting with "
            f"{head.hex(' ')}; send JPEG or PNG")


# ----------------------------------------------------------------------------- header sizes

def _png_header(data: bytes) -> tuple[int, int, int, int]:
    """``(width, height, bit_depth, colour_type)`` from the PNG IHDR chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InvalidInput("truncated or corrupt PNG: missing IHDR header")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


def _jpeg_header(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the first JPEG SOFn marker (scanning marker segments)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise InvalidInput("truncated or corrupt JPEG: bad marker structure")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        i += 2 + seg_len
    raise InvalidInput("truncated or corrupt JPEG: no frame header (SOF) found")


def _chunk_name(ctype: bytes) -> str:
    return ctype.decode("latin-1") if ctype.isalpha() else ctype.hex()


def _png_raw_size(w: int, h: int, depth: int, ctype: int) -> int:
    """Bytes of the filtered, non-interlaced image data: ``h * (1 + row bytes)``."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype, 0)
    return h * (1 + math.ceil(w * channels * depth / 8))


def _check_png(data: bytes, w: int, h: int, depth: int, ctype: int) -> None:
    """Walk the chunks: lengths within the file, CRC-32 of each, an IEND; then inflate the IDAT
    stream (its Adler-32 covers every pixel byte) and compare its length with the header's."""
    view = memoryview(data)
    i, n = 8, len(data)
    inflater = zlib.decompressobj()
    raw = 0
    limit = _png_raw_size(w, h, depth, ctype) + 1
    interlaced = n > 28 and data[28] == 1
    while True:
        if i + 12 > n:
            raise InvalidInput(f"truncated or corrupt PNG: the file ends at byte {n} before "
                               "its IEND chunk")
        length, ctype_b = struct.unpack(">I4s", data[i:i + 8])
        end = i + 12 + length
        if end > n:
            raise InvalidInput(f"truncated or corrupt PNG: the {_chunk_name(ctype_b)} chunk "
                               f"at byte {i} declares {length} bytes, "
                               f"{max(0, n - i - 12)} are left")
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(view[i + 4:end - 4]) != crc:
            raise InvalidInput("truncated or corrupt PNG: CRC mismatch in the "
                               f"{_chunk_name(ctype_b)} chunk at byte {i}")
        if ctype_b == b"IDAT" and not inflater.eof:
            try:
                buf = inflater.decompress(view[i + 8:end - 4], 1 << 20)
                raw += len(buf)
                while inflater.unconsumed_tail and raw <= limit:
                    buf = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
                    raw += len(buf)
            except zlib.error as e:
                raise InvalidInput("truncated or corrupt PNG: image data does not inflate "
                                   f"({e})") from None
            if raw > limit and not interlaced:
                raise InvalidInput("truncated or corrupt PNG: more image data than the "
                                   "header's size")
        if ctype_b == b"IEND":
            break
        i = end
    if not inflater.eof:
        raise InvalidInput("truncated or corrupt PNG: the image data stream is incomplete")
    if not interlaced and ctype in (0, 2, 3, 4, 6) and raw != limit - 1:
        raise InvalidInput(f"truncated or corrupt PNG: {raw} bytes of image data for a "
                           f"{w}x{h} header ({limit - 1} expected)")


_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)
_PROGRESSIVE_HUFFMAN = (0xC2,)


def _check_jpeg(data: bytes) -> None:
    """Compare the entropy-coded data after the first SOS with the least a Huffman coder needs
    for the frame's blocks: each block costs at least 2 bits in a sequential scan (a DC code and
    an end-of-block code of at least one bit each) and 1 bit in a progressive DC scan."""
    i, n = 2, len(data)
    frame = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return  # the header parser already reported structural damage
        marker = data[i + 1]
        if marker == 0xFF or marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 1 if marker == 0xFF else 2
            continue
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _SEQUENTIAL_HUFFMAN + _PROGRESSIVE_HUFFMAN and i + 10 <= n:
            h, w, nf = struct.unpack(">HHB", data[i + 5:i + 10])
            comps = [(data[i + 11 + 3 * k] >> 4, data[i + 11 + 3 * k] & 15)
                     for k in range(nf) if i + 12 + 3 * k <= n]
            frame = (marker, w, h, comps)
        elif marker in (0xC3, 0xC5, 0xC6, 0xC7) or 0xC9 <= marker <= 0xCF:
            return  # lossless / hierarchical / arithmetic: no simple lower bound
        if marker == 0xDA:
            break
        if marker == 0xD9:
            return
        i += 2 + seg_len
    else:
        return
    if frame is None or not frame[3]:
        return
    marker, w, h, comps = frame
    hmax = max(c[0] for c in comps) or 1
    vmax = max(c[1] for c in comps) or 1
    mcus = math.ceil(w / (8 * hmax)) * math.ceil(h / (8 * vmax))
    blocks = mcus * sum(max(1, hc) * max(1, vc) for hc, vc in comps)
    bits = 2 if marker in _SEQUENTIAL_HUFFMAN else 1
    need = blocks * bits // 8
    have = n - i
    if have < need:
        raise InvalidInput(f"truncated or corrupt JPEG: the header declares {w}x{h} pixels, "
                           f"which need at least {need} bytes of image data; {have} follow")


def check_structure(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The checks that need no pixel decode (steps 1-3b above), in milliseconds; returns the
    format (``"JPEG"`` / ``"PNG"``). Raises InvalidInput with the reason."""
    _check_head(data, max_bytes, max_pixels)
    fmt = sniff_format(data)
    if fmt == "PNG":
        _check_png(data, *_png_header(data))
    else:
        _check_jpeg(data)
    return fmt


def _check_head(data: bytes, max_bytes: int, max_pixels: int) -> tuple[str, int, int, tuple | None]:
    n = len(data)
    if n == 0:
        raise InvalidInput("empty image: 0 bytes received; send JPEG or PNG")
    if n > max_bytes:
        raise InvalidInput(f"image file too large: {n / 2**20:.1f} MiB, limit is "
                           f"{max_bytes / 2**20:.1f} MiB")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidInput(_describe_unknown(data))
    if fmt not in ("JPEG", "PNG"):
        raise InvalidInput(f"unsupported image format {fmt}; send JPEG or PNG")
    png_info = None
    if fmt == "PNG":
        png_info = _png_header(data)
        w, h = png_info[:2]
    else:
        w, h = _jpeg_header(data)
    if w == 0 or h == 0:
        raise InvalidInput(f"truncated or corrupt {fmt}: header says {w}x{h} pixels")
    if w * h > max_pixels:
        raise InvalidInput(f"image has too many pixels: {w}x{h} = {w * h / 1e6:.1f} MP, limit "
                           f"is {max_pixels / 1e6:.1f} MP")
    return fmt, w, h, png_info


# ----------------------------------------------------------------------------- orientation

def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into the displayed picture for an EXIF orientation value.

    Args:
        img: ``[H, W, ...]`` array as stored in the file.
        orientation: EXIF tag value 1..8 (anything else is treated as 1).
    Returns:
        The displayed ``[H', W', ...]`` array (H', W' swapped for values 5..8).
    """
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = np.swapaxes(img, 0, 1)
    elif orientation == 6:
        out = np.rot90(img, -1)
    elif orientation == 7:
        out = np.swapaxes(img[::-1, ::-1], 0, 1)
    elif orientation == 8:
        out = np.rot90(img, 1)
    else:
        out = img
    return np.ascontiguousarray(out)


def _exif_orientation(im: Image.Image, notes: list[str]) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject the photo
        notes.append("unreadable EXIF block ignored")
        return 1
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = 0
    if value not in ORIENTATION_NAMES:
        notes.append(f"invalid EXIF orientation {value!r} ignored")
        return 1
    return value


# ----------------------------------------------------------------------------- mode handling

def _flatten_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``float [H, W, 3]`` in [0, 1] and ``float [H, W]`` alpha in [0, 1] -> uint8 RGB."""
    a = alpha[..., None]
    out = rgb * a + (1.0 - a)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _to8(a: np.ndarray) -> np.ndarray:
    """``uint16`` 0..65535 to ``uint8`` 0..255 by rounding ``v * 255 / 65535``."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _png16_to_rgb(data: bytes, ctype: int, notes: list[str]) -> np.ndarray:
    """Decode a 16-bit PNG with OpenCV to keep every bit, then scale to 8-bit RGB."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise InvalidInput("truncated or corrupt PNG: 16-bit pixel data could not be decoded")
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[2]
    if c in (3, 4):
        arr = np.concatenate([arr[..., 2::-1], arr[..., 3:]], axis=2)  # BGR(A) -> RGB(A)
    has_alpha = c in (2, 4)
    color = arr[..., :3] if c >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    kind = {0: "16-bit grayscale", 2: "48-bit RGB", 4: "16-bit grayscale+alpha",
            6: "64-bit RGBA"}.get(ctype, "16-bit")
    notes.append(f"{kind} PNG reduced to 8-bit RGB")
    if has_alpha:
        alpha = arr[..., -1].astype(np.float64) / 65535.0
        if (alpha < 1.0).any():
            notes.append("alpha channel flattened on white")
        return _flatten_on_white(color.astype(np.float64) / 65535.0, alpha)
    return _to8(color)


def _pil_to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Any loaded Pillow image -> ``uint8 [H, W, 3]`` RGB (stored orientation)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode == "P":
        if "transparency" not in im.info:
            notes.append("palette image converted to RGB")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
        notes.append("palette image with transparency flattened on white")
    elif mode in ("RGBA", "RGBa"):
        notes.append("RGBA flattened on white")
    elif mode in ("LA", "La", "PA"):
        notes.append(f"{mode} (grayscale+alpha) flattened on white")
    if mode in ("P", "RGBA", "RGBa", "LA", "La", "PA"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        return _flatten_on_white(rgba[..., :3], rgba[..., 3])
    if mode == "L":
        notes.append("grayscale converted to RGB")
        return np.repeat(np.asarray(im, dtype=np.uint8)[..., None], 3, axis=2)
    if mode == "1":
        notes.append("1-bit image converted to RGB")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            g = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        else:
            g = _to8(np.clip(a, 0, 65535).astype(np.uint16))
        notes.append("16-bit grayscale reduced to 8-bit RGB")
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "CMYK":
        notes.append("CMYK JPEG converted to RGB (no colour management)")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    notes.append(f"{mode} image converted to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------------------- entry point

def decode_image(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> DecodedImage:
    """Decode an uploaded JPEG / PNG photo into oriented 8-bit RGB.

    Args:
        data: the file bytes as uploaded.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted ``width * height`` (checked from the header first).
        min_side: smallest accepted image side in pixels (after orientation).
    Returns:
        :class:`DecodedImage` with ``rgb`` ``uint8 [H, W, 3]`` of the displayed picture.
    Raises:
        InvalidInput: empty, too large, not JPEG/PNG, truncated or corrupt, too many pixels,
            too small; the message names the problem.
    """
    data = bytes(data)
    fmt, w, h, png_info = _check_head(data, max_bytes, max_pixels)
    if png_info is not None:
        _check_png(data, *png_info)
    else:
        _check_jpeg(data)

    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[fmt])
            if (im.width, im.height) != (w, h):
                raise InvalidInput(f"corrupt {fmt}: inconsistent header sizes")
            orientation = _exif_orientation(im, notes)
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"multi-frame {fmt}: first of {im.n_frames} frames used")
            # Pillow's truncation switch is process-global; refuse partial images regardless.
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: "
                                   "truncated uploads would be accepted; unset it")
            im.load()
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(f"image has too many pixels: {w}x{h} ({e})") from e
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise InvalidInput(f"truncated or corrupt {fmt}: {e}") from e

    if png_info is not None and png_info[2] == 16:
        rgb = _png16_to_rgb(data, png_info[3], notes)
    else:
        rgb = _pil_to_rgb(im, notes)
    im.close()
    if orientation != 1:
        rgb = apply_orientation(rgb, orientation)
        notes.append(f"EXIF orientation {orientation} applied "
                     f"({ORIENTATION_NAMES[orientation]})")
    hh, ww = rgb.shape[:2]
    if min(hh, ww) < min_side:
        raise InvalidInput(f"image too small: {ww}x{hh} pixels, each side must be at least "
                           f"{min_side} pixels")
    return DecodedImage(rgb=rgb, exif_orientation=orientation, format=fmt, notes=notes)
