"""Fitter core: per-stage time and peak memory per preset, device and batch size.

    python bench/fit.py [--presets fast,standard] [--device cpu|cuda|auto] [--batch 1,4,8]
                        [--threads 2] [--photo PATH] [--face-model default|synthetic]
                        [--texture-size 1024] [--json PATH]

The detector runs once per photo beforehand and is not timed. Peak memory: on CPU the peak
resident set (``resource.getrusage``, whole process, so it only grows) and the peak of
Python-level allocations during the fit (``tracemalloc``, excludes torch's allocator); on
GPU ``torch.cuda.max_memory_allocated``. Batches larger than 1 run on GPU only (the photo is
repeated). Prints a table with the command, date and machine; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as ffhquv_cli/__init__.py sets it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import header, preset_label, preset_overrides, table, write_json  # noqa: E402


def load_face(photo: str | None):
    if photo and photo.endswith(".npz"):  # an AlignedFace saved with save_npz (no dlib needed)
        from services.detector.types import AlignedFace

        return AlignedFace.load_npz(photo)
    from PIL import Image
    from skimage import data

    from services.detector.core import Detector

    if photo:
        raw = Path(photo).read_bytes()
    else:
        buf = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buf, "PNG")
        raw = buf.getvalue()
    return Detector().detect(raw).aligned


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="fast,standard")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes (GPU for > 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photo", default=None, help="photo or AlignedFace .npz (default: astronaut)")
    ap.add_argument("--face-model", default="default")
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", action="append", metavar="FIELD=VALUE",
                    help="change a preset field in every preset fitted (repeatable), e.g. "
                         "--set stage3_steps=50; rows name the change")
    ap.add_argument("--profile", default=None,
                    help="also profile one fit of the first preset (torch.profiler, a batch of "
                         "--profile-batch copies of the photo) and write the top operators to "
                         "this text file")
    ap.add_argument("--profile-batch", type=int, default=1,
                    help="photos in --profile's fit (default 1)")
    ap.add_argument("--cprofile", default=None,
                    help="also run --repeat batch-1 fits of the first preset under cProfile "
                         "timed by the process's CPU time (all threads, charged to the Python "
                         "function that was running) and write the top functions here: where "
                         "the host's CPU seconds go")
    ap.add_argument("--cprofile-first", default=None,
                    help="profile the process's first fit (the warm-up, first preset) by wall "
                         "clock and write the top functions here: where a cold start goes")
    args = ap.parse_args(argv)

    import torch

    from services.fitter.core import FitterCore
    from services.fitter.presets import get_preset

    torch.set_num_threads(args.threads)
    overrides = preset_overrides(args.set)
    # the profiles (--profile, --cprofile, --cprofile-first) fit the first preset, changed by --set
    first_name = args.presets.split(",")[0]
    first, first_label = (get_preset(first_name).with_overrides(**overrides),
                          preset_label(first_name, overrides))
    meta = header("fitter core: per-stage seconds and peak memory")
    face = load_face(args.photo)
    if args.face_model == "synthetic":
        from services.fitter.synthetic import build_synthetic_model

        core = FitterCore(model=build_synthetic_model(), device=args.device)
    else:
        core = FitterCore(args.face_model, device=args.device)
    gpu = core.device.type == "cuda"
    # warm-up: builds the UV lookups and (on GPU) the kernels
    if args.cprofile_first:  # where a new process's first fit spends its time (wall clock)
        first_fit_profile(core, face, first, args.texture_size, args.cprofile_first,
                          label=first_label)
    else:
        core.fit(face, preset="fast", texture_size=args.texture_size, want_intermediates=False)
    rows = []
    for name in args.presets.split(","):
        preset = get_preset(name).with_overrides(**overrides)
        for bs in [int(b) for b in args.batch.split(",")]:
            if bs > 1 and not gpu:
                continue
            for _ in range(args.repeat):
                if gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    host0 = torch.cuda.host_memory_stats()
                tracemalloc.start()
                t0 = time.perf_counter()
                outs = core.fit_batch([face] * bs, preset=preset, texture_size=args.texture_size,
                                      want_intermediates=False)
                if gpu:
                    torch.cuda.synchronize()
                wall = time.perf_counter() - t0
                _, py_peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                m = outs[0].metrics
                t = outs[0].report["timings_s"]
                row = {
                    "preset": preset_label(name, overrides), "device": str(core.device),
                    "batch": bs,
                    "stage1_s": t["stage1"], "stage2_s": t["stage2"], "stage3_s": t["stage3"],
                    "outputs_s": t["outputs"], "total_s": wall, "per_photo_s": wall / bs,
                    "images_per_s": bs / wall,
                    "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "py_peak_mb": py_peak / 2**20,
                    "lmk_err_iod": m["landmark_error_iod"], "psnr": m["psnr_masked"],
                }
                if gpu:
                    row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                    # pinned host buffers allocated / freed by this fit (cudaHostAlloc /
                    # cudaFreeHost, milliseconds each): the caching host allocator should reuse
                    host1 = torch.cuda.host_memory_stats()
                    for k in ("num_host_alloc", "num_host_free"):
                        row[k] = host1.get(k, 0) - host0.get(k, 0)
                rows.append(row)
    cols = ["preset", "device", "batch", "stage1_s", "stage2_s", "stage3_s", "outputs_s",
            "total_s", "per_photo_s", "images_per_s", "rss_peak_mb", "py_peak_mb",
            "lmk_err_iod", "psnr"] + (["gpu_peak_mb", "num_host_alloc", "num_host_free"]
                                      if gpu else [])
    table(rows, cols)
    write_json(args.json, meta, rows, face_model=core.face_model, threads=args.threads,
               texture_size=args.texture_size)
    if args.profile:
        profile_fit(core, face, first, args.texture_size, args.profile, args.profile_batch,
                    label=first_label)
    if args.cprofile:
        cpu_profile(core, face, first, args.texture_size, args.repeat, args.cprofile,
                    label=first_label)
    return 0


def cpu_profile(core, face, preset, texture_size: int, repeat: int, path: str,
                label: str | None = None) -> None:
    """``repeat`` fits under cProfile with ``time.process_time`` as its clock: CPU seconds of
    every thread of the process (torch's and BLAS's pools, CUDA's host threads, a spinning
    synchronise) charged to the Python function running when they were spent (``preset`` and
    ``label`` as :func:`profile_fit`'s)."""
    import cProfile

    import torch

    cuda = core.device.type == "cuda"
    pr = cProfile.Profile(time.process_time)
    c0, t0 = time.process_time(), time.perf_counter()
    pr.enable()
    for _ in range(repeat):
        core.fit(face, preset=preset, texture_size=texture_size, want_intermediates=False)
        if cuda:
            torch.cuda.synchronize()
    pr.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    write_stats(pr, f"{repeat} {label or preset} fits on {core.device}, {torch.get_num_threads()} "
                f"threads: {cpu / repeat:.3f} CPU s and {wall / repeat:.3f} wall s a photo",
                path, (("tottime", 45), ("cumulative", 70)))


def first_fit_profile(core, face, preset, texture_size: int, path: str,
                      label: str | None = None) -> None:
    """The process's first fit (the warm-up) under cProfile by wall clock: where a cold
    start goes (imports on first use, kernel loading, atlas building; ``preset`` and
    ``label`` as :func:`profile_fit`'s)."""
    import cProfile

    import torch

    pr = cProfile.Profile(time.perf_counter)
    t0 = time.perf_counter()
    pr.enable()
    core.fit(face, preset=preset, texture_size=texture_size, want_intermediates=False)
    if core.device.type == "cuda":
        torch.cuda.synchronize()
    pr.disable()
    write_stats(pr, f"first {label or preset} fit in a new process on {core.device}: "
                f"{time.perf_counter() - t0:.3f} s wall", path,
                (("cumulative", 80), ("tottime", 30)))


def write_stats(pr, header: str, path: str, sorts: tuple[tuple[str, int], ...]) -> None:
    """``header`` and the top functions of ``pr`` by each ``(key, rows)`` of ``sorts`` to
    the text file ``path``, the raw stats beside it (``.prof``, for pstats' callers /
    callees)."""
    import pstats

    buf = io.StringIO()
    buf.write(header + "\n\n")
    st = pstats.Stats(pr, stream=buf)
    for key, rows in sorts:
        st.sort_stats(key).print_stats(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(buf.getvalue())
    pr.dump_stats(str(Path(path).with_suffix(".prof")))
    print(header + f"\nwrote {path} and its .prof")


def profile_fit(core, face, preset, texture_size: int, path: str,
                batch: int = 1, label: str | None = None) -> None:
    """One fit of ``batch`` copies of ``face`` under torch.profiler (``preset``: a name or a
    :class:`~services.fitter.presets.Preset`, ``label`` its name in the report): host vs
    device time, kernel launches, top operators."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                     if core.device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        t0 = time.perf_counter()
        out = core.fit_batch([face] * batch, preset=preset, texture_size=texture_size,
                             want_intermediates=False)[0]
        if core.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ka = prof.key_averages()
    launches = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                     "cudaLaunchKernelExC"))
    dev_us = sum(getattr(e, "self_device_time_total", 0) for e in ka)
    lines = [f"profile of one {label or preset} fit of {batch} photo(s) on {core.device}: wall "
             f"{wall:.3f} s (profiler "
             f"overhead included), timings {out.report['timings_s']}",
             f"kernel launches {launches}, graph replays "
             f"{sum(e.count for e in ka if e.key == 'cudaGraphLaunch')}, device time "
             f"{dev_us / 1e6:.3f} s", "",
             ka.table(sort_by="self_cpu_time_total", row_limit=45, max_name_column_width=60)]
    if core.device.type == "cuda":
        lines += ["", ka.table(sort_by="self_device_time_total", row_limit=25,
                               max_name_column_width=60)]
        # the operators by input shape (which matmul a slow GEMM kernel belongs to)
        by_shape = prof.key_averages(group_by_input_shape=True)
        lines += ["", "by input shape (CUDA time of the operator and its kernels):",
                  by_shape.table(sort_by="device_time_total", row_limit=30,
                                 max_name_column_width=40, max_shapes_column_width=80)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))
    # the timeline (stage ranges, kernels) for bench/trace_stages.py beside the table (torch
    # gzips a path ending in .gz)
    trace = Path(path).with_suffix(".trace.json.gz")
    prof.export_chrome_trace(str(trace))
    print("\n".join(lines[:2]) + f"\nwrote {path} and {trace}")


if __name__ == "__main__":
    raise SystemExit(main())
