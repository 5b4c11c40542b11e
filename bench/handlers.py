"""The CPU services' own time a request: the eyeball and exporter handlers on the requests of
one real photo, as the gateway sends them.

    python bench/handlers.py --photo PHOTO [--preset fast] [--repeat 8] [--threads 1]
                             [--previews] [--cprofile DIR] [--json PATH]

One in-process ``ffhquv fit`` of ``--photo`` (detection, fit, eyeballs, export: the local
backends) records the ``PlaceRequest`` and the ``ExportRequest`` the orchestrator makes (the
gateway's formats: the defaults, with the fitter's intermediates as extra files). Then each
servicer's ``handle`` (the request as it arrives: meshes from the message, the textures' PNG
decoded, every file made, the response message built) runs ``--repeat`` times after two
warm-ups, in this process; the rows are the medians of the process's CPU seconds and the wall
seconds a request, and of the response's ``SerializeToString`` (what gRPC adds on the way out).
The exporter runs without its previews unless ``--previews`` (they render on this machine's
rasteriser: the CPU one here, the GPU one in ``serve all --device cuda``). ``--cprofile DIR``
writes each handler's cProfile (``eyeball.prof``, ``exporter.prof`` and their top-30 text).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402


def capture(photo: Path, preset: str) -> tuple[bytes, bytes]:
    """The serialised ``PlaceRequest`` and ``ExportRequest`` of one local fit of ``photo``."""
    import gateway.backends as gb
    from ffhquv_cli.main import main

    seen: dict[str, bytes] = {}
    place, export = gb.LocalBackends.place_eyeballs, gb.LocalBackends.export

    async def place_rec(self, req, timeout):
        seen["place"] = req.SerializeToString()
        return await place(self, req, timeout)

    async def export_rec(self, req, timeout):
        seen["export"] = req.SerializeToString()
        return await export(self, req, timeout)

    gb.LocalBackends.place_eyeballs, gb.LocalBackends.export = place_rec, export_rec
    try:
        with tempfile.TemporaryDirectory() as out:
            rc = main(["fit", str(photo), "-o", out, "--preset", preset, "--workers", "1"])
    finally:
        gb.LocalBackends.place_eyeballs, gb.LocalBackends.export = place, export
    if rc != 0 or set(seen) != {"place", "export"}:
        raise SystemExit(f"bench/handlers.py: the fit of {photo} failed (rc {rc})")
    return seen["place"], seen["export"]


def timed(fn, repeat: int) -> dict[str, float]:
    for _ in range(2):
        fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"cpu_ms": round(statistics.median(cpu) * 1e3, 1),
            "wall_ms": round(statistics.median(wall) * 1e3, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", required=True, type=Path)
    ap.add_argument("--preset", default="fast", help="of the fit that makes the requests")
    ap.add_argument("--repeat", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch's threads")
    ap.add_argument("--previews", action="store_true")
    ap.add_argument("--cprofile", type=Path)
    ap.add_argument("--json")
    args = ap.parse_args()
    meta = header("handlers: the eyeball and exporter services' time a request")
    import torch

    torch.set_num_threads(args.threads)
    place_b, export_b = capture(args.photo, args.preset)

    from ffhquv.pb import exporter_pb2, eyeball_pb2
    from services.exporter.servicer import ExporterServicer
    from services.eyeball.servicer import EyeballServicer

    place = eyeball_pb2.PlaceRequest.FromString(place_b)
    export = exporter_pb2.ExportRequest.FromString(export_b)
    if not args.previews:
        from ffhquv import vocab

        by_name = {v: k for k, v in vocab.format_by_proto().items()}
        del export.formats[:]
        export.formats.extend(by_name[f] for f in sorted(vocab.DEFAULT_EXPORT_FORMATS)
                              if f not in ("preview", "turntable", "blend"))
    eye, exp = EyeballServicer(), ExporterServicer("cpu")
    rows = []
    for name, servicer, req in (("eyeball", eye, place), ("exporter", exp, export)):
        row = {"handler": name, "request_mb": round(len(req.SerializeToString()) / 2**20, 2),
               **timed(lambda s=servicer, r=req: s.handle(r), args.repeat)}
        resp = servicer.handle(req)
        row["response_mb"] = round(len(resp.SerializeToString()) / 2**20, 2)
        row["serialize_ms"] = timed(resp.SerializeToString, args.repeat)["wall_ms"]
        rows.append(row)
        if args.cprofile:
            args.cprofile.mkdir(parents=True, exist_ok=True)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.repeat):
                servicer.handle(req)
            prof.disable()
            prof.dump_stats(args.cprofile / f"{name}.prof")
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
            (args.cprofile / f"{name}.txt").write_text(text.getvalue())
    table(rows, ["handler", "request_mb", "cpu_ms", "wall_ms", "response_mb", "serialize_ms"])
    write_json(args.json, meta, rows, photo=str(args.photo), preset=args.preset,
               previews=args.previews, formats=sorted(export.formats))


if __name__ == "__main__":
    main()
