"""Recovery of ``ffhquv serve all`` from kill -9, under load.

    ./run bench recovery [--preset fast] [--texture-size 256] [--device cpu|cuda] [--json out.json]

``--load-clients`` clients (default 1) keep requests running; each child (detector, eyeball,
exporter, fitter; one process of each where there are replicas) in turn is killed with SIGKILL.
For each:

* ``not_serving_after_s``: until the gateway's readiness (``ffhquv.gateway.v1.Reconstruction``)
  says NOT_SERVING (empty when it did not within ``--down-wait`` seconds: with replicas, the
  gateway may route around the dead one);
* the code of a new request sent at once, and how long it took to be answered;
* ``back_after_s``: until the supervisor's new process of that service is up and the gateway
  ready again;
* ``first_ok_after_kill_s``: from the kill to the end of the first successful new request (new
  requests are sent one after another from the kill on, each once the gateway is ready, until
  one succeeds); ``first_ok_sent_after_s``: when that request was sent, and ``request_s`` how
  long it took itself (on CPU it may wait behind a load client's request: 1 fit at a time);
* ``within_30s``: the issue's target, first_ok_after_kill_s <= 30.

Last, ``serve all`` itself is killed with SIGKILL and the time until none of its children is
left is measured. Small settings keep a request to seconds (``--preset fast --texture-size
256``, OBJ only); on a GPU machine run it with ``--device cuda``.
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


def children(pid: int) -> dict[str, list[int]]:
    """Pids of ``pid``'s children by service name (several with replicas)."""
    out: dict[str, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            out.setdefault(cmd[cmd.index(b"serve") + 1].decode(), []).append(int(d.name))
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
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    ap.add_argument("--load-clients", type=int, default=1,
                    help="clients keeping requests running during the kills (0: none)")
    ap.add_argument("--down-wait", type=float, default=5.0,
                    help="seconds to wait for readiness to say NOT_SERVING after a kill")
    ap.add_argument("--deadline", type=float, default=600.0,
                    help="seconds after a kill to give up waiting for a successful request")
    ap.add_argument("--victims", default="detector,eyeball,exporter,fitter",
                    help="children to kill, in order (comma-separated)")
    ap.add_argument("--photo", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    meta = header(f"recovery from kill -9 under load ({args.load_clients} load clients), "
                  f"preset {args.preset}, texture {args.texture_size}, device {args.device}")
    data, name = photo_bytes(args.photo)
    port = free_port()
    env = {**os.environ, "FFHQUV_STORAGE_DIR": tempfile.mkdtemp(prefix="ffhquv-recovery-"),
           "FFHQUV_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port",
                             str(port), "--metrics-port", "-1", "--device", args.device],
                            env=env,
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
    lock = threading.Lock()

    def request() -> str:
        with lock:
            n[0] += 1
            rid = f"rec-{os.getpid()}-{n[0]}"
        try:
            stub.Reconstruct(gateway_pb2.ReconstructRequest(
                request_id=rid, options=opts,
                image=common_pb2.Image(data=data, filename=name)), timeout=1800)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    def ready() -> bool:
        try:
            return health.Check(READY, timeout=10).status == SERVING
        except grpc.RpcError:
            return False

    def wait(pred, timeout: float, step: float = 0.02) -> float | None:
        """Seconds until ``pred()`` (None after ``timeout``)."""
        t = time.monotonic()
        while not pred():
            if time.monotonic() - t > timeout:
                return None
            time.sleep(step)
        return time.monotonic() - t

    # one request before the load: every part warm, and the time of a request at rest
    t = time.monotonic()
    first = request()
    at_rest_s = time.monotonic() - t
    print(f"# a request at rest: {first} in {at_rest_s:.1f} s", flush=True)

    background: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            code = request()
            if stop.is_set():  # cut by the kill of serve all at the end: not an outcome
                return
            background.append(code)
            if code != "OK":
                time.sleep(0.5)

    for _ in range(args.load_clients):
        threading.Thread(target=load, daemon=True).start()
    time.sleep(min(5.0, at_rest_s / 2))  # the load's requests under way
    rows = []
    for victim in [v.strip() for v in args.victims.split(",") if v.strip()]:
        old = children(proc.pid).get(victim, [])
        if not old:
            print(f"# no {victim} process to kill")
            continue
        t0 = time.monotonic()
        os.kill(old[0], signal.SIGKILL)
        t_down = wait(lambda: not ready(), args.down_wait)
        t1 = time.monotonic()
        code = request()
        answered_ms = 1000 * (time.monotonic() - t1)
        first_ok = sent = req_s = None
        attempts = 1 if code == "OK" else 0
        if code == "OK":
            first_ok, sent, req_s = time.monotonic() - t0, t1 - t0, answered_ms / 1000

        def back(victim: str = victim, old: list[int] = old) -> bool:
            now = children(proc.pid).get(victim, [])
            return len(now) >= len(old) and old[0] not in now and ready()

        t_back = wait(back, args.deadline, 0.05)
        t_back = None if t_back is None else time.monotonic() - t0
        while first_ok is None and time.monotonic() - t0 < args.deadline:
            if wait(ready, 5.0, 0.05) is None:
                continue
            ts = time.monotonic()
            attempts += 1
            if request() == "OK":
                first_ok, sent, req_s = (time.monotonic() - t0, ts - t0,
                                         time.monotonic() - ts)
            else:
                time.sleep(0.5)
        rows.append({"killed": victim, "not_serving_after_s": t_down,
                     "new_request_while_down": code, "answered_in_ms": answered_ms,
                     "back_after_s": t_back, "first_ok_after_kill_s": first_ok,
                     "first_ok_sent_after_s": sent, "request_s": req_s, "attempts": attempts,
                     "within_30s": first_ok is not None and first_ok <= 30.0})
        print(f"# {rows[-1]}", flush=True)
    stop.set()
    if rows:
        table(rows, list(rows[0]))
    kids = [p for pids in children(proc.pid).values() for p in pids]
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
    write_json(args.json, meta, rows, request_at_rest_s=at_rest_s,
               serve_all_children_gone_s=gone, children_left=left, background=background)
    failed = [r["killed"] for r in rows if r["first_ok_after_kill_s"] is None]
    return 1 if left or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
