"""Soak: ``ffhquv serve all`` kept at saturation for a given time.

    ./run bench soak --duration 3600 --preset fast [--device cpu] [--json out.json]

``max_concurrent + max_queue`` clients send requests back to back (each with a fresh id), so a
fit always runs and the queue is always full. At the end the requests still in flight are
cancelled and counted as ``CUT_AT_END`` (not errors). Reports completed requests, errors by
status code, p50/p95 latency of the first and of the last quarter of the run, and the
resident memory of every process of the stack (``serve all`` and each child, by name) sampled
over time: first, last, max, and the change from the first sample after warm-up (the first
completed request) to the last, and the trend once warm (second-quarter vs last-quarter
median, slope over the second half). The issue asks for an hour; shorter runs say less about
slow leaks.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402
from bench.load import PRESETS, free_port, photo_bytes  # noqa: E402
from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc  # noqa: E402
from ffhquv.server import channel  # noqa: E402
from ffhquv_cli.commands import wait_healthy  # noqa: E402

EXPECTED = ("OK", "RESOURCE_EXHAUSTED", "CUT_AT_END")


def stack_rss(pid: int) -> dict[str, int]:
    """Resident bytes of ``pid`` (``serve all``) and each of its children, keyed by the service
    name on their command line."""
    out: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if int(d.name) != pid and ppid != pid:
                continue
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            name = cmd[cmd.index(b"serve") + 1].decode() if b"serve" in cmd else d.name
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return out


def percentiles(lat: list[float]) -> tuple[float | None, float | None]:
    if not lat:
        return None, None
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 95))


def _trend(series: list[tuple[float, int]], wall: float) -> dict[str, float]:
    """Whether RSS still grows once the allocator has warmed up: the median of the second
    quarter of the run against the median of the last quarter (robust to the swing of one
    large buffer), and the least-squares slope over the second half, in MB per hour."""
    t = np.array([x for x, _ in series], float)
    v = np.array([y for _, y in series], float) / 2**20
    q2 = v[(t >= wall / 4) & (t < wall / 2)]
    q4 = v[t >= 3 * wall / 4]
    half = t >= wall / 2
    out = {"q2_median_mb": float(np.median(q2)) if q2.size else float("nan"),
           "q4_median_mb": float(np.median(q4)) if q4.size else float("nan")}
    out["q2_to_q4_pct"] = 100.0 * (out["q4_median_mb"] - out["q2_median_mb"]) / out["q2_median_mb"]
    out["slope_2nd_half_mb_per_h"] = (float(np.polyfit(t[half], v[half], 1)[0] * 3600)
                                      if half.sum() >= 3 else float("nan"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds of load")
    ap.add_argument("--preset", choices=PRESETS, default="fast")
    ap.add_argument("--texture-size", type=int, default=512)
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    ap.add_argument("--max-queue", type=int, default=2)
    ap.add_argument("--max-concurrent", type=int, default=1)
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--photo", default=None, help="photo to send (default: astronaut)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    meta = header(f"soak: {args.duration:.0f} s at saturation, preset {args.preset}, device "
                  f"{args.device}, queue {args.max_queue}, concurrent {args.max_concurrent}")
    data, name = photo_bytes(args.photo)
    port = free_port()
    store = tempfile.mkdtemp(prefix="ffhquv-soak-")
    env = {**os.environ, "FFHQUV_MAX_QUEUE": str(args.max_queue),
           "FFHQUV_MAX_CONCURRENT": str(args.max_concurrent), "FFHQUV_STORAGE_DIR": store,
           "FFHQUV_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port",
                             str(port), "--metrics-port", "-1", "--device", args.device],
                            env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # stop the stack on timeout(1) as well
    try:
        wait_healthy(address, timeout=600)
        return _soak(args, meta, proc, address, data, name)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _soak(args, meta: dict, proc: subprocess.Popen, address: str, data: bytes,
          name: str) -> int:
    opts = gateway_pb2.Options(preset=PRESETS[args.preset], texture_size=args.texture_size)
    t0 = time.monotonic()
    end = t0 + args.duration
    results: list[tuple[float, str, float]] = []  # (finished at, code, seconds)
    samples: list[tuple[float, dict[str, int]]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic() - t0, stack_rss(proc.pid)))
            stop.wait(args.sample_s)

    def client(ci: int) -> None:
        with channel(address) as ch:
            stub = gateway_pb2_grpc.ReconstructionStub(ch)
            ri = 0
            while time.monotonic() < end:
                req = gateway_pb2.ReconstructRequest(
                    request_id=f"soak-{os.getpid()}-{ci}-{ri}", options=opts,
                    image=common_pb2.Image(data=data, filename=name))
                ri += 1
                t = time.monotonic()
                fut = stub.Reconstruct.future(req, timeout=1800)
                while not fut.done() and time.monotonic() < end:
                    time.sleep(0.2)
                if not fut.done():
                    fut.cancel()
                    code = "CUT_AT_END"
                elif fut.exception() is None:
                    code = "OK"
                else:
                    code = fut.exception().code().name
                with lock:
                    results.append((time.monotonic() - t0, code, time.monotonic() - t))
                if code == "RESOURCE_EXHAUSTED":
                    time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,))
               for i in range(args.max_concurrent + args.max_queue)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    wall = time.monotonic() - t0

    codes: dict[str, int] = {}
    for _, c, _ in results:
        codes[c] = codes.get(c, 0) + 1
    ok = [(at, dt) for at, c, dt in results if c == "OK"]
    quarter = max(1, len(ok) // 4)
    p50_start, p95_start = percentiles([dt for _, dt in ok[:quarter]])
    p50_end, p95_end = percentiles([dt for _, dt in ok[-quarter:]])
    row = {"wall_s": wall, "completed": len(ok), "per_min": 60 * len(ok) / wall,
           "p50_start_s": p50_start, "p95_start_s": p95_start, "p50_end_s": p50_end,
           "p95_end_s": p95_end,
           "codes": ", ".join(f"{k}={v}" for k, v in sorted(codes.items()))}
    table([row], list(row))
    warm = ok[0][0] if ok else 0.0
    rss_rows = []
    for proc_name in sorted({k for _, s in samples for k in s}):
        series = [(t, s[proc_name]) for t, s in samples if proc_name in s]
        after = [v for t, v in series if t >= warm] or [v for _, v in series]
        rss_rows.append({
            "process": proc_name, "samples": len(series),
            "first_mb": series[0][1] / 2**20, "warm_mb": after[0] / 2**20,
            "last_mb": series[-1][1] / 2**20, "max_mb": max(v for _, v in series) / 2**20,
            "change_after_warmup_pct": 100.0 * (after[-1] - after[0]) / after[0],
            **_trend(series, wall)})
    table(rss_rows, list(rss_rows[0]) if rss_rows else ["process"])
    unexpected = {k: v for k, v in codes.items() if k not in EXPECTED}
    print(f"# unexpected errors: {unexpected or 0}")
    write_json(args.json, meta, [row], unexpected_errors=unexpected, rss=rss_rows,
               rss_series=[{"t": t, **{k: v / 2**20 for k, v in s.items()}}
                           for t, s in samples])
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
