"""Throughput of Detect: core only, and over gRPC with 1 and 2 concurrent clients.

    python bench/detect.py [--repeat 5] [--unwrap-size 1024] [--json PATH]

Photos: the FFHQ-UV example photos (when ../shared/data/ffhq-uv-reference exists) and
skimage's astronaut. Prints a table with the command, date and machine; ``--json`` writes
the same numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ffhquv.config import reference_data_dir  # noqa: E402


def photos() -> dict[str, bytes]:
    from PIL import Image
    from skimage import data

    out = {}
    ref = reference_data_dir()
    for name in ("000007.jpg", "000055.jpg", "015309.jpg", "01223.png"):
        if (ref / name).is_file():
            out[name] = (ref / name).read_bytes()
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "PNG")
    out["astronaut.png"] = buf.getvalue()
    return out


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} | {cpu} | {os.cpu_count()} CPUs | {platform.platform()}"


def bench_core(det, items: dict[str, bytes], repeat: int, unwrap: int) -> dict:
    per_photo = {}
    for name, data in items.items():
        det.detect(data, unwrap_size=unwrap)  # warm-up
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            det.detect(data, unwrap_size=unwrap)
            ts.append(time.perf_counter() - t0)
        per_photo[name] = {"median_ms": 1000 * statistics.median(ts),
                           "min_ms": 1000 * min(ts)}
    total = sum(v["median_ms"] for v in per_photo.values()) / 1000
    return {"per_photo": per_photo, "photos_per_s": len(items) / total}


def bench_grpc(address: str, items: dict[str, bytes], repeat: int, unwrap: int,
               clients: int) -> dict:
    from ffhquv.pb import common_pb2, detector_pb2, detector_pb2_grpc
    from ffhquv.server import channel

    reqs = [detector_pb2.DetectRequest(image=common_pb2.Image(data=d, filename=n),
                                       unwrap_size=unwrap) for n, d in items.items()]
    lat: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client():
        try:
            with channel(address) as ch:
                stub = detector_pb2_grpc.DetectorStub(ch)
                stub.Detect(reqs[-1], timeout=60)  # connect + warm-up
                barrier.wait()
                for _ in range(repeat):
                    for r in reqs:
                        t0 = time.perf_counter()
                        stub.Detect(r, timeout=60)
                        with lock:
                            lat.append(time.perf_counter() - t0)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            barrier.abort()

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"clients": clients, "requests": len(lat), "wall_s": wall,
            "photos_per_s": len(lat) / wall, "median_latency_ms": 1000 * statistics.median(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--unwrap-size", type=int, default=1024, choices=(512, 1024))
    ap.add_argument("--workers", type=int, default=4, help="gRPC server threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from ffhquv.server import build_server
    from services.detector.core import Detector
    from services.detector.servicer import register

    items = photos()
    t0 = time.perf_counter()
    det = Detector()
    init_s = time.perf_counter() - t0
    core = bench_core(det, items, args.repeat, args.unwrap_size)
    running = build_server(lambda s: register(s, det), port=0, max_workers=args.workers)
    try:
        grpc_runs = [bench_grpc(running.address, items, args.repeat, args.unwrap_size, c)
                     for c in (1, 2)]
    finally:
        running.stop(0)

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "unwrap_size": args.unwrap_size,
        "repeat": args.repeat,
        "model_load_s": init_s,
        "core": core,
        "grpc": grpc_runs,
    }
    print(f"command: {report['command']}\ndate:    {report['date']}\nmachine: {report['machine']}")
    print(f"unwrap_size {args.unwrap_size}, repeat {args.repeat}, model load {init_s:.2f} s\n")
    print(f"{'core, per photo':<28}{'median ms':>10}{'min ms':>10}")
    for name, v in core["per_photo"].items():
        print(f"  {name:<26}{v['median_ms']:>10.1f}{v['min_ms']:>10.1f}")
    print(f"\n{'mode':<28}{'photos/s':>10}{'p50 ms':>10}")
    print(f"  {'core (1 thread)':<26}{core['photos_per_s']:>10.2f}{'':>10}")
    for g in grpc_runs:
        print(f"  {'gRPC, ' + str(g['clients']) + ' client(s)':<26}{g['photos_per_s']:>10.2f}"
              f"{g['median_latency_ms']:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
