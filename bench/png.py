"""PNG encoders on a real texture: time and size per encoder, row filter and zlib level.

    python bench/png.py --image TEXTURE.png [--size 1024] [--repeat 7] [--json out.json]

Compares Pillow and OpenCV's ``cv2.imencode`` (what :func:`ffhquv.imaging.png_bytes` uses) at
several levels on the same ``uint8 [S, S, 3]`` image, OpenCV with libpng's adaptive choice of
row filter (it tries every filter on every row) and with one filter for all rows
(``IMWRITE_PNG_FILTER``: up, sub); the median of ``--repeat`` encodes after one warm-up, and
the size of the file. Every encode is checked lossless.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402


def _pillow(img: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _opencv(img: np.ndarray, level: int, row_filter: int | None = None) -> bytes:
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if row_filter is not None:
        params += [cv2.IMWRITE_PNG_FILTER, row_filter]
    ok, enc = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    assert ok
    return enc.tobytes()


def _encoders() -> list[tuple[str, object]]:
    out = [("pillow", _pillow), ("opencv", _opencv)]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        out += [("opencv, filter up", lambda im, lv: _opencv(im, lv, cv2.IMWRITE_PNG_FILTER_UP)),
                ("opencv, filter sub",
                 lambda im, lv: _opencv(im, lv, cv2.IMWRITE_PNG_FILTER_SUB))]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", required=True, help="a real UV texture (any size; resized)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--levels", default="0,1,2,6")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    meta = header(f"png: {Path(args.image).name} at {args.size}")
    img = np.asarray(Image.open(args.image).convert("RGB"))
    img = np.ascontiguousarray(cv2.resize(img, (args.size, args.size),
                                          interpolation=cv2.INTER_AREA))
    rows = []
    for name, enc in _encoders():
        for level in (int(x) for x in args.levels.split(",")):
            data = enc(img, level)
            back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            assert np.array_equal(back, img), f"{name} {level} is not lossless"
            ts = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                enc(img, level)
                ts.append(time.perf_counter() - t)
            rows.append({"encoder": name, "level": level, "ms": 1000 * float(np.median(ts)),
                         "mb": len(data) / 1e6})
    table(rows, ["encoder", "level", "ms", "mb"])
    write_json(args.json, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
