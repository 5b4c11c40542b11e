"""Memory per request: is the growth seen in a soak a leak or a warm-up plateau?

    python bench/memory.py --requests 12 --preset fast --texture-size 256 [--json out.json]

The four services run as child processes (``ffhquv serve NAME``), the gateway in this process
with :mod:`tracemalloc` on; requests are sent one after another (each with a fresh id, every
artifact downloaded when ``--download``). After each request: this process's resident memory
(the gateway's RSS as in ``serve all``), the Python heap traced by tracemalloc, the number of
live Python objects, and each child's RSS. At the end: the Python allocations that grew most
between the first request after warm-up and the last, by source line.

A leak shows as a Python heap (``traced_mb``) that keeps growing per request; RSS that grows
while the traced heap stays flat is the C allocator keeping freed memory (arenas, gRPC
buffers), which levels off. (Protobuf messages live in upb arenas that tracemalloc does not
see; a message kept alive shows in RSS only.)

``--replay`` measures the gateway alone, hundreds of requests in minutes: the four backends are
one replay server in a child process (``ffhquv`` servicer interfaces, real gRPC on loopback)
answering every call with messages of a real request's sizes (a 1024 x 1024 aligned crop, a
head mesh of 20k vertices with morph targets, PNGs, about 6 MB of exported files), so the
gateway does all its real work (admission, orchestration, backend calls, storage) except
waiting for a fit.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402
from bench.load import PRESETS, photo_bytes  # noqa: E402
from bench.soak import stack_rss  # noqa: E402
from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc  # noqa: E402
from ffhquv.server import channel  # noqa: E402
from ffhquv_cli.commands import spawn_service  # noqa: E402
from gateway.backends import GrpcBackends  # noqa: E402
from gateway.orchestrator import Orchestrator  # noqa: E402
from gateway.server import GatewayServer  # noqa: E402
from gateway.storage import LocalArtifactStore  # noqa: E402

SERVICES = ("detector", "fitter", "eyeball", "exporter")


def rss_mb(pid: int | None = None) -> float:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _replay_messages(texture: int) -> dict:
    """Backend answers of a real request's sizes (random bytes where the gateway does not look
    inside: PNGs, files)."""
    import numpy as np

    from ffhquv.pb import detector_pb2, exporter_pb2, eyeball_pb2, fitter_pb2

    rng = np.random.default_rng(0)

    def blob(n: int) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    def raw(side: int, ch: int = 3) -> common_pb2.RawImage:
        return common_pb2.RawImage(width=side, height=side, channels=ch,
                                   pixels=blob(side * side * ch))

    def mesh(nv: int = 20_000, nf: int = 40_000, targets: int = 8) -> common_pb2.Mesh:
        m = common_pb2.Mesh(vertices=rng.random(nv * 3).tolist(),
                            faces=rng.integers(0, nv, nf * 3).tolist(),
                            uvs=rng.random(nv * 2).tolist(),
                            uv_faces=rng.integers(0, nv, nf * 3).tolist())
        for i in range(targets):
            m.morph_targets.add(name=f"t{i}", indices=rng.integers(0, nv, 4000).tolist(),
                                offsets=rng.random(12000).tolist())
        return m

    lm = common_pb2.Landmarks(points=[common_pb2.Point2(x=float(i), y=float(i))
                                      for i in range(68)])
    aligned = detector_pb2.AlignedFace(crop=raw(224), crop_landmarks=lm, crop_hires=raw(1024),
                                       skin_mask=raw(224, 1), parse_mask=raw(224, 1))
    det = detector_pb2.DetectResponse(faces=[detector_pb2.Face(landmarks=lm)], selected_index=0,
                                      aligned=aligned, visualization_png=blob(300_000))
    head = mesh()
    result = fitter_pb2.FitResult(
        mesh_neutral=head, mesh_expression=head, uv_texture_png=blob(texture * texture * 2),
        report_json="{}", preview_png=blob(200_000), left_eye_ring=list(range(16)),
        right_eye_ring=list(range(16)), metres_per_unit=0.1,
        files=[common_pb2.NamedFile(name=f"stage{i}.png", media_type="image/png",
                                    data=blob(texture * texture * 2)) for i in range(4)])
    fit = [fitter_pb2.FitEvent(progress=common_pb2.Progress(stage=common_pb2.STAGE_FIT_STAGE1,
                                                            fraction=f / 10))
           for f in range(10)] + [fitter_pb2.FitEvent(result=result)]
    eye = mesh(1000, 2000, 0)
    place = eyeball_pb2.PlaceResponse(left=eyeball_pb2.EyeFit(mesh=eye),
                                      right=eyeball_pb2.EyeFit(mesh=eye),
                                      texture_png=blob(400_000), iris_source="photo")
    export = exporter_pb2.ExportResponse(files=[
        common_pb2.NamedFile(name=n, media_type="application/octet-stream", data=blob(size))
        for n, size in (("head.obj", 2_000_000), ("head.glb", 1_500_000),
                        ("head.zip", 2_500_000), ("uv.png", texture * texture * 2))])
    return {"detect": det, "fit": fit, "place": place, "export": export}


def serve_replay(port_file: str, texture: int) -> None:
    """The four backends answering from :func:`_replay_messages` (child process)."""
    import grpc  # noqa: F401

    from ffhquv.pb import (
        detector_pb2_grpc,
        exporter_pb2_grpc,
        eyeball_pb2_grpc,
        fitter_pb2,
        fitter_pb2_grpc,
    )
    from ffhquv.server import build_server, serve_forever

    msgs = _replay_messages(texture)

    class Det(detector_pb2_grpc.DetectorServicer):
        def Detect(self, request, context):  # noqa: N802
            return msgs["detect"]

    class Fit(fitter_pb2_grpc.FitterServicer):
        def Fit(self, request, context):  # noqa: N802
            yield from msgs["fit"]

        def DescribeModel(self, request, context):  # noqa: N802
            return fitter_pb2.DescribeModelResponse(devices=[common_pb2.DEVICE_CPU])

    class Eye(eyeball_pb2_grpc.EyeballServicer):
        def Place(self, request, context):  # noqa: N802
            return msgs["place"]

    class Exp(exporter_pb2_grpc.ExporterServicer):
        def Export(self, request, context):  # noqa: N802
            return msgs["export"]

    def register(server) -> list[str]:
        detector_pb2_grpc.add_DetectorServicer_to_server(Det(), server)
        fitter_pb2_grpc.add_FitterServicer_to_server(Fit(), server)
        eyeball_pb2_grpc.add_EyeballServicer_to_server(Eye(), server)
        exporter_pb2_grpc.add_ExporterServicer_to_server(Exp(), server)
        return ["ffhquv.detector.v1.Detector", "ffhquv.fitter.v1.Fitter",
                "ffhquv.eyeball.v1.Eyeball", "ffhquv.exporter.v1.Exporter"]

    running = build_server(register, port=0, max_workers=8)
    Path(port_file).write_text(str(running.port))
    serve_forever(running)


def _start_replay(texture: int):
    import subprocess

    from ffhquv_cli.commands import wait_healthy

    port_file = Path(tempfile.mkdtemp(prefix="ffhquv-replay-")) / "port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-replay", str(port_file),
                             "--texture-size", str(texture)])
    end = time.monotonic() + 300
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError("replay server did not start")
        time.sleep(0.1)
    addr = f"127.0.0.1:{port_file.read_text()}"
    wait_healthy(addr)
    return proc, addr


def exporter_loop(n: int, texture: int, every: int) -> list[dict]:
    """``n`` exports of a real head (the default model's mean shape with its morph targets, a
    random ``texture``-sized texture, eyeballs, the extra files of a request) through the
    exporter's servicer in this process: RSS and the traced Python heap after each."""
    import numpy as np
    import torch

    from ffhquv.imaging import png_bytes
    from ffhquv.pb import exporter_pb2
    from services.exporter.servicer import ExporterServicer
    from services.eyeball.mesh import eyeball_mesh
    from services.eyeball.texture import eyeball_texture
    from services.fitter.servicer import FitterServicer

    core = FitterServicer(device="cpu").core("default", "cpu")
    m = core.model
    rng = np.random.default_rng(0)
    z = m.zeros()
    exp = torch.as_tensor(rng.normal(0, 0.3, z["exp"].shape[1]), dtype=torch.float32)[None]
    with torch.no_grad():
        head = core._mesh(m.shape(z["id"], exp)[0])
        head.morphs = m.morph_targets(exp[0].numpy())
        head_exp = core._mesh(m.shape(z["id"], exp)[0])
    left, right = eyeball_mesh(0.12, 30, 48), eyeball_mesh(0.12, 30, 48)
    tex = png_bytes(rng.integers(0, 256, (texture, texture, 3), dtype=np.uint8))
    extra = [common_pb2.NamedFile(name=f"stage{i}.png", media_type="image/png", data=tex)
             for i in range(4)]
    req = exporter_pb2.ExportRequest(
        name="head", head_neutral=head.to_proto(), head_expression=head_exp.to_proto(),
        head_texture_png=tex, left_eye=left.to_proto(), right_eye=right.to_proto(),
        eye_texture_png=png_bytes(eyeball_texture(size=256)), extra_files=extra,
        metres_per_unit=m.metres_per_unit)
    servicer = ExporterServicer()
    rows = []
    for i in range(n):
        t = time.monotonic()
        res = servicer.handle(req)
        size = sum(len(f.data) for f in res.files)
        del res
        if (i + 1) % every and i not in (0, n - 1):
            continue
        gc.collect()
        row = {"export": i + 1, "seconds": time.monotonic() - t, "files_mb": size / 2**20,
               "rss_mb": rss_mb(), "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20}
        rows.append(row)
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3,
                    help="requests before the reference point of the growth")
    ap.add_argument("--preset", choices=PRESETS, default="fast")
    ap.add_argument("--texture-size", type=int, default=256)
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    ap.add_argument("--download", action="store_true", help="GetArtifact every artifact")
    ap.add_argument("--photo", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--replay", action="store_true",
                    help="backends answer recorded-size messages at once (the gateway alone)")
    ap.add_argument("--every", type=int, default=1, help="print and sample every N requests")
    ap.add_argument("--clients", type=int, default=1,
                    help="requests at a time (half of them streamed when more than one); "
                    "make --warmup and --every multiples of it")
    ap.add_argument("--exporter", action="store_true",
                    help="the exporter alone: --requests exports in this process")
    ap.add_argument("--no-trace", action="store_true",
                    help="--exporter without tracemalloc (which slows the export 2-3x)")
    ap.add_argument("--serve-replay", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_replay:
        serve_replay(args.serve_replay, args.texture_size)
        return 0
    if args.exporter:
        meta = header(f"exporter memory: {args.requests} exports, texture {args.texture_size}")
        if not args.no_trace:
            tracemalloc.start(8)
        rows = exporter_loop(args.requests, args.texture_size, args.every)
        table(rows, list(rows[0]))
        write_json(args.json, meta, rows)
        return 0
    meta = header(f"memory per request: {args.requests} requests, preset {args.preset}, "
                  f"texture {args.texture_size}, device {args.device}"
                  + (", replayed backends" if args.replay else ""))
    data, name = photo_bytes(args.photo)
    env = {"FFHQUV_LOG_LEVEL": "WARNING"}
    procs, addrs = {}, {}
    if args.replay:
        procs["replay"], addr = _start_replay(args.texture_size)
        addrs = dict.fromkeys(SERVICES, addr)
    else:
        for s in SERVICES:
            extra = ["--device", args.device] if s == "fitter" else []
            procs[s], addrs[s] = spawn_service(s, extra, env=env)
    tracemalloc.start(8)
    backends = GrpcBackends(**addrs)
    store = LocalArtifactStore(Path(tempfile.mkdtemp(prefix="ffhquv-mem-")),
                               max_bytes=256 * 2**20)  # evictions included
    gw = GatewayServer(Orchestrator(backends), store, close_backends=backends.close)
    gw.start_in_thread()
    rows: list[dict] = []
    snap_warm = None
    try:
        opts = gateway_pb2.Options(preset=PRESETS[args.preset], texture_size=args.texture_size)
        with channel(gw.address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)

            def one(i: int) -> None:
                req = gateway_pb2.ReconstructRequest(
                    request_id=f"mem-{os.getpid()}-{i}", options=opts,
                    image=common_pb2.Image(data=data, filename=name))
                if args.clients > 1 and i % 2:  # half of them streamed
                    res = [e for e in stub.ReconstructStream(req, timeout=1800)][-1].result
                else:
                    res = stub.Reconstruct(req, timeout=1800)
                if args.download:
                    for a in res.artifacts:
                        for _ in stub.GetArtifact(gateway_pb2.GetArtifactRequest(
                                artifact_id=a.id), timeout=120):
                            pass

            pool = ThreadPoolExecutor(args.clients)
            for i in range(0, args.requests, args.clients):
                t = time.monotonic()
                list(pool.map(one, range(i, min(args.requests, i + args.clients))))
                i = min(args.requests, i + args.clients) - 1
                if (i + 1) % args.every and i + 1 != args.warmup and i + 1 != args.requests:
                    continue
                gc.collect()
                traced, _ = tracemalloc.get_traced_memory()
                children = stack_rss(os.getpid())
                row = {"request": i + 1, "seconds": time.monotonic() - t,
                       "gateway_rss_mb": rss_mb(), "traced_mb": traced / 2**20,
                       "objects": len(gc.get_objects()),
                       **{f"{s}_mb": children.get(s, 0) / 2**20 for s in SERVICES
                          if not args.replay}}
                rows.append(row)
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()), flush=True)
                if i + 1 == args.warmup:
                    snap_warm = tracemalloc.take_snapshot()
            snap_end = tracemalloc.take_snapshot()
    finally:
        gw.stop(2.0)
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=30)
    table(rows, list(rows[0]))
    top = []
    if snap_warm is not None:
        stats = snap_end.compare_to(snap_warm, "lineno")
        print(f"# Python allocations that grew most from request {args.warmup} to "
              f"{args.requests}:")
        for s in stats[:15]:
            print(f"#   {s.size_diff / 1024:+9.1f} KiB {s.count_diff:+6d} blocks  "
                  f"{s.traceback[0]}")
            top.append({"kib": s.size_diff / 1024, "blocks": s.count_diff,
                        "where": str(s.traceback[0])})
        print("# the two largest, with their callers:")
        for s in snap_end.compare_to(snap_warm, "traceback")[:2]:
            print(f"#   {s.size_diff / 1024:+9.1f} KiB {s.count_diff:+6d} blocks")
            for line in s.traceback.format()[-12:]:
                print(f"#     {line}")
    warm = next((r for r in rows if r["request"] == args.warmup), None)
    if warm is not None and rows[-1] is not warm:
        last = rows[-1]
        n = last["request"] - warm["request"]
        growth = {k: (last[k] - warm[k]) / n for k in last if k.endswith("_mb")
                  or k == "objects"}
        print("# growth per request after warm-up: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in growth.items()))
    else:
        growth = {}
    write_json(args.json, meta, rows, growth_per_request=growth, top_growth=top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
