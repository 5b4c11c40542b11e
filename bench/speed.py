"""End-to-end speed: per-stage seconds, peak memory and images per second.

    python bench/speed.py [--device cpu|cuda] [--presets fast,standard,best] [--batch 1,4,8]
                          [--faces DIR | PHOTO_OR_DIR... [--astronaut]] [--repeat 1]
                          [--threads 2] [--face-model-file PATH] [--json PATH]
    python bench/speed.py --save-faces DIR [PHOTO_OR_DIR...] [--astronaut]

Stages, per photo: detect (dlib HOG + landmarks + alignment + masks, 1024 hi-res crop),
fit stages 1 / 2 / 3 and the fitter's outputs (``FitterCore`` timings), eyeballs
(``place_eyeballs`` with the hi-res landmarks, as the orchestrator calls it) and export
(``services.exporter.core.export``, default formats: OBJ, GLB, preview, zip). Batches larger than
1 run on GPU only, through ``FitterCore.fit_batch`` (the photos are cycled to fill the batch);
eyeballs and export then run once per photo of the batch, as the gateway would.

A warm-up (one ``fast`` pipeline run per batch size, plus the UV lookup tables of every preset)
is excluded from the numbers. Times are medians over the photos (batch 1) or over ``--repeat``
runs (larger batches). Memory: ``rss_peak_mb`` is the highest resident set sampled every 5 ms
while the row ran (torch's allocations included), ``maxrss_mb`` the process peak so far
(``resource.getrusage``); on GPU ``gpu_peak_mb`` is ``torch.cuda.max_memory_allocated`` over
the row.

Machines without dlib models or the anny package (the GPU machine): save the aligned faces
here with ``--save-faces DIR`` (one ``.npz`` of :class:`AlignedFace` arrays per photo; never
commit FFHQ-derived ones) and pass ``--faces DIR`` there; the detect column is then empty. The
default face model is read from its cache file (``.cache/facemodels/default-v1.npz`` or
``--face-model-file``), so anny is not needed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, loadavg, table, write_json  # noqa: E402

FACE_FIELDS = ("crop", "crop_landmarks", "image_to_crop", "crop_hires", "skin_mask",
               "parse_mask")


# ------------------------------------------------------------------------------------- faces
def save_face(path: Path, face) -> None:
    """Write an :class:`services.detector.types.AlignedFace` as ``.npz`` (its numpy arrays and
    ``parse_source``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, parse_source=np.array(face.parse_source),
                        **{k: np.asarray(getattr(face, k)) for k in FACE_FIELDS})


def load_face(path: Path):
    """Read a face written by :func:`save_face`.

    Raises:
        InvalidInput: a field is missing.
    """
    from ffhquv.errors import InvalidInput
    from services.detector.types import AlignedFace

    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in FACE_FIELDS if k not in z.files]
        if missing:
            raise InvalidInput(f"{path}: not an AlignedFace .npz (missing {missing})")
        kw = {k: z[k] for k in FACE_FIELDS}
        src = str(z["parse_source"]) if "parse_source" in z.files else "landmarks"
    return AlignedFace(parse_source=src, **kw)


def load_faces(folder: Path) -> list[tuple[str, object]]:
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise SystemExit(f"bench/speed.py: no .npz faces in {folder}")
    return [(f.stem, load_face(f)) for f in files]


def photo_items(inputs: list[str], astronaut: bool) -> list[tuple[str, bytes]]:
    """Photos from files / folders; with none given, the FFHQ-UV example photos (when the
    reference folder exists) and skimage's astronaut."""
    from bench.quality import collect

    if inputs or astronaut:
        return collect(inputs, astronaut)
    from ffhquv.config import reference_data_dir

    ref = reference_data_dir()
    return collect([str(ref)] if ref.is_dir() else [], True)


# ------------------------------------------------------------------------------------ memory
class PeakRSS:
    """Context manager sampling the resident set size (``/proc/self/statm``) every ``dt``
    seconds; ``peak_mb`` is the highest value seen (the start value without /proc)."""

    def __init__(self, dt: float = 0.005):
        self.dt = dt
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page / 2**20
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        while not self._stop.wait(self.dt):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __enter__(self) -> PeakRSS:
        self.peak_mb = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak_mb = max(self.peak_mb, self._rss())


# ---------------------------------------------------------------------------------- pipeline
class Pipeline:
    """The service cores of one process: fitter (on ``device``), eyeballs, exporter."""

    def __init__(self, device: str, threads: int, face_model_file: str | None,
                 texture_size: int):
        import torch

        from services.fitter.core import FitterCore

        model = None
        if face_model_file:
            from services.fitter.facemodel.base import FaceModel

            model = FaceModel.load(Path(face_model_file))
        self.core = FitterCore("default", device=device, model=model, threads=threads)
        self.texture_size = texture_size
        self.gpu = self.core.device.type == "cuda"
        self.torch = torch

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()

    def fit(self, faces: list, preset: str) -> list:
        return self.core.fit_batch(faces, preset=preset, texture_size=self.texture_size,
                                   want_intermediates=False)

    @staticmethod
    def eyeballs(face, out):
        from ffhquv.aligned import crop_to_hires
        from services.eyeball.core import place_eyeballs

        return place_eyeballs(out.mesh_neutral, out.eye_ring_left, out.eye_ring_right,
                              photo=face.crop_hires,
                              photo_landmarks=crop_to_hires(face.crop_landmarks,
                                                            face.crop_hires.shape[0]))

    @staticmethod
    def export(name: str, out, eyes):
        from services.exporter.core import export

        return export(name, out.mesh_neutral, out.mesh_expression, out.uv_texture, eyes.left,
                      eyes.right, eyes.texture,
                      extra_files={"report.json": out.report_json.encode()},
                      hair=out.hair)

    def run(self, named: list[tuple[str, object]], preset: str) -> dict:
        """One batch through fit -> eyeballs -> export; seconds per stage for the batch."""
        faces = [f for _, f in named]
        self.sync()
        t0 = time.perf_counter()
        outs = self.fit(faces, preset)
        self.sync()
        t_fit = time.perf_counter() - t0
        t = time.perf_counter()
        eyes = [self.eyeballs(f, o) for f, o in zip(faces, outs, strict=True)]
        t_eye = time.perf_counter() - t
        t = time.perf_counter()
        for (name, _), o, e in zip(named, outs, eyes, strict=True):
            self.export(name, o, e)
        t_exp = time.perf_counter() - t
        tm = outs[0].report["timings_s"]
        return {"stage1_s": tm["stage1"], "stage2_s": tm["stage2"], "stage3_s": tm["stage3"],
                "outputs_s": tm["outputs"], "fit_s": t_fit, "eyeballs_s": t_eye,
                "export_s": t_exp}


def time_detect(items: list[tuple[str, bytes]], repeat: int) -> tuple[list, dict[str, float]]:
    """Detect each photo (after one warm-up call); ``([(name, AlignedFace)], {name: median s})``."""
    from services.detector.core import Detector

    det = Detector()
    faces, secs = [], {}
    for name, data in items:
        res = det.detect(data, unwrap_size=1024)  # warm-up
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            det.detect(data, unwrap_size=1024)
            ts.append(time.perf_counter() - t0)
        faces.append((Path(name).stem, res.aligned))
        if ts:
            secs[name] = statistics.median(ts)
    return faces, secs


def warm_up(pipe: Pipeline, faces: list, presets: list[str], batches: list[int]) -> None:
    from services.fitter.presets import get_preset
    from services.fitter.texture import uv_maps

    for p in presets:
        uv_maps(pipe.core.model, get_preset(p).tex_opt_size, pipe.core.backend)
    uv_maps(pipe.core.model, pipe.texture_size, pipe.core.backend)
    for bs in sorted(set(batches)):
        pipe.run([faces[i % len(faces)] for i in range(bs)], "fast")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", help="photos or folders (default: the FFHQ-UV "
                    "example photos when present, and the astronaut)")
    ap.add_argument("--astronaut", action="store_true", help="add skimage.data.astronaut()")
    ap.add_argument("--faces", default=None, help="folder of AlignedFace .npz (no detector)")
    ap.add_argument("--save-faces", default=None, help="detect the photos, save .npz, exit")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", default="fast,standard")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes (GPU for > 1)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per batch size > 1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--face-model-file", default=None,
                    help="face model .npz (default: the cached default face model)")
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.save_faces:
        out = Path(args.save_faces)
        faces, _ = time_detect(photo_items(args.inputs, args.astronaut), 0)
        for name, f in faces:
            save_face(out / f"{name}.npz", f)
            print(f"{out / (name + '.npz')}: crop {f.crop.shape}, hires {f.crop_hires.shape}, "
                  f"parse {f.parse_source}")
        return 0

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    batches = [int(b) for b in args.batch.split(",")]
    meta = header(f"speed: per-stage seconds, peak memory, images/s (device {args.device})")
    detect_s: dict[str, float] = {}
    if args.faces:
        faces = load_faces(Path(args.faces))
    else:
        faces, detect_s = time_detect(photo_items(args.inputs, args.astronaut), 1)
    print(f"# {len(faces)} face(s): {', '.join(n for n, _ in faces)}")
    pipe = Pipeline(args.device, args.threads, args.face_model_file, args.texture_size)
    if any(b > 1 for b in batches) and not pipe.gpu:
        print("# batch sizes > 1 are measured on GPU only; skipped here")
    batches = [b for b in batches if b == 1 or pipe.gpu]
    t = time.perf_counter()
    warm_up(pipe, faces, presets, batches)
    print(f"# warm-up {time.perf_counter() - t:.1f} s (excluded)", flush=True)
    det = statistics.median(detect_s.values()) if detect_s else None

    rows = []
    for preset in presets:
        for bs in batches:
            if pipe.gpu:
                torch.cuda.reset_peak_memory_stats()
            runs = []
            with PeakRSS() as mem:
                if bs == 1:
                    for nf in faces:
                        runs.append(pipe.run([nf], preset))
                else:
                    for r in range(args.repeat):
                        runs.append(pipe.run([faces[(r * bs + i) % len(faces)]
                                              for i in range(bs)], preset))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            total = med["fit_s"] + med["eyeballs_s"] + med["export_s"] + (det or 0.0) * bs
            row = {"preset": preset, "device": str(pipe.core.device), "batch": bs,
                   "runs": len(runs), "detect_s": det, **med, "total_s": total,
                   "per_image_s": total / bs, "images_per_s": bs / total,
                   "fit_images_per_s": bs / med["fit_s"], "rss_peak_mb": mem.peak_mb,
                   "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            if pipe.gpu:
                row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
            print(f"# {preset} batch {bs}: {total:.2f} s", flush=True)
    cols = ["preset", "device", "batch", "runs", "detect_s", "stage1_s", "stage2_s",
            "stage3_s", "outputs_s", "eyeballs_s", "export_s", "total_s", "per_image_s",
            "images_per_s", "fit_images_per_s", "rss_peak_mb"] + (
        ["gpu_peak_mb"] if pipe.gpu else [])
    table(rows, cols)
    print("# stage*/outputs/fit/eyeballs/export: seconds per batch (median over runs); "
          "detect_s: per photo, CPU; total = detect x batch + fit + eyeballs + export")
    meta["loadavg_end"] = loadavg()
    print(f"# load average at the end: {', '.join(map(str, meta['loadavg_end']))}")
    write_json(args.json, meta, rows, faces=[n for n, _ in faces], detect_s_per_photo=detect_s,
               threads=args.threads, texture_size=args.texture_size,
               face_model=pipe.core.face_model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
