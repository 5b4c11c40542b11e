"""Recovery of ``ffhquv serve all`` from kill -9, under load.

    ./run bench recovery [--preset fast] [--json out.json]

One client keeps a request running; each child (detector, eyeball, exporter, fitter) in turn is
killed with SIGKILL. For each: how long until the gateway's readiness
(``ffhquv.gateway.v1.Reconstruction``) says NOT_SERVING, the code and time of a new request
sent while the child is down, how long until SERVING again (the supervisor restarted it and the
gateway saw it), and how long until a whole request succeeds after the kill. Last, ``serve all``
itself is killed with SIGKILL and the time until none of its children is left is measured.
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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import header, table, write_json  # noqa: E402
from bench.load import PRESETS, free_port, photo_bytes  # noqa: E402
from ffhquv.pb import common_pb2, exporter_pb2, gateway_pb2, gateway_pb2_grpc  # noqa: E402
from ffhquv_cli.commands import wait_healthy  # noqa: E402

READY = health_pb2.HealthCheckRequest(service="ffhquv.gateway.v1.Reconstruction")
SERVING = health_pb2.HealthCheckResponse.SERVING


def children(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            out[cmd[cmd.index(b"serve") + 1].decode()] = int(d.name)
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=PRESETS, default="fast")
    ap.add_argument("--texture-size", type=int, default=256)
    ap.add_argument("--photo", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    meta = header(f"recovery from kill -9 under load, preset {args.preset}")
    data, name = photo_bytes(args.photo)
    port = free_port()
    env = {**os.environ, "FFHQUV_STORAGE_DIR": tempfile.mkdtemp(prefix="ffhquv-recovery-"),
           "FFHQUV_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port",
                             str(port), "--metrics-port", "-1", "--device", "cpu"], env=env,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        wait_healthy(address, timeout=600)
        return _run(args, meta, proc, address, data, name)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _run(args, meta, proc, address, data, name) -> int:
    opts = gateway_pb2.Options(preset=PRESETS[args.preset], texture_size=args.texture_size,
                               formats=[exporter_pb2.EXPORT_FORMAT_OBJ])
    ch = grpc.insecure_channel(address)
    stub = gateway_pb2_grpc.ReconstructionStub(ch)
    health = health_pb2_grpc.HealthStub(ch)
    n = [0]

    def request() -> str:
        n[0] += 1
        try:
            stub.Reconstruct(gateway_pb2.ReconstructRequest(
                request_id=f"rec-{os.getpid()}-{n[0]}", options=opts,
                image=common_pb2.Image(data=data, filename=name)), timeout=1800)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    def ready() -> bool:
        return health.Check(READY, timeout=10).status == SERVING

    background: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            background.append(request())
            if background[-1] != "OK":
                time.sleep(0.5)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    time.sleep(10)
    rows = []
    for victim in ("detector", "eyeball", "exporter", "fitter"):
        t0 = time.monotonic()
        os.kill(children(proc.pid)[victim], signal.SIGKILL)
        while ready():
            time.sleep(0.01)
        t_down = time.monotonic() - t0
        t1 = time.monotonic()
        code = request()
        refused_ms = 1000 * (time.monotonic() - t1)
        while not ready():
            time.sleep(0.05)
        t_back = time.monotonic() - t0
        code_after = request()
        rows.append({"killed": victim, "not_serving_after_s": t_down,
                     "new_request_while_down": code, "refused_in_ms": refused_ms,
                     "serving_again_after_s": t_back, "request_after": code_after,
                     "request_ok_after_kill_s": time.monotonic() - t0})
    stop.set()
    table(rows, list(rows[0]))
    kids = list(children(proc.pid).values())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    t0 = time.monotonic()
    while any(alive(p) for p in kids) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    gone = time.monotonic() - t0
    left = [p for p in kids if alive(p)]
    print(f"# serve all kill -9: {len(kids)} children, none left after {gone:.1f} s"
          if not left else f"# serve all kill -9: {len(left)} children still alive")
    print(f"# background load client outcomes: {background}")
    write_json(args.json, meta, rows, serve_all_children_gone_s=gone, children_left=left,
               background=background)
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
