"""Fit one photo in process and keep its outputs, or compare two such snapshots.

    python bench/fit_snapshot.py fit PHOTO OUT.npz [--preset standard] [--device cpu]
    python bench/fit_snapshot.py diff A.npz B.npz

``fit`` runs detect (1024 hi-res crop) -> fit on the given device and writes the texture
(``uint8 [S, S, 3]``), the neutral and expression mesh vertices, the coefficients and the
aligned face's 224 landmarks to ``OUT.npz``. ``diff`` prints max / mean absolute differences
per array (texture in 1/255; vertices in model units; coefficients in their own units), to
measure what a code change does to one fixed photo's outputs (e.g. at ``main`` and on a branch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def fit(photo: Path, out: Path, preset: str, device: str, threads: int) -> None:
    from services.detector.core import Detector
    from services.fitter.core import FitterCore

    det = Detector().detect(photo.read_bytes(), unwrap_size=1024)
    res = FitterCore("default", device=device, threads=threads).fit(
        det.aligned, preset=preset, texture_size=1024, want_intermediates=False)
    arrays = {"texture": res.uv_texture, "v_neutral": res.mesh_neutral.vertices,
              "v_expression": res.mesh_expression.vertices,
              "crop_landmarks": det.aligned.crop_landmarks}
    arrays.update({f"coef_{k}": np.asarray(v) for k, v in res.coefficients.items()})
    arrays.update({f"metric_{k}": np.float64(v) for k, v in res.metrics.items()})
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}")


def diff(a_path: Path, b_path: Path) -> None:
    a, b = np.load(a_path), np.load(b_path)
    print(f"{'array':28s} {'shape':>16s} {'max |d|':>12s} {'mean |d|':>12s}")
    for k in sorted(set(a.files) & set(b.files)):
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        if x.shape != y.shape:
            print(f"{k:28s} shape {x.shape} vs {y.shape}")
            continue
        d = np.abs(x - y)
        if k.startswith("metric_"):
            print(f"{k:28s} {'':>16s} {float(x):12.6g} -> {float(y):.6g}")
            continue
        print(f"{k:28s} {str(x.shape):>16s} {d.max():12.6g} {d.mean():12.6g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("photo", type=Path)
    f.add_argument("out", type=Path)
    f.add_argument("--preset", default="standard")
    f.add_argument("--device", default="cpu")
    f.add_argument("--threads", type=int, default=2)
    d = sub.add_parser("diff")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "fit":
        fit(args.photo, args.out, args.preset, args.device, args.threads)
    else:
        diff(args.a, args.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
