"""Load test: concurrent gRPC clients against ``ffhquv serve all`` on loopback.

    ./run bench load --clients 8 --requests 25 --preset fast [--json out.json]

Reports throughput, p50/p95/p99 latency of successful requests, counts per status code and the
peak resident memory of the whole server process tree.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402
from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc  # noqa: E402
from ffhquv.server import channel  # noqa: E402
from ffhquv_cli.commands import wait_healthy  # noqa: E402

PRESETS = {"fast": 1, "standard": 2, "best": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants, ``pid`` first (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def tree_cpu_by_service(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``pid`` ("gateway") and its descendants, summed by
    the service each runs (``... serve NAME ...`` on its command line; "other" otherwise),
    from Linux /proc (clock ticks of ``stat`` fields 14 and 15)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = "gateway" if p == pid else "other"
        if p != pid and b"serve" in argv:
            i = argv.index(b"serve")
            if i + 1 < len(argv):
                name = argv[i + 1].decode(errors="replace")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all the machine's cores so far, from Linux /proc/stat
    (busy: every field but idle and iowait); (0, 0) where there is none. Two readings give
    how busy the whole host was between them, whoever used it."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    total = sum(f[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - f[3] - f[4], total


def photo_bytes(path: str | None) -> tuple[bytes, str]:
    if path:
        return Path(path).read_bytes(), Path(path).name
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=92)
    return buf.getvalue(), "astronaut.jpg"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client")
    ap.add_argument("--preset", choices=PRESETS, default="fast")
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--max-concurrent", type=int, default=1)
    ap.add_argument("--photo", default=None, help="photo to send (default: astronaut)")
    ap.add_argument("--address", default=None, help="use a running gateway instead")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    meta = header(f"load: {args.clients} clients x {args.requests} requests, preset "
                  f"{args.preset}, queue {args.max_queue}, concurrent {args.max_concurrent}")
    data, name = photo_bytes(args.photo)
    proc = None
    address = args.address
    if address is None:
        port = free_port()
        env = {**os.environ, "FFHQUV_MAX_QUEUE": str(args.max_queue),
               "FFHQUV_MAX_CONCURRENT": str(args.max_concurrent),
               "FFHQUV_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port",
                                 str(port), "--metrics-port", "-1", "--device", "cpu"], env=env,
                                stderr=subprocess.DEVNULL)
        address = f"127.0.0.1:{port}"
        wait_healthy(address, timeout=300)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if proc is not None:
                peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    opts = gateway_pb2.Options(preset=PRESETS[args.preset], texture_size=args.texture_size)

    def client(ci: int) -> None:
        with channel(address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            for ri in range(args.requests):
                req = gateway_pb2.ReconstructRequest(
                    request_id=f"load-{os.getpid()}-{ci}-{ri}",
                    image=common_pb2.Image(data=data, filename=name), options=opts)
                t = time.perf_counter()
                try:
                    stub.Reconstruct(req, timeout=1800)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                dt = time.perf_counter() - t
                with lock:
                    results.append((code, dt))
                if code == "RESOURCE_EXHAUSTED":
                    time.sleep(0.5)  # a polite client backs off

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
    ok = np.array([dt for c, dt in results if c == "OK"])
    codes: dict[str, int] = {}
    for c, _ in results:
        codes[c] = codes.get(c, 0) + 1
    row = {"requests": len(results), "ok": int(len(ok)), "wall_s": wall,
           "throughput_ok_per_min": 60 * len(ok) / wall,
           "p50_s": float(np.percentile(ok, 50)) if len(ok) else None,
           "p95_s": float(np.percentile(ok, 95)) if len(ok) else None,
           "p99_s": float(np.percentile(ok, 99)) if len(ok) else None,
           "peak_rss_mb": peak[0] / 2 ** 20 if peak[0] else None,
           "codes": ", ".join(f"{k}={v}" for k, v in sorted(codes.items()))}
    table([row], list(row))
    unexpected = {k: v for k, v in codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
    write_json(args.json, meta, [row], unexpected_errors=unexpected)
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
