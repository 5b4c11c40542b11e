"""A real stack for gateway tests: the four services as child processes on loopback ports and
the gateway in this process, each a real gRPC server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from ffhquv.pb import gateway_pb2_grpc
from ffhquv.server import channel
from ffhquv_cli.commands import spawn_service, wait_healthy
from gateway.backends import GrpcBackends, RetryPolicy
from gateway.orchestrator import Deadlines, Orchestrator
from gateway.server import GatewayLimits, GatewayServer
from gateway.storage import LocalArtifactStore

SERVICES = ("detector", "fitter", "eyeball", "exporter")


@dataclass
class Stack:
    storage: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    gateway: GatewayServer | None = None
    _channel: grpc.Channel | None = None

    def stub(self) -> gateway_pb2_grpc.ReconstructionStub:
        if self._channel is None:
            self._channel = channel(self.gateway.address)
        return gateway_pb2_grpc.ReconstructionStub(self._channel)

    def start_service(self, name: str, port: int = 0) -> None:
        extra = ["--device", "cpu"] if name == "fitter" else []
        proc, addr = spawn_service(name, extra, env={"FFHQUV_LOG_LEVEL": "WARNING",
                                                     "OMP_NUM_THREADS": "2"}, port=port)
        self.procs[name] = proc
        self.addrs[name] = addr
        if self.gateway is not None:  # a restart: wait until the gateway sees it back
            self.wait_gateway_sees(name)

    def wait_gateway_sees(self, name: str, timeout: float = 120.0) -> None:
        """Block until the gateway's health for backend ``name`` is SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from gateway.backends import BACKEND_SERVICES

        req = health_pb2.HealthCheckRequest(service=BACKEND_SERVICES[name])
        with grpc.insecure_channel(self.gateway.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            wait_until(lambda: stub.Check(req, timeout=10).status
                       == health_pb2.HealthCheckResponse.SERVING, timeout=timeout)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def start_gateway(self, limits: GatewayLimits | None = None, token: str | None = None,
                      retry: RetryPolicy | None = None, deadlines: Deadlines | None = None):
        backends = GrpcBackends(**self.addrs, retry=retry or RetryPolicy())
        self.gateway = GatewayServer(Orchestrator(backends, deadlines),
                                     LocalArtifactStore(self.storage), limits=limits,
                                     token=token, close_backends=backends.close)
        self.gateway.start_in_thread()
        return self.gateway

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.gateway is not None:
            self.gateway.stop(1.0)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- certificates and a whole `serve all` ----------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> Path:
    """A test CA and a server and a client certificate signed by it (SAN localhost and
    127.0.0.1, no extended key usage: each also serves as the other), made with the openssl
    command line tool; skips the test when it is absent."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is not installed")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=ffhquv-test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf",
                 cwd=d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeAll:
    """``ffhquv serve all`` in a child process with its own storage; the children's addresses
    and pids are read from its log and from /proc."""

    def __init__(self, tmp: Path, args: list[str] = (), env: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        self.port = free_port()
        self.log_path = tmp / "serve_all.log"
        self.credentials = credentials
        # one gateway process unless a test asks for more (the default grows with the cores)
        full_env = {**os.environ, "FFHQUV_STORAGE_DIR": str(tmp / "store"),
                    "FFHQUV_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "2",
                    "FFHQUV_GATEWAY_REPLICAS": "1", **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ffhquv_cli", "serve", "all", "--port", str(self.port),
                 "--metrics-port", "-1", "--device", "cpu", *args],
                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(self.address, timeout=600, credentials=credentials)
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"localhost:{self.port}" if self.credentials is not None \
            else f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_addresses(self) -> dict[str, str]:
        return dict(re.findall(r"^ffhquv (\w+) on (\S+)$", self.log(), re.M))

    def child_pids(self) -> dict[str, int]:
        """Live children of ``serve all`` by service name."""
        out: dict[str, int] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"serve" in cmd:
                out[cmd[cmd.index(b"serve") + 1].decode()] = int(d.name)
        return out

    def channel(self, own_connection: bool = False) -> grpc.Channel:
        """A channel to the gateway; ``own_connection``: its own TCP connection (gRPC's
        channels to one target otherwise share one: the global subchannel pool)."""
        opts = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        if self.credentials is not None:
            return grpc.secure_channel(self.address, self.credentials, options=opts)
        return grpc.insecure_channel(self.address, options=opts)

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after a minute."""
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            t0 = time.monotonic()  # the children follow their parent
            while time.monotonic() - t0 < wait:
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.2)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(pred, timeout: float, step: float = 0.1) -> float:
    """Poll ``pred`` until true; returns the seconds it took (raises after ``timeout``)."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(step)
    return time.monotonic() - t0
