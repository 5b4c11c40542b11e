"""``ffhquv serve all`` told to stop while photos are in flight: they finish.

A terminal's Ctrl-C sends SIGINT to the whole process group (``serve all`` and every child at
once); ``docker stop`` or systemd send SIGTERM to ``serve all`` alone. Either way the gateways
drain their calls (``FFHQUV_DRAIN_SECONDS``) while the services behind them still serve, and
only then are the services stopped: each photo admitted before the signal comes back whole,
and no gateway sees a service go down under it. Two gateway processes (``serve all``'s
replicas on one port), ``fast``, 512 textures. The drain is set far beyond a photo's time
so that nothing here depends on the machine's speed. On a CUDA machine the same runs with
``--device cuda`` too, where ``serve all`` starts its own CUDA MPS daemon (``FFHQUV_CUDA_MPS``'s
default): a Ctrl-C must not end the daemon under the fitters (it runs in a session of its own),
and ``serve all`` ends it when it exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import grpc
import pytest

from ffhquv.pb import common_pb2, gateway_pb2, gateway_pb2_grpc
from ffhquv.server import channel
from ffhquv_cli.commands import wait_healthy
from tests.gateway_stack import free_port

PHOTOS = 3  # in flight when the signal comes, each on a connection of its own


def _mps_daemons() -> list[str]:
    """Command lines of the CUDA MPS processes running now."""
    out = subprocess.run(["pgrep", "-a", "nvidia-cuda-mps"], capture_output=True, text=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("how", ["ctrl-c to the group", "sigterm to serve all"])
def test_photos_in_flight_finish_when_serve_all_stops(how, device, astronaut_jpg_bytes, tmp_path):
    look_for_mps = device == "cuda" and shutil.which("pgrep") is not None
    mps_before = _mps_daemons() if look_for_mps else []
    port = free_port()
    env = {**os.environ, "FFHQUV_GATEWAY_REPLICAS": "2", "FFHQUV_DRAIN_SECONDS": "1800",
           "FFHQUV_STORAGE_DIR": str(tmp_path / "store"), "FFHQUV_LOG_LEVEL": "WARNING"}
    log = tmp_path / "serve_all.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port",
                                 str(port), "--metrics-port", "-1", "--device", device],
                                env=env, start_new_session=True, stderr=sink)
    address = f"127.0.0.1:{port}"
    admitted = threading.Semaphore(0)
    outcomes: list[tuple[str, object]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        req = gateway_pb2.ReconstructRequest(
            request_id=f"stop-{i}", image=common_pb2.Image(data=astronaut_jpg_bytes,
                                                           filename="a.jpg"),
            options=gateway_pb2.Options(preset=common_pb2.PRESET_FAST, texture_size=512))
        first, result, code = True, None, "OK"
        try:
            with channel(address, own_connection=True) as ch:
                for ev in gateway_pb2_grpc.ReconstructionStub(ch).ReconstructStream(
                        req, timeout=1800):
                    if first:
                        first = False
                        admitted.release()
                    if ev.WhichOneof("event") == "result":
                        result = ev.result
        except grpc.RpcError as e:
            code = f"{e.code().name}: {e.details()}"
        finally:
            if first:
                admitted.release()  # refused before its first event: the assert says so
        with lock:
            outcomes.append((code, result))

    try:
        wait_healthy(address, timeout=600)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(PHOTOS)]
        for t in threads:
            t.start()
        for _ in threads:  # every photo admitted (its first event came back) ...
            admitted.acquire(timeout=900)
        if how.startswith("ctrl-c"):  # ... then the signal, with the photos mid-way
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=1800)
        assert proc.wait(timeout=900) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert len(outcomes) == PHOTOS
    for code, result in outcomes:
        assert code == "OK", f"{code}\n{text[-3000:]}"
        assert {a.name for a in result.artifacts} >= {"stage3_uv.png", "report.json"}
    # the services outlived every gateway's drain: none saw one go down or retried a call
    assert "backend down" not in text and "retrying" not in text, text[-3000:]
    if look_for_mps:  # serve all's own MPS daemon ended with it
        assert _mps_daemons() == mps_before, text[-3000:]


_EARLY = """
import os, signal, sys
from ffhquv_cli.commands import EarlyStop, _run_gateway_forever

class Server:
    host, port = "127.0.0.1", 0

    async def start_async(self):
        print("started", flush=True)

    async def stop_async(self, grace):
        print("stopped", flush=True)

told = EarlyStop()
if sys.argv[1] == "catch":
    told.catch()
os.kill(os.getpid(), getattr(signal, sys.argv[2]))  # before the gateway's loop handles it
calls = []
_run_gateway_forever(Server(), on_signal=lambda: calls.append(1), told=told)
print("begin_stop", len(calls), flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("catch", [True, False])
def test_a_stop_signal_before_the_gateway_loop_handles_it_stops_in_order(catch, sig):
    """``serve all``'s replicas serve its port before its own gateway's loop handles the
    signals: a SIGTERM or a Ctrl-C then (seen in fresh clones' suites above: exit status -15
    and 130, the children not stopped in order) is noted (:class:`EarlyStop`) and the loop,
    once it serves, stops at once and in order (the supervisor's ``begin_stop`` called, the
    gateway drained). Without the note the process ends on the signal (the control)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _EARLY, "catch" if catch else "no", sig],
                       cwd=root, capture_output=True, text=True, timeout=120)
    if catch:
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["started", "stopped", "begin_stop", "1"], r.stdout
    else:
        assert r.returncode != 0 and "started" not in r.stdout, (r.returncode, r.stdout)
