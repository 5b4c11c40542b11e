"""Where one photo's time goes, function by function: the pipeline's cores in one process, one
photo at a time, with named functions timed by wall clock (inclusive, summed over a photo).

    python bench/split.py --photo PHOTO [--device cuda] [--preset standard] [--repeat 4]
                          [--late-images] [--json PATH]

Runs detect -> fit (batch 1, intermediates on, as the gateway asks) -> eyeballs -> export
(default formats) ``--repeat`` times after one warm-up, as ``bench/speed.py``'s pipeline does,
and prints for each timed function its median seconds a photo and how many calls. Functions that
run on worker threads (the outputs' parts, the hair layer, the previews) overlap others: their
sums are work, not the photo's wall clock (the stages' own rows are). The timed names are
:data:`TIMED`: module attributes patched where they are looked up.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402

#: (module, attribute): a function, or ``Class.method``
TIMED = [
    ("services.detector.core", "Detector.detect"),
    ("services.detector.core", "Detector.find_faces"),
    ("services.fitter.core", "FitterCore._stage1"),
    ("services.fitter.core", "DefaultStages.stage2"),
    ("services.fitter.core", "DefaultStages._head_masks"),
    ("services.fitter.core", "head_masks"),
    ("services.fitter.texture.masks", "_head_masks_one"),
    ("services.fitter.texture.source", "unwrap"),
    ("services.fitter.texture.source", "complete_texture"),
    ("services.fitter.texture.source", "hair_layer"),
    ("services.fitter.texture.source", "beard_layer"),
    ("services.fitter.texture.source", "to_host"),
    ("services.fitter.core", "DefaultStages.stage3"),
    ("services.fitter.core", "fit_joint"),
    ("services.fitter.core", "FitterCore._outputs"),
    ("services.fitter.core", "FitterCore._stage1_render"),
    ("services.fitter.core", "FitterCore._intermediate_files"),
    ("services.fitter.core", "FitterCore._intermediate_images"),
    ("services.fitter.core", "hair_mesh"),
    ("services.fitter.core", "_metrics"),
    ("services.fitter.core", "make_preview"),
    ("services.fitter.servicer", "result_to_proto"),
    ("services.eyeball.core", "place_eyeballs"),
    ("services.eyeball.core", "fit_eye"),
    ("services.eyeball.core", "eye_colours"),
    ("services.eyeball.core", "eyeball_texture"),
    ("services.exporter.core", "export"),
    ("services.exporter.core", "_write_assets"),
    ("services.exporter.core", "_preview_files"),
    ("services.exporter.core", "glb_bytes"),
    ("services.exporter.core", "obj_text"),
    ("services.exporter.core", "zip_bytes"),
    ("services.exporter.preview", "render_views"),
    ("services.exporter.core", "png_bytes"),
]

_times: dict[str, list[float]] = collections.defaultdict(list)
_lock = threading.Lock()


def _wrap(name: str, fn):
    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            with _lock:
                _times[name].append(time.perf_counter() - t)
    timed.__wrapped__ = fn
    return timed


def patch() -> list[str]:
    """Wrap every :data:`TIMED` function it finds; returns the names not found."""
    missing = []
    for mod_name, attr in TIMED:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            missing.append(f"{mod_name}.{attr}")
            continue
        owner, _, leaf = attr.rpartition(".")
        target = getattr(mod, owner) if owner else mod
        fn = getattr(target, leaf, None)
        if fn is None:
            missing.append(f"{mod_name}.{attr}")
            continue
        label = f"{mod_name.removeprefix('services.')}.{attr}"
        wrapped = _wrap(label, fn)
        setattr(target, leaf, staticmethod(wrapped) if owner and isinstance(
            target.__dict__.get(leaf), staticmethod) else wrapped)
    return missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", required=True,
                    help="a photo, or an AlignedFace .npz (AlignedFace.save_npz: detection "
                         "skipped, no dlib needed)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--late-images", action="store_true",
                    help="the stage-2 intermediate images encoded in the outputs step, after "
                         "stage 3, even on a GPU (as before the fit made them beside stage 3)")
    ap.add_argument("--json")
    args = ap.parse_args()
    meta = header("split: one photo's time by function")
    missing = patch()
    if missing:
        print("# not found (not timed): " + ", ".join(missing))

    import torch

    import services.fitter.core as fitter_core
    from ffhquv.aligned import AlignedFace, crop_to_hires
    from services.exporter.core import export
    from services.eyeball.core import place_eyeballs
    from services.fitter.core import FitterCore
    from services.fitter.servicer import result_to_proto

    if args.late_images:
        fitter_core.EARLY_IMAGES_DEVICES = frozenset()
    saved = args.photo.endswith(".npz")
    if not saved:
        from services.detector.core import Detector

    photo = None if saved else Path(args.photo).read_bytes()
    det = None if saved else Detector()
    saved_face = AlignedFace.load_npz(args.photo) if saved else None
    core = FitterCore("default", device=args.device)
    gpu = core.device.type == "cuda"
    preview_device = "cuda" if gpu else "cpu"

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        face = saved_face if det is None else det.detect(photo).aligned
        t1 = time.perf_counter()
        out = core.fit_batch([face], preset=args.preset, texture_size=1024,
                             want_intermediates=True)[0]
        result_to_proto(out, "split", True)
        if gpu:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        eyes = place_eyeballs(out.mesh_neutral, out.eye_ring_left, out.eye_ring_right,
                              photo=face.crop_hires,
                              photo_landmarks=crop_to_hires(face.crop_landmarks,
                                                            face.crop_hires.shape[0]))
        t3 = time.perf_counter()
        export("split", out.mesh_neutral, out.mesh_expression, out.uv_texture, eyes.left,
               eyes.right, eyes.texture, extra_files={"report.json": out.report_json.encode()},
               head_texture_png=out.uv_texture_png, hair=out.hair,
               preview_device=preview_device)
        t4 = time.perf_counter()
        tm = out.report["timings_s"]
        return {"wall detect": t1 - t0, "wall fit": t2 - t1, "wall eyeballs": t3 - t2,
                "wall export": t4 - t3, **{f"fit {k}": float(tm[k]) for k in
                                            ("stage1", "stage2", "stage3", "outputs")}}

    once()  # warm-up: kernels, caches, graphs
    walls: dict[str, list[float]] = collections.defaultdict(list)
    per_fn: dict[str, list[float]] = collections.defaultdict(list)
    calls: dict[str, int] = {}
    for _ in range(args.repeat):
        _times.clear()
        for k, v in once().items():
            walls[k].append(v)
        for k, v in _times.items():
            per_fn[k].append(sum(v))
            calls[k] = len(v)
    rows = [{"what": k, "seconds": round(statistics.median(v), 4), "calls": 1}
            for k, v in walls.items()]
    rows += [{"what": k, "seconds": round(statistics.median(v), 4), "calls": calls[k]}
             for k, v in per_fn.items()]
    table(rows, ["what", "seconds", "calls"])
    write_json(args.json, meta, rows, photo=args.photo, device=args.device,
               preset=args.preset, late_images=args.late_images)


if __name__ == "__main__":
    main()
